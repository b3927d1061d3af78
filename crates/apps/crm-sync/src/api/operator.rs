//! `/v1/operator-tasks`: the conflicts a person decides (fields owned by `ask`), and their
//! resolution.

use super::problem::{Problem, ProblemCode};
use super::{parse_body, read_body, rfc3339, store_error, written, ApiResult, Shared, Write};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::Json;
use backbone_sync::clients::{Choice, OperatorTask, OperatorTaskState, Value};
use serde::{Deserialize, Deserializer, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

pub const DEFAULT_LIST_LIMIT: i64 = 100;
pub const MAX_LIST_LIMIT: i64 = 500;
pub const MAX_RESOLVER_BYTES: usize = 64;

#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum OperatorTaskStateName {
    Open,
    Resolved,
}

#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum ChoiceName {
    Ours,
    Theirs,
    Value,
}

/// A field's value: a string, a boolean (the consents) or `null` (nothing known).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[schema(as = FieldValue)]
#[allow(dead_code)]
pub enum FieldValueDoc {
    Text(String),
    Flag(bool),
}

/// A conflict waiting for (or decided by) a person.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperatorTaskResponse {
    pub id: i64,
    pub client_id: String,
    /// The card field (`segment`, `phone`, ...).
    pub field: String,
    /// Our value and its last change.
    #[schema(value_type = Option<FieldValueDoc>)]
    pub ours: serde_json::Value,
    #[schema(format = DateTime)]
    pub ours_at: Option<String>,
    #[schema(value_type = Option<super::clients::SourceName>)]
    pub ours_source: Option<&'static str>,
    /// The CRM's value and when the CRM's record changed.
    #[schema(value_type = Option<FieldValueDoc>)]
    pub theirs: serde_json::Value,
    #[schema(format = DateTime)]
    pub theirs_at: Option<String>,
    #[schema(value_type = super::clients::SourceName)]
    pub theirs_source: &'static str,
    pub reason: String,
    #[schema(value_type = OperatorTaskStateName)]
    pub state: &'static str,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// The value chosen, once resolved.
    #[schema(value_type = Option<FieldValueDoc>)]
    pub resolution: Option<serde_json::Value>,
    pub resolved_by: Option<String>,
    #[schema(format = DateTime)]
    pub resolved_at: Option<String>,
}

fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Empty => serde_json::Value::Null,
        Value::Flag(b) => serde_json::Value::Bool(*b),
        Value::Text(t) => serde_json::Value::String(t.clone()),
    }
}

fn render(t: &OperatorTask) -> OperatorTaskResponse {
    OperatorTaskResponse {
        id: t.id,
        client_id: t.client_id.to_string(),
        field: t.field.as_str().to_owned(),
        ours: value_json(&t.ours),
        ours_at: t.ours_at.map(rfc3339),
        ours_source: t.ours_source.map(|s| s.as_str()),
        theirs: value_json(&t.theirs),
        theirs_at: t.theirs_at.map(rfc3339),
        theirs_source: t.theirs_source.as_str(),
        reason: t.reason.clone(),
        state: match t.state {
            OperatorTaskState::Open => "open",
            OperatorTaskState::Resolved => "resolved",
        },
        created_at: rfc3339(t.created_at),
        resolution: t.resolution.as_ref().map(value_json),
        resolved_by: t.resolved_by.clone(),
        resolved_at: t.resolved_at.map(rfc3339),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OperatorTaskList {
    /// Oldest first.
    pub tasks: Vec<OperatorTaskResponse>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only tasks in this state; all when absent.
    #[param(value_type = Option<OperatorTaskStateName>)]
    pub state: Option<String>,
    /// At most this many (1 to 500, default 100).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
}

#[utoipa::path(get, path = "/v1/operator-tasks", operation_id = "listOperatorTasks", tag = "operator-tasks",
    params(ListQuery),
    responses((status = 200, body = OperatorTaskList),
              (status = "4XX", body = Problem, content_type = "application/problem+json"),
              (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn list(State(shared): State<Arc<Shared>>, Query(q): Query<ListQuery>) -> ApiResult {
    let state = match q.state.as_deref() {
        None => None,
        Some("open") => Some(OperatorTaskState::Open),
        Some("resolved") => Some(OperatorTaskState::Resolved),
        Some(_) => return Err(Problem::invalid("state", "must be open or resolved")),
    };
    let limit = match q.limit.as_deref() {
        None => DEFAULT_LIST_LIMIT,
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
            .ok_or_else(|| Problem::invalid("limit", "must be an integer in 1..=500"))?,
    };
    let tasks = shared
        .api
        .store
        .operator_tasks(state, limit)
        .await
        .map_err(store_error)?;
    Ok(Json(OperatorTaskList {
        tasks: tasks.iter().map(render).collect(),
    })
    .into_response())
}

/// An id that is not a positive integer names no task.
fn task_id(raw: &str) -> Result<i64, Problem> {
    raw.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| Problem::new(ProblemCode::OperatorTaskNotFound, None))
}

#[utoipa::path(get, path = "/v1/operator-tasks/{id}", operation_id = "getOperatorTask", tag = "operator-tasks",
    params(("id" = i64, Path, minimum = 1)),
    responses((status = 200, body = OperatorTaskResponse),
              (status = 404, body = Problem, content_type = "application/problem+json", description = "`operator-task-not-found`"),
              (status = "4XX", body = Problem, content_type = "application/problem+json"),
              (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn one(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> ApiResult {
    let id = task_id(&id)?;
    let task = shared
        .api
        .store
        .operator_task(id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| Problem::new(ProblemCode::OperatorTaskNotFound, None))?;
    Ok(Json(render(&task)).into_response())
}

/// A key that is present, even as `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// How the conflict is decided.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// `ours` keeps our value, `theirs` takes the CRM's, `value` sets `value`.
    #[schema(value_type = ChoiceName)]
    pub choice: String,
    /// With `value` only: the value to set (checked against the field); `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<FieldValueDoc>)]
    pub value: Option<serde_json::Value>,
    /// Who decided, for the audit: 1 to 64 bytes, no control characters.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*\S[^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub by: String,
}

fn choice(req: &ResolveRequest) -> Result<Choice, Problem> {
    match (req.choice.as_str(), &req.value) {
        ("ours", None) => Ok(Choice::Ours),
        ("theirs", None) => Ok(Choice::Theirs),
        ("ours" | "theirs", Some(_)) => Err(Problem::invalid("value", "is only given with choice value")),
        ("value", None) => Err(Problem::invalid("value", "is required with choice value")),
        ("value", Some(v)) => match v {
            serde_json::Value::Null => Ok(Choice::Value(Value::Empty)),
            serde_json::Value::Bool(b) => Ok(Choice::Value(Value::Flag(*b))),
            serde_json::Value::String(s) => Ok(Choice::Value(Value::Text(s.clone()))),
            _ => Err(Problem::invalid("value", "must be a string, a boolean or null")),
        },
        _ => Err(Problem::invalid("choice", "must be ours, theirs or value")),
    }
}

fn resolver(by: &str) -> Result<&str, Problem> {
    if by.trim().is_empty() || by.len() > MAX_RESOLVER_BYTES || by.chars().any(char::is_control) {
        return Err(Problem::invalid(
            "by",
            "must be 1 to 64 bytes with no control characters",
        ));
    }
    Ok(by)
}

#[utoipa::path(post, path = "/v1/operator-tasks/{id}/resolve", operation_id = "resolveOperatorTask", tag = "operator-tasks",
    params(("id" = i64, Path, minimum = 1),
           ("Idempotency-Key" = String, Header, description = "Unique per decision; retries reuse it. 1 to 255 printable ASCII characters", min_length = 1, max_length = 255, pattern = r"^[ -~]+$"),
           ("X-Request-Id" = Option<String>, Header, description = "Correlation id; generated when absent", min_length = 1, max_length = 128, pattern = r"^[A-Za-z0-9._:-]+$")),
    request_body = ResolveRequest,
    responses((status = 200, body = OperatorTaskResponse, description = "Resolved: our card takes the value and the CRM is sent it"),
              (status = 404, body = Problem, content_type = "application/problem+json", description = "`operator-task-not-found`"),
              (status = 409, body = Problem, content_type = "application/problem+json", description = "`operator-task-resolved`"),
              (status = 422, body = Problem, content_type = "application/problem+json", description = "`invalid-field`: e.g. a value that does not fit the field"),
              (status = "4XX", body = Problem, content_type = "application/problem+json"),
              (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn resolve(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    write: Write,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let body = read_body(&headers, body, shared.api.limits.max_body_bytes).await?;
    let req: ResolveRequest = parse_body(&body)?;
    let id = task_id(&id)?;
    let choice = choice(&req)?;
    let by = resolver(&req.by)?;
    let claim = write.claim(&body);
    let _in_flight = shared.begin(&claim)?;
    let result = shared
        .api
        .store
        .resolve(id, &choice, by, write.request_id.as_str(), Some(&claim))
        .await
        .map_err(|e| match e {
            // The store names the card field; the caller sent it as `value`.
            backbone_sync::clients::StoreError::InvalidValue(inv) => {
                let mut p = Problem::invalid("value", &inv.reason);
                p.detail = Some(format!("value: {} (field {})", inv.reason, inv.field));
                p
            }
            other => store_error(other),
        })?;
    written(result, |_| false, render)
}
