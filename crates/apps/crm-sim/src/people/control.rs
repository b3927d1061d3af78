//! `/sim/{dialect}/contacts|tasks|notes` and `/sim/webhooks/...`: the contacts, tasks and notes
//! of a dialect in our field names, edits "by a CRM user" (each announced by a webhook), repeated
//! deliveries for duplicate tests, and the webhook targets and their counters.

// A refusal is the response to send, built where it is found.
#![allow(clippy::result_large_err)]

use super::{
    rfc3339_ms, Contact, ContactPatch, Entity, Note, Task, TaskPatch, TaskState, Writer, MAX_FIELD_BYTES,
};
use crate::generic::problem;
use crate::webhooks::{current, WebhookTarget, MAX_NOTIFY_TIMES};
use crate::{Dialect, Sim};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// The Salesforce user the API runs as, owner of what it creates without an `OwnerId`.
pub(crate) const SALESFORCE_API_USER: &str = "005SIM000000001AAA";
/// The Kommo user the API runs as, responsible for what it creates without one.
pub(crate) const KOMMO_API_USER: &str = "1";

pub(crate) fn routes() -> Router<Sim> {
    Router::new()
        .route("/sim/webhooks/stats", get(webhook_stats))
        .route("/sim/webhooks/{dialect}", put(set_webhook).delete(clear_webhook))
        .route("/sim/{dialect}/contacts", get(list_contacts).post(create_contact))
        .route(
            "/sim/{dialect}/contacts/{crm_id}",
            get(get_contact).patch(edit_contact).delete(delete_contact),
        )
        .route("/sim/{dialect}/contacts/{crm_id}/notify", post(notify_contact))
        .route("/sim/{dialect}/tasks", get(list_tasks))
        .route("/sim/{dialect}/tasks/{crm_id}", patch(edit_task))
        .route("/sim/{dialect}/tasks/{crm_id}/notify", post(notify_task))
        .route("/sim/{dialect}/notes", get(list_notes))
}

pub(crate) fn contact_view(c: &Contact) -> Value {
    let f = &c.fields;
    json!({"crm_id": c.crm_id, "external_id": c.external_id, "first_name": f.first_name,
        "last_name": f.last_name, "phone": f.phone, "email": f.email, "manager": f.manager,
        "segment": f.segment, "consent_sms": f.consent_sms, "consent_email": f.consent_email,
        "updated_at": rfc3339_ms(c.meta.updated_at), "writes": c.meta.writes,
        "request_ids": c.meta.request_ids})
}

pub(crate) fn task_view(t: &Task) -> Value {
    json!({"crm_id": t.crm_id, "external_id": t.external_id, "contact": t.contact, "title": t.title,
        "description": t.description, "due_at": t.due_at.map(rfc3339_ms), "state": t.state.as_str(),
        "assignee": t.assignee, "updated_at": rfc3339_ms(t.meta.updated_at), "writes": t.meta.writes,
        "request_ids": t.meta.request_ids})
}

pub(crate) fn note_view(n: &Note) -> Value {
    let mut v = json!({"crm_id": n.crm_id, "external_id": n.external_id, "contact": n.contact,
        "text": n.text, "created_at": rfc3339_ms(n.meta.created_at), "writes": n.meta.writes,
        "request_ids": n.meta.request_ids});
    if let Value::Object(m) = &mut v {
        for (k, x) in &n.extra {
            m.entry(k.clone()).or_insert_with(|| x.clone());
        }
    }
    v
}

fn dialect(d: &str) -> Result<Dialect, Response> {
    Dialect::parse(d).ok_or_else(|| {
        problem(
            StatusCode::NOT_FOUND,
            "not_found",
            "unknown dialect: generic, bitrix24, salesforce or kommo",
            None,
        )
    })
}

fn refuse(detail: &str) -> Response {
    problem(StatusCode::BAD_REQUEST, "bad_request", detail, None)
}

fn unknown(what: &str) -> Response {
    problem(StatusCode::NOT_FOUND, "not_found", what, None)
}

async fn webhook_stats(State(sim): State<Sim>) -> Response {
    Json(sim.webhook_stats()).into_response()
}

async fn set_webhook(State(sim): State<Sim>, Path(d): Path<String>, body: Bytes) -> Response {
    let d = match dialect(&d) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let target: WebhookTarget = match serde_json::from_slice(&body) {
        Ok(t) => t,
        Err(_) => return refuse("the body is not a webhook target: url and the dialect's credentials"),
    };
    match sim.set_webhook(d, target) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => refuse(e.0),
    }
}

async fn clear_webhook(State(sim): State<Sim>, Path(d): Path<String>) -> Response {
    match dialect(&d) {
        Ok(d) => {
            sim.clear_webhook(d);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct Filter {
    external_id: Option<String>,
    contact: Option<String>,
}

async fn list_contacts(State(sim): State<Sim>, Path(d): Path<String>, Query(q): Query<Filter>) -> Response {
    let d = match dialect(&d) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let mut stores = sim.people();
    let people = stores.of(d);
    match q.external_id {
        Some(ext) => match people.contact_by_external(&ext) {
            Some(c) => Json(contact_view(c)).into_response(),
            None => unknown("no contact has this external id"),
        },
        None => Json(people.contacts.iter().map(contact_view).collect::<Vec<_>>()).into_response(),
    }
}

async fn get_contact(State(sim): State<Sim>, Path((d, id)): Path<(String, String)>) -> Response {
    let d = match dialect(&d) {
        Ok(d) => d,
        Err(r) => return r,
    };
    match sim.people().of(d).contacts.get(&id) {
        Some(c) => Json(contact_view(c)).into_response(),
        None => unknown("no such contact"),
    }
}

fn text_value(key: &str, v: &Value) -> Result<Option<String>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.len() <= MAX_FIELD_BYTES && !s.chars().any(char::is_control) => {
            Ok(Some(s.clone()))
        }
        _ => Err(format!(
            "{key} must be a string of at most {MAX_FIELD_BYTES} bytes, or null"
        )),
    }
}

fn flag_value(key: &str, v: &Value) -> Result<Option<bool>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        _ => Err(format!("{key} must be true, false or null")),
    }
}

/// A CRM user's edit in our field names, checked against what the dialect can hold.
fn contact_patch(d: Dialect, body: &[u8]) -> Result<ContactPatch, String> {
    let fields: Map<String, Value> =
        serde_json::from_slice(body).map_err(|_| "the body must be a JSON object".to_owned())?;
    let mut p = ContactPatch::default();
    for (k, v) in &fields {
        match k.as_str() {
            "first_name" => p.first_name = Some(text_value(k, v)?),
            "last_name" => p.last_name = Some(text_value(k, v)?),
            "phone" => p.phone = Some(text_value(k, v)?),
            "email" => p.email = Some(text_value(k, v)?),
            "segment" => p.segment = Some(text_value(k, v)?),
            "manager" => {
                let m = text_value(k, v)?;
                let numeric = matches!(d, Dialect::Bitrix24 | Dialect::Kommo);
                if numeric && m.as_ref().is_some_and(|m| m.parse::<u64>().is_err()) {
                    return Err("manager must be a numeric user id in this dialect".into());
                }
                if m.is_none() && matches!(d, Dialect::Salesforce | Dialect::Kommo) {
                    return Err("this dialect always has a responsible user: manager cannot be null".into());
                }
                p.manager = Some(m);
            }
            "consent_sms" | "consent_email" => {
                let f = flag_value(k, v)?;
                if f.is_none() && d == Dialect::Salesforce {
                    return Err("Salesforce checkboxes cannot be null".into());
                }
                if k == "consent_sms" {
                    p.consent_sms = Some(f);
                } else {
                    p.consent_email = Some(f);
                }
            }
            _ => return Err("the body has a field that is not a contact field".into()),
        }
    }
    Ok(p)
}

/// What a dialect fills in on a contact created without it.
pub(crate) fn contact_defaults(d: Dialect, p: &mut ContactPatch) {
    match d {
        Dialect::Salesforce => {
            p.manager.get_or_insert(Some(SALESFORCE_API_USER.into()));
            // Checkboxes are never null: Sms_Consent__c and HasOptedOutOfEmail start false.
            p.consent_sms.get_or_insert(Some(false));
            p.consent_email.get_or_insert(Some(true));
        }
        Dialect::Kommo => {
            p.manager.get_or_insert(Some(KOMMO_API_USER.into()));
        }
        Dialect::Generic | Dialect::Bitrix24 => {}
    }
}

async fn create_contact(State(sim): State<Sim>, Path(d): Path<String>, body: Bytes) -> Response {
    let d = match dialect(&d) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let mut patch = match contact_patch(d, &body) {
        Ok(p) => p,
        Err(e) => return refuse(&e),
    };
    contact_defaults(d, &mut patch);
    let (change, view) = {
        let mut stores = sim.people();
        let people = stores.of(d);
        let change = people.create_contact(patch, &Writer::User);
        let view = people.contacts.get(&change.crm_id).map(contact_view);
        (change, view)
    };
    sim.announce(d, [change]);
    (StatusCode::CREATED, Json(view)).into_response()
}

async fn edit_contact(
    State(sim): State<Sim>,
    Path((d, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let d = match dialect(&d) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let patch = match contact_patch(d, &body) {
        Ok(p) => p,
        Err(e) => return refuse(&e),
    };
    let outcome = {
        let mut stores = sim.people();
        let people = stores.of(d);
        people
            .update_contact(&id, patch, &Writer::User)
            .map(|c| (c, people.contacts.get(&id).map(contact_view)))
    };
    match outcome {
        Some((change, view)) => {
            sim.announce(d, [change]);
            Json(view).into_response()
        }
        None => unknown("no such contact"),
    }
}

async fn delete_contact(State(sim): State<Sim>, Path((d, id)): Path<(String, String)>) -> Response {
    let d = match dialect(&d) {
        Ok(d) => d,
        Err(r) => return r,
    };
    if sim.people().of(d).contacts.remove(&id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        unknown("no such contact")
    }
}

#[derive(Deserialize)]
struct Times {
    times: Option<usize>,
}

async fn notify(sim: &Sim, d: Dialect, change: crate::people::Change, times: Option<usize>) -> Response {
    let times = times.unwrap_or(1);
    if !(1..=MAX_NOTIFY_TIMES).contains(&times) {
        return refuse("times must be within 1..=500");
    }
    match sim.hooks.notify(d, &change, times).await {
        Some(statuses) => Json(json!({ "statuses": statuses })).into_response(),
        None => problem(
            StatusCode::CONFLICT,
            "no_webhook_target",
            "this dialect has no webhook target: PUT /sim/webhooks/{dialect} first",
            None,
        ),
    }
}

async fn notify_contact(
    State(sim): State<Sim>,
    Path((d, id)): Path<(String, String)>,
    Query(q): Query<Times>,
) -> Response {
    let d = match dialect(&d) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let change = sim.people().of(d).contacts.get(&id).map(|c| {
        current(
            Entity::Contact,
            &c.crm_id,
            c.external_id.clone(),
            c.meta.updated_at,
        )
    });
    match change {
        Some(c) => notify(&sim, d, c, q.times).await,
        None => unknown("no such contact"),
    }
}

async fn notify_task(
    State(sim): State<Sim>,
    Path((d, id)): Path<(String, String)>,
    Query(q): Query<Times>,
) -> Response {
    let d = match dialect(&d) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let change = sim
        .people()
        .of(d)
        .tasks
        .get(&id)
        .map(|t| current(Entity::Task, &t.crm_id, t.external_id.clone(), t.meta.updated_at));
    match change {
        Some(c) => notify(&sim, d, c, q.times).await,
        None => unknown("no such task"),
    }
}

async fn list_tasks(State(sim): State<Sim>, Path(d): Path<String>, Query(q): Query<Filter>) -> Response {
    let d = match dialect(&d) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let mut stores = sim.people();
    let tasks = &stores.of(d).tasks;
    let views: Vec<Value> = match &q.external_id {
        Some(ext) => tasks.find(ext).into_iter().map(task_view).collect(),
        None => tasks
            .iter()
            .filter(|t| q.contact.is_none() || t.contact == q.contact)
            .map(task_view)
            .collect(),
    };
    Json(views).into_response()
}

fn task_patch(body: &[u8]) -> Result<TaskPatch, String> {
    let fields: Map<String, Value> =
        serde_json::from_slice(body).map_err(|_| "the body must be a JSON object".to_owned())?;
    let mut p = TaskPatch::default();
    for (k, v) in &fields {
        match k.as_str() {
            "title" => p.title = Some(text_value(k, v)?),
            "assignee" => p.assignee = Some(text_value(k, v)?),
            "due_at" => {
                p.due_at = Some(match text_value(k, v)? {
                    None => None,
                    Some(s) => Some(super::parse_rfc3339(&s).ok_or("due_at must be RFC 3339 or null")?),
                })
            }
            "state" => {
                p.state = Some(
                    v.as_str()
                        .and_then(TaskState::parse)
                        .ok_or("state must be open, done or cancelled")?,
                )
            }
            _ => return Err("the body has a field that is not a task field".into()),
        }
    }
    Ok(p)
}

async fn edit_task(State(sim): State<Sim>, Path((d, id)): Path<(String, String)>, body: Bytes) -> Response {
    let d = match dialect(&d) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let patch = match task_patch(&body) {
        Ok(p) => p,
        Err(e) => return refuse(&e),
    };
    let outcome = {
        let mut stores = sim.people();
        let people = stores.of(d);
        people
            .update_task(&id, patch, &Writer::User)
            .map(|c| (c, people.tasks.get(&id).map(task_view)))
    };
    match outcome {
        Some((change, view)) => {
            sim.announce(d, [change]);
            Json(view).into_response()
        }
        None => unknown("no such task"),
    }
}

async fn list_notes(State(sim): State<Sim>, Path(d): Path<String>, Query(q): Query<Filter>) -> Response {
    let d = match dialect(&d) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let mut stores = sim.people();
    let views: Vec<Value> = stores
        .of(d)
        .notes
        .iter()
        .filter(|n| q.contact.is_none() || n.contact == q.contact)
        .filter(|n| q.external_id.is_none() || n.external_id == q.external_id)
        .map(note_view)
        .collect();
    Json(views).into_response()
}
