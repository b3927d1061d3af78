//! Kommo wire shapes of contacts, tasks and notes, and their mapping to [`Card`] and
//! [`CrmTask`]. Our client id, the segment and the consents are contact custom fields
//! ([`KommoContactFields`]); the phone and e-mail are the multi-fields `PHONE` and `EMAIL`, of
//! which we own the first `WORK` value.

use super::KommoContactFields;
use crate::cards;
use backbone_sync::clients::{
    Card, ClientId, CrmContact, CrmTask, Field, Interaction, Task, TaskState, Value,
};
use backbone_sync::ports::CrmError;
use serde_json::{json, Map, Value as Json};
use time::OffsetDateTime;

const VENDOR: &str = "kommo";
const WORK: &str = "WORK";
/// The `result` text of a task we cancelled (Kommo only completes tasks).
pub(super) const CANCELLED: &str = "cancelled";

/// Where a card field lives on a contact.
enum Slot {
    Key(&'static str),
    Code(&'static str),
    Custom(u64),
}

fn slot(f: &KommoContactFields, field: Field) -> Slot {
    match field {
        Field::FirstName => Slot::Key("first_name"),
        Field::LastName => Slot::Key("last_name"),
        Field::Manager => Slot::Key("responsible_user_id"),
        Field::Phone => Slot::Code("PHONE"),
        Field::Email => Slot::Code("EMAIL"),
        Field::Segment => Slot::Custom(f.segment),
        Field::ConsentSms => Slot::Custom(f.consent_sms),
        Field::ConsentEmail => Slot::Custom(f.consent_email),
    }
}

/// One contact to add (`id` none: empty fields left out, our client id and `request_id` added)
/// or update (empty fields cleared: `""` for names, `null` for the rest).
pub(super) fn contact_body(
    f: &KommoContactFields,
    client: &ClientId,
    id: Option<u64>,
    card: &Card,
    fields: &[Field],
) -> Result<Json, CrmError> {
    let creating = id.is_none();
    let mut body = Map::new();
    if let Some(id) = id {
        body.insert("id".into(), json!(id));
    }
    let mut custom = Vec::new();
    for field in fields {
        let value = card.get(*field);
        if creating && *value == Value::Empty {
            continue;
        }
        let json_value = match value {
            Value::Empty => Json::Null,
            Value::Flag(b) => json!(b),
            Value::Text(t) if *field == Field::Manager => json!(cards::numeric_user("manager", t)?),
            Value::Text(t) => json!(t),
        };
        match slot(f, *field) {
            Slot::Key(k) => {
                let v = match (k, json_value) {
                    ("first_name" | "last_name", Json::Null) => json!(""),
                    (_, v) => v,
                };
                body.insert(k.into(), v);
            }
            Slot::Code(code) => {
                let values = match json_value {
                    Json::Null => Json::Null,
                    v => json!([{"value": v, "enum_code": WORK}]),
                };
                custom.push(json!({"field_code": code, "values": values}));
            }
            Slot::Custom(field_id) => {
                let values = match json_value {
                    Json::Null => Json::Null,
                    v => json!([{"value": v}]),
                };
                custom.push(json!({"field_id": field_id, "values": values}));
            }
        }
    }
    if creating {
        custom.push(json!({"field_id": f.client_id, "values": [{"value": client.as_str()}]}));
        body.insert("request_id".into(), json!(client.as_str()));
    }
    if !custom.is_empty() {
        body.insert("custom_fields_values".into(), Json::Array(custom));
    }
    Ok(Json::Array(vec![Json::Object(body)]))
}

/// The entries of `custom_fields_values` (absent or `null` when a contact has none).
fn custom_fields(obj: &Json) -> &[Json] {
    obj.get("custom_fields_values")
        .and_then(Json::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The values of one custom field, found by id or by code.
fn values(obj: &Json, found: impl Fn(&Json) -> bool) -> &[Json] {
    custom_fields(obj)
        .iter()
        .find(|c| found(c))
        .and_then(|c| c.get("values"))
        .and_then(Json::as_array)
        .map_or(&[], Vec::as_slice)
}

fn by_id(id: u64) -> impl Fn(&Json) -> bool {
    move |c: &Json| c.get("field_id").and_then(Json::as_u64) == Some(id)
}

fn by_code(code: &'static str) -> impl Fn(&Json) -> bool {
    move |c: &Json| c.get("field_code").and_then(Json::as_str) == Some(code)
}

/// Our client id on a contact, from its client-id custom field.
pub(super) fn client_of(f: &KommoContactFields, obj: &Json) -> Option<ClientId> {
    let v = values(obj, by_id(f.client_id)).first()?.get("value")?;
    cards::client_id_of(v.as_str())
}

/// A checkbox: `true`/`false` (also `"1"`/`"0"`); anything else is kept for the bounds check.
fn flag(v: Option<&Json>) -> Value {
    match v {
        Some(Json::Bool(b)) => Value::Flag(*b),
        Some(Json::String(s)) if s == "1" || s == "true" => Value::Flag(true),
        Some(Json::String(s)) if s == "0" || s == "false" => Value::Flag(false),
        other => cards::text_of(other),
    }
}

pub(super) fn contact(f: &KommoContactFields, obj: &Json) -> Result<CrmContact, CrmError> {
    let id = obj
        .get("id")
        .and_then(Json::as_u64)
        .ok_or_else(|| CrmError::permanent("Kommo contact without an id"))?;
    let mut card = Card::default();
    for field in Field::ALL {
        let value = match slot(f, field) {
            Slot::Key(k) => match cards::text_of(obj.get(k)) {
                // No user has id 0: nobody is responsible.
                Value::Text(t) if field == Field::Manager && t == "0" => Value::Empty,
                other => other,
            },
            Slot::Code(code) => {
                let list = values(obj, by_code(code));
                let work = list
                    .iter()
                    .find(|v| v.get("enum_code").and_then(Json::as_str) == Some(WORK))
                    .or_else(|| list.first());
                cards::text_of(work.and_then(|v| v.get("value")))
            }
            Slot::Custom(field_id) => {
                let v = values(obj, by_id(field_id)).first().and_then(|v| v.get("value"));
                if matches!(field, Field::ConsentSms | Field::ConsentEmail) {
                    flag(v)
                } else {
                    cards::text_of(v)
                }
            }
        };
        cards::take(&mut card, field, value, VENDOR);
    }
    Ok(CrmContact {
        crm_id: id.to_string(),
        client_id: client_of(f, obj),
        card,
        modified_at: unix(obj.get("updated_at")),
    })
}

fn unix(v: Option<&Json>) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(v?.as_i64()?).ok()
}

/// The contacts of a `GET /api/v4/contacts` page.
pub(super) fn listed(page: &Json) -> &[Json] {
    page.pointer("/_embedded/contacts")
        .and_then(Json::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The id of the first entity of a write's answer (`{"_embedded": {"<entity>": [{"id": …}]}}`).
pub(super) fn written_id(answer: &Json, entity: &str) -> Result<u64, CrmError> {
    answer
        .pointer(&format!("/_embedded/{entity}/0/id"))
        .and_then(Json::as_u64)
        .ok_or_else(|| CrmError::permanent(format!("Kommo {entity} write: answer without an id")))
}

/// One task to add (`id` none, with `request_id` = our task id) or update. A cancelled task is
/// completed with the result `cancelled`.
pub(super) fn task_body(task: &Task, contact: u64, id: Option<u64>) -> Result<Json, CrmError> {
    let mut body = Map::new();
    if let Some(id) = id {
        body.insert("id".into(), json!(id));
    }
    // Kommo keeps no external id on tasks: our id rides at the end of the text.
    body.insert(
        "text".into(),
        json!(format!(
            "{}{}",
            task.title,
            cards::ref_marker(task.task_id.as_str())
        )),
    );
    if let Some(due) = task.due_at {
        body.insert("complete_till".into(), json!(due.unix_timestamp()));
    }
    if let Some(a) = &task.assignee {
        body.insert(
            "responsible_user_id".into(),
            json!(cards::numeric_user("assignee", a)?),
        );
    }
    match id {
        None => {
            body.insert("entity_id".into(), json!(contact));
            body.insert("entity_type".into(), json!("contacts"));
            body.insert("request_id".into(), json!(task.task_id.as_str()));
        }
        Some(_) => {
            body.insert("is_completed".into(), json!(task.state != TaskState::Open));
            if task.state == TaskState::Cancelled {
                body.insert("result".into(), json!({"text": CANCELLED}));
            }
        }
    }
    Ok(Json::Array(vec![Json::Object(body)]))
}

pub(super) fn task(obj: &Json) -> Result<CrmTask, CrmError> {
    let id = obj
        .get("id")
        .and_then(Json::as_u64)
        .ok_or_else(|| CrmError::permanent("Kommo task without an id"))?;
    let completed = obj.get("is_completed").and_then(Json::as_bool) == Some(true);
    let cancelled = obj.pointer("/result/text").and_then(Json::as_str) == Some(CANCELLED);
    let state = match (completed, cancelled) {
        (false, _) => TaskState::Open,
        (true, false) => TaskState::Done,
        (true, true) => TaskState::Cancelled,
    };
    // Our id at the end of the text (a task made in Kommo has none).
    let (title, reference) = cards::split_ref(obj.get("text").and_then(Json::as_str).unwrap_or_default());
    let assignee = match cards::text_of(obj.get("responsible_user_id")) {
        Value::Text(t) if t != "0" => Some(t),
        _ => None,
    };
    Ok(CrmTask {
        crm_id: id.to_string(),
        task_id: reference.and_then(|t| backbone_sync::clients::TaskId::parse(t).ok()),
        title: cards::task_title(Some(title.to_owned()), VENDOR),
        due_at: unix(obj.get("complete_till")),
        state,
        assignee,
        modified_at: unix(obj.get("updated_at")),
        contact: obj.get("entity_id").and_then(Json::as_u64).map(|v| v.to_string()),
    })
}

/// The newest tasks on a contact: what a redelivered create looks in before it creates again.
/// One page (50) is enough: a redelivery follows the crash that cut the first create off from
/// our commit within minutes, not after 50 newer tasks.
pub(super) fn task_lookup(contact: u64) -> String {
    format!("/api/v4/tasks?filter%5Bentity_type%5D=contacts&filter%5Bentity_id%5D%5B%5D={contact}&order%5Bcreated_at%5D=desc&limit=50")
}

/// The newest notes on a contact, as [`task_lookup`].
pub(super) fn note_lookup(contact: u64) -> String {
    format!("/api/v4/contacts/{contact}/notes?order%5Bid%5D=desc&limit=50")
}

/// The id of the first `_embedded.<what>` entry whose text at `pointer` `is_ours`.
pub(super) fn find_embedded(
    page: Option<&Json>,
    what: &str,
    pointer: &str,
    is_ours: impl Fn(&str) -> bool,
) -> Option<u64> {
    page?
        .get("_embedded")?
        .get(what)?
        .as_array()?
        .iter()
        .find_map(|e| {
            e.pointer(pointer)
                .and_then(Json::as_str)
                .filter(|t| is_ours(t))
                .and(e.get("id").and_then(Json::as_u64))
        })
}

pub(super) fn note_body(i: &Interaction) -> Json {
    json!([{
        "note_type": "common",
        "params": {"text": cards::marked_interaction_line(i)},
        "request_id": i.interaction_id.as_str(),
    }])
}

/// What a 400 says is wrong: each validation error's `code` and `path` (never its `detail`,
/// which may quote the value).
pub(super) fn validation_summary(body: &[u8]) -> String {
    let problem: super::transformers::Problem = serde_json::from_slice(body).unwrap_or_default();
    let parts: Vec<String> = problem
        .validation_errors
        .iter()
        .flat_map(|v| v.errors.iter())
        .filter_map(|e| {
            let code = e.get("code")?.as_str()?;
            let path = e.get("path").and_then(Json::as_str).unwrap_or_default();
            Some(if path.is_empty() {
                code.to_owned()
            } else {
                format!("{code} at {path}")
            })
        })
        .collect();
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_clears_custom_fields_with_null_values() {
        let f = KommoContactFields::default();
        let client = ClientId::parse("c-1").unwrap();
        let card = Card::default().with(Field::Segment, Value::text("vip"));
        let body = contact_body(
            &f,
            &client,
            Some(456),
            &card,
            &[Field::Segment, Field::Phone, Field::LastName],
        )
        .unwrap();
        assert_eq!(
            body,
            json!([{"id": 456, "last_name": "", "custom_fields_values": [
                {"field_id": 900_002, "values": [{"value": "vip"}]},
                {"field_code": "PHONE", "values": null}]}])
        );
    }

    #[test]
    fn a_cancelled_task_reads_back_as_cancelled() {
        let t = task(&json!({"id": 77, "text": "Call back", "is_completed": true,
            "result": {"text": "cancelled"}, "complete_till": 1_796_205_600, "responsible_user_id": 6}))
        .unwrap();
        assert_eq!(t.state, TaskState::Cancelled);
        assert_eq!(t.assignee.as_deref(), Some("6"));
        assert_eq!(t.task_id, None);
    }

    #[test]
    fn validation_errors_are_summarised_without_details() {
        let body = br#"{"validation-errors":[{"request_id":"0","errors":[{"code":"InvalidPhone","path":"custom_fields_values.0.values.0.value","detail":"+7 bad is not a phone"}]}],"status":400}"#;
        let s = validation_summary(body);
        assert_eq!(s, "InvalidPhone at custom_fields_values.0.values.0.value");
    }
}
