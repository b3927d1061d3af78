//! The generic CRM API's contacts, tasks and interactions (`docs/openapi/crm-generic-v1.yaml`):
//! the same bearer token, signature, nonce and fault checks as the shipment paths.
//!
//! - `PUT /api/v1/contacts|tasks|interactions/{externalId}` creates (`201`) or updates (`200`)
//!   by our external id and answers the record. Every key is optional on an update; `null`
//!   clears a field, an absent key leaves it. A task needs `contactId` and `title` when created,
//!   an interaction all of its keys. Unknown keys and wrong types are `422 validation_failed`.
//! - `GET /api/v1/contacts|tasks|interactions/{externalId}` and
//!   `GET /api/v1/contacts|tasks/by-id/{id}`: `200` or `404 not_found`.
//! - Contact ids are `ct-<n>`, task ids `tk-<n>`, interaction ids `in-<n>`.

// A refusal is the response to send, built where it is found.
#![allow(clippy::result_large_err)]

use crate::generic::problem;
use crate::people::{
    parse_rfc3339, request_id, rfc3339_ms, Contact, ContactPatch, Note, Task, TaskPatch, TaskState, Writer,
    MAX_FIELD_BYTES,
};
use crate::{Dialect, Sim};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{json, Map, Value};

const D: Dialect = Dialect::Generic;
/// The longest external id: our ids are at most 64 bytes.
const MAX_EXTERNAL_ID: usize = 64;
const MAX_INTERACTION_TEXT: usize = 4000;
const CHANNELS: [&str; 6] = ["call", "email", "sms", "chat", "visit", "other"];
const DIRECTIONS: [&str; 2] = ["inbound", "outbound"];

pub(crate) fn routes() -> Router<Sim> {
    Router::new()
        .route(
            "/api/v1/contacts/{external_id}",
            get(get_contact).put(put_contact),
        )
        .route("/api/v1/contacts/by-id/{id}", get(get_contact_by_id))
        .route("/api/v1/tasks/{external_id}", get(get_task).put(put_task))
        .route("/api/v1/tasks/by-id/{id}", get(get_task_by_id))
        .route(
            "/api/v1/interactions/{external_id}",
            get(get_interaction).put(put_interaction),
        )
}

fn invalid(detail: &str) -> Response {
    problem(
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        detail,
        None,
    )
}

fn not_found(what: &str) -> Response {
    problem(StatusCode::NOT_FOUND, "not_found", what, None)
}

fn contact_json(c: &Contact) -> Value {
    let f = &c.fields;
    json!({"id": c.crm_id, "externalId": c.external_id, "firstName": f.first_name,
        "lastName": f.last_name, "phone": f.phone, "email": f.email, "manager": f.manager,
        "segment": f.segment, "consentSms": f.consent_sms, "consentEmail": f.consent_email,
        "updatedAt": rfc3339_ms(c.meta.updated_at)})
}

fn task_json(t: &Task) -> Value {
    json!({"id": t.crm_id, "externalId": t.external_id, "contactId": t.contact, "title": t.title,
        "dueAt": t.due_at.map(rfc3339_ms), "state": t.state.as_str(), "assignee": t.assignee,
        "updatedAt": rfc3339_ms(t.meta.updated_at)})
}

fn interaction_json(n: &Note) -> Value {
    let get = |k: &str| n.extra.get(k).cloned().unwrap_or(Value::Null);
    json!({"id": n.crm_id, "externalId": n.external_id, "contactId": n.contact,
        "channel": get("channel"), "direction": get("direction"), "text": n.text, "at": get("at"),
        "createdAt": rfc3339_ms(n.meta.created_at)})
}

/// The checks every call makes, then the external id's bounds and the body as a JSON object.
async fn admit_write(
    sim: &Sim,
    ext: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Map<String, Value>, Response> {
    sim.admit(method, uri, headers, body).await?;
    let ok = (1..=MAX_EXTERNAL_ID).contains(&ext.len())
        && !ext.chars().any(|c| c.is_control() || c.is_whitespace());
    if !ok {
        return Err(invalid("externalId must be 1 to 64 bytes without whitespace"));
    }
    let body: Map<String, Value> = serde_json::from_slice(body).map_err(|_| {
        problem(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the body must be a JSON object",
            None,
        )
    })?;
    if body.get("externalId").is_some_and(|e| e.as_str() != Some(ext)) {
        return Err(invalid("externalId differs from the path"));
    }
    Ok(body)
}

fn text(key: &str, v: &Value, max: usize) -> Result<Option<String>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.len() <= max => Ok(Some(s.clone())),
        Value::String(_) => Err(format!("{key} is longer than {max} bytes")),
        _ => Err(format!("{key} must be a string or null")),
    }
}

fn flag(key: &str, v: &Value) -> Result<Option<bool>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        _ => Err(format!("{key} must be true, false or null")),
    }
}

fn time_of(key: &str, v: &Value) -> Result<Option<String>, String> {
    match text(key, v, 64)? {
        None => Ok(None),
        Some(s) => parse_rfc3339(&s)
            .map(|_| Some(s))
            .ok_or_else(|| format!("{key} must be an RFC 3339 date-time")),
    }
}

fn contact_patch(body: &Map<String, Value>) -> Result<ContactPatch, String> {
    let mut p = ContactPatch::default();
    for (k, v) in body {
        let t = || text(k, v, MAX_FIELD_BYTES);
        match k.as_str() {
            "externalId" => {}
            "firstName" => p.first_name = Some(t()?),
            "lastName" => p.last_name = Some(t()?),
            "phone" => p.phone = Some(t()?),
            "email" => p.email = Some(t()?),
            "manager" => p.manager = Some(t()?),
            "segment" => p.segment = Some(t()?),
            "consentSms" => p.consent_sms = Some(flag(k, v)?),
            "consentEmail" => p.consent_email = Some(flag(k, v)?),
            _ => return Err("the body has a key that is not part of a contact".into()),
        }
    }
    Ok(p)
}

async fn put_contact(
    State(sim): State<Sim>,
    Path(ext): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = match admit_write(&sim, &ext, &method, &uri, &headers, &body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut patch = match contact_patch(&body) {
        Ok(p) => p,
        Err(e) => return invalid(&e),
    };
    let writer = Writer::Api(request_id(&headers));
    let (status, change, view) = {
        let mut stores = sim.people();
        let people = stores.of(D);
        let existing = people.contact_by_external(&ext).map(|c| c.crm_id.clone());
        let (status, change) = match existing {
            Some(id) => match people.update_contact(&id, patch, &writer) {
                Some(c) => (StatusCode::OK, c),
                None => return not_found("unknown contact"),
            },
            None => {
                patch.external_id = Some(Some(ext));
                (StatusCode::CREATED, people.create_contact(patch, &writer))
            }
        };
        let view = people.contacts.get(&change.crm_id).map(contact_json);
        (status, change, view)
    };
    sim.announce(D, [change]);
    (status, Json(view)).into_response()
}

async fn get_contact(
    State(sim): State<Sim>,
    Path(ext): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = sim.admit(&method, &uri, &headers, b"").await {
        return r;
    }
    match sim.people().of(D).contact_by_external(&ext).map(contact_json) {
        Some(v) => Json(v).into_response(),
        None => not_found("unknown contact"),
    }
}

async fn get_contact_by_id(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = sim.admit(&method, &uri, &headers, b"").await {
        return r;
    }
    match sim.people().of(D).contacts.get(&id).map(contact_json) {
        Some(v) => Json(v).into_response(),
        None => not_found("unknown contact"),
    }
}

fn task_patch(body: &Map<String, Value>, creating: bool) -> Result<TaskPatch, String> {
    let mut p = TaskPatch::default();
    for (k, v) in body {
        match k.as_str() {
            "externalId" => {}
            "contactId" => match v.as_str() {
                Some(c) if !c.is_empty() && c.len() <= MAX_EXTERNAL_ID => {
                    p.contact = Some(Some(c.to_owned()))
                }
                _ => return Err("contactId must be a contact id".into()),
            },
            "title" => p.title = Some(text(k, v, 255)?),
            "dueAt" => {
                p.due_at = Some(time_of(k, v)?.and_then(|s| parse_rfc3339(&s)));
            }
            "state" => {
                p.state = Some(
                    v.as_str()
                        .and_then(TaskState::parse)
                        .ok_or("state must be open, done or cancelled")?,
                )
            }
            "assignee" => p.assignee = Some(text(k, v, MAX_EXTERNAL_ID)?),
            _ => return Err("the body has a key that is not part of a task".into()),
        }
    }
    if creating && p.contact.is_none() {
        return Err("contactId is required".into());
    }
    let titled = matches!(&p.title, Some(Some(t)) if !t.is_empty());
    if creating && !titled {
        return Err("title is required".into());
    }
    Ok(p)
}

async fn put_task(
    State(sim): State<Sim>,
    Path(ext): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = match admit_write(&sim, &ext, &method, &uri, &headers, &body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let writer = Writer::Api(request_id(&headers));
    let (status, change, view) = {
        let mut stores = sim.people();
        let people = stores.of(D);
        let existing = people.tasks.find(&ext).first().map(|t| t.crm_id.clone());
        let mut patch = match task_patch(&body, existing.is_none()) {
            Ok(p) => p,
            Err(e) => return invalid(&e),
        };
        if let Some(Some(c)) = &patch.contact {
            if people.contacts.get(c).is_none() {
                return invalid("contactId names no contact");
            }
        }
        let (status, change) = match existing {
            Some(id) => match people.update_task(&id, patch, &writer) {
                Some(c) => (StatusCode::OK, c),
                None => return not_found("unknown task"),
            },
            None => {
                patch.external_id = Some(Some(ext));
                (StatusCode::CREATED, people.create_task(patch, &writer))
            }
        };
        let view = people.tasks.get(&change.crm_id).map(task_json);
        (status, change, view)
    };
    sim.announce(D, [change]);
    (status, Json(view)).into_response()
}

async fn get_task(
    State(sim): State<Sim>,
    Path(ext): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = sim.admit(&method, &uri, &headers, b"").await {
        return r;
    }
    match sim.people().of(D).tasks.find(&ext).first().map(|t| task_json(t)) {
        Some(v) => Json(v).into_response(),
        None => not_found("unknown task"),
    }
}

async fn get_task_by_id(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = sim.admit(&method, &uri, &headers, b"").await {
        return r;
    }
    match sim.people().of(D).tasks.get(&id).map(task_json) {
        Some(v) => Json(v).into_response(),
        None => not_found("unknown task"),
    }
}

/// An interaction's contact, text and other fields.
type InteractionFields = (Option<String>, String, Map<String, Value>);

/// An interaction's fields from a body; on creation every key is required.
fn interaction_fields(
    body: &Map<String, Value>,
    existing: Option<&Note>,
) -> Result<InteractionFields, String> {
    let mut extra = Map::new();
    let mut contact = existing.and_then(|n| n.contact.clone());
    let mut body_text = existing.map(|n| n.text.clone());
    for (k, v) in body {
        match k.as_str() {
            "externalId" => {}
            "contactId" => match v.as_str() {
                Some(c) if !c.is_empty() && c.len() <= MAX_EXTERNAL_ID => contact = Some(c.to_owned()),
                _ => return Err("contactId must be a contact id".into()),
            },
            "channel" | "direction" => {
                let allowed: &[&str] = if k == "channel" { &CHANNELS } else { &DIRECTIONS };
                match v.as_str().filter(|s| allowed.contains(s)) {
                    Some(s) => extra.insert(k.clone(), Value::from(s)),
                    None => return Err(format!("{k} is not one of the allowed values")),
                };
            }
            "text" => match text(k, v, MAX_INTERACTION_TEXT)? {
                Some(t) if !t.trim().is_empty() => body_text = Some(t),
                _ => return Err("text must not be blank".into()),
            },
            "at" => match time_of(k, v)? {
                Some(at) => {
                    extra.insert("at".into(), Value::from(at));
                }
                None => return Err("at must be an RFC 3339 date-time".into()),
            },
            _ => return Err("the body has a key that is not part of an interaction".into()),
        }
    }
    if existing.is_none() {
        for k in ["channel", "direction", "at"] {
            if !extra.contains_key(k) {
                return Err(format!("{k} is required"));
            }
        }
    }
    let Some(contact) = contact else {
        return Err("contactId is required".into());
    };
    let Some(body_text) = body_text else {
        return Err("text is required".into());
    };
    Ok((Some(contact), body_text, extra))
}

async fn put_interaction(
    State(sim): State<Sim>,
    Path(ext): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = match admit_write(&sim, &ext, &method, &uri, &headers, &body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let writer = Writer::Api(request_id(&headers));
    let mut stores = sim.people();
    let people = stores.of(D);
    let existing = people.notes.find(&ext).first().map(|n| (*n).clone());
    let (contact, note_text, extra) = match interaction_fields(&body, existing.as_ref()) {
        Ok(f) => f,
        Err(e) => return invalid(&e),
    };
    if contact.as_ref().is_some_and(|c| people.contacts.get(c).is_none()) {
        return invalid("contactId names no contact");
    }
    let existing_id = existing.as_ref().map(|n| n.crm_id.as_str());
    let (id, created) = people.put_note(existing_id, Some(ext), contact, note_text, extra, &writer);
    let view = people.notes.get(&id).map(interaction_json);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, Json(view)).into_response()
}

async fn get_interaction(
    State(sim): State<Sim>,
    Path(ext): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = sim.admit(&method, &uri, &headers, b"").await {
        return r;
    }
    match sim
        .people()
        .of(D)
        .notes
        .find(&ext)
        .first()
        .map(|n| interaction_json(n))
    {
        Some(v) => Json(v).into_response(),
        None => not_found("unknown interaction"),
    }
}
