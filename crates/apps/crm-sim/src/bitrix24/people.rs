//! Contacts, to-do activities and timeline comments, as the two-way sync calls them:
//!
//! - `crm.contact.list` (`filter` on any rendered field with the `crm.item.list` operators,
//!   `select`, pages of 50), `crm.contact.add` (→ the new id), `crm.contact.update` (→ `true`;
//!   only the fields sent; `PHONE`/`EMAIL` replace the whole list, an empty value clears,
//!   `ASSIGNED_BY_ID: ""` unassigns), `crm.contact.get` (unknown: 400 `NOT_FOUND`).
//!   Unknown fields are ignored, as the portal does. A contact keeps one phone and one e-mail:
//!   the first `WORK` entry sent (or the first).
//! - `crm.activity.todo.add` (contacts only, `ownerTypeId` 3; `deadline` required; the task's
//!   external id is the `description` after `backbone:`), `crm.activity.todo.update`,
//!   `crm.activity.update` (`fields`: `COMPLETED`, `SUBJECT`, `DESCRIPTION`, `DEADLINE`,
//!   `RESPONSIBLE_ID`), `crm.activity.get`, `crm.activity.list` (`filter`, `order` by `ID`,
//!   `select`, pages of 50). `COMPLETED` is `Y` for done and cancelled alike.
//! - `crm.timeline.comment.add` (`ENTITY_TYPE` `contact`), `crm.timeline.comment.list` (as
//!   `crm.activity.list`, over `ID`, `ENTITY_ID`, `ENTITY_TYPE`, `COMMENT`, `CREATED`).
//! - Not inside `batch`.

use super::filter::{conditions, matches};
use super::params::as_u64;
use super::{fail, iso, Fail, Out, D, PAGE_SIZE};
use crate::people::{
    parse_rfc3339, Change, Contact, ContactPatch, Note, People, Task, TaskPatch, TaskState, Writer,
    MAX_FIELD_BYTES, MAX_NOTE_BYTES,
};
use crate::table::text;
use crate::Sim;
use axum::http::StatusCode;
use serde_json::{json, Map, Value};

/// The `ORIGINATOR_ID` a contact keeps beside its `ORIGIN_ID`.
const ORIGINATOR: &str = "ORIGINATOR_ID";
const CONTACT_OWNER_TYPE: u64 = 3;

pub(super) fn handles(method: &str) -> bool {
    matches!(
        method,
        "crm.contact.list"
            | "crm.contact.add"
            | "crm.contact.update"
            | "crm.contact.get"
            | "crm.activity.todo.add"
            | "crm.activity.todo.update"
            | "crm.activity.update"
            | "crm.activity.get"
            | "crm.activity.list"
            | "crm.timeline.comment.add"
            | "crm.timeline.comment.list"
    )
}

impl Sim {
    /// One contact, activity or comment method; its change, if any, is announced.
    pub(super) fn bitrix24_people(
        &self,
        method: &str,
        p: &Map<String, Value>,
        request_id: Option<String>,
    ) -> Result<Out, Fail> {
        let writer = Writer::Api(request_id);
        let (out, change) = {
            let mut stores = self.people();
            call(stores.of(D), method, p, &writer)?
        };
        self.announce(D, change);
        Ok(out)
    }
}

fn not_found() -> Fail {
    fail(StatusCode::BAD_REQUEST, "NOT_FOUND", "Not found")
}

fn id_of(p: &Map<String, Value>) -> Result<String, Fail> {
    as_u64(p.get("id"))
        .map(|id| id.to_string())
        .ok_or_else(|| fail(StatusCode::BAD_REQUEST, "INVALID_ARG_VALUE", "id is required"))
}

fn fields_of(p: &Map<String, Value>) -> Result<&Map<String, Value>, Fail> {
    match p.get("fields") {
        Some(Value::Object(f)) => Ok(f),
        _ => Err(fail(
            StatusCode::BAD_REQUEST,
            "INVALID_ARG_VALUE",
            "Parameter 'fields' must be array.",
        )),
    }
}

fn call(
    people: &mut People,
    method: &str,
    p: &Map<String, Value>,
    w: &Writer,
) -> Result<(Out, Option<Change>), Fail> {
    let plain = |v: Value| Out::plain(v);
    match method {
        "crm.contact.list" => Ok((list(people, p)?, None)),
        "crm.contact.get" => {
            let id = id_of(p)?;
            let c = people.contacts.get(&id).ok_or_else(not_found)?;
            Ok((plain(render_contact(c)), None))
        }
        "crm.contact.add" => {
            let patch = contact_patch(fields_of(p)?)?;
            let change = people.create_contact(patch, w);
            let id = change.crm_id.parse::<u64>().map_or(Value::Null, Value::from);
            Ok((plain(id), Some(change)))
        }
        "crm.contact.update" => {
            let id = id_of(p)?;
            let patch = contact_patch(fields_of(p)?)?;
            let change = people.update_contact(&id, patch, w).ok_or_else(not_found)?;
            Ok((plain(Value::Bool(true)), Some(change)))
        }
        "crm.activity.todo.add" => {
            let patch = todo_patch(people, p, None)?;
            let change = people.create_task(patch, w);
            let id = change.crm_id.parse::<u64>().unwrap_or_default();
            Ok((plain(json!({ "id": id })), Some(change)))
        }
        "crm.activity.todo.update" => {
            let id = id_of(p)?;
            let owner = people.tasks.get(&id).ok_or_else(not_found)?.contact.clone();
            let patch = todo_patch(people, p, owner)?;
            let change = people.update_task(&id, patch, w).ok_or_else(not_found)?;
            let n = id.parse::<u64>().unwrap_or_default();
            Ok((plain(json!({ "id": n })), Some(change)))
        }
        "crm.activity.update" => {
            let id = id_of(p)?;
            let patch = activity_patch(fields_of(p)?)?;
            let change = people.update_task(&id, patch, w).ok_or_else(not_found)?;
            Ok((plain(Value::Bool(true)), Some(change)))
        }
        "crm.activity.get" => {
            let id = id_of(p)?;
            let t = people.tasks.get(&id).ok_or_else(not_found)?;
            Ok((plain(render_activity(t)), None))
        }
        "crm.activity.list" => Ok((
            page_of(people.tasks.iter().map(render_activity).collect(), p)?,
            None,
        )),
        "crm.timeline.comment.list" => Ok((
            page_of(people.notes.iter().map(render_comment).collect(), p)?,
            None,
        )),
        "crm.timeline.comment.add" => {
            let f = fields_of(p)?;
            let entity_type = f.get("ENTITY_TYPE").and_then(Value::as_str).unwrap_or_default();
            if !entity_type.eq_ignore_ascii_case("contact") {
                return Err(fail(
                    StatusCode::BAD_REQUEST,
                    "INVALID_ARG_VALUE",
                    "crm-sim keeps comments on contacts only",
                ));
            }
            let owner = as_u64(f.get("ENTITY_ID")).map(|i| i.to_string());
            let owner = owner
                .filter(|o| people.contacts.get(o).is_some())
                .ok_or_else(|| {
                    fail(
                        StatusCode::BAD_REQUEST,
                        "OWNER_NOT_FOUND",
                        "Owner entity not found",
                    )
                })?;
            let comment = f.get("COMMENT").and_then(text).unwrap_or_default();
            if comment.trim().is_empty() || comment.len() > MAX_NOTE_BYTES {
                return Err(fail(
                    StatusCode::BAD_REQUEST,
                    "INVALID_ARG_VALUE",
                    "COMMENT is empty or too long",
                ));
            }
            let (id, _) = people.put_note(None, None, Some(owner), comment, Map::new(), w);
            Ok((plain(id.parse::<u64>().map_or(Value::Null, Value::from)), None))
        }
        _ => Err(fail(
            StatusCode::NOT_FOUND,
            "ERROR_METHOD_NOT_FOUND",
            "Method not found!",
        )),
    }
}

/// A text field: `""` and `null` clear it.
fn text_field(v: &Value) -> Result<Option<String>, Fail> {
    let s = match v {
        Value::Null => return Ok(None),
        other => text(other).ok_or_else(|| {
            fail(
                StatusCode::BAD_REQUEST,
                "INVALID_ARG_VALUE",
                "a field value must be a string",
            )
        })?,
    };
    if s.len() > MAX_FIELD_BYTES {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "ERROR_CORE",
            "a field value is too long",
        ));
    }
    Ok(Some(s).filter(|s| !s.is_empty()))
}

/// `Y`/`N` (also `1`/`0` and booleans); empty clears.
fn yes_no(v: &Value) -> Result<Option<bool>, Fail> {
    match v {
        Value::Bool(b) => Ok(Some(*b)),
        Value::Number(n) => Ok(Some(n.as_u64() != Some(0))),
        Value::Null => Ok(None),
        Value::String(s) => match s.as_str() {
            "Y" | "1" => Ok(Some(true)),
            "N" | "0" => Ok(Some(false)),
            "" => Ok(None),
            _ => Err(fail(
                StatusCode::BAD_REQUEST,
                "INVALID_ARG_VALUE",
                "a Y/N field takes Y or N",
            )),
        },
        _ => Err(fail(
            StatusCode::BAD_REQUEST,
            "INVALID_ARG_VALUE",
            "a Y/N field takes Y or N",
        )),
    }
}

/// A multi-field (`PHONE`, `EMAIL`): the first `WORK` entry's value, or the first entry's.
fn multi(v: &Value) -> Result<Option<String>, Fail> {
    let entries: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        Value::Object(m) => m.values().collect(),
        Value::Null => Vec::new(),
        Value::String(s) if s.is_empty() => Vec::new(),
        _ => {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                "INVALID_ARG_VALUE",
                "a multi-field takes a list of {VALUE, VALUE_TYPE}",
            ))
        }
    };
    let work = entries
        .iter()
        .find(|e| e.get("VALUE_TYPE").and_then(Value::as_str) == Some("WORK"))
        .or_else(|| entries.first());
    match work.and_then(|e| e.get("VALUE")) {
        Some(v) => text_field(v),
        None => Ok(None),
    }
}

fn user_id(v: &Value) -> Result<Option<String>, Fail> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        v => match as_u64(Some(v)) {
            Some(0) => Ok(None),
            Some(n) => Ok(Some(n.to_string())),
            None => Err(fail(
                StatusCode::BAD_REQUEST,
                "INVALID_ARG_VALUE",
                "a user id must be a number",
            )),
        },
    }
}

fn contact_patch(f: &Map<String, Value>) -> Result<ContactPatch, Fail> {
    let mut p = ContactPatch::default();
    for (k, v) in f {
        match k.as_str() {
            "NAME" => p.first_name = Some(text_field(v)?),
            "LAST_NAME" => p.last_name = Some(text_field(v)?),
            "PHONE" => p.phone = Some(multi(v)?),
            "EMAIL" => p.email = Some(multi(v)?),
            "ASSIGNED_BY_ID" => p.manager = Some(user_id(v)?),
            "UF_CRM_SEGMENT" => p.segment = Some(text_field(v)?),
            "UF_CRM_CONSENT_SMS" => p.consent_sms = Some(yes_no(v)?),
            "UF_CRM_CONSENT_EMAIL" => p.consent_email = Some(yes_no(v)?),
            "ORIGIN_ID" => p.external_id = Some(text_field(v)?),
            "ORIGINATOR_ID" => {
                p.extra
                    .insert(ORIGINATOR.into(), text_field(v)?.map_or(Value::Null, Value::from));
            }
            _ => {}
        }
    }
    Ok(p)
}

fn yn(b: Option<bool>) -> Value {
    b.map_or(Value::Null, |b| Value::from(if b { "Y" } else { "N" }))
}

fn render_contact(c: &Contact) -> Value {
    let f = &c.fields;
    let seq = c.crm_id.parse::<u64>().unwrap_or_default();
    let entry = |n: u64, ty: &str, v: &str| json!([{"ID": (seq * 10 + n).to_string(), "VALUE_TYPE": "WORK", "VALUE": v, "TYPE_ID": ty}]);
    let mut out = json!({"ID": c.crm_id, "NAME": f.first_name, "LAST_NAME": f.last_name,
        "ASSIGNED_BY_ID": f.manager, "UF_CRM_SEGMENT": f.segment,
        "UF_CRM_CONSENT_SMS": yn(f.consent_sms), "UF_CRM_CONSENT_EMAIL": yn(f.consent_email),
        "ORIGINATOR_ID": c.extra.get(ORIGINATOR).cloned().unwrap_or(Value::Null),
        "ORIGIN_ID": c.external_id, "HAS_PHONE": yn(Some(f.phone.is_some())),
        "HAS_EMAIL": yn(Some(f.email.is_some())), "DATE_CREATE": iso(c.meta.created_at),
        "DATE_MODIFY": iso(c.meta.updated_at)});
    if let Some(phone) = &f.phone {
        out["PHONE"] = entry(1, "PHONE", phone);
    }
    if let Some(email) = &f.email {
        out["EMAIL"] = entry(2, "EMAIL", email);
    }
    out
}

fn list(people: &People, p: &Map<String, Value>) -> Result<Out, Fail> {
    page_of(people.contacts.iter().map(render_contact).collect(), p)
}

/// A `*.list` answer over rendered records: `filter` (the `crm.item.list` operators), `order`
/// by `ID` (`ASC` by default), `select` (`ID` always), pages of 50 from `start`.
fn page_of(mut found: Vec<Value>, p: &Map<String, Value>) -> Result<Out, Fail> {
    let conditions = conditions(p.get("filter"))?;
    let select: Vec<String> = match p.get("select") {
        Some(Value::Array(a)) => a.iter().filter_map(text).collect(),
        Some(Value::Object(m)) => m.values().filter_map(text).collect(),
        _ => Vec::new(),
    };
    let start = as_u64(p.get("start")).unwrap_or(0) as usize;
    found.retain(|r| {
        conditions
            .iter()
            .all(|c| matches(c, r.get(&c.field).and_then(text)))
    });
    let id = |r: &Value| as_u64(r.get("ID")).unwrap_or_default();
    found.sort_by_key(id);
    let descending = p
        .get("order")
        .and_then(|o| o.get("ID"))
        .and_then(Value::as_str)
        .is_some_and(|o| o.eq_ignore_ascii_case("desc"));
    if descending {
        found.reverse();
    }
    let total = found.len();
    let page: Vec<Value> = found
        .into_iter()
        .skip(start)
        .take(PAGE_SIZE)
        .map(|r| {
            if select.is_empty() || select.iter().any(|s| s == "*") {
                return r;
            }
            let mut out = Map::new();
            out.insert("ID".into(), r["ID"].clone());
            for s in &select {
                out.insert(s.clone(), r.get(s).cloned().unwrap_or(Value::Null));
            }
            Value::Object(out)
        })
        .collect();
    Ok(Out {
        result: Value::from(page),
        total: Some(total),
        next: (total > start + PAGE_SIZE).then_some(start + PAGE_SIZE),
    })
}

fn render_comment(n: &Note) -> Value {
    json!({"ID": n.crm_id, "ENTITY_ID": n.contact, "ENTITY_TYPE": "contact", "COMMENT": n.text,
        "CREATED": iso(n.meta.created_at)})
}

fn deadline(v: &Value) -> Result<Option<time::OffsetDateTime>, Fail> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        v => v.as_str().and_then(parse_rfc3339).map(Some).ok_or_else(|| {
            fail(
                StatusCode::BAD_REQUEST,
                "INVALID_ARG_VALUE",
                "deadline must be a date-time",
            )
        }),
    }
}

fn external_of(description: &Option<String>) -> Option<Option<String>> {
    Some(
        description
            .as_deref()
            .and_then(|d| d.strip_prefix("backbone:"))
            .map(str::to_owned),
    )
}

/// `crm.activity.todo.add|update`: the owner must be a contact (and, on update, the task's own).
fn todo_patch(people: &People, p: &Map<String, Value>, owner: Option<String>) -> Result<TaskPatch, Fail> {
    let owner_type = as_u64(p.get("ownerTypeId"));
    let owner_id = as_u64(p.get("ownerId")).map(|o| o.to_string());
    let owner_ok = owner_type == Some(CONTACT_OWNER_TYPE)
        && owner_id
            .as_ref()
            .is_some_and(|o| people.contacts.get(o).is_some())
        && (owner.is_none() || owner == owner_id);
    if !owner_ok {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "OWNER_NOT_FOUND",
            "Owner entity not found",
        ));
    }
    let mut patch = TaskPatch {
        contact: Some(owner_id),
        ..TaskPatch::default()
    };
    match p.get("deadline").map(deadline).transpose()? {
        Some(d @ Some(_)) => patch.due_at = Some(d),
        _ if owner.is_none() => {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                "INVALID_ARG_VALUE",
                "deadline is required",
            ))
        }
        _ => {}
    }
    if let Some(t) = p.get("title") {
        patch.title = Some(text_field(t)?);
    }
    if let Some(d) = p.get("description") {
        patch.description = Some(text_field(d)?);
        patch.external_id = patch.description.as_ref().and_then(external_of);
    }
    if let Some(r) = p.get("responsibleId") {
        patch.assignee = Some(user_id(r)?);
    }
    Ok(patch)
}

/// `crm.activity.update` `fields`.
fn activity_patch(f: &Map<String, Value>) -> Result<TaskPatch, Fail> {
    let mut patch = TaskPatch::default();
    for (k, v) in f {
        match k.as_str() {
            "COMPLETED" => {
                patch.state = Some(if yes_no(v)?.unwrap_or(false) {
                    TaskState::Done
                } else {
                    TaskState::Open
                })
            }
            "SUBJECT" => patch.title = Some(text_field(v)?),
            "DESCRIPTION" => {
                patch.description = Some(text_field(v)?);
                patch.external_id = patch.description.as_ref().and_then(external_of);
            }
            "DEADLINE" => patch.due_at = Some(deadline(v)?),
            "RESPONSIBLE_ID" => patch.assignee = Some(user_id(v)?),
            _ => {}
        }
    }
    Ok(patch)
}

fn render_activity(t: &Task) -> Value {
    json!({"ID": t.crm_id, "OWNER_ID": t.contact, "OWNER_TYPE_ID": CONTACT_OWNER_TYPE.to_string(),
        "TYPE_ID": "6", "PROVIDER_ID": "CRM_TODO", "PROVIDER_TYPE_ID": "TODO",
        "SUBJECT": t.title, "DESCRIPTION": t.description, "DEADLINE": t.due_at.map(iso),
        "COMPLETED": yn(Some(t.state != TaskState::Open)), "RESPONSIBLE_ID": t.assignee,
        "CREATED": iso(t.meta.created_at), "LAST_UPDATED": iso(t.meta.updated_at)})
}
