//! The letters of `topics.dead_letters` for an operator, in the shapes of crm-sync's admin API
//! (one console page shows both): `GET /admin/v1/dead-letters` lists them (filtered),
//! `GET /admin/v1/dead-letters/{partition}/{offset}` shows one with its headers and its payload
//! masked, and `POST /admin/v1/dead-letters/replay` sends chosen ones back to the topic they came
//! from through the shared replay (`backbone_kafka::replay_letters`), or lists them (`dry_run`).
//!
//! A letter goes back only to `topics.orders`, `topics.payments` or `topics.uploads`; one naming
//! another topic, or none (an `activation_refused` or `sms_failed` letter, written by the service
//! itself), is refused with the reason. This service's letters carry the event id in their value
//! (the masked copy of an order or a payment keeps `event_id`), not in `x-event-id`: the list,
//! the `event_id` filter and the replay read it from there. Nothing shown carries a code: a key,
//! header, id or clear field that reads as one keeps only its last four characters.

use super::{limit, operator, utc};
use crate::config::Config;
use crate::http::{parse_body, ApiResult};
use crate::problem::{Problem, ProblemCode};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::Json;
use backbone_certificates::code::{mask_last4, visible_tail};
use backbone_kafka::{
    mask_payload, replay_letters, DeadLetterSource, DeadLetterView, KafkaError, PlannedReplay, ReplayFilter,
    ReplayOutcome, ReplayPolicy, ReplayRequest,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use utoipa::ToSchema;

/// Letters listed when no `limit` is given.
pub const DEFAULT_LIMIT: i64 = 50;
/// The most letters one call lists.
pub const MAX_LIMIT: i64 = 500;
/// The most letters one replay matches (and the most positions it names).
pub const MAX_REPLAY: usize = 1000;
/// The payload's fields shown as they are: identifiers, the status and version, the letter's
/// kind and the service's note on a withheld value. Codes, CVCs, phones, amounts, client ids and
/// every other value are masked.
pub const CLEAR_FIELDS: [&str; 8] = [
    "event_id",
    "order_id",
    "payment_id",
    "batch_id",
    "status",
    "version",
    "kind",
    "withheld",
];
/// Why a letter naming a topic this service does not consume is not replayed.
pub const REFUSAL: &str = "x-source-topic is not topics.orders, topics.payments or topics.uploads";

/// The dead-letter topic as the admin API reads it, and where its letters may go back to.
pub struct DeadLetterAdmin {
    pub source: DeadLetterSource,
    pub policy: ReplayPolicy,
}

impl DeadLetterAdmin {
    /// `topics.dead_letters`, read as `<topics.group_id>-dlq-reader` (never committing); letters
    /// go back to the orders, payments and uploads topics only.
    pub fn from_config(cfg: &Config) -> Self {
        let topics = &cfg.topics;
        Self {
            source: DeadLetterSource::new(
                cfg.kafka.client.clone(),
                format!("{}-dlq-reader", topics.group_id),
                topics.dead_letters.clone(),
            )
            .with_payload_event_ids(),
            policy: ReplayPolicy::new(
                vec![
                    topics.orders.clone(),
                    topics.payments.clone(),
                    topics.uploads.clone(),
                ],
                REFUSAL,
            ),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
pub struct DeadLettersQuery {
    event_id: Option<String>,
    reason: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLettersResponse {
    /// In topic order (partition by partition), without payloads.
    pub letters: Vec<DeadLetterSummary>,
    /// The list stopped at `limit`: there may be more.
    pub truncated: bool,
}

/// A letter in a list: where it is and why it is there.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterSummary {
    pub partition: i32,
    pub offset: i64,
    /// When it was dead-lettered (the record's timestamp).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub dead_lettered_at: Option<OffsetDateTime>,
    /// `x-event-id`, else the `event_id` its value keeps.
    pub event_id: Option<String>,
    /// `x-dlq-reason-code`.
    pub reason_code: Option<String>,
    /// `x-dlq-reason`.
    pub reason: Option<String>,
    /// `x-source-topic`; `null` for a letter the service wrote itself.
    pub source_topic: Option<String>,
    /// `x-replay-count`; 0 when absent.
    pub replay_count: u32,
}

/// One letter: its headers, key and masked payload.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterResponse {
    #[serde(flatten)]
    pub summary: DeadLetterSummary,
    pub headers: BTreeMap<String, String>,
    pub key: Option<String>,
    /// The value with only the identifiers, status, version, kind and a withheld note in clear;
    /// every other value masked (a string longer than 8 characters keeps its last 4 after `***`,
    /// any other value is `***`); `{"not_json": true}` for a value that is not JSON, `null` for
    /// none.
    #[schema(value_type = Object)]
    pub payload: Value,
    /// The value's size in bytes.
    pub payload_bytes: usize,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterReplayRequest {
    /// Only these letters (at most 1000); any when empty or absent.
    #[serde(default)]
    #[schema(max_items = 1000)]
    pub letters: Vec<LetterPosition>,
    #[serde(default)]
    pub event_id: Option<String>,
    /// A reason code (`x-dlq-reason-code`).
    #[serde(default)]
    pub reason: Option<String>,
    /// Dead-lettered at or after (RFC 3339).
    #[serde(default)]
    pub since: Option<String>,
    /// Dead-lettered before (RFC 3339).
    #[serde(default)]
    pub until: Option<String>,
    /// 1 to 1000; 1000 when absent.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Required: `true` lists what would be sent, `false` sends it.
    pub dry_run: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LetterPosition {
    pub partition: i32,
    pub offset: i64,
}

/// What a replay matched, sent and refused: the JSON of crm-sync's replay.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplaySummary {
    pub matched: usize,
    pub replayed: usize,
    /// Matched letters not sent because they name no topic or one not allowed.
    pub refused: usize,
    pub dry_run: bool,
    pub letters: Vec<ReplayedLetter>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayedLetter {
    pub partition: i32,
    pub offset: i64,
    pub event_id: Option<String>,
    pub reason_code: Option<String>,
    /// Where it goes (or would go); empty for a letter naming no topic.
    pub target_topic: String,
    /// The `x-replay-count` it is sent with.
    pub replay_count: u32,
    /// Why it is not sent, if it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// `text`, or only its last four characters after `****-****-****-` when it reads as a code.
fn without_codes(text: &str) -> String {
    if backbone_orders::contains_code(text) {
        mask_last4(visible_tail(text, 4))
    } else {
        text.to_owned()
    }
}

/// The payload masked (`CLEAR_FIELDS` in clear), then any clear text that reads as a code masked
/// too.
pub fn masked_payload(payload: Option<&[u8]>) -> Value {
    let mut shown = mask_payload(payload, &CLEAR_FIELDS);
    if let Value::Object(fields) = &mut shown {
        for value in fields.values_mut() {
            if let Value::String(s) = value {
                *s = without_codes(s);
            }
        }
    }
    shown
}

fn summary(admin: &DeadLetterAdmin, l: &DeadLetterView) -> DeadLetterSummary {
    let header = |name: &str| l.header(name).map(without_codes);
    DeadLetterSummary {
        partition: l.partition,
        offset: l.offset,
        dead_lettered_at: l.dead_lettered_at.map(utc),
        event_id: admin.source.event_id(l).as_deref().map(without_codes),
        reason_code: header(backbone_kafka::HEADER_REASON_CODE),
        reason: header(backbone_kafka::HEADER_REASON),
        source_topic: l.source_topic().map(str::to_owned),
        replay_count: l.replay_count(),
    }
}

fn replayed(p: PlannedReplay) -> ReplayedLetter {
    ReplayedLetter {
        partition: p.partition,
        offset: p.offset,
        event_id: p.event_id.as_deref().map(without_codes),
        reason_code: p.reason_code,
        target_topic: p.target_topic,
        replay_count: p.replay_count,
        refused: p.refused,
    }
}

impl From<ReplayOutcome> for ReplaySummary {
    fn from(o: ReplayOutcome) -> Self {
        Self {
            matched: o.matched,
            replayed: o.replayed,
            refused: o.refused,
            dry_run: o.dry_run,
            letters: o.letters.into_iter().map(replayed).collect(),
        }
    }
}

fn bad_request(detail: impl Into<String>) -> Problem {
    Problem::new(ProblemCode::BadRequest, Some(detail.into()))
}

/// An RFC 3339 time, when given and not empty; `400 bad-request` naming the field otherwise.
fn time_of(field: &str, raw: Option<&str>) -> Result<Option<OffsetDateTime>, Problem> {
    raw.filter(|s| !s.is_empty())
        .map(|s| {
            OffsetDateTime::parse(s, &Rfc3339)
                .map_err(|_| bad_request(format!("{field} must be an RFC 3339 time")))
        })
        .transpose()
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}

/// The letters a list or replay selects.
fn filter(
    event_id: Option<String>,
    reason: Option<String>,
    since: Option<&str>,
    until: Option<&str>,
    positions: Vec<(i32, i64)>,
) -> Result<ReplayFilter, Problem> {
    Ok(ReplayFilter {
        since: time_of("since", since)?,
        until: time_of("until", until)?,
        event_id: non_empty(event_id),
        reason_code: non_empty(reason),
        positions,
    })
}

/// The broker failed: logged with its cause, answered `503 unavailable`.
fn broker_unavailable(e: KafkaError) -> Problem {
    tracing::warn!(error = %e, "Kafka unavailable for the admin API's dead letters");
    Problem::new(ProblemCode::Unavailable, Some("Kafka".into()))
}

#[utoipa::path(get, path = "/admin/v1/dead-letters", tag = "admin",
    params(("event_id" = Option<String>, Query, description = "`x-event-id`, else the `event_id` the letter's value keeps"),
           ("reason" = Option<String>, Query, description = "A reason code (`x-dlq-reason-code`)"),
           ("since" = Option<String>, Query, description = "Dead-lettered at or after (RFC 3339)"),
           ("until" = Option<String>, Query, description = "Dead-lettered before (RFC 3339)"),
           ("limit" = Option<i64>, Query, description = "1 to 500; 50 when absent", minimum = 1, maximum = 500)),
    responses((status = 200, body = DeadLettersResponse),
              (status = 400, body = Problem, content_type = "application/problem+json", description = "`bad-request`: a time or `limit`"),
              (status = 401, body = Problem, content_type = "application/problem+json", description = "`unauthenticated`"),
              (status = 503, body = Problem, content_type = "application/problem+json", description = "`unavailable`: the broker does not answer")),
    security(("admin_bearer" = [])))]
pub async fn list(State(state): State<Arc<AppState>>, Query(q): Query<DeadLettersQuery>) -> ApiResult {
    let limit = usize::try_from(limit(q.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?).unwrap_or(1);
    let selected = filter(
        q.event_id,
        q.reason,
        q.since.as_deref(),
        q.until.as_deref(),
        Vec::new(),
    )?;
    let admin = &state.dead_letters;
    let letters = admin
        .source
        .read(selected, limit)
        .await
        .map_err(broker_unavailable)?;
    Ok(Json(DeadLettersResponse {
        truncated: letters.len() >= limit,
        letters: letters.iter().map(|l| summary(admin, l)).collect(),
    })
    .into_response())
}

#[utoipa::path(get, path = "/admin/v1/dead-letters/{partition}/{offset}", tag = "admin",
    params(("partition" = i32, Path, description = "The letter's partition of `topics.dead_letters`"),
           ("offset" = i64, Path, description = "The letter's offset in that partition")),
    responses((status = 200, body = DeadLetterResponse),
              (status = 400, body = Problem, content_type = "application/problem+json", description = "`bad-request`: partition and offset are whole numbers"),
              (status = 401, body = Problem, content_type = "application/problem+json", description = "`unauthenticated`"),
              (status = 404, body = Problem, content_type = "application/problem+json", description = "`dead-letter-not-found`"),
              (status = 503, body = Problem, content_type = "application/problem+json", description = "`unavailable`: the broker does not answer")),
    security(("admin_bearer" = [])))]
pub async fn letter(
    State(state): State<Arc<AppState>>,
    Path((partition, offset)): Path<(String, String)>,
) -> ApiResult {
    let (Ok(partition), Ok(offset)) = (partition.parse::<i32>(), offset.parse::<i64>()) else {
        return Err(bad_request("partition and offset are whole numbers"));
    };
    let at = ReplayFilter {
        positions: vec![(partition, offset)],
        ..ReplayFilter::default()
    };
    let admin = &state.dead_letters;
    let letter = admin
        .source
        .read(at, 1)
        .await
        .map_err(broker_unavailable)?
        .into_iter()
        .next()
        .ok_or_else(|| Problem::new(ProblemCode::DeadLetterNotFound, None))?;
    Ok(Json(DeadLetterResponse {
        summary: summary(admin, &letter),
        key: letter
            .key
            .as_deref()
            .map(|k| without_codes(&String::from_utf8_lossy(k))),
        payload: masked_payload(letter.payload.as_deref()),
        payload_bytes: letter.payload.as_ref().map_or(0, Vec::len),
        headers: letter
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), without_codes(v)))
            .collect(),
    })
    .into_response())
}

/// The request's selection, its limit checked: `400 bad-request` for a limit outside 1 to 1000
/// or more than 1000 positions.
fn replay_selection(req: DeadLetterReplayRequest) -> Result<(ReplayFilter, usize, bool), Problem> {
    let limit = req.limit.unwrap_or(MAX_REPLAY);
    if !(1..=MAX_REPLAY).contains(&limit) {
        return Err(bad_request("limit must be an integer in 1..=1000"));
    }
    if req.letters.len() > MAX_REPLAY {
        return Err(bad_request("letters: at most 1000"));
    }
    let positions = req.letters.iter().map(|p| (p.partition, p.offset)).collect();
    let selected = filter(
        req.event_id,
        req.reason,
        req.since.as_deref(),
        req.until.as_deref(),
        positions,
    )?;
    Ok((selected, limit, req.dry_run))
}

#[utoipa::path(post, path = "/admin/v1/dead-letters/replay", tag = "admin",
    params(("X-Operator" = String, Header, description = "The person replaying, sent with each record as `x-replayed-by`: 1 to 64 bytes of UTF-8, no control characters", min_length = 1, max_length = 64)),
    request_body = DeadLetterReplayRequest,
    responses((status = 200, body = ReplaySummary),
              (status = 400, body = Problem, content_type = "application/problem+json", description = "`bad-request`: X-Operator, the body, a time or `limit`"),
              (status = 401, body = Problem, content_type = "application/problem+json", description = "`unauthenticated`"),
              (status = 503, body = Problem, content_type = "application/problem+json", description = "`unavailable`: the broker does not answer")),
    security(("admin_bearer" = [])))]
pub async fn replay(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let by = operator(&headers)?;
    let (selected, limit, dry_run) = replay_selection(parse_body(&body)?)?;
    let admin = &state.dead_letters;
    let request = ReplayRequest {
        filter: selected,
        limit: Some(limit),
        dry_run,
        by: Some(&by),
    };
    let outcome = replay_letters(&admin.source, &admin.policy, request)
        .await
        .map_err(broker_unavailable)?;
    tracing::info!(
        operator = %by,
        dry_run = outcome.dry_run,
        matched = outcome.matched,
        replayed = outcome.replayed,
        refused = outcome.refused,
        "dead letters replayed from the admin API"
    );
    Ok(Json(ReplaySummary::from(outcome)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A valid code (its check character included).
    fn code() -> String {
        backbone_certificates::GiftCode::from_payload(b"ABCDEFGHJKLMNPQ")
            .map(|c| c.expose().to_owned())
            .unwrap_or_default()
    }

    #[test]
    fn a_letter_shows_its_identifiers_and_masks_codes_phones_and_amounts() {
        let letter = json!({
            "version": 1, "event_id": "order-event-1", "order_id": "o-1", "client_id": "client-000123",
            "currency": "RUB", "total_minor": 10_000, "recipient_phone": "**********67",
            "lines": [{"line_id": "1", "certificate_code": "****-****-****-9BNY", "amount_minor": 10_000}]
        });
        let shown = masked_payload(Some(letter.to_string().as_bytes()));
        assert_eq!(shown["version"], 1);
        assert_eq!(shown["event_id"], "order-event-1");
        assert_eq!(shown["order_id"], "o-1");
        assert_eq!(shown["client_id"], "***0123");
        assert_eq!(shown["currency"], "***");
        assert_eq!(shown["total_minor"], "***");
        assert_eq!(shown["recipient_phone"], "*****67");
        assert_eq!(shown["lines"][0]["certificate_code"], "***9BNY");
        assert_eq!(shown["lines"][0]["amount_minor"], "***");
        let sms = json!({"kind": "cvc_sms", "cvc": "1234", "payment_id": "p-1", "status": "failed"});
        let shown = masked_payload(Some(sms.to_string().as_bytes()));
        assert_eq!(
            (
                &shown["kind"],
                &shown["cvc"],
                &shown["payment_id"],
                &shown["status"]
            ),
            (&json!("cvc_sms"), &json!("***"), &json!("p-1"), &json!("failed"))
        );
    }

    #[test]
    fn a_clear_field_or_key_that_reads_as_a_code_keeps_its_last_four() {
        let code = code();
        let letter = json!({"order_id": code, "event_id": format!("ev {code}")});
        let shown = masked_payload(Some(letter.to_string().as_bytes()));
        assert!(!shown.to_string().contains(&code), "{shown}");
        assert_eq!(shown["order_id"], mask_last4(visible_tail(&code, 4)));
        assert_eq!(without_codes("o-12345"), "o-12345");
        assert_eq!(masked_payload(Some(b"not json")), json!({"not_json": true}));
    }

    #[test]
    fn a_replay_needs_dry_run_and_bounded_limits() {
        let parse = |v: Value| parse_body::<DeadLetterReplayRequest>(&Bytes::from(v.to_string()));
        assert!(parse(json!({})).is_err(), "dry_run is required");
        assert!(parse(json!({"dry_run": true, "extra": 1})).is_err());
        let (f, limit, dry_run) = replay_selection(
            parse(
                json!({"dry_run": true, "letters": [{"partition": 1, "offset": 7}], "event_id": " ",
                "reason": "invalid_field", "since": "2026-11-01T10:00:00Z"}),
            )
            .expect("a request"),
        )
        .expect("a selection");
        assert_eq!((limit, dry_run), (MAX_REPLAY, true));
        assert_eq!(f.positions, vec![(1, 7)]);
        assert_eq!(f.event_id, None, "blank is no filter");
        assert_eq!(f.reason_code.as_deref(), Some("invalid_field"));
        assert!(f.since.is_some());
        for bad in [
            json!({"dry_run": true, "limit": 0}),
            json!({"dry_run": true, "limit": 1001}),
            json!({"dry_run": true, "until": "yesterday"}),
        ] {
            let refused = replay_selection(parse(bad.clone()).expect("parses")).expect_err("refused");
            assert_eq!((refused.status, refused.code), (400, "bad-request"), "{bad}");
        }
    }

    #[test]
    fn a_broker_that_fails_is_unavailable() {
        let p = broker_unavailable(KafkaError::new("metadata timed out"));
        assert_eq!((p.status, p.code), (503, "unavailable"));
        assert_eq!(
            p.detail.as_deref(),
            Some("Kafka"),
            "the cause is logged, not answered"
        );
        let missing = Problem::new(ProblemCode::DeadLetterNotFound, None);
        assert_eq!((missing.status, missing.code), (404, "dead-letter-not-found"));
    }

    #[test]
    fn letters_go_back_only_to_the_topics_the_service_consumes() {
        let admin = DeadLetterAdmin::from_config(&Config::default());
        let view = |topic: Option<&str>| DeadLetterView {
            partition: 0,
            offset: 3,
            dead_lettered_at: None,
            key: None,
            payload: Some(br#"{"event_id": "order-event-3"}"#.to_vec()),
            headers: topic
                .map(|t| (backbone_kafka::HEADER_SOURCE_TOPIC.to_owned(), t.to_owned()))
                .into_iter()
                .collect(),
        };
        for topic in ["All_SalesOrder", "All_Payments", "GiftCertificateUpload"] {
            let planned = admin.policy.plan(&admin.source, &view(Some(topic)));
            assert_eq!(planned.refused, None, "{topic}");
            assert_eq!(planned.event_id.as_deref(), Some("order-event-3"));
        }
        let elsewhere = admin.policy.plan(&admin.source, &view(Some("tracking.events")));
        assert_eq!(elsewhere.refused.as_deref(), Some(REFUSAL));
        let own = admin.policy.plan(&admin.source, &view(None));
        assert_eq!(
            own.refused.as_deref(),
            Some(backbone_kafka::REFUSED_NO_SOURCE_TOPIC)
        );
        assert_eq!(own.target_topic, "");
    }
}
