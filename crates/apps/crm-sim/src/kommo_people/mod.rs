//! Kommo contacts, their tasks and notes, as the two-way sync calls them, with the same
//! authentication and faults as the leads ([`crate::kommo`]):
//!
//! - `GET /api/v4/contacts?query=&limit=&page=`: `query` is as loose as Kommo's full-text
//!   search (a case-insensitive substring of the names, phone, e-mail and custom field values,
//!   or the id); none is `204`. `GET /api/v4/contacts/{id}`: unknown is `204`.
//! - `POST|PATCH /api/v4/contacts`: arrays of 1 to 250, validated as a whole (400
//!   `validation-errors` per `request_id`, nothing written). Phone and e-mail are the
//!   `PHONE`/`EMAIL` multi-fields (the `WORK` entry); our client id, segment and consents are
//!   custom fields ([`KommoContactFields`]); `"values": null` clears one. A contact created
//!   without `responsible_user_id` belongs to the API user (1).
//! - `POST|PATCH /api/v4/tasks` (`entity_type` `contacts`), `GET /api/v4/tasks/{id}`. Tasks have
//!   no external id. Done is `is_completed`; cancelled is `is_completed` with
//!   `"result":{"text":"cancelled"}`.
//! - `POST /api/v4/contacts/{id}/notes`: `common` notes. `GET` lists them (`order[id]`,
//!   `limit`, `page`; none is `204`).
//! - `GET /api/v4/tasks`: `filter[entity_type]`, `filter[entity_id][]`, `order[created_at]` or
//!   `order[id]` (`asc`/`desc`), `limit` (at most 250), `page`; none is `204`.

// A refusal is the response to send, built where it is found.
#![allow(clippy::result_large_err)]

mod tasks;

use crate::kommo::MAX_LEADS;
use crate::people::control::KOMMO_API_USER;
use crate::people::{request_id, Change, Contact, ContactPatch, People, Writer, MAX_FIELD_BYTES};
use crate::table::text;
use crate::{json_response, origin, Dialect, Sim};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

const D: Dialect = Dialect::Kommo;
const HAL: &str = "application/hal+json";
const PROBLEM: &str = "application/problem+json";
/// The account's built-in multi-fields.
const PHONE_FIELD: u64 = 301;
const EMAIL_FIELD: u64 = 302;

/// The contact custom fields that hold our client id, segment and consents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KommoContactFields {
    /// Text: our client id.
    pub client_id: u64,
    /// Text.
    pub segment: u64,
    /// Checkbox.
    pub consent_sms: u64,
    /// Checkbox.
    pub consent_email: u64,
}

impl Default for KommoContactFields {
    fn default() -> Self {
        Self {
            client_id: 900001,
            segment: 900002,
            consent_sms: 900003,
            consent_email: 900004,
        }
    }
}

pub(crate) fn routes() -> Router<Sim> {
    Router::new()
        .route("/api/v4/contacts", get(find).post(add).patch(update))
        .route("/api/v4/contacts/{id}", get(read))
        .route(
            "/api/v4/contacts/{id}/notes",
            get(tasks::list_notes).post(tasks::add_notes),
        )
        .route(
            "/api/v4/tasks",
            get(tasks::list_tasks)
                .post(tasks::add_tasks)
                .patch(tasks::update_tasks),
        )
        .route("/api/v4/tasks/{id}", get(tasks::read_task))
}

fn problem(status: StatusCode, detail: &str) -> Response {
    json_response(
        status,
        PROBLEM,
        &json!({"title": status.canonical_reason().unwrap_or_default(),
            "type": format!("https://httpstatus.es/{}", status.as_u16()), "status": status.as_u16(),
            "detail": detail}),
    )
}

fn validation_failed(refused: Vec<Value>) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        PROBLEM,
        &json!({"validation-errors": refused, "title": "Bad Request",
            "type": "https://httpstatus.es/400", "status": 400, "detail": "Request validation failed"}),
    )
}

fn error(code: &str, path: &str, detail: &str) -> Value {
    json!({"code": code, "path": path, "detail": detail})
}

fn unix(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn request_id_of(item: &Value, index: usize) -> Value {
    item.get("request_id")
        .and_then(text)
        .map_or_else(|| Value::from(index.to_string()), Value::from)
}

/// The body as an array of 1 to 250 objects.
fn items(body: &[u8], what: &str) -> Result<Vec<Value>, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(a)) if !a.is_empty() && a.len() <= MAX_LEADS && a.iter().all(Value::is_object) => {
            Ok(a)
        }
        _ => Err(problem(
            StatusCode::BAD_REQUEST,
            &format!("The request body must be an array of 1 to 250 {what}"),
        )),
    }
}

fn name(c: &Contact) -> String {
    let f = &c.fields;
    [f.first_name.as_deref(), f.last_name.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ")
}

fn render_contact(fields: &KommoContactFields, c: &Contact, origin: &str) -> Value {
    let f = &c.fields;
    let mut custom = Vec::new();
    let multi = |id: u64, code: &str, label: &str, v: &str| {
        json!({"field_id": id, "field_name": label, "field_code": code, "field_type": "multitext",
            "values": [{"value": v, "enum_id": id * 10 + 1, "enum_code": "WORK"}]})
    };
    let single = |id: u64, label: &str, ty: &str, v: Value| {
        json!({"field_id": id, "field_name": label, "field_code": null, "field_type": ty,
            "values": [{"value": v}]})
    };
    if let Some(p) = &f.phone {
        custom.push(multi(PHONE_FIELD, "PHONE", "Phone", p));
    }
    if let Some(e) = &f.email {
        custom.push(multi(EMAIL_FIELD, "EMAIL", "Email", e));
    }
    if let Some(x) = &c.external_id {
        custom.push(single(
            fields.client_id,
            "Client ID",
            "text",
            Value::from(x.as_str()),
        ));
    }
    if let Some(s) = &f.segment {
        custom.push(single(fields.segment, "Segment", "text", Value::from(s.as_str())));
    }
    if let Some(b) = f.consent_sms {
        custom.push(single(
            fields.consent_sms,
            "SMS consent",
            "checkbox",
            Value::from(b),
        ));
    }
    if let Some(b) = f.consent_email {
        custom.push(single(
            fields.consent_email,
            "E-mail consent",
            "checkbox",
            Value::from(b),
        ));
    }
    let id = c.crm_id.parse::<u64>().unwrap_or_default();
    let responsible = f.manager.as_deref().and_then(|m| m.parse::<u64>().ok());
    json!({"id": id, "name": name(c), "first_name": f.first_name.clone().unwrap_or_default(),
        "last_name": f.last_name.clone().unwrap_or_default(), "responsible_user_id": responsible,
        "group_id": 0, "created_by": 0, "updated_by": 0, "created_at": unix(c.meta.created_at),
        "updated_at": unix(c.meta.updated_at), "closest_task_at": null, "is_deleted": false,
        "is_unsorted": false,
        "custom_fields_values": if custom.is_empty() { Value::Null } else { Value::from(custom) },
        "account_id": 1, "_links": {"self": {"href": format!("{origin}/api/v4/contacts/{id}")}},
        "_embedded": {"tags": [], "companies": []}})
}

/// The first value of a custom field entry (the `WORK` one for multi-fields); `None` clears.
fn first_value(cf: &Value) -> Result<Option<Value>, ()> {
    match cf.get("values") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(vs)) => {
            let work = vs
                .iter()
                .find(|v| v.get("enum_code").and_then(Value::as_str) == Some("WORK"))
                .or_else(|| vs.first());
            Ok(work
                .and_then(|v| v.get("value"))
                .cloned()
                .filter(|v| !v.is_null()))
        }
        Some(_) => Err(()),
    }
}

fn text_value(v: Option<Value>) -> Result<Option<String>, ()> {
    match v {
        None => Ok(None),
        Some(v) => match text(&v) {
            Some(s) if s.len() <= MAX_FIELD_BYTES => Ok(Some(s).filter(|s| !s.is_empty())),
            _ => Err(()),
        },
    }
}

fn flag_value(v: Option<Value>) -> Result<Option<bool>, ()> {
    match v {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(_) => Err(()),
    }
}

/// One contact of a request, checked; `Err` lists its validation errors.
fn contact_patch(fields: &KommoContactFields, c: &Map<String, Value>) -> Result<ContactPatch, Vec<Value>> {
    let mut p = ContactPatch::default();
    let mut errors = Vec::new();
    for (key, slot) in [("first_name", &mut p.first_name), ("last_name", &mut p.last_name)] {
        match c.get(key) {
            None => {}
            Some(v) => match text_value(Some(v.clone()).filter(|v| !v.is_null())) {
                Ok(t) => *slot = Some(t),
                Err(()) => errors.push(error("InvalidType", key, "This value should be of type string.")),
            },
        }
    }
    if let Some(r) = c.get("responsible_user_id") {
        match as_u64(r) {
            Some(id) => p.manager = Some(Some(id.to_string())),
            None => errors.push(error(
                "InvalidType",
                "responsible_user_id",
                "This value should be of type int.",
            )),
        }
    }
    match c.get("custom_fields_values") {
        None | Some(Value::Null) => {}
        Some(Value::Array(values)) => {
            for (i, cf) in values.iter().enumerate() {
                let code = cf.get("field_code").and_then(Value::as_str);
                let id = cf.get("field_id").and_then(Value::as_u64);
                let value = first_value(cf);
                let path = format!("custom_fields_values.{i}.values");
                let bad = || error("InvalidType", &path, "This value is not valid.");
                let outcome = match (code, id) {
                    (Some("PHONE"), _) | (None, Some(PHONE_FIELD)) => {
                        value.and_then(text_value).map(|v| p.phone = Some(v))
                    }
                    (Some("EMAIL"), _) | (None, Some(EMAIL_FIELD)) => {
                        value.and_then(text_value).map(|v| p.email = Some(v))
                    }
                    (None, Some(f)) if f == fields.client_id => {
                        value.and_then(text_value).map(|v| p.external_id = Some(v))
                    }
                    (None, Some(f)) if f == fields.segment => {
                        value.and_then(text_value).map(|v| p.segment = Some(v))
                    }
                    (None, Some(f)) if f == fields.consent_sms => {
                        value.and_then(flag_value).map(|v| p.consent_sms = Some(v))
                    }
                    (None, Some(f)) if f == fields.consent_email => {
                        value.and_then(flag_value).map(|v| p.consent_email = Some(v))
                    }
                    _ => {
                        let which = if code.is_some() { "field_code" } else { "field_id" };
                        errors.push(error(
                            "NotSupportedChoice",
                            &format!("custom_fields_values.{i}.{which}"),
                            "The value you selected is not a valid choice.",
                        ));
                        Ok(())
                    }
                };
                if outcome.is_err() {
                    errors.push(bad());
                }
            }
        }
        Some(_) => errors.push(error(
            "InvalidType",
            "custom_fields_values",
            "This value should be of type array.",
        )),
    }
    if errors.is_empty() {
        Ok(p)
    } else {
        Err(errors)
    }
}

async fn find(State(sim): State<Sim>, RawQuery(raw): RawQuery, headers: HeaderMap) -> Response {
    if let Err(r) = sim.kommo_admit(&headers).await {
        return r;
    }
    let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.as_deref().unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let param = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let limit = param("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(50)
        .clamp(1, MAX_LEADS);
    let page = param("page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let ids: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "filter[id][]" || k == "filter[id]")
        .flat_map(|(_, v)| v.split(',').map(|s| s.trim().to_owned()).collect::<Vec<_>>())
        .collect();
    let query = param("query").map(str::to_lowercase).filter(|q| !q.is_empty());
    let fields = &sim.schemas().kommo.contact_fields;
    let origin = origin(&headers);
    let mut stores = sim.people();
    let people = stores.of(D);
    let matching: Vec<&Contact> = people
        .contacts
        .iter()
        .filter(|c| ids.is_empty() || ids.contains(&c.crm_id))
        .filter(|c| match &query {
            None => true,
            Some(q) => {
                let f = &c.fields;
                c.crm_id == *q
                    || [
                        Some(name(c)),
                        f.phone.clone(),
                        f.email.clone(),
                        f.segment.clone(),
                        c.external_id.clone(),
                    ]
                    .into_iter()
                    .flatten()
                    .any(|v| v.to_lowercase().contains(q.as_str()))
            }
        })
        .collect();
    let more = matching.len() > page * limit;
    let contacts: Vec<Value> = matching
        .into_iter()
        .skip((page - 1) * limit)
        .take(limit)
        .map(|c| render_contact(fields, c, &origin))
        .collect();
    if contacts.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    let mut links = json!({"self": {"href": format!("{origin}/api/v4/contacts?page={page}&limit={limit}")}});
    if more {
        links["next"] = json!({"href": format!("{origin}/api/v4/contacts?page={}&limit={limit}", page + 1)});
    }
    json_response(
        StatusCode::OK,
        HAL,
        &json!({"_page": page, "_links": links, "_embedded": {"contacts": contacts}}),
    )
}

async fn read(State(sim): State<Sim>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = sim.kommo_admit(&headers).await {
        return r;
    }
    if id.parse::<u64>().is_err() {
        return problem(StatusCode::NOT_FOUND, "Not found");
    }
    let fields = &sim.schemas().kommo.contact_fields;
    match sim.people().of(D).contacts.get(&id) {
        Some(c) => json_response(StatusCode::OK, HAL, &render_contact(fields, c, &origin(&headers))),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

async fn add(State(sim): State<Sim>, headers: HeaderMap, body: Bytes) -> Response {
    write_contacts(sim, headers, body, false).await
}

async fn update(State(sim): State<Sim>, headers: HeaderMap, body: Bytes) -> Response {
    write_contacts(sim, headers, body, true).await
}

async fn write_contacts(sim: Sim, headers: HeaderMap, body: Bytes, update: bool) -> Response {
    if let Err(r) = sim.kommo_admit(&headers).await {
        return r;
    }
    let items = match items(&body, "contacts") {
        Ok(i) => i,
        Err(r) => return r,
    };
    let fields = &sim.schemas().kommo.contact_fields;
    let origin = origin(&headers);
    let writer = Writer::Api(request_id(&headers));
    let (out, changes) = {
        let mut stores = sim.people();
        let people = stores.of(D);
        let mut planned = Vec::with_capacity(items.len());
        let mut refused = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let rid = request_id_of(item, i);
            let obj = item.as_object().cloned().unwrap_or_default();
            let id = obj.get("id").and_then(as_u64).map(|id| id.to_string());
            match contact_patch(fields, &obj) {
                Ok(_) if update && id.as_ref().is_none_or(|id| people.contacts.get(id).is_none()) => refused
                    .push(
                        json!({"request_id": rid, "errors": [error("NotFound", "id", "Entity not found.")]}),
                    ),
                Ok(p) => planned.push((rid, id, p)),
                Err(errors) => refused.push(json!({"request_id": rid, "errors": errors})),
            }
        }
        if !refused.is_empty() {
            return validation_failed(refused);
        }
        write_planned(people, planned, update, &writer, &origin)
    };
    sim.announce(D, changes);
    json_response(
        StatusCode::OK,
        HAL,
        &json!({"_links": {"self": {"href": format!("{origin}/api/v4/contacts")}},
            "_embedded": {"contacts": out}}),
    )
}

type Planned = (Value, Option<String>, ContactPatch);

fn write_planned(
    people: &mut People,
    planned: Vec<Planned>,
    update: bool,
    writer: &Writer,
    origin: &str,
) -> (Vec<Value>, Vec<Change>) {
    let mut out = Vec::with_capacity(planned.len());
    let mut changes = Vec::with_capacity(planned.len());
    for (rid, id, mut patch) in planned {
        let change = match (update, id) {
            (true, Some(id)) => people.update_contact(&id, patch, writer),
            _ => {
                patch.manager.get_or_insert(Some(KOMMO_API_USER.into()));
                Some(people.create_contact(patch, writer))
            }
        };
        let Some(change) = change else { continue };
        let id = change.crm_id.parse::<u64>().unwrap_or_default();
        let mut entry = json!({"id": id, "request_id": rid,
            "_links": {"self": {"href": format!("{origin}/api/v4/contacts/{id}")}}});
        if update {
            entry["updated_at"] = Value::from(unix(change.at));
        }
        out.push(entry);
        changes.push(change);
    }
    (out, changes)
}
