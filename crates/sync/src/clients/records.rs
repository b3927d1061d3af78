//! The two-way sync's Kafka records, version 1: `crm.outgoing` and `crm.incoming` (internal, made
//! by the outbox), `crm.processed` and `crm.failed` (out), `All_Clients` (in). Contracts in
//! `docs/events/`.

use super::model::{Card, ClientId, Field, Interaction, Invalid, Source, Task, Value};
use super::ports::{Entity, Hint};
use crate::ports::SourcePosition;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;

pub const VERSION: u32 = 1;
pub const HEADER_REQUEST_ID: &str = "x-request-id";

/// What changed on our side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Card,
    Task,
    Interaction,
}

/// `crm.outgoing`: one change of our copy, keyed by client id. The dispatcher merges the card as
/// it is when the record is handled, so an older record never writes older values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutgoingChange {
    pub version: u32,
    /// The outbox row's id.
    pub change_id: i64,
    pub client_id: ClientId,
    pub kind: ChangeKind,
    /// The card's version after the change (kind `card`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_version: Option<i64>,
    /// Fields this change touched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<Field>,
    /// Fields an operator resolved: written to the CRM whatever it holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forced: Vec<Field>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interaction: Option<Interaction>,
    pub source: Source,
    pub request_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
}

/// `crm.incoming`: a verified, stored webhook, keyed by client id (or `crm:<crm id>` when the
/// contact is not linked yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncomingHint {
    pub version: u32,
    pub webhook_id: i64,
    #[serde(flatten)]
    pub hint: Hint,
    pub request_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
}

impl IncomingHint {
    pub fn key(&self) -> String {
        match &self.hint.client_id {
            Some(c) => c.to_string(),
            None => format!("crm:{}", self.hint.crm_id),
        }
    }
}

/// How applying a CRM change ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessedOutcome {
    /// Values were taken into our copy and/or written back to the CRM.
    Applied,
    /// The CRM shows what we last wrote: our own write came back.
    Echo,
    /// Nothing differs.
    Unchanged,
    /// At least one field went to an operator task.
    Conflict,
    /// The record is gone from the CRM (deleted): nothing applied.
    Gone,
}

/// `crm.processed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Processed {
    pub version: u32,
    pub webhook_id: i64,
    pub vendor: String,
    pub entity: Entity,
    pub crm_id: String,
    pub client_id: Option<ClientId>,
    pub outcome: ProcessedOutcome,
    /// Fields taken into our copy.
    pub applied: Vec<Field>,
    /// Fields written back to the CRM (ours won).
    pub sent_back: Vec<Field>,
    /// Fields left to an operator task (both values kept until a person decides).
    pub asked: Vec<Field>,
    pub request_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub processed_at: OffsetDateTime,
}

/// `crm.failed`: why a hint or a change could not be applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failed {
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crm_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<ClientId>,
    pub reason_code: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub source: SourcePosition,
    #[serde(with = "time::serde::rfc3339")]
    pub failed_at: OffsetDateTime,
}

/// `All_Clients` v1 (`docs/events/all-clients-v1.md`): a client's reference data from our systems.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientReference {
    pub event_id: String,
    pub client_id: ClientId,
    pub occurred_at: OffsetDateTime,
    /// The whole card as our systems know it: fields not given are empty.
    pub card: Card,
    pub request_id: Option<String>,
}

/// Why an `All_Clients` record is refused; each is a dead-letter reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefusedReference {
    #[error("not a JSON object")]
    MalformedJson,
    #[error("version must be 1")]
    UnsupportedVersion,
    #[error("{0}")]
    InvalidField(Invalid),
}

impl RefusedReference {
    pub fn code(&self) -> &'static str {
        match self {
            RefusedReference::MalformedJson => "malformed_json",
            RefusedReference::UnsupportedVersion => "unsupported_version",
            RefusedReference::InvalidField(_) => "invalid_field",
        }
    }
}

impl ClientReference {
    /// The whole card, except fields our copy changed after this record was made: an older
    /// record never overwrites a newer change.
    pub fn fields_to_apply(&self, current: Option<&super::ports::StoredCard>) -> BTreeMap<Field, Value> {
        Field::ALL
            .into_iter()
            .filter(|f| {
                current
                    .and_then(|c| c.stamps.get(f))
                    .is_none_or(|s| s.at <= self.occurred_at)
            })
            .map(|f| (f, self.card.get(f).clone()))
            .collect()
    }

    /// Parses one record's value. The key is not trusted: the client id is the body's.
    pub fn parse(bytes: &[u8]) -> Result<Self, RefusedReference> {
        let doc: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|_| RefusedReference::MalformedJson)?;
        let obj = doc.as_object().ok_or(RefusedReference::MalformedJson)?;
        let invalid = |f: &str, r: &str| RefusedReference::InvalidField(Invalid::new(f, r));
        match obj.get("version") {
            Some(v) if v.as_u64() == Some(u64::from(VERSION)) => {}
            Some(serde_json::Value::Number(_)) => return Err(RefusedReference::UnsupportedVersion),
            _ => return Err(invalid("version", "must be the number 1")),
        }
        let text = |f: &str| -> Result<&str, RefusedReference> {
            obj.get(f)
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| invalid(f, "must be a string"))
        };
        let event_id = text("event_id")?;
        if event_id.is_empty() || event_id.len() > 128 || event_id.chars().any(char::is_control) {
            return Err(invalid("event_id", "must be 1 to 128 printable characters"));
        }
        let client_id = ClientId::parse(text("client_id")?).map_err(RefusedReference::InvalidField)?;
        let occurred_at = OffsetDateTime::parse(
            text("occurred_at")?,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|_| invalid("occurred_at", "must be an RFC 3339 time"))?;
        let fields = obj
            .get("fields")
            .ok_or_else(|| invalid("fields", "is required"))?;
        let fields = Card::patch_from_json(fields).map_err(|e| {
            RefusedReference::InvalidField(Invalid::new(format!("fields.{}", e.field), e.reason))
        })?;
        let request_id = match obj.get("request_id") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => {
                super::model::check_request_id(s).map_err(RefusedReference::InvalidField)?;
                Some(s.clone())
            }
            Some(_) => return Err(invalid("request_id", "must be a string")),
        };
        let card = Card(
            fields
                .into_iter()
                .filter(|(_, v)| *v != Value::Empty)
                .collect::<BTreeMap<_, _>>(),
        );
        Ok(Self {
            event_id: event_id.to_owned(),
            client_id,
            occurred_at,
            card,
            request_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_reference_parses_and_names_what_is_wrong() {
        let ok = ClientReference::parse(
            br#"{"version":1,"event_id":"e-1","client_id":"c-1","occurred_at":"2026-12-02T10:00:00Z","fields":{"first_name":"Ada","consent_sms":true}}"#,
        )
        .unwrap();
        assert_eq!(ok.client_id.as_str(), "c-1");
        assert_eq!(ok.card.get(Field::ConsentSms), &Value::Flag(true));
        let refuse = |s: &str| ClientReference::parse(s.as_bytes()).unwrap_err();
        assert_eq!(refuse("{").code(), "malformed_json");
        assert_eq!(refuse("[]").code(), "malformed_json");
        assert_eq!(
            refuse(r#"{"version":2,"event_id":"e","client_id":"c","occurred_at":"2026-12-02T10:00:00Z","fields":{}}"#).code(),
            "unsupported_version"
        );
        let e = refuse(
            r#"{"version":1,"event_id":"e","client_id":"c","occurred_at":"2026-12-02T10:00:00Z","fields":{"phone":"123"}}"#,
        );
        assert_eq!(e.code(), "invalid_field");
        assert!(e.to_string().starts_with("fields.phone:"), "{e}");
        assert!(!e.to_string().contains("123"));
        let e = refuse(
            r#"{"version":1,"event_id":"e","client_id":"c 1","occurred_at":"2026-12-02T10:00:00Z","fields":{}}"#,
        );
        assert!(e.to_string().starts_with("client_id:"), "{e}");
    }

    #[test]
    fn incoming_hints_are_keyed_by_client_or_crm_id() {
        let mut h = IncomingHint {
            version: 1,
            webhook_id: 7,
            hint: Hint {
                vendor: "bitrix24".into(),
                delivery_id: "d".into(),
                entity: Entity::Contact,
                crm_id: "82".into(),
                client_id: None,
                event: "ONCRMCONTACTUPDATE".into(),
                occurred_at: None,
            },
            request_id: "r".into(),
            received_at: OffsetDateTime::UNIX_EPOCH,
        };
        assert_eq!(h.key(), "crm:82");
        h.hint.client_id = Some(ClientId::parse("c-1").unwrap());
        assert_eq!(h.key(), "c-1");
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(json["entity"], "contact");
        assert_eq!(json["crm_id"], "82");
        let back: IncomingHint = serde_json::from_value(json).unwrap();
        assert_eq!(back, h);
    }
}
