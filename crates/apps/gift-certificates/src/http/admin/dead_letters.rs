//! The letters of `topics.dead_letters` for an operator, in the shapes crm-sync's admin API
//! answers too (`backbone_kafka::DeadLetterList` and the rest: one console page shows both):
//! `GET /admin/v1/dead-letters` lists them (filtered),
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

use super::operator;
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
    list_limit, replay_letters, select_letters, shown_payload, DeadLetterDetail, DeadLetterList,
    DeadLetterReplayRequest, DeadLetterSource, DeadLetterSummary, DeadLetterView, KafkaError, ReplayFilter,
    ReplayPolicy, ReplayRequest, ReplaySummary, SelectionError,
};
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

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
    shown_payload(payload, &CLEAR_FIELDS, without_codes)
}

/// A selection refused: `400 bad-request` naming what is wrong.
fn refused(e: SelectionError) -> Problem {
    bad_request(match e {
        SelectionError::Time { field } => format!("{field} must be an RFC 3339 time"),
        SelectionError::Limit { max } => format!("limit must be an integer in 1..={max}"),
        SelectionError::TooManyLetters { max } => format!("letters: at most {max}"),
    })
}

fn bad_request(detail: impl Into<String>) -> Problem {
    Problem::new(ProblemCode::BadRequest, Some(detail.into()))
}

/// The broker failed: logged with its cause, answered `503 unavailable`.
fn broker_unavailable(e: KafkaError) -> Problem {
    tracing::warn!(error = %e, "Kafka unavailable for the admin API's dead letters");
    Problem::new(ProblemCode::Unavailable, Some("Kafka".into()))
}

/// A letter as a list shows it: named by its event id (`x-event-id`, else its value's), nothing
/// that reads as a code.
fn summary(admin: &DeadLetterAdmin, letter: &DeadLetterView) -> DeadLetterSummary {
    DeadLetterSummary::new(letter, admin.source.event_id(letter), without_codes)
}

#[utoipa::path(get, path = "/admin/v1/dead-letters", tag = "admin",
    params(("event_id" = Option<String>, Query, description = "`x-event-id`, else the `event_id` the letter's value keeps"),
           ("reason" = Option<String>, Query, description = "A reason code (`x-dlq-reason-code`)"),
           ("since" = Option<String>, Query, description = "Dead-lettered at or after (RFC 3339)"),
           ("until" = Option<String>, Query, description = "Dead-lettered before (RFC 3339)"),
           ("limit" = Option<i64>, Query, description = "1 to 500; 50 when absent", minimum = 1, maximum = 500)),
    responses((status = 200, body = DeadLetterList),
              (status = 400, body = Problem, content_type = "application/problem+json", description = "`bad-request`: a time or `limit`"),
              (status = 401, body = Problem, content_type = "application/problem+json", description = "`unauthenticated`"),
              (status = 503, body = Problem, content_type = "application/problem+json", description = "`unavailable`: the broker does not answer")),
    security(("admin_bearer" = [])))]
pub async fn list(State(state): State<Arc<AppState>>, Query(q): Query<DeadLettersQuery>) -> ApiResult {
    // A limit that is not a whole number is out of bounds, as 0 is.
    let limit = list_limit(q.limit.as_deref().map(|raw| raw.parse().unwrap_or(0))).map_err(refused)?;
    let selected =
        select_letters(q.event_id, q.reason, q.since.as_deref(), q.until.as_deref()).map_err(refused)?;
    let admin = &state.dead_letters;
    let letters = admin
        .source
        .read(selected, limit)
        .await
        .map_err(broker_unavailable)?;
    let summaries = letters.iter().map(|l| summary(admin, l)).collect();
    Ok(Json(DeadLetterList::new(summaries, limit)).into_response())
}

#[utoipa::path(get, path = "/admin/v1/dead-letters/{partition}/{offset}", tag = "admin",
    params(("partition" = i32, Path, description = "The letter's partition of `topics.dead_letters`"),
           ("offset" = i64, Path, description = "The letter's offset in that partition")),
    responses((status = 200, body = DeadLetterDetail),
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
    let event_id = admin.source.event_id(&letter);
    Ok(Json(DeadLetterDetail::new(
        &letter,
        event_id,
        &CLEAR_FIELDS,
        without_codes,
    ))
    .into_response())
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
    let selected = parse_body::<DeadLetterReplayRequest>(&body)?
        .selection()
        .map_err(refused)?;
    let admin = &state.dead_letters;
    let request = ReplayRequest {
        filter: selected.filter,
        limit: Some(selected.limit),
        dry_run: selected.dry_run,
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
    Ok(Json(ReplaySummary::new(outcome, without_codes)).into_response())
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
        let selected = parse(
            json!({"dry_run": true, "letters": [{"partition": 1, "offset": 7}], "event_id": " ",
            "reason": "invalid_field", "since": "2026-11-01T10:00:00Z"}),
        )
        .expect("a request")
        .selection()
        .expect("a selection");
        assert_eq!(
            (selected.limit, selected.dry_run),
            (backbone_kafka::MAX_REPLAYED_LETTERS, true)
        );
        let f = selected.filter;
        assert_eq!(f.positions, vec![(1, 7)]);
        assert_eq!(f.event_id, None, "blank is no filter");
        assert_eq!(f.reason_code.as_deref(), Some("invalid_field"));
        assert!(f.since.is_some());
        let many: Vec<Value> = (0..1001).map(|o| json!({"partition": 0, "offset": o})).collect();
        for (bad, detail) in [
            (
                json!({"dry_run": true, "limit": 0}),
                "limit must be an integer in 1..=1000",
            ),
            (
                json!({"dry_run": true, "limit": 1001}),
                "limit must be an integer in 1..=1000",
            ),
            (
                json!({"dry_run": true, "until": "yesterday"}),
                "until must be an RFC 3339 time",
            ),
            (json!({"dry_run": true, "letters": many}), "letters: at most 1000"),
        ] {
            let e = parse(bad.clone())
                .expect("parses")
                .selection()
                .expect_err("refused");
            let refused = refused(e);
            assert_eq!((refused.status, refused.code), (400, "bad-request"), "{bad}");
            assert_eq!(refused.detail.as_deref(), Some(detail));
        }
        let listed = refused(backbone_kafka::list_limit(Some(501)).expect_err("out of bounds"));
        assert_eq!(
            listed.detail.as_deref(),
            Some("limit must be an integer in 1..=500")
        );
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
