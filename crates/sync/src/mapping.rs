//! Declarative mapping from a tracking event to the CRM's shape: a status-code table and the CRM's
//! field names. Loaded from configuration and checked once at start-up.

use crate::event::{ClientId, EventId, InvalidEvent, ShipmentId, TrackingEvent};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The CRM's names for the fields of a status record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FieldNames {
    pub client_id: String,
    pub shipment_id: String,
    pub status: String,
    pub timestamp: String,
    /// Where the event id travels, so the CRM (or a human) can trace a record back to its event.
    pub event_id: String,
}

impl Default for FieldNames {
    fn default() -> Self {
        Self {
            client_id: "clientId".into(),
            shipment_id: "shipmentId".into(),
            status: "status".into(),
            timestamp: "timestamp".into(),
            event_id: "eventId".into(),
        }
    }
}

/// How timestamps are written to the CRM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestampFormat {
    #[default]
    Rfc3339,
    UnixMillis,
}

/// Mapping configuration (`[mapping]` in the config file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    #[serde(default)]
    pub fields: FieldNames,
    #[serde(default)]
    pub timestamp_format: TimestampFormat,
    /// Tracking status code -> CRM status code. A configured table replaces the default one
    /// as a whole (it is not serialized into the defaults layer, so layers cannot merge into it).
    #[serde(skip_serializing, default = "default_statuses")]
    pub statuses: BTreeMap<String, String>,
}

fn default_statuses() -> BTreeMap<String, String> {
    [
        ("CREATED", "created"),
        ("ACCEPTED", "accepted"),
        ("IN_TRANSIT", "in_transit"),
        ("AT_PICKUP_POINT", "ready_for_pickup"),
        ("OUT_FOR_DELIVERY", "out_for_delivery"),
        ("DELIVERED", "delivered"),
        ("RETURNED", "returned"),
        ("LOST", "lost"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

impl Default for MappingConfig {
    fn default() -> Self {
        Self {
            fields: FieldNames::default(),
            timestamp_format: TimestampFormat::default(),
            statuses: default_statuses(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("mapping.statuses is empty: no event could ever be sent")]
    NoStatuses,
    #[error("mapping.statuses: `{0}` maps to an empty CRM status")]
    EmptyTarget(String),
    #[error("mapping.fields: field name for `{0}` is empty")]
    EmptyFieldName(&'static str),
    #[error("mapping.fields: `{0}` is used for more than one field")]
    DuplicateFieldName(String),
}

/// The CRM's current record for one shipment, as read before writing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrmShipmentState {
    pub status: String,
    pub updated_at: OffsetDateTime,
}

/// One status write, already in CRM terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrmStatusWrite {
    pub event_id: EventId,
    pub shipment_id: ShipmentId,
    pub client_id: ClientId,
    pub crm_status: String,
    pub timestamp: OffsetDateTime,
    pub correlation_id: String,
}

/// A validated mapping.
#[derive(Debug, Clone)]
pub struct CrmMapping {
    config: MappingConfig,
}

impl CrmMapping {
    pub fn new(config: MappingConfig) -> Result<Self, MappingError> {
        if config.statuses.is_empty() {
            return Err(MappingError::NoStatuses);
        }
        if let Some((k, _)) = config.statuses.iter().find(|(_, v)| v.trim().is_empty()) {
            return Err(MappingError::EmptyTarget(k.clone()));
        }
        let f = &config.fields;
        let names = [
            ("client_id", &f.client_id),
            ("shipment_id", &f.shipment_id),
            ("status", &f.status),
            ("timestamp", &f.timestamp),
            ("event_id", &f.event_id),
        ];
        let mut seen = BTreeSet::new();
        for (field, name) in names {
            if name.trim().is_empty() {
                return Err(MappingError::EmptyFieldName(field));
            }
            if !seen.insert(name.as_str()) {
                return Err(MappingError::DuplicateFieldName(name.clone()));
            }
        }
        Ok(Self { config })
    }

    pub fn fields(&self) -> &FieldNames {
        &self.config.fields
    }

    /// Maps an event to the write the CRM should receive, or refuses a status with no mapping.
    pub fn to_crm(&self, event: &TrackingEvent) -> Result<CrmStatusWrite, InvalidEvent> {
        let crm_status = self
            .config
            .statuses
            .get(event.status.as_str())
            .ok_or_else(|| InvalidEvent::UnmappedStatus(event.status.to_string()))?;
        // Compare and write at the precision the CRM stores, or an older event within the same
        // millisecond would look newer than what the CRM shows.
        let timestamp = match self.config.timestamp_format {
            TimestampFormat::Rfc3339 => event.occurred_at,
            TimestampFormat::UnixMillis => {
                let nanos = event.occurred_at.unix_timestamp_nanos();
                OffsetDateTime::from_unix_timestamp_nanos(nanos - nanos.rem_euclid(1_000_000))
                    .unwrap_or(event.occurred_at)
            }
        };
        Ok(CrmStatusWrite {
            event_id: event.event_id.clone(),
            shipment_id: event.shipment_id.clone(),
            client_id: event.client_id.clone(),
            crm_status: crm_status.clone(),
            timestamp,
            correlation_id: event.correlation_id.clone(),
        })
    }

    /// Renders a write as the CRM's JSON object.
    pub fn render(&self, write: &CrmStatusWrite) -> Map<String, Value> {
        let f = &self.config.fields;
        let mut m = Map::with_capacity(5);
        m.insert(f.client_id.clone(), Value::from(write.client_id.as_str()));
        m.insert(f.shipment_id.clone(), Value::from(write.shipment_id.as_str()));
        m.insert(f.status.clone(), Value::from(write.crm_status.as_str()));
        m.insert(f.timestamp.clone(), self.render_time(write.timestamp));
        m.insert(f.event_id.clone(), Value::from(write.event_id.as_str()));
        m
    }

    /// Reads the CRM's state for a shipment out of its JSON object; `None` when a field is missing
    /// or unreadable (the caller reports that as a CRM contract error).
    pub fn parse_state(&self, obj: &Map<String, Value>) -> Option<CrmShipmentState> {
        let f = &self.config.fields;
        let status = obj.get(&f.status)?.as_str()?.to_owned();
        let updated_at = match obj.get(&f.timestamp)? {
            Value::String(s) => OffsetDateTime::parse(s, &Rfc3339).ok()?,
            Value::Number(n) => {
                let ms = i128::from(n.as_i64()?);
                OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000).ok()?
            }
            _ => return None,
        };
        Some(CrmShipmentState { status, updated_at })
    }

    fn render_time(&self, t: OffsetDateTime) -> Value {
        match self.config.timestamp_format {
            TimestampFormat::Rfc3339 => Value::from(t.format(&Rfc3339).unwrap_or_default()),
            TimestampFormat::UnixMillis => {
                Value::from(i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn event(status: &str) -> TrackingEvent {
        TrackingEvent {
            event_id: EventId::parse("e-1").unwrap(),
            client_id: ClientId::parse("c-1").unwrap(),
            shipment_id: ShipmentId::parse("s-1").unwrap(),
            status: crate::event::TrackingStatus::parse(status).unwrap(),
            occurred_at: datetime!(2026-11-01 10:00:00.123 UTC),
            version: 1,
            correlation_id: "corr-1".into(),
        }
    }

    #[test]
    fn renders_the_default_crm_shape() {
        let m = CrmMapping::new(MappingConfig::default()).unwrap();
        let w = m.to_crm(&event("DELIVERED")).unwrap();
        let json = Value::Object(m.render(&w));
        assert_eq!(
            json,
            serde_json::json!({"clientId": "c-1", "shipmentId": "s-1", "status": "delivered",
                "timestamp": "2026-11-01T10:00:00.123Z", "eventId": "e-1"})
        );
        let back = m.parse_state(json.as_object().unwrap()).unwrap();
        assert_eq!(back.status, "delivered");
        assert_eq!(back.updated_at, w.timestamp);
    }

    #[test]
    fn configured_names_and_millis_are_used_both_ways() {
        let mut cfg = MappingConfig::default();
        cfg.fields.status = "stage".into();
        cfg.timestamp_format = TimestampFormat::UnixMillis;
        let m = CrmMapping::new(cfg).unwrap();
        let w = m.to_crm(&event("IN_TRANSIT")).unwrap();
        let obj = m.render(&w);
        assert_eq!(obj["stage"], "in_transit");
        assert_eq!(obj["timestamp"], 1_793_527_200_123_i64);
        assert_eq!(m.parse_state(&obj).unwrap().updated_at, w.timestamp);
    }

    #[test]
    fn millisecond_crms_compare_at_millisecond_precision() {
        let cfg = MappingConfig {
            timestamp_format: TimestampFormat::UnixMillis,
            ..MappingConfig::default()
        };
        let m = CrmMapping::new(cfg).unwrap();
        let mut e = event("IN_TRANSIT");
        e.occurred_at = datetime!(2026-11-01 10:00:00.123_900 UTC);
        let w = m.to_crm(&e).unwrap();
        assert_eq!(w.timestamp, datetime!(2026-11-01 10:00:00.123 UTC));
        let shown = m.parse_state(&m.render(&w)).unwrap();
        assert_eq!(shown.updated_at, w.timestamp, "what is written reads back equal");
    }

    #[test]
    fn unmapped_status_is_refused() {
        let m = CrmMapping::new(MappingConfig::default()).unwrap();
        assert_eq!(
            m.to_crm(&event("TELEPORTED")).unwrap_err().code().as_str(),
            "unmapped_status"
        );
    }

    #[test]
    fn bad_mappings_fail_validation() {
        let mut c = MappingConfig::default();
        c.fields.timestamp = "status".into();
        assert_eq!(
            CrmMapping::new(c).unwrap_err(),
            MappingError::DuplicateFieldName("status".into())
        );
        let mut c = MappingConfig::default();
        c.statuses.insert("X".into(), " ".into());
        assert!(matches!(CrmMapping::new(c), Err(MappingError::EmptyTarget(_))));
        let mut c = MappingConfig::default();
        c.statuses.clear();
        assert_eq!(CrmMapping::new(c).unwrap_err(), MappingError::NoStatuses);
        let mut c = MappingConfig::default();
        c.fields.client_id = String::new();
        assert_eq!(
            CrmMapping::new(c).unwrap_err(),
            MappingError::EmptyFieldName("client_id")
        );
    }
}
