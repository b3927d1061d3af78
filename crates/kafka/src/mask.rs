//! A dead letter's payload as an operator may see it: the fields a service names in clear (its
//! identifiers and status), every other value masked, and a payload that is not JSON never
//! shown. Shared by every service's admin API, so one letter looks the same wherever it is read.

use serde_json::Value;

/// Strings longer than this keep their last [`KEPT_TAIL`] characters when masked.
const SHORT_TEXT: usize = 8;
/// How many trailing characters a long masked string keeps.
const KEPT_TAIL: usize = 4;

/// The payload with its top-level `clear_fields` as they are (when they are not objects or
/// arrays) and every other value masked by [`mask_value`]. A JSON document that is not an object
/// is `{"masked": <masked>}`, bytes that are not JSON `{"not_json": true}`, no payload `null`.
pub fn mask_payload(payload: Option<&[u8]>, clear_fields: &[&str]) -> Value {
    let Some(bytes) = payload else {
        return Value::Null;
    };
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(fields)) => Value::Object(
            fields
                .into_iter()
                .map(|(k, v)| {
                    let shown = if shown_in_clear(&k, &v, clear_fields) {
                        v
                    } else {
                        mask_value(&v)
                    };
                    (k, shown)
                })
                .collect(),
        ),
        Ok(other) => serde_json::json!({ "masked": mask_value(&other) }),
        Err(_) => serde_json::json!({ "not_json": true }),
    }
}

/// Whether the top-level field `name` is shown as it is: named in `clear_fields`, and a leaf.
fn shown_in_clear(name: &str, value: &Value, clear_fields: &[&str]) -> bool {
    clear_fields.contains(&name) && !value.is_object() && !value.is_array()
}

/// `value` with its leaves masked: a string longer than 8 characters keeps its last 4 after
/// `***`, any other leaf (a shorter string, a number, a boolean) becomes `***`; `null` stays
/// `null`; arrays and objects keep their shape.
pub fn mask_value(value: &Value) -> Value {
    match value {
        Value::Null => Value::Null,
        Value::String(s) if s.chars().count() > SHORT_TEXT => Value::String(format!("***{}", tail(s))),
        Value::Array(items) => Value::Array(items.iter().map(mask_value).collect()),
        Value::Object(fields) => {
            Value::Object(fields.iter().map(|(k, v)| (k.clone(), mask_value(v))).collect())
        }
        _ => Value::String("***".into()),
    }
}

/// The last [`KEPT_TAIL`] characters of `s`.
fn tail(s: &str) -> String {
    let skip = s.chars().count().saturating_sub(KEPT_TAIL);
    s.chars().skip(skip).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// crm-sync's list: the event's identifiers and status.
    const CLEAR: [&str; 6] = [
        "event_id",
        "shipment_id",
        "status",
        "occurred_at",
        "version",
        "correlation_id",
    ];

    #[test]
    fn a_payload_shows_the_event_identifiers_and_masks_the_rest() {
        let payload = json!({
            "event_id": "ev-1", "shipment_id": "s-1", "status": "DELIVERED", "version": 1,
            "client_id": "client-000123456", "phone": "+79001234567", "note": {"name": "Ivan Petrov"},
            "amount": 5
        });
        let shown = mask_payload(Some(payload.to_string().as_bytes()), &CLEAR);
        assert_eq!(shown["event_id"], "ev-1");
        assert_eq!(shown["status"], "DELIVERED");
        assert_eq!(shown["version"], 1);
        assert_eq!(shown["client_id"], "***3456");
        assert_eq!(shown["phone"], "***4567");
        assert_eq!(shown["note"]["name"], "***trov");
        assert_eq!(shown["amount"], "***");
        assert!(!shown.to_string().contains("Ivan"), "{shown}");
    }

    #[test]
    fn a_payload_that_is_not_json_is_described_not_shown() {
        assert_eq!(
            mask_payload(Some(b"{not json at all secret"), &CLEAR),
            json!({"not_json": true})
        );
        assert_eq!(mask_payload(None, &CLEAR), Value::Null);
        assert_eq!(mask_payload(Some(b"\"short\""), &CLEAR), json!({"masked": "***"}));
    }

    #[test]
    fn a_clear_field_holding_an_object_or_array_is_masked_and_the_list_is_the_callers() {
        let payload = json!({"event_id": {"nested": "secret-value-1234"}, "status": ["a-long-status"],
            "order_id": "o-12345678901"});
        let shown = mask_payload(Some(payload.to_string().as_bytes()), &CLEAR);
        assert_eq!(shown["event_id"]["nested"], "***1234");
        assert_eq!(shown["status"][0], "***atus");
        assert_eq!(shown["order_id"], "***8901", "not on crm-sync's list");
        let shown = mask_payload(Some(payload.to_string().as_bytes()), &["order_id"]);
        assert_eq!(shown["order_id"], "o-12345678901", "on this list");
        assert_eq!(mask_payload(Some(b"{}"), &[]), json!({}));
    }

    #[test]
    fn masking_counts_characters_not_bytes() {
        assert_eq!(mask_value(&json!("Анна Петрова")), json!("***рова"));
        assert_eq!(mask_value(&json!("Петрова")), json!("***"));
        assert_eq!(mask_value(&json!(null)), json!(null));
        assert_eq!(mask_value(&json!(true)), json!("***"));
    }
}
