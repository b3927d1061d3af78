//! Salesforce wire shapes of `Contact` and `Task` records for client cards, tasks and history,
//! and their mapping to [`Card`] and [`CrmTask`].

use super::transformers as tf;
use super::{SalesforceContactFields, SalesforceTaskFields};
use crate::cards;
use backbone_sync::clients::{Card, CrmContact, CrmTask, Field, Interaction, Task, TaskId, TaskState, Value};
use backbone_sync::ports::{CrmError, CrmErrorKind};
use serde_json::{json, Map, Value as Json};
use time::OffsetDateTime;

const VENDOR: &str = "salesforce";
/// `Contact.HasOptedOutOfEmail`: the negation of our e-mail consent.
const OPTED_OUT_OF_EMAIL: &str = "HasOptedOutOfEmail";

fn key(f: &SalesforceContactFields, field: Field) -> &str {
    match field {
        Field::FirstName => "FirstName",
        Field::LastName => "LastName",
        Field::Phone => "Phone",
        Field::Email => "Email",
        Field::Manager => "OwnerId",
        Field::Segment => &f.segment,
        Field::ConsentSms => &f.consent_sms,
        Field::ConsentEmail => OPTED_OUT_OF_EMAIL,
    }
}

/// The upsert body: only the written fields; `null` clears one.
pub(super) fn contact_body(f: &SalesforceContactFields, card: &Card, fields: &[Field]) -> Json {
    let mut body = Map::new();
    for field in fields {
        let value = match (field, card.get(*field)) {
            (_, Value::Empty) => Json::Null,
            (Field::ConsentEmail, Value::Flag(b)) => Json::Bool(!b),
            (_, Value::Flag(b)) => Json::Bool(*b),
            (_, Value::Text(t)) => Json::String(t.clone()),
        };
        body.insert(key(f, *field).to_owned(), value);
    }
    Json::Object(body)
}

/// A date-time as Salesforce renders it (`2026-12-02T10:00:00.000+0000`).
fn time_of(v: Option<&Json>) -> Option<OffsetDateTime> {
    let mut v = v?.clone();
    tf::normalise_time(&mut v);
    v.as_str().and_then(cards::parse_rfc3339)
}

fn record_id(obj: &Json, what: &str) -> Result<String, CrmError> {
    obj.get("Id")
        .or_else(|| obj.get("id"))
        .and_then(Json::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| CrmError::permanent(format!("{what}: answer without an Id")))
}

pub(super) fn contact(f: &SalesforceContactFields, obj: &Json) -> Result<CrmContact, CrmError> {
    let crm_id = record_id(obj, "Contact")?;
    let mut card = Card::default();
    for field in Field::ALL {
        let raw = obj.get(key(f, field));
        let value = match (field, raw) {
            (Field::ConsentEmail, Some(Json::Bool(out))) => Value::Flag(!out),
            (_, Some(Json::Bool(b))) => Value::Flag(*b),
            (_, raw) => cards::text_of(raw),
        };
        cards::take(&mut card, field, value, VENDOR);
    }
    Ok(CrmContact {
        crm_id,
        client_id: cards::client_id_of(obj.get(&f.client_id).and_then(Json::as_str)),
        card,
        modified_at: time_of(obj.get("LastModifiedDate")),
    })
}

/// `ActivityDate`: the UTC date of a time.
fn date(t: OffsetDateTime) -> String {
    let d = t.to_offset(time::UtcOffset::UTC).date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

fn status(s: TaskState) -> &'static str {
    match s {
        TaskState::Open => "Not Started",
        TaskState::Done => "Completed",
        TaskState::Cancelled => "Deferred",
    }
}

/// The task upsert body (by `task_fields.task_id`); `WhoId` is the contact.
pub(super) fn task_body(task: &Task, contact: &str) -> Json {
    let mut body = Map::new();
    body.insert("Subject".into(), json!(task.title));
    body.insert("ActivityDate".into(), json!(task.due_at.map(date)));
    body.insert("Status".into(), json!(status(task.state)));
    if let Some(a) = &task.assignee {
        body.insert("OwnerId".into(), json!(a));
    }
    body.insert("WhoId".into(), json!(contact));
    Json::Object(body)
}

pub(super) fn task(t: &SalesforceTaskFields, obj: &Json) -> Result<CrmTask, CrmError> {
    let crm_id = record_id(obj, "Task")?;
    let text = |k: &str| obj.get(k).and_then(Json::as_str);
    let state = match text("Status") {
        Some("Completed") => TaskState::Done,
        Some("Deferred") => TaskState::Cancelled,
        _ => TaskState::Open,
    };
    let due_at = text("ActivityDate").and_then(|d| {
        let format = time::macros::format_description!("[year]-[month]-[day]");
        time::Date::parse(d, format)
            .ok()
            .map(|d| d.midnight().assume_utc())
    });
    Ok(CrmTask {
        crm_id,
        task_id: text(&t.task_id).and_then(|s| TaskId::parse(s).ok()),
        title: cards::task_title(text("Subject").map(str::to_owned), VENDOR),
        due_at,
        state,
        assignee: text("OwnerId").filter(|s| !s.is_empty()).map(str::to_owned),
        modified_at: time_of(obj.get("LastModifiedDate")),
        contact: text("WhoId").filter(|s| !s.is_empty()).map(str::to_owned),
    })
}

/// An interaction as a completed task (upserted by `task_fields.interaction_id`).
pub(super) fn interaction_body(i: &Interaction, contact: &str) -> Json {
    json!({
        "Subject": format!("{} {}", cards::channel(i.channel), cards::direction(i.direction)),
        "Description": i.text,
        "Status": "Completed",
        "ActivityDate": date(i.at),
        "WhoId": contact,
    })
}

/// The record's Id from an upsert's `201`/`200` answer (`{"id", "success", "created"}`);
/// `None` for `204` (no body), when the caller reads the record instead.
pub(super) fn upserted_id(status: u16, body: &[u8], what: &str) -> Result<Option<String>, CrmError> {
    if status == 204 || body.is_empty() {
        return Ok(None);
    }
    let v: Json = crate::wire::parse_json(body, what)?;
    if v.get("success") == Some(&Json::Bool(false)) {
        return Err(CrmError::permanent(format!(
            "{what}: Salesforce answered success: false"
        )));
    }
    record_id(&v, what).map(Some)
}

/// A refused call by its status and first `errorCode` (never its message: Salesforce quotes the
/// value it refused). `fields` names the fields at fault, when Salesforce says.
pub(super) fn refusal(
    status: u16,
    retry_after: Option<std::time::Duration>,
    body: &[u8],
    what: &str,
) -> CrmError {
    let errors = tf::parse_errors(body);
    let first = errors.first();
    let code = first.map(|e| e.code.as_str()).unwrap_or_default();
    let fields = serde_json::from_slice::<Vec<Json>>(body)
        .ok()
        .and_then(|v| v.first()?.get("fields")?.as_array().cloned())
        .map(|f| {
            f.iter()
                .filter_map(Json::as_str)
                .filter(|n| tf::is_api_name(n))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|f| !f.is_empty())
        .map(|f| format!(" ({f})"))
        .unwrap_or_default();
    let mut e = cards::refused(status, retry_after, what, &format!("{code}{fields}"));
    if (400..500).contains(&status)
        && status != 408
        && status != 429
        && tf::classify(code) == CrmErrorKind::Transient
    {
        e.kind = CrmErrorKind::Transient;
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_email_consent_is_the_negated_opt_out_both_ways() {
        let f = SalesforceContactFields::default();
        let card = Card::default().with(Field::ConsentEmail, Value::Flag(true));
        let body = contact_body(&f, &card, &[Field::ConsentEmail, Field::Segment]);
        assert_eq!(body, json!({"HasOptedOutOfEmail": false, "Segment__c": null}));
        let c = contact(
            &f,
            &json!({"Id": "003A", "HasOptedOutOfEmail": true, "Sms_Consent__c": null,
                "Backbone_Client_Id__c": "c-1", "LastModifiedDate": "2026-12-02T10:00:00.000+0000"}),
        )
        .unwrap();
        assert_eq!(c.card.get(Field::ConsentEmail), &Value::Flag(false));
        assert_eq!(c.card.get(Field::ConsentSms), &Value::Empty);
        assert_eq!(c.modified_at, Some(time::macros::datetime!(2026-12-02 10:00 UTC)));
    }

    #[test]
    fn a_refusal_names_the_code_and_fields_but_never_the_value() {
        let body = br#"[{"message":"Email: invalid email address: x@@y","errorCode":"INVALID_EMAIL_ADDRESS","fields":["Email"]}]"#;
        let e = refusal(400, None, body, "Contact upsert");
        assert_eq!(
            e.message,
            "Contact upsert: HTTP 400 INVALID_EMAIL_ADDRESS (Email)"
        );
        assert!(!e.is_transient());
        let locked = refusal(
            400,
            None,
            br#"[{"errorCode":"UNABLE_TO_LOCK_ROW","message":""}]"#,
            "x",
        );
        assert!(locked.is_transient());
    }
}
