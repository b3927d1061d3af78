//! Kommo wire shapes and their conversion to domain types.

use backbone_sync::event::ShipmentId;
use backbone_sync::mapping::{CrmMapping, CrmShipmentState, CrmStatusWrite};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Where a mapped value lives on a lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Slot {
    StatusId,
    Name,
    Custom(u64),
}

impl Slot {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "status_id" => Some(Slot::StatusId),
            "name" => Some(Slot::Name),
            _ => name
                .strip_prefix("cf:")
                .and_then(|id| id.parse().ok())
                .filter(|id| *id > 0)
                .map(Slot::Custom),
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct Lead {
    pub id: u64,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub status_id: Option<u64>,
    #[serde(default)]
    pub request_id: Option<Value>,
    #[serde(default)]
    pub custom_fields_values: Option<Vec<CustomFieldValues>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct CustomFieldValues {
    pub field_id: u64,
    #[serde(default)]
    pub values: Vec<Map<String, Value>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Embedded {
    #[serde(default)]
    pub leads: Vec<Lead>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct LeadsPage {
    #[serde(default, rename = "_embedded")]
    pub embedded: Embedded,
}

/// `{"validation-errors": [{"request_id": "0", "errors": [{"code", "path", "detail"}]}], ...}`
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Problem {
    #[serde(default, rename = "validation-errors")]
    pub validation_errors: Vec<ValidationError>,
    #[serde(default)]
    pub detail: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ValidationError {
    pub request_id: Value,
    #[serde(default)]
    pub errors: Vec<Value>,
}

pub(crate) fn request_id_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.first().map(request_id_text).unwrap_or_default(),
        other => other.to_string(),
    }
}

impl Lead {
    fn slot_value(&self, slot: Slot) -> Option<Value> {
        match slot {
            Slot::StatusId => self.status_id.map(|s| Value::from(s.to_string())),
            Slot::Name => self.name.clone().map(Value::from),
            Slot::Custom(id) => self
                .custom_fields_values
                .as_ref()?
                .iter()
                .find(|c| c.field_id == id)?
                .values
                .first()?
                .get("value")
                .cloned(),
        }
    }

    pub fn shipment(&self, external: Slot) -> Option<ShipmentId> {
        match self.slot_value(external)? {
            Value::String(s) => ShipmentId::parse(s).ok(),
            _ => None,
        }
    }

    pub fn state(&self, mapping: &CrmMapping) -> Option<CrmShipmentState> {
        let f = mapping.fields();
        let mut m = Map::new();
        for name in [&f.status, &f.timestamp] {
            let v = self.slot_value(Slot::parse(name)?)?;
            m.insert(name.clone(), v);
        }
        mapping.parse_state(&m)
    }
}

/// One lead to add or update. `id` for an update; `request_id` comes back in the answer.
pub(crate) fn lead_body(
    mapping: &CrmMapping,
    w: &CrmStatusWrite,
    id: Option<u64>,
    pipeline_id: u64,
) -> Value {
    let mut lead = Map::new();
    let mut custom = Vec::new();
    for (name, value) in mapping.render(w) {
        let text = match &value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match Slot::parse(&name) {
            Some(Slot::StatusId) => {
                lead.insert(
                    "status_id".into(),
                    text.parse::<u64>().map(Value::from).unwrap_or(value),
                );
            }
            Some(Slot::Name) => {
                lead.insert("name".into(), Value::from(text));
            }
            Some(Slot::Custom(field_id)) => {
                custom.push(json!({"field_id": field_id, "values": [{"value": text}]}));
            }
            None => {}
        }
    }
    lead.insert("custom_fields_values".into(), Value::from(custom));
    lead.insert("request_id".into(), Value::from(w.event_id.as_str()));
    match id {
        Some(id) => {
            lead.insert("id".into(), Value::from(id));
        }
        None => {
            lead.entry("name")
                .or_insert_with(|| Value::from(format!("Shipment {}", w.shipment_id)));
            if pipeline_id > 0 && lead.contains_key("status_id") {
                lead.insert("pipeline_id".into(), Value::from(pipeline_id));
            }
        }
    }
    Value::Object(lead)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_parse_only_known_shapes() {
        assert_eq!(Slot::parse("status_id"), Some(Slot::StatusId));
        assert_eq!(Slot::parse("cf:123"), Some(Slot::Custom(123)));
        assert_eq!(Slot::parse("cf:0"), None);
        assert_eq!(Slot::parse("cf:x"), None);
        assert_eq!(Slot::parse("stage"), None);
    }

    #[test]
    fn request_ids_come_as_strings_numbers_or_lists() {
        assert_eq!(request_id_text(&json!("e1")), "e1");
        assert_eq!(request_id_text(&json!(["1"])), "1");
        assert_eq!(request_id_text(&json!(3)), "3");
    }
}
