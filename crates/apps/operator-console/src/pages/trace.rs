//! The trace of events: one timeline per event.

use super::*;

#[derive(serde::Deserialize, Default)]
pub struct TraceQuery {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
}

struct Step {
    at: String,
    what: String,
    tone: &'static str,
    detail: String,
}

struct Timeline {
    event_id: String,
    outcome: String,
    replay_count: u32,
    where_from: String,
    shipment_id: String,
    request_id: String,
    steps: Vec<Step>,
}

fn timeline(t: Trace) -> Timeline {
    let first = t.attempts.first();
    let where_from = first.and_then(|a| a.source.as_ref()).map_or_else(
        || "—".to_owned(),
        |s| format!("{} / partition {} / offset {}", s.topic, s.partition, s.offset),
    );
    let shipment_id = first
        .and_then(|a| a.shipment_id.clone())
        .unwrap_or_else(|| "—".into());
    let request_id = first
        .and_then(|a| a.correlation_id.clone())
        .unwrap_or_else(|| "—".into());
    let mut steps: Vec<Step> = Vec::new();
    let mut dead_before = false;
    for a in &t.attempts {
        if dead_before {
            steps.push(Step {
                at: when(&a.sent_at),
                what: "replayed from the dead letters".into(),
                tone: "info",
                detail: String::new(),
            });
        }
        let mut detail = Vec::new();
        if let Some(s) = a.http_status {
            detail.push(format!("CRM {s}"));
        }
        if let Some(e) = &a.error {
            detail.push(e.clone());
        }
        if let Some(x) = a.response_excerpt.as_ref().filter(|x| !x.is_empty()) {
            detail.push(format!("answer: {x}"));
        }
        if let Some(l) = a.latency_ms {
            detail.push(format!("{l:.0} ms"));
        }
        steps.push(Step {
            at: when(&a.sent_at),
            what: format!("attempt {}: {}", a.attempt, a.outcome.replace('_', " ")),
            tone: match a.outcome.as_str() {
                "success" | "unchanged" | "duplicate" | "stale" => "ok",
                "retry_scheduled" => "warn",
                _ => "bad",
            },
            detail: detail.join(" · "),
        });
        dead_before = a.outcome == "dead_lettered";
    }
    if let Some(r) = &t.retry {
        steps.push(Step {
            at: when(&r.next_attempt_at),
            what: format!("next attempt due (attempt {} failed)", r.attempts),
            tone: "warn",
            detail: r.last_error.clone(),
        });
    }
    Timeline {
        event_id: t.event_id,
        outcome: t.outcome.unwrap_or_else(|| "—".into()).replace('_', " "),
        replay_count: t.replay_count,
        where_from,
        shipment_id,
        request_id,
        steps,
    }
}

#[derive(Template)]
#[template(path = "trace.html")]
struct TracePage {
    nav: Nav,
    key: String,
    value: String,
    searched: bool,
    timelines: Vec<Timeline>,
    error: Option<String>,
}

const TRACE_KEYS: [&str; 4] = ["event_id", "shipment_id", "client_id", "request_id"];

pub async fn trace(State(c): St, headers: HeaderMap, Query(q): Query<TraceQuery>) -> Page {
    let s = c.require(&headers, Role::Viewer)?;
    let key = if TRACE_KEYS.contains(&q.key.as_str()) {
        q.key
    } else {
        "event_id".to_owned()
    };
    let value = q.value.trim().to_owned();
    let (timelines, error) = if value.is_empty() {
        (Vec::new(), None)
    } else {
        match c.backends.trace::<Found>(&key, &value).await {
            Ok(f) => (f.events.into_iter().map(timeline).collect(), None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        }
    };
    Ok(render(&TracePage {
        nav: Nav::of(&s, "trace"),
        searched: !value.is_empty(),
        key,
        value,
        timelines,
        error,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeline_marks_the_replay_after_a_dead_letter() {
        let attempt = |n: u32, outcome: &str| Attempt {
            attempt: n,
            outcome: outcome.into(),
            sent_at: "2026-11-01T10:00:00Z".into(),
            ..Attempt::default()
        };
        let t = timeline(Trace {
            event_id: "ev-1".into(),
            outcome: Some("success".into()),
            replay_count: 1,
            attempts: vec![
                attempt(1, "retry_scheduled"),
                attempt(2, "dead_lettered"),
                attempt(1, "success"),
            ],
            retry: None,
        });
        let what: Vec<&str> = t.steps.iter().map(|s| s.what.as_str()).collect();
        assert_eq!(
            what,
            [
                "attempt 1: retry scheduled",
                "attempt 2: dead lettered",
                "replayed from the dead letters",
                "attempt 1: success"
            ]
        );
        assert_eq!(t.steps[1].tone, "bad");
    }
}
