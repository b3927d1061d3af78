//! Generic CRM wire shapes and their conversion to domain types.

use backbone_sync::event::ShipmentId;
use backbone_sync::mapping::{CrmMapping, CrmShipmentState, CrmStatusWrite};
use backbone_sync::ports::{CrmError, ItemResult, ShipmentStates};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The item field that carries the correlation id; the API owns it, so a mapping may not use it.
pub(crate) const REQUEST_ID_FIELD: &str = "requestId";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BatchGet<'a> {
    pub shipment_ids: Vec<&'a str>,
}

#[derive(Deserialize)]
pub(crate) struct Items {
    pub items: Vec<Map<String, Value>>,
}

#[derive(Serialize)]
pub(crate) struct BatchWrite {
    pub items: Vec<Map<String, Value>>,
}

#[derive(Deserialize)]
pub(crate) struct WriteResults {
    pub results: Vec<WriteResultDto>,
}

#[derive(Deserialize)]
pub(crate) struct WriteResultDto {
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

/// One record of a read: its shipment and state, or why it cannot be read (with its shipment
/// when it names a valid one).
pub(crate) fn parse_record(
    mapping: &CrmMapping,
    obj: &Map<String, Value>,
) -> Result<(ShipmentId, CrmShipmentState), (Option<ShipmentId>, CrmError)> {
    let field = &mapping.fields().shipment_id;
    let id = obj
        .get(field)
        .and_then(Value::as_str)
        .and_then(|s| ShipmentId::parse(s).ok())
        .ok_or_else(|| {
            (
                None,
                CrmError::permanent(format!("CRM record without a valid `{field}`")),
            )
        })?;
    match mapping.parse_state(obj) {
        Some(state) => Ok((id, state)),
        None => Err((
            Some(id),
            CrmError::permanent("the CRM record lacks a valid status or timestamp"),
        )),
    }
}

pub(crate) fn item(mapping: &CrmMapping, w: &CrmStatusWrite) -> Map<String, Value> {
    let mut item = mapping.render(w);
    item.insert(REQUEST_ID_FIELD.into(), Value::from(w.correlation_id.as_str()));
    item
}

impl WriteResultDto {
    pub fn into_item_result(self) -> ItemResult {
        let excerpt = self
            .error
            .as_ref()
            .and_then(|e| serde_json::to_string(e).ok())
            .map(|e| crate::wire::excerpt(e.as_bytes()));
        let result = if (200..300).contains(&self.status) {
            Ok(())
        } else {
            let msg = self
                .error
                .map(|e| crate::wire::clip(&format!("{}: {}", e.code, e.message)))
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

/// The states of a read, record by record: a record that names a requested shipment but cannot
/// be read fails only that shipment; a record that names none may be any requested shipment the
/// answer does not otherwise cover, so those are unreadable too.
pub(crate) fn gather_states(
    requested: &[ShipmentId],
    records: impl IntoIterator<Item = Result<(ShipmentId, CrmShipmentState), (Option<ShipmentId>, CrmError)>>,
) -> ShipmentStates {
    let mut states = ShipmentStates::default();
    let mut anonymous = None;
    let mut named = Vec::new();
    for record in records {
        match record {
            Ok((id, state)) => {
                named.push(id.clone());
                states.insert(id, state);
            }
            Err((Some(id), e)) => {
                named.push(id.clone());
                states.unreadable(id, e);
            }
            Err((None, e)) => anonymous = Some(e),
        }
    }
    if let Some(e) = anonymous {
        for id in requested.iter().filter(|id| !named.contains(id)) {
            states.unreadable(id.clone(), e.clone());
        }
    }
    states
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_item_keeps_a_bounded_message_and_excerpt() {
        let dto: WriteResultDto = serde_json::from_value(serde_json::json!({
            "status": 400, "error": {"code": "INVALID", "message": "v".repeat(5000)}
        }))
        .unwrap();
        let item = dto.into_item_result();
        let err = item.result.unwrap_err();
        assert!(
            err.message.starts_with("item refused with 400: INVALID: vvv"),
            "{}",
            err.message
        );
        assert!(
            err.message.chars().count() < 600,
            "{} characters",
            err.message.chars().count()
        );
        let excerpt = item.response_excerpt.unwrap();
        assert!(
            excerpt.starts_with(r#"{"code":"INVALID","message":"vvv"#),
            "{excerpt}"
        );
        assert!(
            excerpt.chars().count() <= 512,
            "{} characters",
            excerpt.chars().count()
        );
        assert_eq!(item.http_status, Some(400));
    }
}
