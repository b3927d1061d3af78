//! `Contact` and `Task` for the two-way sync: upsert by External ID (`Backbone_Client_Id__c`;
//! `Backbone_Task_Id__c` for tasks, `Backbone_Interaction_Id__c` for interactions, which are
//! completed Tasks), read by External ID and by `Id`.
//!
//! - Field names match case-insensitively; unknown fields are 400 `INVALID_FIELD`, read-only
//!   ones 400 `INVALID_FIELD_FOR_INSERT_UPDATE`, wrong types 400 `JSON_PARSER_ERROR`.
//! - As in an org: a Contact needs `LastName` (400 `REQUIRED_FIELD_MISSING`, also when cleared);
//!   `OwnerId` defaults to the API user and cannot be cleared; the checkboxes
//!   `Sms_Consent__c` and `HasOptedOutOfEmail` are never null (`null` is `false`, and a new
//!   contact starts with both `false`, i.e. consenting to e-mail); `""` clears a text field.
//! - A Task's `Status` is a restricted picklist (`Not Started`, `In Progress`, `Completed`,
//!   `Waiting on someone else`, `Deferred`): `Completed` is done, `Deferred` cancelled. `WhoId`
//!   must name a Contact (400 `INVALID_CROSS_REFERENCE_KEY`).
//! - Contact ids are `003…`, Task ids `00T…`, 18 characters.

// A refusal is the response to send, built where it is found.
#![allow(clippy::result_large_err)]

use super::{error, not_found, sf_time, version, with_usage, SalesforceSchema};
use crate::people::control::SALESFORCE_API_USER;
use crate::people::{
    request_id, Change, Contact, ContactPatch, Note, People, Task, TaskPatch, TaskState, Writer,
    MAX_FIELD_BYTES, MAX_NOTE_BYTES,
};
use crate::{json_response, Dialect, Sim};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

const D: Dialect = Dialect::Salesforce;
const CLIENT_ID: &str = "Backbone_Client_Id__c";
const TASK_ID: &str = "Backbone_Task_Id__c";
const INTERACTION_ID: &str = "Backbone_Interaction_Id__c";
const STATUSES: [&str; 5] = [
    "Not Started",
    "In Progress",
    "Completed",
    "Waiting on someone else",
    "Deferred",
];
const READ_ONLY: [&str; 7] = [
    "Id",
    "Name",
    "CreatedDate",
    "LastModifiedDate",
    "SystemModstamp",
    "IsDeleted",
    "IsClosed",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ty {
    Text,
    Bool,
    Date,
}

const CONTACT_FIELDS: [(&str, Ty); 9] = [
    (CLIENT_ID, Ty::Text),
    ("FirstName", Ty::Text),
    ("LastName", Ty::Text),
    ("Phone", Ty::Text),
    ("Email", Ty::Text),
    ("OwnerId", Ty::Text),
    ("Segment__c", Ty::Text),
    ("Sms_Consent__c", Ty::Bool),
    ("HasOptedOutOfEmail", Ty::Bool),
];

const TASK_FIELDS: [(&str, Ty); 8] = [
    (TASK_ID, Ty::Text),
    (INTERACTION_ID, Ty::Text),
    ("Subject", Ty::Text),
    ("ActivityDate", Ty::Date),
    ("Status", Ty::Text),
    ("OwnerId", Ty::Text),
    ("WhoId", Ty::Text),
    ("Description", Ty::Text),
];

/// The object a path names, when it is one of the two-way sync's.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Object {
    Contact,
    Task,
}

fn object(schema: &SalesforceSchema, sobject: &str) -> Option<Object> {
    if sobject.eq_ignore_ascii_case(&schema.sobject) {
        None
    } else if sobject.eq_ignore_ascii_case("Contact") {
        Some(Object::Contact)
    } else if sobject.eq_ignore_ascii_case("Task") {
        Some(Object::Task)
    } else {
        None
    }
}

fn refused(code: &str, message: &str, fields: &[&str]) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        "application/json",
        &json!([{"message": message, "errorCode": code, "fields": fields}]),
    )
}

fn date(t: OffsetDateTime) -> String {
    t.format(time::macros::format_description!("[year]-[month]-[day]"))
        .unwrap_or_default()
}

fn parse_date(s: &str) -> Option<OffsetDateTime> {
    let d = time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")).ok()?;
    Some(d.midnight().assume_utc())
}

/// The body's fields under their canonical names, type-checked: `Err` is the answer.
fn checked(
    sobject: &str,
    spec: &[(&'static str, Ty)],
    body: &[u8],
) -> Result<Vec<(&'static str, Value)>, Response> {
    let body: Map<String, Value> = serde_json::from_slice(body).map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            "JSON_PARSER_ERROR",
            "The body is not a JSON object",
        )
    })?;
    let mut out = Vec::new();
    for (k, v) in body {
        if k == "attributes" {
            continue;
        }
        if let Some(ro) = READ_ONLY.iter().find(|f| f.eq_ignore_ascii_case(&k)) {
            return Err(refused(
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                &format!("Unable to create/update fields: {ro}."),
                &[ro],
            ));
        }
        let Some(&(name, ty)) = spec.iter().find(|(f, _)| f.eq_ignore_ascii_case(&k)) else {
            return Err(refused(
                "INVALID_FIELD",
                &format!("No such column on sobject of type {sobject}"),
                &[],
            ));
        };
        let ok = match (ty, &v) {
            (_, Value::Null) => true,
            (Ty::Bool, Value::Bool(_)) => true,
            (Ty::Text, Value::String(s)) => s.len() <= MAX_NOTE_BYTES,
            (Ty::Date, Value::String(s)) => parse_date(s).is_some(),
            _ => false,
        };
        if !ok {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "JSON_PARSER_ERROR",
                &format!("Cannot deserialize the value of {name}"),
            ));
        }
        out.push((name, v));
    }
    Ok(out)
}

/// A text value: `""` and `null` are empty.
fn text_of(v: &Value) -> Option<String> {
    v.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

/// Upsert of a Contact or Task by External ID; `None` when the path is not about those.
pub(super) fn upsert(
    sim: &Sim,
    v: &str,
    sobject: &str,
    field: &str,
    value: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<Response> {
    let object = object(&sim.schemas().salesforce, sobject)?;
    let Some(api) = version(v) else {
        return Some(not_found());
    };
    let writer = Writer::Api(request_id(headers));
    let outcome = match object {
        Object::Contact if field.eq_ignore_ascii_case(CLIENT_ID) => upsert_contact(sim, value, body, &writer),
        Object::Task if field.eq_ignore_ascii_case(TASK_ID) => upsert_task(sim, value, body, &writer),
        Object::Task if field.eq_ignore_ascii_case(INTERACTION_ID) => {
            upsert_interaction(sim, value, body, &writer)
        }
        _ => return Some(not_found()),
    };
    let (id, created) = match outcome {
        Ok(o) => o,
        Err(r) => return Some(r),
    };
    Some(if !created && api < 46.0 {
        StatusCode::NO_CONTENT.into_response()
    } else {
        let mut body = json!({"id": id, "success": true, "errors": []});
        if api >= 46.0 {
            body["created"] = Value::from(created);
        }
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        json_response(status, "application/json", &body)
    })
}

fn same_external(fields: &[(&str, Value)], name: &str, value: &str) -> Result<(), Response> {
    let differs = fields
        .iter()
        .any(|(f, v)| *f == name && v.as_str().is_some_and(|e| !e.eq_ignore_ascii_case(value)));
    if differs {
        return Err(refused(
            "INVALID_FIELD",
            &format!("{name} in the body differs from the External ID in the URL"),
            &[name],
        ));
    }
    Ok(())
}

fn upsert_contact(sim: &Sim, ext: &str, body: &[u8], w: &Writer) -> Result<(String, bool), Response> {
    let fields = checked("Contact", &CONTACT_FIELDS, body)?;
    same_external(&fields, CLIENT_ID, ext)?;
    let mut p = ContactPatch::default();
    for (name, v) in &fields {
        match *name {
            "FirstName" => p.first_name = Some(text_of(v)),
            "LastName" => p.last_name = Some(text_of(v)),
            "Phone" => p.phone = Some(text_of(v)),
            "Email" => p.email = Some(text_of(v)),
            "Segment__c" => p.segment = Some(text_of(v)),
            "OwnerId" => p.manager = Some(text_of(v)),
            "Sms_Consent__c" => p.consent_sms = Some(Some(v.as_bool().unwrap_or(false))),
            "HasOptedOutOfEmail" => p.consent_email = Some(Some(!v.as_bool().unwrap_or(false))),
            _ => {}
        }
    }
    for (name, slot) in [("LastName", &p.last_name), ("OwnerId", &p.manager)] {
        if matches!(slot, Some(None)) {
            return Err(refused(
                "REQUIRED_FIELD_MISSING",
                &format!("Required fields are missing: [{name}]"),
                &[name],
            ));
        }
    }
    if let Some(Some(email)) = &p.email {
        let mut parts = email.split('@');
        let valid = matches!((parts.next(), parts.next(), parts.next()), (Some(l), Some(d), None)
            if !l.is_empty() && d.contains('.'));
        if !valid || email.len() > MAX_FIELD_BYTES {
            return Err(refused(
                "INVALID_EMAIL_ADDRESS",
                "Email: invalid email address",
                &["Email"],
            ));
        }
    }
    let (change, created) = {
        let mut stores = sim.people();
        let people = stores.of(D);
        match people.contact_by_external(ext).map(|c| c.crm_id.clone()) {
            Some(id) => (people.update_contact(&id, p, w), false),
            None => {
                if p.last_name.is_none() {
                    return Err(refused(
                        "REQUIRED_FIELD_MISSING",
                        "Required fields are missing: [LastName]",
                        &["LastName"],
                    ));
                }
                p.external_id = Some(Some(ext.to_owned()));
                crate::people::control::contact_defaults(D, &mut p);
                (Some(people.create_contact(p, w)), true)
            }
        }
    };
    finish(sim, change, created)
}

fn finish(sim: &Sim, change: Option<Change>, created: bool) -> Result<(String, bool), Response> {
    let change = change.ok_or_else(not_found)?;
    let id = change.crm_id.clone();
    sim.announce(D, [change]);
    Ok((id, created))
}

fn who(people: &People, fields: &[(&str, Value)]) -> Result<Option<Option<String>>, Response> {
    match fields
        .iter()
        .find(|(f, _)| *f == "WhoId")
        .map(|(_, v)| text_of(v))
    {
        None => Ok(None),
        Some(None) => Ok(Some(None)),
        Some(Some(id)) if people.contacts.get(&id).is_some() => Ok(Some(Some(id))),
        Some(Some(_)) => Err(refused(
            "INVALID_CROSS_REFERENCE_KEY",
            "invalid cross reference id",
            &["WhoId"],
        )),
    }
}

fn status_of(fields: &[(&str, Value)]) -> Result<Option<String>, Response> {
    match fields
        .iter()
        .find(|(f, _)| *f == "Status")
        .map(|(_, v)| v.as_str())
    {
        None => Ok(None),
        Some(Some(s)) if STATUSES.contains(&s) => Ok(Some(s.to_owned())),
        Some(_) => Err(refused(
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
            "Status: bad value for restricted picklist field",
            &["Status"],
        )),
    }
}

fn state_of(status: &str) -> TaskState {
    match status {
        "Completed" => TaskState::Done,
        "Deferred" => TaskState::Cancelled,
        _ => TaskState::Open,
    }
}

fn upsert_task(sim: &Sim, ext: &str, body: &[u8], w: &Writer) -> Result<(String, bool), Response> {
    let fields = checked("Task", &TASK_FIELDS, body)?;
    same_external(&fields, TASK_ID, ext)?;
    let status = status_of(&fields)?;
    let mut p = TaskPatch::default();
    for (name, v) in &fields {
        match *name {
            "Subject" => p.title = Some(text_of(v)),
            "ActivityDate" => p.due_at = Some(v.as_str().and_then(parse_date)),
            "OwnerId" => p.assignee = Some(text_of(v)),
            "Description" => p.description = Some(text_of(v)),
            _ => {}
        }
    }
    if let Some(s) = status {
        p.state = Some(state_of(&s));
        p.extra.insert("Status".into(), Value::from(s));
    }
    let (change, created) = {
        let mut stores = sim.people();
        let people = stores.of(D);
        p.contact = who(people, &fields)?;
        match people.tasks.find(ext).first().map(|t| t.crm_id.clone()) {
            Some(id) => (people.update_task(&id, p, w), false),
            None => {
                p.external_id = Some(Some(ext.to_owned()));
                p.assignee.get_or_insert(Some(SALESFORCE_API_USER.into()));
                (Some(people.create_task(p, w)), true)
            }
        }
    };
    finish(sim, change, created)
}

fn upsert_interaction(sim: &Sim, ext: &str, body: &[u8], w: &Writer) -> Result<(String, bool), Response> {
    let fields = checked("Task", &TASK_FIELDS, body)?;
    same_external(&fields, INTERACTION_ID, ext)?;
    let status = status_of(&fields)?;
    let mut extra = Map::new();
    let mut text = None;
    for (name, v) in &fields {
        match *name {
            "Subject" | "ActivityDate" | "OwnerId" => {
                extra.insert((*name).to_owned(), v.clone());
            }
            "Description" => text = text_of(v),
            _ => {}
        }
    }
    if let Some(s) = status {
        extra.insert("Status".into(), Value::from(s));
    }
    let mut stores = sim.people();
    let people = stores.of(D);
    let contact = who(people, &fields)?;
    let existing = people.notes.find(ext).first().map(|n| (*n).clone());
    let contact = contact.unwrap_or_else(|| existing.as_ref().and_then(|n| n.contact.clone()));
    let text = text
        .or_else(|| existing.as_ref().map(|n| n.text.clone()))
        .unwrap_or_default();
    if existing.is_none() {
        extra
            .entry("Status")
            .or_insert_with(|| Value::from("Not Started"));
        extra
            .entry("OwnerId")
            .or_insert_with(|| Value::from(SALESFORCE_API_USER));
    }
    let existing_id = existing.as_ref().map(|n| n.crm_id.as_str());
    Ok(people.put_note(existing_id, Some(ext.to_owned()), contact, text, extra, w))
}

fn attributes(sobject: &str, id: &str) -> Value {
    json!({"type": sobject, "url": format!("/services/data/v62.0/sobjects/{sobject}/{id}")})
}

fn render_contact(c: &Contact) -> Value {
    let f = &c.fields;
    let name = [f.first_name.as_deref(), f.last_name.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    json!({"attributes": attributes("Contact", &c.crm_id), "Id": c.crm_id,
        CLIENT_ID: c.external_id, "FirstName": f.first_name, "LastName": f.last_name, "Name": name,
        "Phone": f.phone, "Email": f.email, "OwnerId": f.manager, "Segment__c": f.segment,
        "Sms_Consent__c": f.consent_sms.unwrap_or(false),
        "HasOptedOutOfEmail": !f.consent_email.unwrap_or(true), "IsDeleted": false,
        "CreatedDate": sf_time(c.meta.created_at), "LastModifiedDate": sf_time(c.meta.updated_at),
        "SystemModstamp": sf_time(c.meta.updated_at)})
}

fn render_task(t: &Task) -> Value {
    let canonical = match t.state {
        TaskState::Open => "Not Started",
        TaskState::Done => "Completed",
        TaskState::Cancelled => "Deferred",
    };
    let status = t
        .extra
        .get("Status")
        .and_then(Value::as_str)
        .filter(|s| state_of(s) == t.state)
        .unwrap_or(canonical);
    json!({"attributes": attributes("Task", &t.crm_id), "Id": t.crm_id, TASK_ID: t.external_id,
        INTERACTION_ID: null, "Subject": t.title, "ActivityDate": t.due_at.map(date),
        "Status": status, "Priority": "Normal", "OwnerId": t.assignee, "WhoId": t.contact,
        "Description": t.description, "IsClosed": t.state != TaskState::Open,
        "CreatedDate": sf_time(t.meta.created_at), "LastModifiedDate": sf_time(t.meta.updated_at),
        "SystemModstamp": sf_time(t.meta.updated_at)})
}

fn render_interaction(n: &Note) -> Value {
    let get = |k: &str| n.extra.get(k).cloned().unwrap_or(Value::Null);
    json!({"attributes": attributes("Task", &n.crm_id), "Id": n.crm_id, TASK_ID: null,
        INTERACTION_ID: n.external_id, "Subject": get("Subject"), "ActivityDate": get("ActivityDate"),
        "Status": get("Status"), "Priority": "Normal", "OwnerId": get("OwnerId"), "WhoId": n.contact,
        "Description": n.text, "IsClosed": get("Status") == "Completed",
        "CreatedDate": sf_time(n.meta.created_at), "LastModifiedDate": sf_time(n.meta.updated_at),
        "SystemModstamp": sf_time(n.meta.updated_at)})
}

fn found(record: Option<Value>) -> Response {
    match record {
        Some(r) => json_response(StatusCode::OK, "application/json", &r),
        None => not_found(),
    }
}

/// `GET …/sobjects/{Contact|Task}/{External ID field}/{value}`.
pub(super) async fn read_by_external(
    State(sim): State<Sim>,
    Path((v, sobject, field, value)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let usage = match sim.salesforce_admit(&headers).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let object = object(&sim.schemas().salesforce, &sobject);
    let mut stores = sim.people();
    let people = stores.of(D);
    let record = match object {
        _ if version(&v).is_none() => None,
        Some(Object::Contact) if field.eq_ignore_ascii_case(CLIENT_ID) => {
            people.contact_by_external(&value).map(render_contact)
        }
        Some(Object::Task) if field.eq_ignore_ascii_case(TASK_ID) => {
            people.tasks.find(&value).first().map(|t| render_task(t))
        }
        Some(Object::Task) if field.eq_ignore_ascii_case(INTERACTION_ID) => {
            people.notes.find(&value).first().map(|n| render_interaction(n))
        }
        _ => None,
    };
    with_usage(found(record), usage)
}

/// `GET …/sobjects/{Contact|Task}/{Id}`.
pub(super) async fn read_by_id(
    State(sim): State<Sim>,
    Path((v, sobject, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let usage = match sim.salesforce_admit(&headers).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let object = object(&sim.schemas().salesforce, &sobject);
    let mut stores = sim.people();
    let people = stores.of(D);
    let record = match object {
        _ if version(&v).is_none() => None,
        Some(Object::Contact) => people.contacts.get(&id).map(render_contact),
        Some(Object::Task) => people
            .tasks
            .get(&id)
            .map(render_task)
            .or_else(|| people.notes.get(&id).map(render_interaction)),
        None => None,
    };
    with_usage(found(record), usage)
}
