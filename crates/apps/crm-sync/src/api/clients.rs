//! `/v1/clients/{client_id}`: the card (PUT the whole card, PATCH some fields, GET), its tasks
//! and its interaction history.

use super::problem::{Problem, ProblemCode};
use super::{parse_body, parse_time, read_body, rfc3339, store_error, written, ApiResult, Shared, Write};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::Json;
use backbone_sync::clients::{
    Card, CardChange, CardChanged, ClientId, Direction, EntityWritten, Field, Interaction,
    InteractionChannel, InteractionId, Source, StoredCard, Task, TaskId, TaskState, Value,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::ToSchema;

/// The card's fields. In a request every key is optional and `null` clears the field; in an
/// answer every key is present and `null` means nothing is known.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct CardFields {
    #[schema(
        max_length = 128,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*\S[^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub first_name: Option<String>,
    #[schema(
        max_length = 128,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*\S[^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub last_name: Option<String>,
    /// E.164.
    #[schema(
        pattern = r"^\+[0-9]{8,15}$",
        min_length = 9,
        max_length = 16,
        example = "+79991234567"
    )]
    pub phone: Option<String>,
    /// One address with one `@`.
    #[schema(
        max_length = 254,
        pattern = r"^[^@\s]+@[^@\s]+\.[^@\s]+$",
        example = "ada@example.com"
    )]
    pub email: Option<String>,
    /// The CRM user id of the client's manager.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\s\u0000-\u001f\u007f-\u009f]+$"
    )]
    pub manager: Option<String>,
    #[schema(
        max_length = 64,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*\S[^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub segment: Option<String>,
    pub consent_sms: Option<bool>,
    pub consent_email: Option<bool>,
}

impl CardFields {
    fn of(card: &Card) -> Self {
        let text = |f: Field| card.get(f).as_text().map(str::to_owned);
        Self {
            first_name: text(Field::FirstName),
            last_name: text(Field::LastName),
            phone: text(Field::Phone),
            email: text(Field::Email),
            manager: text(Field::Manager),
            segment: text(Field::Segment),
            consent_sms: card.get(Field::ConsentSms).as_flag(),
            consent_email: card.get(Field::ConsentEmail).as_flag(),
        }
    }
}

/// `PUT` (the whole card: a field left out becomes empty) and `PATCH` (only the fields given).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CardRequest {
    #[schema(value_type = CardFields)]
    pub fields: serde_json::Value,
}

/// When and by whom a field last changed.
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldTime {
    #[schema(format = DateTime)]
    pub at: String,
    #[schema(value_type = SourceName)]
    pub source: &'static str,
}

/// Who changed a field.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum SourceName {
    Api,
    AllClients,
    Crm,
    Operator,
}

/// A client card with its field times and sync state.
#[derive(Debug, Serialize, ToSchema)]
pub struct CardResponse {
    pub client_id: String,
    pub fields: CardFields,
    /// 1, 2, ...: bumped by every change.
    pub version: i64,
    /// Per field with a known value or change: its last change.
    pub field_times: BTreeMap<String, FieldTime>,
    /// The CRM's id of the contact, once synced.
    pub crm_id: Option<String>,
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// Writes only: the fields this change changed (empty: nothing was written).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed: Option<Vec<String>>,
}

fn render_card(card: &StoredCard, changed: Option<&[Field]>) -> CardResponse {
    CardResponse {
        client_id: card.client_id.to_string(),
        fields: CardFields::of(&card.card),
        version: card.version,
        field_times: card
            .stamps
            .iter()
            .map(|(f, s)| {
                (
                    f.as_str().to_owned(),
                    FieldTime {
                        at: rfc3339(s.at),
                        source: s.source.as_str(),
                    },
                )
            })
            .collect(),
        crm_id: card.crm_id.clone(),
        updated_at: rfc3339(card.updated_at),
        changed: changed.map(|c| c.iter().map(|f| f.as_str().to_owned()).collect()),
    }
}

fn client_id(raw: String) -> Result<ClientId, Problem> {
    ClientId::parse(raw).map_err(Problem::from)
}

/// Card fields as sent. A key that is not a card field is refused without repeating it.
fn card_fields(doc: &serde_json::Value) -> Result<BTreeMap<Field, Value>, Problem> {
    if let Some(obj) = doc.as_object() {
        if obj.keys().any(|k| Field::parse(k).is_none()) {
            return Err(Problem::invalid("fields", "holds a key that is not a card field"));
        }
    }
    Card::patch_from_json(doc).map_err(Problem::from)
}

async fn change_card(
    shared: &Shared,
    raw_id: String,
    write: Write,
    headers: &HeaderMap,
    body: Body,
    replace: bool,
) -> ApiResult {
    let body = read_body(headers, body, shared.api.limits.max_body_bytes).await?;
    let req: CardRequest = parse_body(&body)?;
    let client_id = client_id(raw_id)?;
    let fields = card_fields(&req.fields)?;
    let claim = write.claim(&body);
    let _in_flight = shared.begin(&claim)?;
    let change = CardChange {
        client_id,
        fields,
        replace,
        must_exist: !replace,
        source: Source::Api,
        at: time::OffsetDateTime::now_utc(),
        request_id: write.request_id.0.clone(),
    };
    let result = shared
        .api
        .store
        .change_card(&change, Some(&claim))
        .await
        .map_err(store_error)?;
    written(
        result,
        |c: &CardChanged| c.created,
        |c| render_card(&c.card, Some(&c.changed)),
    )
}

const CLIENT_ID_DOC: &str = "Our id of the client: 1 to 64 bytes, no whitespace or control characters";

#[utoipa::path(put, path = "/v1/clients/{client_id}", operation_id = "putClient", tag = "clients",
    params(("client_id" = String, Path, description = CLIENT_ID_DOC, min_length = 1, max_length = 64, pattern = r"^[^\s\u0000-\u001f\u007f-\u009f]+$"),
           ("Idempotency-Key" = String, Header, description = "Unique per change; retries reuse it. 1 to 255 printable ASCII characters", min_length = 1, max_length = 255, pattern = r"^[ -~]+$"),
           ("X-Request-Id" = Option<String>, Header, description = "Correlation id; generated when absent", min_length = 1, max_length = 128, pattern = r"^[A-Za-z0-9._:-]+$")),
    request_body = CardRequest,
    responses((status = 201, body = CardResponse, description = "Created"),
              (status = 200, body = CardResponse, description = "Changed, or unchanged (`changed` is empty)"),
              (status = "4XX", body = Problem, content_type = "application/problem+json"),
              (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn put_card(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    write: Write,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    change_card(&shared, id, write, &headers, body, true).await
}

#[utoipa::path(patch, path = "/v1/clients/{client_id}", operation_id = "patchClient", tag = "clients",
    params(("client_id" = String, Path, description = CLIENT_ID_DOC, min_length = 1, max_length = 64, pattern = r"^[^\s\u0000-\u001f\u007f-\u009f]+$"),
           ("Idempotency-Key" = String, Header, description = "Unique per change; retries reuse it. 1 to 255 printable ASCII characters", min_length = 1, max_length = 255, pattern = r"^[ -~]+$"),
           ("X-Request-Id" = Option<String>, Header, description = "Correlation id; generated when absent", min_length = 1, max_length = 128, pattern = r"^[A-Za-z0-9._:-]+$")),
    request_body = CardRequest,
    responses((status = 200, body = CardResponse, description = "Changed, or unchanged (`changed` is empty)"),
              (status = 404, body = Problem, content_type = "application/problem+json", description = "`client-not-found`"),
              (status = "4XX", body = Problem, content_type = "application/problem+json"),
              (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn patch_card(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    write: Write,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    change_card(&shared, id, write, &headers, body, false).await
}

#[utoipa::path(get, path = "/v1/clients/{client_id}", operation_id = "getClient", tag = "clients",
    params(("client_id" = String, Path, description = CLIENT_ID_DOC, min_length = 1, max_length = 64, pattern = r"^[^\s\u0000-\u001f\u007f-\u009f]+$")),
    responses((status = 200, body = CardResponse),
              (status = 404, body = Problem, content_type = "application/problem+json", description = "`client-not-found`"),
              (status = "4XX", body = Problem, content_type = "application/problem+json"),
              (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn get_card(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> ApiResult {
    // An id that cannot exist names no client.
    let not_found = || Problem::new(ProblemCode::ClientNotFound, None);
    let client = ClientId::parse(id).map_err(|_| not_found())?;
    let card = shared
        .api
        .store
        .card(&client)
        .await
        .map_err(store_error)?
        .ok_or_else(not_found)?;
    Ok(Json(render_card(&card, None)).into_response())
}

// ---------------------------------------------------------------------------------------------
// Tasks

/// The task's states.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum TaskStateName {
    Open,
    Done,
    Cancelled,
}

/// The whole task.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*\S[^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub title: String,
    #[serde(default)]
    #[schema(format = DateTime, example = "2026-12-02T10:00:00Z")]
    pub due_at: Option<String>,
    /// `open` when absent.
    #[serde(default)]
    #[schema(value_type = Option<TaskStateName>)]
    pub state: Option<String>,
    /// The CRM user id the task is assigned to.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\s\u0000-\u001f\u007f-\u009f]+$"
    )]
    pub assignee: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskResponse {
    pub task_id: String,
    pub client_id: String,
    pub title: String,
    #[schema(format = DateTime)]
    pub due_at: Option<String>,
    #[schema(value_type = TaskStateName)]
    pub state: &'static str,
    pub assignee: Option<String>,
    /// Whether this write changed the task.
    pub changed: bool,
}

fn task_state(raw: Option<&str>) -> Result<TaskState, Problem> {
    match raw {
        None | Some("open") => Ok(TaskState::Open),
        Some("done") => Ok(TaskState::Done),
        Some("cancelled") => Ok(TaskState::Cancelled),
        Some(_) => Err(Problem::invalid("state", "must be open, done or cancelled")),
    }
}

fn task_state_name(s: TaskState) -> &'static str {
    match s {
        TaskState::Open => "open",
        TaskState::Done => "done",
        TaskState::Cancelled => "cancelled",
    }
}

fn render_task(w: &EntityWritten<Task>) -> TaskResponse {
    let t = &w.entity;
    TaskResponse {
        task_id: t.task_id.to_string(),
        client_id: t.client_id.to_string(),
        title: t.title.clone(),
        due_at: t.due_at.map(rfc3339),
        state: task_state_name(t.state),
        assignee: t.assignee.clone(),
        changed: w.changed,
    }
}

#[utoipa::path(put, path = "/v1/clients/{client_id}/tasks/{task_id}", operation_id = "putTask", tag = "clients",
    params(("client_id" = String, Path, description = CLIENT_ID_DOC, min_length = 1, max_length = 64, pattern = r"^[^\s\u0000-\u001f\u007f-\u009f]+$"),
           ("task_id" = String, Path, description = "Our id of the task: 1 to 64 bytes, no whitespace or control characters", min_length = 1, max_length = 64, pattern = r"^[^\s\u0000-\u001f\u007f-\u009f]+$"),
           ("Idempotency-Key" = String, Header, description = "Unique per change; retries reuse it. 1 to 255 printable ASCII characters", min_length = 1, max_length = 255, pattern = r"^[ -~]+$"),
           ("X-Request-Id" = Option<String>, Header, description = "Correlation id; generated when absent", min_length = 1, max_length = 128, pattern = r"^[A-Za-z0-9._:-]+$")),
    request_body = TaskRequest,
    responses((status = 201, body = TaskResponse, description = "Created"),
              (status = 200, body = TaskResponse, description = "Updated or unchanged"),
              (status = 409, body = Problem, content_type = "application/problem+json", description = "`task-of-another-client`"),
              (status = "4XX", body = Problem, content_type = "application/problem+json"),
              (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn put_task(
    State(shared): State<Arc<Shared>>,
    Path((client, task)): Path<(String, String)>,
    write: Write,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let body = read_body(&headers, body, shared.api.limits.max_body_bytes).await?;
    let req: TaskRequest = parse_body(&body)?;
    let task = Task {
        task_id: TaskId::parse(task)?,
        client_id: client_id(client)?,
        title: req.title,
        due_at: req
            .due_at
            .as_deref()
            .map(|t| parse_time("due_at", t))
            .transpose()?,
        state: task_state(req.state.as_deref())?,
        assignee: req.assignee,
    };
    task.check()?;
    let claim = write.claim(&body);
    let _in_flight = shared.begin(&claim)?;
    let result = shared
        .api
        .store
        .put_task(&task, write.request_id.as_str(), Some(&claim))
        .await
        .map_err(store_error)?;
    written(result, |w: &EntityWritten<Task>| w.created, render_task)
}

// ---------------------------------------------------------------------------------------------
// Interactions

#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum ChannelName {
    Call,
    Email,
    Sms,
    Chat,
    Visit,
    Other,
}

#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum DirectionName {
    Inbound,
    Outbound,
}

/// One entry of the client's history. Append-only: the same id again must carry the same body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InteractionRequest {
    #[schema(value_type = ChannelName)]
    pub channel: String,
    #[schema(value_type = DirectionName)]
    pub direction: String,
    /// Line feeds and tabs allowed.
    #[schema(min_length = 1, max_length = 4000)]
    pub text: String,
    #[schema(format = DateTime, example = "2026-12-02T10:00:00Z")]
    pub at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InteractionResponse {
    pub interaction_id: String,
    pub client_id: String,
    #[schema(value_type = ChannelName)]
    pub channel: InteractionChannel,
    #[schema(value_type = DirectionName)]
    pub direction: Direction,
    pub text: String,
    #[schema(format = DateTime)]
    pub at: String,
}

fn channel(raw: &str) -> Result<InteractionChannel, Problem> {
    serde_json::from_value(serde_json::Value::String(raw.to_owned()))
        .map_err(|_| Problem::invalid("channel", "must be call, email, sms, chat, visit or other"))
}

fn direction(raw: &str) -> Result<Direction, Problem> {
    serde_json::from_value(serde_json::Value::String(raw.to_owned()))
        .map_err(|_| Problem::invalid("direction", "must be inbound or outbound"))
}

#[utoipa::path(put, path = "/v1/clients/{client_id}/interactions/{interaction_id}", operation_id = "putInteraction", tag = "clients",
    params(("client_id" = String, Path, description = CLIENT_ID_DOC, min_length = 1, max_length = 64, pattern = r"^[^\s\u0000-\u001f\u007f-\u009f]+$"),
           ("interaction_id" = String, Path, description = "Our id of the entry: 1 to 64 bytes, no whitespace or control characters", min_length = 1, max_length = 64, pattern = r"^[^\s\u0000-\u001f\u007f-\u009f]+$"),
           ("Idempotency-Key" = String, Header, description = "Unique per change; retries reuse it. 1 to 255 printable ASCII characters", min_length = 1, max_length = 255, pattern = r"^[ -~]+$"),
           ("X-Request-Id" = Option<String>, Header, description = "Correlation id; generated when absent", min_length = 1, max_length = 128, pattern = r"^[A-Za-z0-9._:-]+$")),
    request_body = InteractionRequest,
    responses((status = 201, body = InteractionResponse, description = "Added"),
              (status = 200, body = InteractionResponse, description = "Already there with this content"),
              (status = 409, body = Problem, content_type = "application/problem+json", description = "`interaction-exists`: already there with other content"),
              (status = "4XX", body = Problem, content_type = "application/problem+json"),
              (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn put_interaction(
    State(shared): State<Arc<Shared>>,
    Path((client, interaction)): Path<(String, String)>,
    write: Write,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let body = read_body(&headers, body, shared.api.limits.max_body_bytes).await?;
    let req: InteractionRequest = parse_body(&body)?;
    let interaction = Interaction {
        interaction_id: InteractionId::parse(interaction)?,
        client_id: client_id(client)?,
        channel: channel(&req.channel)?,
        direction: direction(&req.direction)?,
        text: req.text,
        at: parse_time("at", &req.at)?,
    };
    interaction.check()?;
    let claim = write.claim(&body);
    let _in_flight = shared.begin(&claim)?;
    let result = shared
        .api
        .store
        .put_interaction(&interaction, write.request_id.as_str(), Some(&claim))
        .await
        .map_err(store_error)?;
    written(
        result,
        |w: &EntityWritten<Interaction>| w.created,
        |w| {
            let i = &w.entity;
            InteractionResponse {
                interaction_id: i.interaction_id.to_string(),
                client_id: i.client_id.to_string(),
                channel: i.channel,
                direction: i.direction,
                text: i.text.clone(),
                at: rfc3339(i.at),
            }
        },
    )
}
