//! Kommo tasks on contacts and `common` notes.

use super::{as_u64, error, items, problem, request_id_of, unix, validation_failed, D, HAL};
use crate::people::control::KOMMO_API_USER;
use crate::people::{
    request_id, People, Task, TaskPatch, TaskState, Writer, MAX_FIELD_BYTES, MAX_NOTE_BYTES,
};
use crate::{json_response, origin, Sim};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

fn render_task(t: &Task, origin: &str) -> Value {
    let id = t.crm_id.parse::<u64>().unwrap_or_default();
    let result = match (t.state, t.extra.get("result_text")) {
        (TaskState::Cancelled, _) => json!({"text": "cancelled"}),
        (_, Some(text)) => json!({ "text": text }),
        _ => json!([]),
    };
    json!({"id": id, "created_by": 0, "updated_by": 0, "created_at": unix(t.meta.created_at),
        "updated_at": unix(t.meta.updated_at),
        "responsible_user_id": t.assignee.as_deref().and_then(|a| a.parse::<u64>().ok()),
        "group_id": 0, "entity_id": t.contact.as_deref().and_then(|c| c.parse::<u64>().ok()),
        "entity_type": "contacts", "duration": 0, "is_completed": t.state != TaskState::Open,
        "task_type_id": 1, "text": t.title.clone().unwrap_or_default(), "result": result,
        "complete_till": t.due_at.map(unix), "account_id": 1,
        "_links": {"self": {"href": format!("{origin}/api/v4/tasks/{id}")}}})
}

/// One task of a request, checked.
fn task_patch(people: &People, t: &Map<String, Value>, update: bool) -> Result<TaskPatch, Vec<Value>> {
    let mut p = TaskPatch::default();
    let mut errors = Vec::new();
    match t.get("text").map(|v| {
        v.as_str()
            .filter(|s| !s.trim().is_empty() && s.len() <= MAX_FIELD_BYTES)
    }) {
        Some(Some(s)) => p.title = Some(Some(s.to_owned())),
        Some(None) => errors.push(error(
            "InvalidType",
            "text",
            "This value should be of type string.",
        )),
        None if !update => errors.push(error("NotBlank", "text", "This value should not be blank.")),
        None => {}
    }
    match t.get("complete_till").map(|v| {
        v.as_i64()
            .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
    }) {
        Some(Some(at)) => p.due_at = Some(Some(at)),
        Some(None) => errors.push(error(
            "InvalidType",
            "complete_till",
            "This value should be of type int.",
        )),
        None if !update => errors.push(error(
            "NotBlank",
            "complete_till",
            "This value should not be blank.",
        )),
        None => {}
    }
    if let Some(r) = t.get("responsible_user_id") {
        match as_u64(r) {
            Some(id) => p.assignee = Some(Some(id.to_string())),
            None => errors.push(error(
                "InvalidType",
                "responsible_user_id",
                "This value should be of type int.",
            )),
        }
    }
    if !update {
        let entity = t.get("entity_id").and_then(as_u64).map(|e| e.to_string());
        let typed = t.get("entity_type").and_then(Value::as_str) == Some("contacts");
        match entity.filter(|e| typed && people.contacts.get(e).is_some()) {
            Some(e) => p.contact = Some(Some(e)),
            None => errors.push(error("NotFound", "entity_id", "Entity not found.")),
        }
    }
    match t.get("is_completed") {
        None => {}
        Some(Value::Bool(done)) => {
            let cancelled = t
                .get("result")
                .and_then(|r| r.get("text"))
                .and_then(Value::as_str);
            p.state = Some(match (done, cancelled) {
                (false, _) => TaskState::Open,
                (true, Some("cancelled")) => TaskState::Cancelled,
                (true, _) => TaskState::Done,
            });
            let result_text = cancelled.filter(|_| *done).map_or(Value::Null, Value::from);
            p.extra.insert("result_text".into(), result_text);
        }
        Some(_) => errors.push(error(
            "InvalidType",
            "is_completed",
            "This value should be of type bool.",
        )),
    }
    if errors.is_empty() {
        Ok(p)
    } else {
        Err(errors)
    }
}

pub(super) async fn add_tasks(State(sim): State<Sim>, headers: HeaderMap, body: Bytes) -> Response {
    write_tasks(sim, headers, body, false).await
}

pub(super) async fn update_tasks(State(sim): State<Sim>, headers: HeaderMap, body: Bytes) -> Response {
    write_tasks(sim, headers, body, true).await
}

async fn write_tasks(sim: Sim, headers: HeaderMap, body: Bytes, update: bool) -> Response {
    if let Err(r) = sim.kommo_admit(&headers).await {
        return r;
    }
    let items = match items(&body, "tasks") {
        Ok(i) => i,
        Err(r) => return r,
    };
    let origin = origin(&headers);
    let writer = Writer::Api(request_id(&headers));
    let mut out = Vec::with_capacity(items.len());
    let mut changes = Vec::with_capacity(items.len());
    {
        let mut stores = sim.people();
        let people = stores.of(D);
        let mut planned = Vec::with_capacity(items.len());
        let mut refused = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let rid = request_id_of(item, i);
            let obj = item.as_object().cloned().unwrap_or_default();
            let id = obj.get("id").and_then(as_u64).map(|id| id.to_string());
            match task_patch(people, &obj, update) {
                Ok(_) if update && id.as_ref().is_none_or(|id| people.tasks.get(id).is_none()) => refused
                    .push(
                        json!({"request_id": rid, "errors": [error("NotFound", "id", "Entity not found.")]}),
                    ),
                Ok(mut p) => {
                    if !update {
                        p.assignee.get_or_insert(Some(KOMMO_API_USER.into()));
                    }
                    planned.push((rid, id, p))
                }
                Err(errors) => refused.push(json!({"request_id": rid, "errors": errors})),
            }
        }
        if !refused.is_empty() {
            return validation_failed(refused);
        }
        for (rid, id, patch) in planned {
            let change = match id.filter(|_| update) {
                Some(id) => people.update_task(&id, patch, &writer),
                None => Some(people.create_task(patch, &writer)),
            };
            let Some(change) = change else { continue };
            let id = change.crm_id.parse::<u64>().unwrap_or_default();
            let mut entry = json!({"id": id, "request_id": rid,
                "_links": {"self": {"href": format!("{origin}/api/v4/tasks/{id}")}}});
            if update {
                entry["updated_at"] = Value::from(unix(change.at));
            }
            out.push(entry);
            changes.push(change);
        }
    }
    sim.announce(D, changes);
    json_response(
        StatusCode::OK,
        HAL,
        &json!({"_links": {"self": {"href": format!("{origin}/api/v4/tasks")}}, "_embedded": {"tasks": out}}),
    )
}

pub(super) async fn read_task(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = sim.kommo_admit(&headers).await {
        return r;
    }
    if id.parse::<u64>().is_err() {
        return problem(StatusCode::NOT_FOUND, "Not found");
    }
    match sim.people().of(D).tasks.get(&id) {
        Some(t) => json_response(StatusCode::OK, HAL, &render_task(t, &origin(&headers))),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

pub(super) async fn add_notes(
    State(sim): State<Sim>,
    Path(contact): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = sim.kommo_admit(&headers).await {
        return r;
    }
    let items = match items(&body, "notes") {
        Ok(i) => i,
        Err(r) => return r,
    };
    let origin = origin(&headers);
    let writer = Writer::Api(request_id(&headers));
    let mut stores = sim.people();
    let people = stores.of(D);
    if people.contacts.get(&contact).is_none() {
        return problem(StatusCode::NOT_FOUND, "Entity not found");
    }
    let mut planned = Vec::with_capacity(items.len());
    let mut refused = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let rid = request_id_of(item, i);
        let note_text = item
            .get("params")
            .and_then(|p| p.get("text"))
            .and_then(Value::as_str)
            .filter(|t| !t.trim().is_empty() && t.len() <= MAX_NOTE_BYTES);
        match (item.get("note_type").and_then(Value::as_str), note_text) {
            (Some("common"), Some(t)) => planned.push((rid, t.to_owned())),
            (Some("common"), None) => refused.push(json!({"request_id": rid,
                "errors": [error("NotBlank", "params.text", "This value should not be blank.")]})),
            _ => refused.push(json!({"request_id": rid, "errors": [error("NotSupportedChoice",
                "note_type", "The value you selected is not a valid choice.")]})),
        }
    }
    if !refused.is_empty() {
        return validation_failed(refused);
    }
    let contact_id = contact.parse::<u64>().unwrap_or_default();
    let out: Vec<Value> = planned
        .into_iter()
        .map(|(rid, note_text)| {
            let mut extra = Map::new();
            extra.insert("note_type".into(), Value::from("common"));
            extra.insert("request_id".into(), rid.clone());
            let (id, _) = people.put_note(None, None, Some(contact.clone()), note_text, extra, &writer);
            let id = id.parse::<u64>().unwrap_or_default();
            json!({"id": id, "entity_id": contact_id, "request_id": rid,
                "_links": {"self": {"href": format!("{origin}/api/v4/contacts/{contact_id}/notes/{id}")}}})
        })
        .collect();
    json_response(
        StatusCode::OK,
        HAL,
        &json!({"_links": {"self": {"href": format!("{origin}/api/v4/contacts/{contact_id}/notes")}},
            "_embedded": {"notes": out}}),
    )
}

/// A list query's pairs, and its page: `limit` (1 to 250, 50 by default), `page` from 1, and
/// whether `order[...]` asks for the newest first.
struct ListQuery {
    pairs: Vec<(String, String)>,
    limit: usize,
    page: usize,
    newest_first: bool,
}

impl ListQuery {
    fn parse(raw: Option<&str>) -> Self {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
        let param = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let limit = param("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .unwrap_or(50)
            .clamp(1, 250);
        let page = param("page")
            .and_then(|p| p.parse::<usize>().ok())
            .unwrap_or(1)
            .max(1);
        let newest_first = ["order[created_at]", "order[id]", "order[updated_at]"]
            .iter()
            .any(|k| param(k).is_some_and(|v| v.eq_ignore_ascii_case("desc")));
        Self {
            pairs,
            limit,
            page,
            newest_first,
        }
    }

    fn all(&self, key: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key || *k == format!("{key}[]"))
            .flat_map(|(_, v)| v.split(',').map(|s| s.trim().to_owned()).collect::<Vec<_>>())
            .collect()
    }

    /// This page of `rows` (oldest first as given), or `204` when it is empty.
    fn answer(&self, mut rows: Vec<Value>, embedded: &str, href: &str) -> Response {
        if self.newest_first {
            rows.reverse();
        }
        let page: Vec<Value> = rows
            .into_iter()
            .skip((self.page - 1) * self.limit)
            .take(self.limit)
            .collect();
        if page.is_empty() {
            return StatusCode::NO_CONTENT.into_response();
        }
        json_response(
            StatusCode::OK,
            HAL,
            &json!({"_page": self.page, "_links": {"self": {"href": href}}, "_embedded": {embedded: page}}),
        )
    }
}

pub(super) async fn list_tasks(
    State(sim): State<Sim>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = sim.kommo_admit(&headers).await {
        return r;
    }
    let q = ListQuery::parse(raw.as_deref());
    let types = q.all("filter[entity_type]");
    if types.iter().any(|t| t != "contacts") {
        // crm-sim keeps tasks on contacts only.
        return StatusCode::NO_CONTENT.into_response();
    }
    let entities = q.all("filter[entity_id]");
    let origin = origin(&headers);
    let mut stores = sim.people();
    let rows: Vec<Value> = stores
        .of(D)
        .tasks
        .iter()
        .filter(|t| entities.is_empty() || t.contact.as_ref().is_some_and(|c| entities.contains(c)))
        .map(|t| render_task(t, &origin))
        .collect();
    q.answer(rows, "tasks", &format!("{origin}/api/v4/tasks"))
}

pub(super) async fn list_notes(
    State(sim): State<Sim>,
    Path(contact): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = sim.kommo_admit(&headers).await {
        return r;
    }
    let q = ListQuery::parse(raw.as_deref());
    let origin = origin(&headers);
    let mut stores = sim.people();
    let people = stores.of(D);
    if people.contacts.get(&contact).is_none() {
        return problem(StatusCode::NOT_FOUND, "Entity not found");
    }
    let contact_id = contact.parse::<u64>().unwrap_or_default();
    let rows: Vec<Value> = people
        .notes
        .iter()
        .filter(|n| n.contact.as_deref() == Some(contact.as_str()))
        .map(|n| {
            let id = n.crm_id.parse::<u64>().unwrap_or_default();
            json!({"id": id, "entity_id": contact_id, "note_type": "common",
                "params": {"text": n.text}, "created_at": unix(n.meta.created_at),
                "updated_at": unix(n.meta.updated_at), "account_id": 1,
                "_links": {"self": {"href": format!("{origin}/api/v4/contacts/{contact_id}/notes/{id}")}}})
        })
        .collect();
    q.answer(
        rows,
        "notes",
        &format!("{origin}/api/v4/contacts/{contact_id}/notes"),
    )
}
