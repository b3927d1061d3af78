//! Generic CRM wire shapes of contacts, tasks and interactions (`docs/openapi/crm-generic-v1.yaml`)
//! and their mapping to [`Card`] and [`CrmTask`].

use crate::cards;
use backbone_sync::clients::{Card, CrmContact, CrmTask, Field, Interaction, Task, TaskState, Value};
use backbone_sync::ports::CrmError;
use serde_json::{json, Map, Value as Json};

const VENDOR: &str = "generic";

/// The member of a contact that carries `field`.
pub(super) fn member(field: Field) -> &'static str {
    match field {
        Field::FirstName => "firstName",
        Field::LastName => "lastName",
        Field::Phone => "phone",
        Field::Email => "email",
        Field::Manager => "manager",
        Field::Segment => "segment",
        Field::ConsentSms => "consentSms",
        Field::ConsentEmail => "consentEmail",
    }
}

fn to_json(v: &Value) -> Json {
    match v {
        Value::Empty => Json::Null,
        Value::Flag(b) => Json::Bool(*b),
        Value::Text(t) => Json::String(t.clone()),
    }
}

fn from_json(v: Option<&Json>) -> Value {
    match v {
        Some(Json::Bool(b)) => Value::Flag(*b),
        other => cards::text_of(other),
    }
}

/// `PUT /api/v1/contacts/{externalId}`: only the written fields; `null` clears one.
pub(super) fn contact_body(card: &Card, fields: &[Field]) -> Json {
    let body: Map<String, Json> = fields
        .iter()
        .map(|f| (member(*f).to_owned(), to_json(card.get(*f))))
        .collect();
    Json::Object(body)
}

/// The CRM's id of a record in an answer (`"id"`, a string; a number is accepted too).
pub(super) fn record_id(obj: &Json, what: &str) -> Result<String, CrmError> {
    match obj.get("id") {
        Some(Json::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Json::Number(n)) => Ok(n.to_string()),
        _ => Err(CrmError::permanent(format!("{what}: answer without an `id`"))),
    }
}

pub(super) fn contact(obj: &Json) -> Result<CrmContact, CrmError> {
    let crm_id = record_id(obj, "contact")?;
    let mut card = Card::default();
    for f in Field::ALL {
        cards::take(&mut card, f, from_json(obj.get(member(f))), VENDOR);
    }
    Ok(CrmContact {
        crm_id,
        client_id: cards::client_id_of(obj.get("externalId").and_then(Json::as_str)),
        card,
        modified_at: obj
            .get("updatedAt")
            .and_then(Json::as_str)
            .and_then(cards::parse_rfc3339),
    })
}

fn state(s: TaskState) -> &'static str {
    match s {
        TaskState::Open => "open",
        TaskState::Done => "done",
        TaskState::Cancelled => "cancelled",
    }
}

/// `PUT /api/v1/tasks/{externalId}`.
pub(super) fn task_body(task: &Task, contact: &str) -> Json {
    json!({
        "contactId": contact,
        "title": task.title,
        "dueAt": task.due_at.map(cards::rfc3339),
        "state": state(task.state),
        "assignee": task.assignee,
    })
}

pub(super) fn task(obj: &Json) -> Result<CrmTask, CrmError> {
    let crm_id = record_id(obj, "task")?;
    let state = match obj.get("state").and_then(Json::as_str) {
        Some("open") => TaskState::Open,
        Some("done") => TaskState::Done,
        Some("cancelled") => TaskState::Cancelled,
        _ => {
            return Err(CrmError::permanent(
                "task: `state` is not open, done or cancelled",
            ))
        }
    };
    let text = |k: &str| obj.get(k).and_then(Json::as_str).map(str::to_owned);
    Ok(CrmTask {
        crm_id,
        task_id: text("externalId").and_then(|s| backbone_sync::clients::TaskId::parse(s).ok()),
        title: cards::task_title(text("title"), VENDOR),
        due_at: text("dueAt").as_deref().and_then(cards::parse_rfc3339),
        state,
        assignee: text("assignee").filter(|a| !a.is_empty()),
        modified_at: text("updatedAt").as_deref().and_then(cards::parse_rfc3339),
        contact: text("contactId").filter(|c| !c.is_empty()),
    })
}

/// `PUT /api/v1/interactions/{externalId}`.
pub(super) fn interaction_body(i: &Interaction, contact: &str) -> Json {
    json!({
        "contactId": contact,
        "channel": cards::channel(i.channel),
        "direction": cards::direction(i.direction),
        "text": i.text,
        "at": cards::rfc3339(i.at),
    })
}

/// The problem `code` of a refusal (RFC 9457 body), never its `detail`.
pub(super) fn problem_code(body: &[u8]) -> String {
    serde_json::from_slice::<Json>(body)
        .ok()
        .and_then(|v| v.get("code").and_then(Json::as_str).map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_written_fields_are_sent_and_empty_is_null() {
        let card = Card::default()
            .with(Field::FirstName, Value::text("Ada"))
            .with(Field::ConsentSms, Value::Flag(true));
        let body = contact_body(&card, &[Field::FirstName, Field::ConsentSms, Field::Phone]);
        assert_eq!(
            body,
            json!({"firstName": "Ada", "consentSms": true, "phone": null})
        );
    }

    #[test]
    fn a_contact_reads_into_the_card_without_values_out_of_bounds() {
        let c = contact(&json!({"id": "g-1", "externalId": "c-1", "firstName": "Ada",
            "phone": "8 999", "consentEmail": false, "updatedAt": "2026-12-02T10:00:00Z"}))
        .unwrap();
        assert_eq!(c.crm_id, "g-1");
        assert_eq!(c.client_id.unwrap().as_str(), "c-1");
        assert_eq!(c.card.get(Field::FirstName), &Value::text("Ada"));
        assert_eq!(c.card.get(Field::Phone), &Value::Empty);
        assert_eq!(c.card.get(Field::ConsentEmail), &Value::Flag(false));
        assert!(c.modified_at.is_some());
    }
}
