//! Client cards, tasks and interaction-history entries: the company's copy, with the bounds every
//! edge checks (`docs/two-way-sync.md`, "The field set").

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// The longest client, task or interaction id, in bytes.
pub const MAX_ID_BYTES: usize = 64;
pub const MAX_NAME_BYTES: usize = 128;
pub const MAX_EMAIL_BYTES: usize = 254;
pub const MAX_SEGMENT_BYTES: usize = 64;
pub const MAX_TITLE_BYTES: usize = 255;
pub const MAX_TEXT_BYTES: usize = 4000;

/// Why a value is refused; names the field, never repeats the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

fn check_id(field: &str, raw: &str) -> Result<(), Invalid> {
    if raw.is_empty() {
        return Err(Invalid::new(field, "must not be empty"));
    }
    if raw.len() > MAX_ID_BYTES {
        return Err(Invalid::new(field, format!("longer than {MAX_ID_BYTES} bytes")));
    }
    if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Invalid::new(field, "contains a control character or whitespace"));
    }
    Ok(())
}

fn check_text(field: &str, raw: &str, max: usize, allow_newlines: bool) -> Result<(), Invalid> {
    if raw.trim().is_empty() {
        return Err(Invalid::new(field, "must not be blank"));
    }
    if raw.len() > max {
        return Err(Invalid::new(field, format!("longer than {max} bytes")));
    }
    if raw
        .chars()
        .any(|c| c.is_control() && !(allow_newlines && (c == '\n' || c == '\t')))
    {
        return Err(Invalid::new(field, "contains a control character"));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: impl Into<String>) -> Result<Self, Invalid> {
                let raw = raw.into();
                check_id($field, &raw)?;
                Ok(Self(raw))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// Our id of a client: the key of `crm.outgoing`, `crm.incoming`, `All_Clients`.
    ClientId,
    "client_id"
);
id_type!(TaskId, "task_id");
id_type!(InteractionId, "interaction_id");

/// One field of a client card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    FirstName,
    LastName,
    Phone,
    Email,
    Manager,
    Segment,
    ConsentSms,
    ConsentEmail,
}

impl Field {
    pub const ALL: [Field; 8] = [
        Field::FirstName,
        Field::LastName,
        Field::Phone,
        Field::Email,
        Field::Manager,
        Field::Segment,
        Field::ConsentSms,
        Field::ConsentEmail,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Field::FirstName => "first_name",
            Field::LastName => "last_name",
            Field::Phone => "phone",
            Field::Email => "email",
            Field::Manager => "manager",
            Field::Segment => "segment",
            Field::ConsentSms => "consent_sms",
            Field::ConsentEmail => "consent_email",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == s)
    }

    /// A consent: `true` or `false`; an unknown consent counts as no consent.
    pub fn is_flag(self) -> bool {
        matches!(self, Field::ConsentSms | Field::ConsentEmail)
    }

    /// Checks a value for this field: the right type and within bounds.
    pub fn check(self, value: &Value) -> Result<(), Invalid> {
        let name = self.as_str();
        match (self.is_flag(), value) {
            (_, Value::Empty) => Ok(()),
            (true, Value::Flag(_)) => Ok(()),
            (true, Value::Text(_)) => Err(Invalid::new(name, "must be true, false or null")),
            (false, Value::Flag(_)) => Err(Invalid::new(name, "must be a string or null")),
            (false, Value::Text(t)) => match self {
                Field::FirstName | Field::LastName => check_text(name, t, MAX_NAME_BYTES, false),
                Field::Segment => check_text(name, t, MAX_SEGMENT_BYTES, false),
                Field::Manager => check_id(name, t),
                Field::Phone => {
                    let digits = t.strip_prefix('+').unwrap_or("");
                    if (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
                        Ok(())
                    } else {
                        Err(Invalid::new(name, "must be E.164: + and 8 to 15 digits"))
                    }
                }
                Field::Email => {
                    check_text(name, t, MAX_EMAIL_BYTES, false)?;
                    let mut parts = t.split('@');
                    match (parts.next(), parts.next(), parts.next()) {
                        (Some(l), Some(d), None)
                            if !l.is_empty() && d.contains('.') && !t.contains(char::is_whitespace) =>
                        {
                            Ok(())
                        }
                        _ => Err(Invalid::new(name, "must be one address with one @")),
                    }
                }
                Field::ConsentSms | Field::ConsentEmail => unreachable!("flags are matched above"),
            },
        }
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A field's value: text, a flag, or nothing known (`null`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    #[default]
    Empty,
    Flag(bool),
    Text(String),
}

impl Value {
    pub fn text(s: impl Into<String>) -> Self {
        Value::Text(s.into())
    }

    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }

    pub fn as_flag(&self) -> Option<bool> {
        match self {
            Value::Flag(b) => Some(*b),
            _ => None,
        }
    }

    /// A stable digest of the value (FNV-1a over its JSON), for comparing with what was last
    /// synced without keeping a second copy around.
    pub fn digest(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in json.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

/// The fields of a client card. A field that is not in the map is empty.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Card(pub BTreeMap<Field, Value>);

impl Card {
    pub fn get(&self, field: Field) -> &Value {
        static EMPTY: Value = Value::Empty;
        self.0.get(&field).unwrap_or(&EMPTY)
    }

    pub fn set(&mut self, field: Field, value: Value) {
        if value == Value::Empty {
            self.0.remove(&field);
        } else {
            self.0.insert(field, value);
        }
    }

    pub fn with(mut self, field: Field, value: Value) -> Self {
        self.set(field, value);
        self
    }

    /// Fields whose values differ between the two cards.
    pub fn differs(&self, other: &Card) -> Vec<Field> {
        Field::ALL
            .into_iter()
            .filter(|f| self.get(*f) != other.get(*f))
            .collect()
    }

    pub fn check(&self) -> Result<(), Invalid> {
        for (f, v) in &self.0 {
            f.check(v)?;
        }
        Ok(())
    }

    /// Parses a JSON object of card fields (`{"first_name": "Ada", "phone": null}`): unknown
    /// fields, wrong types and values out of bounds are refused, naming the field.
    pub fn patch_from_json(doc: &serde_json::Value) -> Result<BTreeMap<Field, Value>, Invalid> {
        let obj = doc
            .as_object()
            .ok_or_else(|| Invalid::new("fields", "must be a JSON object"))?;
        let mut out = BTreeMap::new();
        for (k, v) in obj {
            let field = Field::parse(k).ok_or_else(|| Invalid::new(k.as_str(), "is not a card field"))?;
            let value = match v {
                serde_json::Value::Null => Value::Empty,
                serde_json::Value::Bool(b) => Value::Flag(*b),
                serde_json::Value::String(s) => Value::Text(s.clone()),
                _ => {
                    return Err(Invalid::new(
                        field.as_str(),
                        "must be a string, a boolean or null",
                    ))
                }
            };
            field.check(&value)?;
            out.insert(field, value);
        }
        Ok(out)
    }
}

/// Who made a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// An internal service, over the HTTP API.
    Api,
    /// A record on `All_Clients`.
    AllClients,
    /// The CRM, read back after a webhook or a reconciliation.
    Crm,
    /// An operator resolving a conflict.
    Operator,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::AllClients => "all_clients",
            Source::Crm => "crm",
            Source::Operator => "operator",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Source::Api, Source::AllClients, Source::Crm, Source::Operator]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

/// When and by whom a field last changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub source: Source,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Open,
    Done,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub task_id: TaskId,
    pub client_id: ClientId,
    pub title: String,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub due_at: Option<OffsetDateTime>,
    pub state: TaskState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
}

impl Task {
    pub fn check(&self) -> Result<(), Invalid> {
        check_text("title", &self.title, MAX_TITLE_BYTES, false)?;
        if let Some(a) = &self.assignee {
            check_id("assignee", a)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InteractionChannel {
    Call,
    Email,
    Sms,
    Chat,
    Visit,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
}

/// One entry of a client's interaction history. Append-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interaction {
    pub interaction_id: InteractionId,
    pub client_id: ClientId,
    pub channel: InteractionChannel,
    pub direction: Direction,
    pub text: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl Interaction {
    pub fn check(&self) -> Result<(), Invalid> {
        check_text("text", &self.text, MAX_TEXT_BYTES, true)
    }
}

/// `X-Request-Id`: 1..=128 of `[A-Za-z0-9._:-]`.
pub fn check_request_id(raw: &str) -> Result<(), Invalid> {
    if raw.is_empty() || raw.len() > 128 {
        return Err(Invalid::new("x-request-id", "must be 1 to 128 characters"));
    }
    if !raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(Invalid::new("x-request-id", "may hold only A-Z a-z 0-9 . _ : -"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_bounded_and_never_echoed() {
        assert!(ClientId::parse("c-1").is_ok());
        let e = ClientId::parse("a".repeat(65)).unwrap_err();
        assert_eq!(e.field, "client_id");
        assert!(ClientId::parse("a b").is_err());
        assert!(ClientId::parse("").is_err());
        let secret = "x\u{0}secret";
        let e = ClientId::parse(secret).unwrap_err();
        assert!(!e.to_string().contains("secret"));
    }

    #[test]
    fn fields_check_type_and_shape() {
        assert!(Field::Phone.check(&Value::text("+79991234567")).is_ok());
        assert!(Field::Phone.check(&Value::text("89991234567")).is_err());
        assert!(Field::Email.check(&Value::text("ada@example.com")).is_ok());
        assert!(Field::Email.check(&Value::text("a@b@example.com")).is_err());
        assert!(Field::ConsentSms.check(&Value::Flag(true)).is_ok());
        assert!(Field::ConsentSms.check(&Value::text("yes")).is_err());
        assert!(Field::FirstName.check(&Value::Flag(true)).is_err());
        assert!(Field::FirstName.check(&Value::text("a".repeat(129))).is_err());
        assert!(Field::Segment.check(&Value::Empty).is_ok());
    }

    #[test]
    fn a_patch_names_the_bad_field() {
        let ok = Card::patch_from_json(&serde_json::json!({"first_name": "Ada", "phone": null})).unwrap();
        assert_eq!(ok[&Field::FirstName], Value::text("Ada"));
        assert_eq!(ok[&Field::Phone], Value::Empty);
        let e = Card::patch_from_json(&serde_json::json!({"nickname": "x"})).unwrap_err();
        assert_eq!(e.field, "nickname");
        let e = Card::patch_from_json(&serde_json::json!({"consent_sms": 1})).unwrap_err();
        assert_eq!(e.field, "consent_sms");
    }

    #[test]
    fn digests_tell_values_apart() {
        assert_eq!(Value::text("a").digest(), Value::text("a").digest());
        assert_ne!(Value::text("a").digest(), Value::text("b").digest());
        assert_ne!(Value::Flag(true).digest(), Value::text("true").digest());
        assert_ne!(Value::Empty.digest(), Value::text("").digest());
    }

    #[test]
    fn request_ids_are_validated() {
        assert!(check_request_id("req-1.a:b_c").is_ok());
        assert!(check_request_id("").is_err());
        assert!(check_request_id("a b").is_err());
        assert!(check_request_id(&"a".repeat(129)).is_err());
    }
}
