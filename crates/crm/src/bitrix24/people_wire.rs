//! Bitrix24 wire shapes of contacts (`crm.contact.*`), to-dos (`crm.activity.todo.*`) and
//! timeline comments, and their mapping to [`Card`] and [`CrmTask`]. Only the keys below are ever
//! sent: Bitrix24 ignores unknown fields without an error.

use super::Bitrix24ContactFields;
use crate::cards;
use backbone_sync::clients::{
    Card, ClientId, CrmContact, CrmTask, Field, Interaction, Task, TaskId, TaskState, Value,
};
use backbone_sync::ports::CrmError;
use serde_json::{json, Map, Value as Json};

const VENDOR: &str = "bitrix24";
/// `ownerTypeId` of a contact.
pub(super) const CONTACT_TYPE: u64 = 3;
/// Multi-field entries we own carry this `VALUE_TYPE`.
const WORK: &str = "WORK";

fn key(f: &Bitrix24ContactFields, field: Field) -> &str {
    match field {
        Field::FirstName => "NAME",
        Field::LastName => "LAST_NAME",
        Field::Phone => "PHONE",
        Field::Email => "EMAIL",
        Field::Manager => "ASSIGNED_BY_ID",
        Field::Segment => &f.segment,
        Field::ConsentSms => &f.consent_sms,
        Field::ConsentEmail => &f.consent_email,
    }
}

/// One field as written. An empty value clears: `""`, or `[]` for a multi-field.
fn write_value(field: Field, value: &Value) -> Result<Json, CrmError> {
    let multi = matches!(field, Field::Phone | Field::Email);
    Ok(match value {
        Value::Empty if multi => json!([]),
        Value::Empty => json!(""),
        Value::Flag(b) => json!(if *b { "Y" } else { "N" }),
        Value::Text(t) if multi => json!([{"VALUE": t, "VALUE_TYPE": WORK}]),
        Value::Text(t) => {
            if field == Field::Manager {
                cards::numeric_user("manager", t)?;
            }
            json!(t)
        }
    })
}

/// The `fields` of `crm.contact.add` (`creating`: empty values are left out) or `.update`.
pub(super) fn contact_fields(
    f: &Bitrix24ContactFields,
    card: &Card,
    fields: &[Field],
    creating: bool,
) -> Result<Map<String, Json>, CrmError> {
    let mut out = Map::new();
    for field in fields {
        let value = card.get(*field);
        if creating && *value == Value::Empty {
            continue;
        }
        out.insert(key(f, *field).to_owned(), write_value(*field, value)?);
    }
    Ok(out)
}

pub(super) fn list_params(f: &Bitrix24ContactFields, client: &ClientId) -> Json {
    json!({
        "filter": {"ORIGINATOR_ID": f.originator_id, "ORIGIN_ID": client.as_str()},
        "select": ["ID"],
    })
}

pub(super) fn add_params(
    f: &Bitrix24ContactFields,
    client: &ClientId,
    card: &Card,
    fields: &[Field],
) -> Result<Json, CrmError> {
    let mut body = contact_fields(f, card, fields, true)?;
    body.insert("ORIGINATOR_ID".into(), json!(f.originator_id));
    body.insert("ORIGIN_ID".into(), json!(client.as_str()));
    Ok(json!({"fields": body, "params": {"REGISTER_SONET_EVENT": "N"}}))
}

pub(super) fn update_params(
    f: &Bitrix24ContactFields,
    id: u64,
    card: &Card,
    fields: &[Field],
) -> Result<Json, CrmError> {
    let body = contact_fields(f, card, fields, false)?;
    Ok(json!({"id": id, "fields": body, "params": {"REGISTER_SONET_EVENT": "N"}}))
}

/// A number Bitrix24 may render as a string (`"82"`) or a number.
pub(super) fn as_id(v: Option<&Json>) -> Option<u64> {
    match v? {
        Json::Number(n) => n.as_u64(),
        Json::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// The ids a `crm.contact.list` returned (PHP renders an empty list as `[]`, never `{}`).
pub(super) fn listed_ids(result: &Json) -> Result<Vec<u64>, CrmError> {
    let items = result
        .as_array()
        .ok_or_else(|| CrmError::permanent("crm.contact.list: result is not a list"))?;
    items
        .iter()
        .map(|i| {
            as_id(i.get("ID")).ok_or_else(|| CrmError::permanent("crm.contact.list: an entry without an ID"))
        })
        .collect()
}

/// The value of the first `WORK` entry of a multi-field, or of the first entry when none is.
fn first_work(list: Option<&Json>) -> Value {
    let Some(entries) = list.and_then(Json::as_array) else {
        return Value::Empty;
    };
    let work = entries
        .iter()
        .find(|e| e.get("VALUE_TYPE").and_then(Json::as_str) == Some(WORK))
        .or_else(|| entries.first());
    cards::text_of(work.and_then(|e| e.get("VALUE")))
}

/// A Bitrix24 yes/no user field: `Y`/`N` (`1`/`0` from boolean fields); anything else is kept
/// as text so the bounds check reports it.
fn flag(v: Option<&Json>) -> Value {
    match v {
        Some(Json::Bool(b)) => Value::Flag(*b),
        Some(Json::String(s)) => match s.as_str() {
            "Y" | "1" => Value::Flag(true),
            "N" | "0" => Value::Flag(false),
            _ => Value::Text(s.clone()),
        },
        Some(Json::Number(n)) => match n.as_u64() {
            Some(1) => Value::Flag(true),
            Some(0) => Value::Flag(false),
            _ => Value::Text(n.to_string()),
        },
        _ => Value::Empty,
    }
}

pub(super) fn contact(f: &Bitrix24ContactFields, obj: &Json) -> Result<CrmContact, CrmError> {
    let id = as_id(obj.get("ID")).ok_or_else(|| CrmError::permanent("crm.contact.get: no ID"))?;
    let mut card = Card::default();
    for field in Field::ALL {
        let raw = obj.get(key(f, field));
        let value = match field {
            Field::Phone | Field::Email => first_work(raw),
            Field::ConsentSms | Field::ConsentEmail => flag(raw),
            // No user has id 0: an unassigned contact.
            Field::Manager => match cards::text_of(raw) {
                Value::Text(t) if t == "0" => Value::Empty,
                other => other,
            },
            _ => cards::text_of(raw),
        };
        cards::take(&mut card, field, value, VENDOR);
    }
    let ours = obj.get("ORIGINATOR_ID").and_then(Json::as_str) == Some(f.originator_id.as_str());
    Ok(CrmContact {
        crm_id: id.to_string(),
        client_id: ours
            .then(|| cards::client_id_of(obj.get("ORIGIN_ID").and_then(Json::as_str)))
            .flatten(),
        card,
        modified_at: obj
            .get("DATE_MODIFY")
            .and_then(Json::as_str)
            .and_then(cards::parse_rfc3339),
    })
}

/// `crm.activity.todo.add` (no `id`) or `.update`.
pub(super) fn todo_params(
    f: &Bitrix24ContactFields,
    task: &Task,
    owner: u64,
    id: Option<u64>,
) -> Result<Json, CrmError> {
    let mut p = Map::new();
    if let Some(id) = id {
        p.insert("id".into(), json!(id));
    }
    p.insert("ownerTypeId".into(), json!(CONTACT_TYPE));
    p.insert("ownerId".into(), json!(owner));
    if let Some(due) = task.due_at {
        p.insert("deadline".into(), json!(cards::rfc3339(due)));
    }
    p.insert("title".into(), json!(task.title));
    if id.is_none() {
        p.insert("description".into(), json!(todo_marker(f, task)));
    }
    if let Some(a) = &task.assignee {
        p.insert("responsibleId".into(), json!(cards::numeric_user("assignee", a)?));
    }
    Ok(Json::Object(p))
}

/// `crm.activity.update` of the completion flag: Bitrix24 keeps no cancelled state, so a
/// cancelled task is completed too.
pub(super) fn completion_params(id: u64, state: TaskState) -> Json {
    let completed = if state == TaskState::Open { "N" } else { "Y" };
    json!({"id": id, "fields": {"COMPLETED": completed}})
}

/// The to-do's id in a `crm.activity.todo.add|update` result (`{"id": 9100}`).
pub(super) fn todo_id(result: &Json) -> Result<u64, CrmError> {
    as_id(result.get("id")).ok_or_else(|| CrmError::permanent("crm.activity.todo: result without an id"))
}

pub(super) fn task(f: &Bitrix24ContactFields, obj: &Json) -> Result<CrmTask, CrmError> {
    let id = as_id(obj.get("ID")).ok_or_else(|| CrmError::permanent("crm.activity.get: no ID"))?;
    let text = |k: &str| obj.get(k).and_then(Json::as_str);
    let prefix = format!("{}:", f.originator_id);
    let task_id = text("DESCRIPTION")
        .and_then(|d| d.strip_prefix(prefix.as_str()))
        .and_then(|t| TaskId::parse(t.trim()).ok());
    let state = match text("COMPLETED") {
        Some("Y") => TaskState::Done,
        _ => TaskState::Open,
    };
    let assignee = match cards::text_of(obj.get("RESPONSIBLE_ID")) {
        Value::Text(t) if !t.is_empty() && t != "0" => Some(t),
        _ => None,
    };
    Ok(CrmTask {
        crm_id: id.to_string(),
        task_id,
        title: cards::task_title(text("SUBJECT").map(str::to_owned), VENDOR),
        due_at: text("DEADLINE").and_then(cards::parse_rfc3339),
        state,
        assignee,
        modified_at: text("LAST_UPDATED").and_then(cards::parse_rfc3339),
        contact: as_id(obj.get("OWNER_ID")).map(|v| v.to_string()),
    })
}

/// A to-do's `description`: our task id, read back as the task's external id.
pub(super) fn todo_marker(f: &Bitrix24ContactFields, task: &Task) -> String {
    format!("{}:{}", f.originator_id, task.task_id)
}

pub(super) fn comment_params(i: &Interaction, owner: u64) -> Json {
    json!({"fields": {
        "ENTITY_ID": owner,
        "ENTITY_TYPE": "contact",
        "COMMENT": cards::marked_interaction_line(i),
    }})
}

/// Records made for us lately on a contact, newest first: what a redelivered create looks in
/// before it creates again. One page (50) is enough: a redelivery follows the crash that cut
/// the first create off from our commit within minutes, not after 50 newer entries.
pub(super) fn todo_lookup_params(owner: u64) -> Json {
    json!({
        "filter": {"OWNER_TYPE_ID": CONTACT_TYPE, "OWNER_ID": owner},
        "order": {"ID": "DESC"},
        "select": ["ID", "DESCRIPTION"],
    })
}

pub(super) fn comment_lookup_params(owner: u64) -> Json {
    json!({
        "filter": {"ENTITY_ID": owner, "ENTITY_TYPE": "contact"},
        "order": {"ID": "DESC"},
        "select": ["ID", "COMMENT"],
    })
}

/// The id of the first listed record whose `field` `is_ours`.
pub(super) fn find_listed(result: &Json, field: &str, is_ours: impl Fn(&str) -> bool) -> Option<u64> {
    result.as_array()?.iter().find_map(|r| {
        r.get(field)
            .and_then(Json::as_str)
            .filter(|v| is_ours(v))
            .and(as_id(r.get("ID")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f() -> Bitrix24ContactFields {
        Bitrix24ContactFields::default()
    }

    #[test]
    fn an_update_clears_with_empty_values_and_a_create_leaves_them_out() {
        let card = Card::default().with(Field::ConsentSms, Value::Flag(false));
        let fields = [Field::FirstName, Field::Phone, Field::ConsentSms];
        let update = contact_fields(&f(), &card, &fields, false).unwrap();
        assert_eq!(
            Json::Object(update),
            json!({"NAME": "", "PHONE": [], "UF_CRM_CONSENT_SMS": "N"})
        );
        let create = contact_fields(&f(), &card, &fields, true).unwrap();
        assert_eq!(Json::Object(create), json!({"UF_CRM_CONSENT_SMS": "N"}));
    }

    #[test]
    fn a_manager_that_is_not_a_user_id_is_refused_without_its_value() {
        let card = Card::default().with(Field::Manager, Value::text("boss"));
        let e = contact_fields(&f(), &card, &[Field::Manager], false).unwrap_err();
        assert!(!e.is_transient());
        assert!(!e.message.contains("boss"), "{}", e.message);
    }

    #[test]
    fn the_first_work_entry_is_ours() {
        let c = contact(
            &f(),
            &json!({"ID": "82", "PHONE": [{"ID": "1", "VALUE": "+74950000000", "VALUE_TYPE": "HOME"},
                {"ID": "2", "VALUE": "+79990000001", "VALUE_TYPE": "WORK"}],
                "EMAIL": [{"VALUE": "ada@example.com", "VALUE_TYPE": "OTHER"}],
                "UF_CRM_CONSENT_EMAIL": "1", "ASSIGNED_BY_ID": "0",
                "ORIGINATOR_ID": "someone-else", "ORIGIN_ID": "c-1"}),
        )
        .unwrap();
        assert_eq!(c.card.get(Field::Phone), &Value::text("+79990000001"));
        assert_eq!(c.card.get(Field::Email), &Value::text("ada@example.com"));
        assert_eq!(c.card.get(Field::ConsentEmail), &Value::Flag(true));
        assert_eq!(c.card.get(Field::Manager), &Value::Empty);
        assert_eq!(
            c.client_id, None,
            "another originator's ORIGIN_ID is not our client id"
        );
    }
}
