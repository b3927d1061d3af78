//! `/admin/v1/dead-letters`: the letters of `kafka.dead_letter_topic` (filtered), one letter
//! with its headers and its payload masked, and replay through the same code as
//! `crm-sync dlq replay` (a dry run lists, a confirmed run sends).

use super::{operator, unavailable, AdminState};
use crate::api::problem::{Problem, ProblemCode};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use backbone_kafka::{
    list_limit, select_letters, DeadLetterDetail, DeadLetterList, DeadLetterReplayRequest, DeadLetterSource,
    DeadLetterSummary, DeadLetterView, ReplayFilter, ReplaySummary, SelectionError,
};
use serde::Deserialize;
use std::sync::Arc;

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

/// A selection refused: `422 invalid-field` naming the field.
fn refused(e: SelectionError) -> Problem {
    match e {
        SelectionError::Time { field } => Problem::invalid(field, "must be an RFC 3339 time"),
        SelectionError::Limit { max } => Problem::invalid("limit", &format!("must be 1 to {max}")),
        SelectionError::TooManyLetters { max } => Problem::invalid("letters", &format!("at most {max}")),
    }
}

/// The letters of crm-sync's dead-letter topic that match (at most `limit`), read on a blocking
/// thread.
async fn read(
    source: &DeadLetterSource,
    filter: ReplayFilter,
    limit: usize,
) -> Result<Vec<DeadLetterView>, Problem> {
    source
        .read(filter, limit)
        .await
        .map_err(|e| unavailable("the broker")(e.into()))
}

/// The dead letters present now that match, in topic order, without their payloads.
#[utoipa::path(get, path = "/admin/v1/dead-letters", tag = "admin", params(Filter),
    security(("admin_bearer" = [])),
    responses((status = 200, body = DeadLetterList), (status = 401, body = Problem),
              (status = 422, body = Problem, description = "a time or `limit` out of range"),
              (status = 503, body = Problem, description = "the broker is unavailable")))]
pub async fn list(
    State(state): State<Arc<AdminState>>,
    Query(f): Query<Filter>,
) -> Result<Json<DeadLetterList>, Problem> {
    let limit = list_limit(f.limit).map_err(refused)?;
    let filter =
        select_letters(f.event_id, f.reason, f.since.as_deref(), f.until.as_deref()).map_err(refused)?;
    let source = crate::replay::source(&state.kafka);
    let letters = read(&source, filter, limit).await?;
    let summaries = letters
        .iter()
        .map(|l| DeadLetterSummary::new(l, source.event_id(l), str::to_owned))
        .collect();
    Ok(Json(DeadLetterList::new(summaries, limit)))
}

/// One letter with its headers and its payload masked.
#[utoipa::path(get, path = "/admin/v1/dead-letters/{partition}/{offset}", tag = "admin",
    params(("partition" = i32, Path), ("offset" = i64, Path)),
    security(("admin_bearer" = [])),
    responses((status = 200, body = DeadLetterDetail), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 404, body = Problem, description = "`dead-letter-not-found`"), (status = 503, body = Problem)))]
pub async fn one(
    State(state): State<Arc<AdminState>>,
    Path((partition, offset)): Path<(String, String)>,
) -> Result<Json<DeadLetterDetail>, Problem> {
    let (Ok(partition), Ok(offset)) = (partition.parse::<i32>(), offset.parse::<i64>()) else {
        return Err(Problem::bad_request("partition and offset are whole numbers"));
    };
    let filter = ReplayFilter {
        positions: vec![(partition, offset)],
        ..ReplayFilter::default()
    };
    let source = crate::replay::source(&state.kafka);
    let letter = read(&source, filter, 1)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Problem::new(ProblemCode::DeadLetterNotFound, None))?;
    Ok(Json(DeadLetterDetail::new(
        &letter,
        source.event_id(&letter),
        &CLEAR_FIELDS,
        str::to_owned,
    )))
}

/// Sends the matching letters back to their source topic (the same code as
/// `crm-sync dlq replay`), each with `x-replayed-by`; `dry_run: true` lists them only.
#[utoipa::path(post, path = "/admin/v1/dead-letters/replay", tag = "admin", request_body = DeadLetterReplayRequest,
    params(("X-Operator" = String, Header, description = "who replays: 1 to 64 bytes, no control characters")),
    security(("admin_bearer" = [])),
    responses((status = 200, body = ReplaySummary), (status = 400, body = Problem, description = "no X-Operator, or a body that is not a replay request"),
              (status = 401, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem)))]
pub async fn replay(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ReplaySummary>, Problem> {
    let by = operator(&headers)?;
    let req: DeadLetterReplayRequest = serde_json::from_slice(&body)
        .map_err(|e| Problem::bad_request(format!("the body is not a replay request: {e}")))?;
    let selected = req.selection().map_err(refused)?;
    let summary = crate::replay::replay_dead_letters_by(
        &state.kafka,
        selected.filter,
        Some(selected.limit),
        selected.dry_run,
        Some(&by),
    )
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
