//! `/admin/v1/dead-letters`: the letters of `kafka.dead_letter_topic` (filtered), one letter
//! with its headers and its payload masked, and replay through the same code as
//! `crm-sync dlq replay` (a dry run lists, a confirmed run sends).

use super::{operator, unavailable, AdminState};
use crate::api::problem::{Problem, ProblemCode};
#[allow(unused_imports)] // in the OpenAPI attributes
use crate::ReplaySummary;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use backbone_kafka::{scan_dead_letters, DeadLetterView, ReplayFilter};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Letters listed per call at most.
pub const MAX_LIST: usize = 500;
/// Letters replayed per call at most.
pub const MAX_REPLAY: usize = 1000;
/// The payload's fields shown as they are; every other value is masked.
const CLEAR_FIELDS: [&str; 6] = [
    "event_id",
    "shipment_id",
    "status",
    "occurred_at",
    "version",
    "correlation_id",
];

#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Filter {
    event_id: Option<String>,
    reason: Option<String>,
    /// Dead-lettered at or after (RFC 3339).
    since: Option<String>,
    /// Dead-lettered before (RFC 3339).
    until: Option<String>,
    /// 1 to 500; 50 when absent.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
}

fn time_of(field: &str, v: Option<&str>) -> Result<Option<OffsetDateTime>, Problem> {
    v.filter(|s| !s.is_empty())
        .map(|s| {
            OffsetDateTime::parse(s, &Rfc3339)
                .map_err(|_| Problem::invalid(field, "must be an RFC 3339 time"))
        })
        .transpose()
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}

impl Filter {
    fn replay_filter(self, positions: Vec<(i32, i64)>) -> Result<ReplayFilter, Problem> {
        Ok(ReplayFilter {
            since: time_of("since", self.since.as_deref())?,
            until: time_of("until", self.until.as_deref())?,
            event_id: non_empty(self.event_id),
            reason_code: non_empty(self.reason),
            positions,
        })
    }
}

/// A letter in a list: where it is and why it is there, without its payload.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Summary {
    pub partition: i32,
    pub offset: i64,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub dead_lettered_at: Option<OffsetDateTime>,
    pub event_id: Option<String>,
    pub reason_code: Option<String>,
    pub reason: Option<String>,
    pub source_topic: Option<String>,
    pub replay_count: u32,
}

impl From<&DeadLetterView> for Summary {
    fn from(l: &DeadLetterView) -> Self {
        let header = |n: &str| l.header(n).map(str::to_owned);
        Self {
            partition: l.partition,
            offset: l.offset,
            dead_lettered_at: l.dead_lettered_at,
            event_id: header(backbone_kafka::HEADER_EVENT_ID),
            reason_code: header(backbone_kafka::HEADER_REASON_CODE),
            reason: header(backbone_kafka::HEADER_REASON),
            source_topic: l.source_topic().map(str::to_owned),
            replay_count: l.replay_count(),
        }
    }
}

/// One letter: its headers and its payload masked.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Letter {
    #[serde(flatten)]
    pub summary: Summary,
    pub headers: BTreeMap<String, String>,
    pub key: Option<String>,
    /// The payload with every field but the event's identifiers and status masked; a payload
    /// that is not a JSON document is described, never shown.
    #[schema(value_type = Object)]
    pub payload: Value,
    pub payload_bytes: usize,
}

/// The payload as an operator may see it (the same fields the service's logs name).
pub fn masked_payload(payload: Option<&[u8]>) -> Value {
    backbone_kafka::mask_payload(payload, &CLEAR_FIELDS)
}

/// Reads the matching letters (at most `limit`) on a blocking thread.
async fn read(
    state: &AdminState,
    filter: ReplayFilter,
    limit: usize,
) -> Result<Vec<DeadLetterView>, Problem> {
    let settings = state.kafka.client.clone();
    let group = format!("{}-dlq-reader", state.kafka.group());
    let topic = state.kafka.dead_letter_topic.clone();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        scan_dead_letters(&settings, &group, &topic, &filter, Some(limit), |v| {
            out.push(v);
            true
        })
        .map(|_| out)
    })
    .await
    .map_err(|e| unavailable("the broker")(e.into()))?
    .map_err(|e| unavailable("the broker")(e.into()))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Listed {
    pub letters: Vec<Summary>,
    /// The list stopped at `limit`: there may be more.
    pub truncated: bool,
}

/// The dead letters present now that match, in topic order, without their payloads.
#[utoipa::path(get, path = "/admin/v1/dead-letters", tag = "admin", params(Filter),
    security(("admin_bearer" = [])),
    responses((status = 200, body = Listed), (status = 401, body = Problem),
              (status = 422, body = Problem, description = "a time or `limit` out of range"),
              (status = 503, body = Problem, description = "the broker is unavailable")))]
pub async fn list(
    State(state): State<Arc<AdminState>>,
    Query(f): Query<Filter>,
) -> Result<Json<Listed>, Problem> {
    let limit = f.limit.unwrap_or(50);
    if !(1..=MAX_LIST).contains(&limit) {
        return Err(Problem::invalid("limit", "must be 1 to 500"));
    }
    let letters = read(&state, f.replay_filter(Vec::new())?, limit).await?;
    Ok(Json(Listed {
        truncated: letters.len() >= limit,
        letters: letters.iter().map(Summary::from).collect(),
    }))
}

/// One letter with its headers and its payload masked.
#[utoipa::path(get, path = "/admin/v1/dead-letters/{partition}/{offset}", tag = "admin",
    params(("partition" = i32, Path), ("offset" = i64, Path)),
    security(("admin_bearer" = [])),
    responses((status = 200, body = Letter), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 404, body = Problem, description = "`dead-letter-not-found`"), (status = 503, body = Problem)))]
pub async fn one(
    State(state): State<Arc<AdminState>>,
    Path((partition, offset)): Path<(String, String)>,
) -> Result<Json<Letter>, Problem> {
    let (Ok(partition), Ok(offset)) = (partition.parse::<i32>(), offset.parse::<i64>()) else {
        return Err(Problem::bad_request("partition and offset are whole numbers"));
    };
    let filter = ReplayFilter {
        positions: vec![(partition, offset)],
        ..ReplayFilter::default()
    };
    let letter = read(&state, filter, 1)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Problem::new(ProblemCode::DeadLetterNotFound, None))?;
    Ok(Json(Letter {
        summary: Summary::from(&letter),
        key: letter
            .key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        payload: masked_payload(letter.payload.as_deref()),
        payload_bytes: letter.payload.as_ref().map_or(0, Vec::len),
        headers: letter.headers,
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    #[serde(default)]
    event_id: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    until: Option<String>,
    /// Only these letters (at most 1000).
    #[serde(default)]
    #[schema(max_items = 1000)]
    letters: Vec<Position>,
    /// 1 to 1000; 1000 when absent.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Required: `true` lists what would be sent, `false` sends it.
    dry_run: bool,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Position {
    partition: i32,
    offset: i64,
}

/// Sends the matching letters back to their source topic (the same code as
/// `crm-sync dlq replay`), each with `x-replayed-by`; `dry_run: true` lists them only.
#[utoipa::path(post, path = "/admin/v1/dead-letters/replay", tag = "admin", request_body = ReplayRequest,
    params(("X-Operator" = String, Header, description = "who replays: 1 to 64 bytes, no control characters")),
    security(("admin_bearer" = [])),
    responses((status = 200, body = crate::ReplaySummary), (status = 400, body = Problem, description = "no X-Operator, or a body that is not a replay request"),
              (status = 401, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem)))]
pub async fn replay(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<crate::ReplaySummary>, Problem> {
    let by = operator(&headers)?;
    let req: ReplayRequest = serde_json::from_slice(&body)
        .map_err(|e| Problem::bad_request(format!("the body is not a replay request: {e}")))?;
    let limit = req.limit.unwrap_or(MAX_REPLAY);
    if !(1..=MAX_REPLAY).contains(&limit) {
        return Err(Problem::invalid("limit", "must be 1 to 1000"));
    }
    if req.letters.len() > MAX_REPLAY {
        return Err(Problem::invalid("letters", "at most 1000"));
    }
    let filter = Filter {
        event_id: req.event_id,
        reason: req.reason,
        since: req.since,
        until: req.until,
        limit: None,
    }
    .replay_filter(req.letters.iter().map(|p| (p.partition, p.offset)).collect())?;
    let summary =
        crate::replay::replay_dead_letters_by(&state.kafka, filter, Some(limit), req.dry_run, Some(&by))
            .await
            .map_err(unavailable("the broker"))?;
    tracing::info!(
        operator = %by,
        dry_run = summary.dry_run,
        matched = summary.matched,
        replayed = summary.replayed,
        refused = summary.refused,
        "dead letters replayed from the admin API"
    );
    Ok(Json(summary))
}
