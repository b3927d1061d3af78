//! Generic CRM wire shapes and their conversion to domain types.

use backbone_sync::event::ShipmentId;
use backbone_sync::mapping::{CrmMapping, CrmShipmentState, CrmStatusWrite};
use backbone_sync::ports::{CrmError, ItemResult};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The item field that carries the correlation id; the API owns it, so a mapping may not use it.
pub(super) const REQUEST_ID_FIELD: &str = "requestId";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct BatchGet<'a> {
    pub shipment_ids: Vec<&'a str>,
}

#[derive(Deserialize)]
pub(super) struct Items {
    pub items: Vec<Map<String, Value>>,
}

#[derive(Serialize)]
pub(super) struct BatchWrite {
    pub items: Vec<Map<String, Value>>,
}

#[derive(Deserialize)]
pub(super) struct WriteResults {
    pub results: Vec<WriteResultDto>,
}

#[derive(Deserialize)]
pub(super) struct WriteResultDto {
    status: u16,
    #[serde(default)]
    error: Option<ErrorDto>,
}

#[derive(Deserialize, Serialize)]
struct ErrorDto {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

pub(super) fn parse_record(
    mapping: &CrmMapping,
    obj: &Map<String, Value>,
) -> Result<(ShipmentId, CrmShipmentState), CrmError> {
    let field = &mapping.fields().shipment_id;
    let id = obj
        .get(field)
        .and_then(Value::as_str)
        .and_then(|s| ShipmentId::parse(s).ok())
        .ok_or_else(|| CrmError::permanent(format!("CRM record without a valid `{field}`")))?;
    let state = mapping
        .parse_state(obj)
        .ok_or_else(|| CrmError::permanent(format!("CRM record for {id} lacks status or timestamp")))?;
    Ok((id, state))
}

pub(super) fn item(mapping: &CrmMapping, w: &CrmStatusWrite) -> Map<String, Value> {
    let mut item = mapping.render(w);
    item.insert(REQUEST_ID_FIELD.into(), Value::from(w.correlation_id.as_str()));
    item
}

impl WriteResultDto {
    pub fn into_item_result(self) -> ItemResult {
        let excerpt = self.error.as_ref().and_then(|e| serde_json::to_string(e).ok());
        let result = if (200..300).contains(&self.status) {
            Ok(())
        } else {
            let msg = self
                .error
                .map(|e| format!("{}: {}", e.code, e.message))
                .unwrap_or_default();
            Err(CrmError::from_status(
                self.status,
                None,
                format!("item refused with {}: {msg}", self.status),
            ))
        };
        ItemResult {
            result,
            http_status: Some(self.status),
            response_excerpt: excerpt,
        }
    }
}
