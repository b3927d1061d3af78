//! Dead letters: the list, one letter, the replay (dry run, then confirm).

use super::*;

#[derive(serde::Deserialize, Default)]
pub struct LetterFilter {
    /// `crm-sync` (the default) or `gift-certificates`.
    #[serde(default)]
    service: LetterService,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    event_id: String,
    /// `datetime-local` values, read as UTC.
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
}

/// A `datetime-local` value (`2026-11-01T10:00`) as RFC 3339 UTC; RFC 3339 passes as it is.
pub(super) fn as_rfc3339(v: &str) -> Option<String> {
    let v = v.trim();
    if v.is_empty() {
        return None;
    }
    if OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339).is_ok() {
        return Some(v.to_owned());
    }
    let with_seconds = if v.len() == 16 {
        format!("{v}:00")
    } else {
        v.to_owned()
    };
    Some(format!("{with_seconds}Z"))
}

impl LetterFilter {
    fn query(&self) -> String {
        let mut q = vec!["limit=200".to_owned()];
        for (k, v) in [
            ("reason", Some(self.reason.trim().to_owned())),
            ("event_id", Some(self.event_id.trim().to_owned())),
            ("since", as_rfc3339(&self.since)),
            ("until", as_rfc3339(&self.until)),
        ] {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                q.push(format!("{k}={}", enc(&v)));
            }
        }
        q.join("&")
    }
}

struct LetterRow {
    position: String,
    partition: i32,
    offset: i64,
    at: String,
    event_id: String,
    reason_code: String,
    reason: String,
    replay_count: u32,
}

fn letter_row(l: &LetterSummary) -> LetterRow {
    LetterRow {
        position: format!("{}:{}", l.partition, l.offset),
        partition: l.partition,
        offset: l.offset,
        at: opt_when(l.dead_lettered_at.as_ref()),
        event_id: l.event_id.clone().unwrap_or_else(|| "—".into()),
        reason_code: l.reason_code.clone().unwrap_or_else(|| "—".into()),
        reason: l.reason.clone().unwrap_or_default(),
        replay_count: l.replay_count,
    }
}

#[derive(Template)]
#[template(path = "dead_letters.html")]
struct DeadLettersPage {
    nav: Nav,
    service: &'static str,
    reason: String,
    event_id: String,
    since: String,
    until: String,
    letters: Vec<LetterRow>,
    truncated: bool,
    error: Option<String>,
}

pub async fn dead_letters(State(c): St, headers: HeaderMap, Query(f): Query<LetterFilter>) -> Page {
    let s = c.require(&headers, Role::Viewer)?;
    let found = c.backends.dead_letters::<LetterList>(f.service, &f.query()).await;
    let (letters, truncated, error) = match found {
        Ok(l) => (l.letters.iter().map(letter_row).collect(), l.truncated, None),
        Err(e) => (Vec::new(), false, Some(e.to_string())),
    };
    Ok(render(&DeadLettersPage {
        nav: Nav::of(&s, "dead-letters"),
        service: f.service.as_str(),
        reason: f.reason,
        event_id: f.event_id,
        since: f.since,
        until: f.until,
        letters,
        truncated,
        error,
    }))
}

#[derive(Template)]
#[template(path = "dead_letter.html")]
struct DeadLetterPage {
    nav: Nav,
    service: &'static str,
    letter: LetterRow,
    source_topic: String,
    key: String,
    headers: Vec<(String, String)>,
    payload: String,
    payload_bytes: usize,
}

#[derive(serde::Deserialize, Default)]
pub struct ServiceQuery {
    #[serde(default)]
    service: LetterService,
}

pub async fn dead_letter(
    State(c): St,
    headers: HeaderMap,
    Path((partition, offset)): Path<(i32, i64)>,
    Query(q): Query<ServiceQuery>,
) -> Page {
    let s = c.require(&headers, Role::Viewer)?;
    match c
        .backends
        .dead_letter::<Letter>(q.service, partition, offset)
        .await
    {
        Ok(l) => Ok(render(&DeadLetterPage {
            nav: Nav::of(&s, "dead-letters"),
            service: q.service.as_str(),
            letter: letter_row(&l.summary),
            source_topic: l.summary.source_topic.clone().unwrap_or_else(|| "—".into()),
            key: l.key.clone().unwrap_or_else(|| "—".into()),
            headers: l.headers.into_iter().collect(),
            payload: serde_json::to_string_pretty(&l.payload).unwrap_or_default(),
            payload_bytes: l.payload_bytes,
        })),
        Err(e) => Ok(message(
            &s,
            "dead-letters",
            "Dead letter",
            &e.to_string(),
            status_of(&e),
        )),
    }
}

struct PlannedRow {
    position: String,
    event_id: String,
    reason_code: String,
    target_topic: String,
    replay_count: u32,
    refused: String,
}

#[derive(Template)]
#[template(path = "replay.html")]
struct ReplayPage {
    nav: Nav,
    service: &'static str,
    dry_run: bool,
    matched: usize,
    replayed: usize,
    refused: usize,
    rows: Vec<PlannedRow>,
    positions: Vec<String>,
}

pub(super) fn positions(form: &Form) -> Vec<(i32, i64)> {
    form.all("letter")
        .iter()
        .filter_map(|p| {
            let (a, b) = p.split_once(':')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

pub async fn replay(State(c): St, headers: HeaderMap, body: Bytes) -> Page {
    let form = Form::parse(&body);
    let s = c.require_form(&headers, &form, Role::Operator)?;
    let chosen = positions(&form);
    if chosen.is_empty() {
        return Ok(message(
            &s,
            "dead-letters",
            "Replay",
            "Choose at least one letter to replay.",
            StatusCode::BAD_REQUEST,
        ));
    }
    let dry_run = form.get("confirm") != Some("yes");
    let Some(service) = LetterService::parse(form.get("service").unwrap_or("crm-sync")) else {
        return Ok(message(
            &s,
            "dead-letters",
            "Replay",
            "No such service.",
            StatusCode::BAD_REQUEST,
        ));
    };
    let letters: Vec<Value> = chosen
        .iter()
        .map(|(p, o)| json!({"partition": p, "offset": o}))
        .collect();
    let body = json!({"letters": letters, "dry_run": dry_run});
    let result = c.backends.replay::<ReplaySummary>(service, &body, &s.user).await;
    let target = format!(
        "{} {}",
        service.as_str(),
        chosen
            .iter()
            .map(|(p, o)| format!("{p}:{o}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let outcome = match &result {
        Ok(r) if r.dry_run => format!("dry run: {} matched", r.matched),
        Ok(r) => format!("{} replayed, {} refused", r.replayed, r.refused),
        Err(_) => outcome_of(&result),
    };
    record(&c, &s, "dead_letters.replay", target, outcome);
    match result {
        Ok(r) => Ok(render(&ReplayPage {
            nav: Nav::of(&s, "dead-letters"),
            service: service.as_str(),
            dry_run: r.dry_run,
            matched: r.matched,
            replayed: r.replayed,
            refused: r.refused,
            positions: r
                .letters
                .iter()
                .filter(|l| l.refused.is_none())
                .map(|l| format!("{}:{}", l.partition, l.offset))
                .collect(),
            rows: r
                .letters
                .into_iter()
                .map(|l| PlannedRow {
                    position: format!("{}:{}", l.partition, l.offset),
                    event_id: l.event_id.unwrap_or_else(|| "—".into()),
                    reason_code: l.reason_code.unwrap_or_else(|| "—".into()),
                    target_topic: l.target_topic,
                    replay_count: l.replay_count,
                    refused: l.refused.unwrap_or_default(),
                })
                .collect(),
        })),
        Err(e) => Ok(message(
            &s,
            "dead-letters",
            "Replay",
            &e.to_string(),
            status_of(&e),
        )),
    }
}
