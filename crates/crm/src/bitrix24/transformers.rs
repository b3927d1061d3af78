//! Bitrix24 wire shapes and their conversion to domain types.

use backbone_sync::event::ShipmentId;
use backbone_sync::mapping::{CrmMapping, CrmShipmentState, CrmStatusWrite};
use backbone_sync::ports::{CrmError, CrmErrorKind};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Fields this adapter owns; a mapping may not reuse them.
pub(crate) const ORIGINATOR_FIELD: &str = "originatorId";
pub(crate) const ORIGIN_FIELD: &str = "originId";
pub(crate) const RESERVED: [&str; 3] = ["id", ORIGINATOR_FIELD, ORIGIN_FIELD];

/// `{"error": "...", "error_description": "..."}`
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ErrorDto {
    #[serde(default)]
    pub error: Value,
    #[serde(default)]
    pub error_description: String,
}

impl ErrorDto {
    pub fn code(&self) -> String {
        match &self.error {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        }
    }
}

/// The `time` block every answer carries; `operating_reset_at` is when a method blocked by the
/// resource limit is usable again (unix seconds).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct TimeDto {
    #[serde(default)]
    pub operating_reset_at: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ErrorEnvelope {
    #[serde(flatten)]
    pub error: ErrorDto,
    #[serde(default)]
    pub time: Option<TimeDto>,
}

/// Is a refused command worth another try? Rate and load refusals and server faults are;
/// permissions, validation and unknown methods are not.
pub(crate) fn classify(code: &str) -> CrmErrorKind {
    match code {
        "QUERY_LIMIT_EXCEEDED"
        | "OPERATION_TIME_LIMIT"
        | "OVERLOAD_LIMIT"
        | "INTERNAL_SERVER_ERROR"
        | "ERROR_UNEXPECTED_ANSWER"
        | "expired_token"
        | "NOT_FOUND" => CrmErrorKind::Transient,
        _ => CrmErrorKind::Permanent,
    }
}

pub(crate) fn list_request(
    entity_type_id: u32,
    originator: &str,
    mapping: &CrmMapping,
    shipments: &[&ShipmentId],
) -> Value {
    let f = mapping.fields();
    json!({
        "entityTypeId": entity_type_id,
        "select": ["id", ORIGIN_FIELD, f.status, f.timestamp],
        "filter": {
            "=originatorId": originator,
            "@originId": shipments.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        },
        "order": {"id": "ASC"},
    })
}

/// One CRM item as listed: its id, whose shipment it is, and the state we keep in it.
pub(crate) struct ListedItem {
    /// `None` for an item the list returned without an id.
    pub id: Option<u64>,
    pub shipment: ShipmentId,
    pub state: Option<CrmShipmentState>,
}

#[derive(Deserialize)]
struct ListResult {
    #[serde(default)]
    items: Vec<Map<String, Value>>,
}

pub(crate) fn parse_list(result: Value, mapping: &CrmMapping) -> Result<Vec<ListedItem>, CrmError> {
    let list: ListResult = serde_json::from_value(result).map_err(|e| {
        CrmError::permanent(format!(
            "crm.item.list: unexpected result: {}",
            crate::wire::clip(&e.to_string())
        ))
    })?;
    let mut out = Vec::with_capacity(list.items.len());
    for item in list.items {
        // An item without an id fails only its own shipment (the caller marks it unreadable).
        let id = item.get("id").and_then(as_u64);
        let Some(shipment) = item
            .get(ORIGIN_FIELD)
            .and_then(Value::as_str)
            .and_then(|s| ShipmentId::parse(s).ok())
        else {
            continue;
        };
        // An item we own that lacks our fields (created by hand, say) has no state yet: the
        // next write fills it in.
        let state = mapping.parse_state(&item);
        out.push(ListedItem { id, shipment, state });
    }
    Ok(out)
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// The fields of one write, as strings for a `batch` command.
pub(crate) fn write_fields(mapping: &CrmMapping, w: &CrmStatusWrite) -> BTreeMap<String, String> {
    mapping
        .render(w)
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            (k, v)
        })
        .collect()
}

/// A `batch` command string: `method?entityTypeId=2&id=82&fields[stageId]=...`, URL-encoded so
/// that the batch method's own decoding yields the nested parameters.
pub(crate) fn command(
    method: &str,
    entity_type_id: u32,
    id: Option<u64>,
    fields: &BTreeMap<String, String>,
) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("entityTypeId", &entity_type_id.to_string());
    if let Some(id) = id {
        q.append_pair("id", &id.to_string());
    }
    for (k, v) in fields {
        q.append_pair(&format!("fields[{k}]"), v);
    }
    format!("{method}?{}", q.finish())
}

/// `result` of a `batch` call. PHP renders an empty map as `[]`, so both shapes are accepted.
#[derive(Debug, Default)]
pub(crate) struct BatchResult {
    pub result: Map<String, Value>,
    pub result_error: Map<String, Value>,
}

pub(crate) fn parse_batch(result: Value) -> Result<BatchResult, CrmError> {
    let Value::Object(mut obj) = result else {
        return Err(CrmError::permanent("batch: result is not an object"));
    };
    let mut take = |k: &str| match obj.remove(k) {
        Some(Value::Object(m)) => Ok(m),
        Some(Value::Array(a)) if a.is_empty() => Ok(Map::new()),
        None | Some(Value::Null) => Ok(Map::new()),
        Some(_) => Err(CrmError::permanent(format!(
            "batch: `{k}` has an unexpected shape"
        ))),
    };
    Ok(BatchResult {
        result: take("result")?,
        result_error: take("result_error")?,
    })
}

/// The new item's id from a `crm.item.add` command result (`{"item": {"id": 46, ...}}`).
pub(crate) fn added_id(result: &Value) -> Option<u64> {
    result.get("item").and_then(|i| i.get("id")).and_then(as_u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_strings_encode_nested_fields() {
        let fields = BTreeMap::from([
            ("stageId".to_owned(), "C1:WON".to_owned()),
            ("ufCrmNote".to_owned(), "a&b=c d".to_owned()),
        ]);
        let c = command("crm.item.update", 2, Some(82), &fields);
        assert_eq!(
            c,
            "crm.item.update?entityTypeId=2&id=82&fields%5BstageId%5D=C1%3AWON&fields%5BufCrmNote%5D=a%26b%3Dc+d"
        );
        let decoded: Vec<(String, String)> = form_urlencoded::parse(c.split_once('?').unwrap().1.as_bytes())
            .into_owned()
            .collect();
        assert!(decoded.contains(&("fields[ufCrmNote]".into(), "a&b=c d".into())));
    }

    #[test]
    fn an_unexpected_list_result_is_refused_with_a_bounded_message() {
        let mapping = CrmMapping::new(backbone_sync::mapping::MappingConfig::default()).unwrap();
        let err = parse_list(json!({"items": "v".repeat(5000)}), &mapping)
            .err()
            .unwrap();
        assert!(err
            .message
            .starts_with("crm.item.list: unexpected result: invalid type"));
        assert!(
            err.message.chars().count() < 600,
            "{} characters",
            err.message.chars().count()
        );
    }

    #[test]
    fn empty_php_arrays_are_empty_maps() {
        let b = parse_batch(json!({"result": {"w0": {"item": {"id": 5}}}, "result_error": [],
            "result_total": [], "result_next": [], "result_time": {}}))
        .unwrap();
        assert_eq!(added_id(&b.result["w0"]), Some(5));
        assert!(b.result_error.is_empty());
        assert!(parse_batch(json!({"result": [], "result_error": {"w0": {"error": "x"}}})).is_ok());
        assert!(parse_batch(json!("nope")).is_err());
    }
}
