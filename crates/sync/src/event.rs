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
    #[error("payload is not a valid tracking event JSON document: {0}")]
    Malformed(String),
    #[error("field `{field}` is invalid: {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("unsupported event version {0} (supported: {SUPPORTED_EVENT_VERSION})")]
    UnsupportedVersion(u32),
    #[error("status `{0}` has no CRM mapping")]
    UnmappedStatus(String),
}

impl InvalidEvent {
    /// Stable, machine-readable reason code.
    pub fn code(&self) -> DeadLetterReason {
        match self {
            InvalidEvent::Malformed(_) => DeadLetterReason::MalformedJson,
            InvalidEvent::InvalidField { .. } => DeadLetterReason::InvalidField,
            InvalidEvent::UnsupportedVersion(_) => DeadLetterReason::UnsupportedVersion,
            InvalidEvent::UnmappedStatus(_) => DeadLetterReason::UnmappedStatus,
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
        let wire: TrackingEventWire = serde_json::from_slice(payload).map_err(|e| {
            // serde_json messages quote at most a short token, never the whole payload.
            InvalidEvent::Malformed(e.to_string())
        })?;
        Self::try_from(wire)
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
    fn missing_field_is_malformed() {
        let err = TrackingEvent::from_json(br#"{"event_id":"e"}"#).unwrap_err();
        assert!(matches!(err, InvalidEvent::Malformed(ref m) if m.contains("missing field")));
    }
}
