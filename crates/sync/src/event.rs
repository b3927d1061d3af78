//! Parcel-status events as they arrive on `tracking.events`, validated into domain types.

use crate::ports::DeadLetterReason;
use serde::{Deserialize, Serialize};
use std::fmt;
use time::OffsetDateTime;

/// The only wire version of `tracking.events` this service understands.
pub const SUPPORTED_EVENT_VERSION: u32 = 1;
const MAX_ID_LEN: usize = 128;

/// Why an incoming record cannot become a [`TrackingEvent`]. The `code` is what operators see in the
/// `x-dlq-reason-code` header of `dead.letters` and in `integrations_log.error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    /// What went wrong, in words of the schema only: never a copy of the input.
    #[error("payload is not a valid tracking event JSON document: {0}")]
    Malformed(String),
    /// A record without a value (a tombstone).
    #[error("the record has no value (a tombstone)")]
    Tombstone,
    #[error("field `{field}` is invalid: {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("unsupported event version {0} (supported: {SUPPORTED_EVENT_VERSION})")]
    UnsupportedVersion(u32),
    /// The status is a valid code the mapping does not know (the value is in the dead letter).
    #[error("the status has no CRM mapping")]
    UnmappedStatus(String),
    #[error("the record is {size} bytes, more than the {limit}-byte limit (kafka.max_record_bytes); its value is withheld")]
    TooLarge { size: usize, limit: usize },
    #[error("occurred_at is more than {skew_s} s ahead of this service's clock")]
    InFuture { skew_s: u64 },
}

impl InvalidEvent {
    /// Stable, machine-readable reason code.
    pub fn code(&self) -> DeadLetterReason {
        match self {
            InvalidEvent::Malformed(_) | InvalidEvent::Tombstone => DeadLetterReason::MalformedJson,
            InvalidEvent::InvalidField { .. } => DeadLetterReason::InvalidField,
            InvalidEvent::UnsupportedVersion(_) => DeadLetterReason::UnsupportedVersion,
            InvalidEvent::UnmappedStatus(_) => DeadLetterReason::UnmappedStatus,
            InvalidEvent::TooLarge { .. } => DeadLetterReason::RecordTooLarge,
            InvalidEvent::InFuture { .. } => DeadLetterReason::EventInFuture,
        }
    }
}

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Accepts 1..=128 printable characters.
            pub fn parse(raw: impl Into<String>) -> Result<Self, InvalidEvent> {
                let raw = raw.into();
                let reason = if raw.trim().is_empty() {
                    Some("must not be empty".to_owned())
                } else if raw.len() > MAX_ID_LEN {
                    Some(format!("longer than {MAX_ID_LEN} bytes"))
                } else if raw.chars().any(char::is_control) {
                    Some("contains control characters".to_owned())
                } else {
                    None
                };
                match reason {
                    Some(reason) => Err(InvalidEvent::InvalidField { field: $field, reason }),
                    None => Ok(Self(raw)),
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_newtype!(
    /// Unique id of one status change, the idempotency key of the whole pipeline.
    EventId,
    "event_id"
);
id_newtype!(
    /// The parcel; also the Kafka key, so one shipment's events keep their order.
    ShipmentId,
    "shipment_id"
);
id_newtype!(
    /// The customer the shipment belongs to.
    ClientId,
    "client_id"
);
id_newtype!(
    /// A tracking status code as the Tracking Service emits it (`IN_TRANSIT`, `DELIVERED`, ...).
    TrackingStatus,
    "status"
);

/// A validated parcel-status change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackingEvent {
    pub event_id: EventId,
    pub client_id: ClientId,
    pub shipment_id: ShipmentId,
    pub status: TrackingStatus,
    pub occurred_at: OffsetDateTime,
    pub version: u32,
    /// Correlation id carried to the CRM as `X-Request-Id`; defaults to the event id.
    pub correlation_id: String,
}

/// The JSON document on `tracking.events` (version 1). Unknown fields are tolerated so the producer
/// can add fields without breaking this consumer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrackingEventWire {
    pub event_id: String,
    pub client_id: String,
    pub shipment_id: String,
    pub status: String,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

impl TrackingEvent {
    /// Parses and validates one record payload.
    pub fn from_json(payload: &[u8]) -> Result<Self, InvalidEvent> {
        // The fast path: plain serde. Only a refused document is read again, with the path
        // tracked, to name the field in the reason.
        match serde_json::from_slice::<TrackingEventWire>(payload) {
            Ok(wire) => Self::try_from(wire),
            Err(_) => {
                let mut de = serde_json::Deserializer::from_slice(payload);
                let reason = match serde_path_to_error::deserialize::<_, TrackingEventWire>(&mut de) {
                    Err(e) => describe_json_error(&e),
                    Ok(_) => match de.end() {
                        Err(e) => describe_json_error_at(&e),
                        Ok(()) => "invalid document".to_owned(),
                    },
                };
                Err(InvalidEvent::Malformed(reason))
            }
        }
    }

    /// The event id and shipment id of a record that is not a valid event, where they are there
    /// and valid themselves: so a refused record's outcome and log row can still name them.
    pub fn salvage_ids(payload: &[u8]) -> (Option<EventId>, Option<ShipmentId>) {
        #[derive(Deserialize)]
        struct Ids {
            event_id: Option<serde_json::Value>,
            shipment_id: Option<serde_json::Value>,
        }
        let Ok(ids) = serde_json::from_slice::<Ids>(payload) else {
            return (None, None);
        };
        let text = |v: Option<serde_json::Value>| match v {
            Some(serde_json::Value::String(s)) => Some(s),
            _ => None,
        };
        (
            text(ids.event_id).and_then(|s| EventId::parse(s).ok()),
            text(ids.shipment_id).and_then(|s| ShipmentId::parse(s).ok()),
        )
    }

    pub fn to_wire(&self) -> TrackingEventWire {
        TrackingEventWire {
            event_id: self.event_id.0.clone(),
            client_id: self.client_id.0.clone(),
            shipment_id: self.shipment_id.0.clone(),
            status: self.status.0.clone(),
            occurred_at: self.occurred_at,
            version: self.version,
            correlation_id: Some(self.correlation_id.clone()),
        }
    }
}

/// A JSON error in the schema's words: where it is and what kind, with the field's name when it
/// is one of ours, never the offending value (serde quotes values: `invalid type: string "..."`).
fn describe_json_error(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let inner = e.inner();
    if !inner.is_data() {
        return describe_json_error_at(inner);
    }
    let field = e.path().to_string();
    let message = inner.to_string();
    let kind = if message.starts_with("missing field") || message.starts_with("duplicate field") {
        // These quote a field name of the schema, nothing the sender chose.
        message.split(" at line ").next().unwrap_or("invalid").to_owned()
    } else if message.starts_with("invalid type") {
        "wrong type".to_owned()
    } else if message.starts_with("invalid length") {
        "wrong length".to_owned()
    } else {
        "invalid value".to_owned()
    };
    let known = [
        "event_id",
        "client_id",
        "shipment_id",
        "status",
        "occurred_at",
        "version",
        "correlation_id",
    ];
    if known.contains(&field.as_str()) {
        format!("field `{field}`: {kind}")
    } else {
        kind
    }
}

fn describe_json_error_at(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "invalid value",
        serde_json::error::Category::Eof => "unexpected end of input",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

impl TryFrom<TrackingEventWire> for TrackingEvent {
    type Error = InvalidEvent;

    fn try_from(wire: TrackingEventWire) -> Result<Self, Self::Error> {
        if wire.version != SUPPORTED_EVENT_VERSION {
            return Err(InvalidEvent::UnsupportedVersion(wire.version));
        }
        let event_id = EventId::parse(wire.event_id)?;
        let correlation_id = match wire.correlation_id {
            Some(c) if !c.trim().is_empty() && c.len() <= MAX_ID_LEN && !c.chars().any(char::is_control) => c,
            Some(_) => {
                return Err(InvalidEvent::InvalidField {
                    field: "correlation_id",
                    reason: "must be 1..=128 printable bytes".into(),
                })
            }
            None => event_id.0.clone(),
        };
        let occurred_at = wire.occurred_at;
        if occurred_at.year() < 2000 {
            return Err(InvalidEvent::InvalidField {
                field: "occurred_at",
                reason: "before the year 2000".into(),
            });
        }
        Ok(TrackingEvent {
            event_id,
            client_id: ClientId::parse(wire.client_id)?,
            shipment_id: ShipmentId::parse(wire.shipment_id)?,
            status: TrackingStatus::parse(wire.status)?,
            occurred_at,
            version: wire.version,
            correlation_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(overrides: &str) -> Vec<u8> {
        let mut v: serde_json::Value = serde_json::json!({
            "event_id": "e-1", "client_id": "c-1", "shipment_id": "s-1",
            "status": "IN_TRANSIT", "occurred_at": "2026-11-01T10:00:00Z", "version": 1
        });
        let o: serde_json::Value = serde_json::from_str(overrides).unwrap();
        for (k, val) in o.as_object().unwrap() {
            v[k] = val.clone();
        }
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn parses_a_valid_event_and_defaults_the_correlation_id() {
        let e = TrackingEvent::from_json(&doc("{}")).unwrap();
        assert_eq!(e.event_id.as_str(), "e-1");
        assert_eq!(e.correlation_id, "e-1");
        assert_eq!(e.occurred_at.unix_timestamp(), 1_793_527_200);
    }

    #[test]
    fn rejects_each_kind_of_bad_input_with_its_code() {
        let cases = [
            (b"not json".to_vec(), "malformed_json"),
            (doc(r#"{"event_id": ""}"#), "invalid_field"),
            (doc(r#"{"shipment_id": "a\u0000b"}"#), "invalid_field"),
            (doc(r#"{"version": 2}"#), "unsupported_version"),
            (doc(r#"{"correlation_id": "x\u0000y"}"#), "invalid_field"),
            (doc(r#"{"occurred_at": "yesterday"}"#), "malformed_json"),
            (doc(r#"{"occurred_at": "1970-01-01T00:00:00Z"}"#), "invalid_field"),
            (
                doc(&format!(r#"{{"client_id": "{}"}}"#, "x".repeat(129))),
                "invalid_field",
            ),
        ];
        for (payload, code) in cases {
            let err = TrackingEvent::from_json(&payload).unwrap_err();
            assert_eq!(err.code().as_str(), code, "{err}");
        }
    }

    #[test]
    fn reasons_never_quote_the_input() {
        let long = "v".repeat(600_000);
        let cases = [
            doc(&format!(r#"{{"version": "{long}"}}"#)),
            doc(&format!(r#"{{"occurred_at": "{long}"}}"#)),
            doc(&format!(r#"{{"status": ["{long}"]}}"#)),
            format!(r#"{{"event_id": "e", "{long}": 1, oops}}"#).into_bytes(),
            doc(r#"{"version": "secret-7436"}"#),
            doc(r#"{"version": -7436}"#),
        ];
        for payload in cases {
            let err = TrackingEvent::from_json(&payload).unwrap_err();
            let reason = err.to_string();
            assert!(reason.len() < 200, "{} bytes: {}", reason.len(), &reason[..200]);
            assert!(!reason.contains("vvv") && !reason.contains("7436"), "{reason}");
            assert_eq!(err.code().as_str(), "malformed_json", "{reason}");
        }
        let err = TrackingEvent::from_json(&doc(r#"{"version": "x"}"#)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "payload is not a valid tracking event JSON document: field `version`: wrong type"
        );
    }

    #[test]
    fn ids_are_salvaged_from_a_refused_record_when_valid() {
        let (e, s) = TrackingEvent::salvage_ids(&doc(r#"{"version": 9}"#));
        assert_eq!(e.map(|e| e.to_string()).as_deref(), Some("e-1"));
        assert_eq!(s.map(|s| s.to_string()).as_deref(), Some("s-1"));
        let (e, s) = TrackingEvent::salvage_ids(br#"{"event_id": 7, "shipment_id": "a\u0000"}"#);
        assert!(e.is_none() && s.is_none());
        assert_eq!(TrackingEvent::salvage_ids(b"{oops"), (None, None));
    }

    #[test]
    fn missing_field_is_malformed() {
        let err = TrackingEvent::from_json(br#"{"event_id":"e"}"#).unwrap_err();
        assert!(matches!(err, InvalidEvent::Malformed(ref m) if m.contains("missing field")));
    }
}
