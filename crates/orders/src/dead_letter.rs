//! What the dead letter of a refused order or payment carries instead of the record: the fields
//! of its contract only, each only when it has the contract's type, and nothing that reads as a
//! certificate code (a bearer secret).
//!
//! - Unknown fields, at any depth, are dropped: a code under another name (`certificateCode`),
//!   in a nested object or in an extra field never reaches the letter.
//! - A value of the wrong type is dropped (`lines` as an object, a code as a number, an id as an
//!   object); a line that is not an object becomes `null`, so line indexes in the reason
//!   (`lines[2].certificate_code`) still point at the right line.
//! - `certificate_code` keeps only its last four characters (`****-****-****-9BNY`),
//!   `recipient_phone` only its last two digits.
//! - A text that is longer than `MAX_TEXT_BYTES` or holds a control character is dropped; one
//!   that contains something that reads as a certificate code, whatever the field (an order id
//!   that is a code), keeps only its last four characters; an integer whose digits read as a
//!   code is dropped.
//! - The letter is at most [`MAX_GROWTH`] bytes larger than the record: if the masks would make
//!   it larger (many lines with short codes), or the record is not a JSON object, a note
//!   replaces it. The record is then
//!   read at its source position (`x-source-*` headers).

use backbone_certificates::code::{check_character, mask_last4, visible_tail, ALPHABET, CODE_LEN};
use backbone_certificates::ids::MAX_TEXT_BYTES;
use serde_json::{Map, Value};

/// The letter's value when the record is not a JSON object.
pub const WITHHELD_NOT_JSON: &[u8] =
    br#"{"withheld":"not a JSON object; it may carry certificate codes: read it at its source position"}"#;
/// The letter's value when the masked copy would be larger than the record.
pub const WITHHELD_TOO_LARGE: &[u8] =
    br#"{"withheld":"the masked copy would be larger than the record: read it at its source position"}"#;

/// How much larger than the record a letter may be (masks are longer than a short code, a line
/// that is not an object becomes `null`).
pub const MAX_GROWTH: usize = 1024;

#[derive(Clone, Copy)]
enum Kind {
    Integer,
    Text,
    /// A text or `null`.
    OptionalText,
    Code,
    Phone,
    Lines,
}

const ORDER: &[(&str, Kind)] = &[
    ("version", Kind::Integer),
    ("event_id", Kind::Text),
    ("order_id", Kind::Text),
    ("client_id", Kind::OptionalText),
    ("currency", Kind::Text),
    ("total_minor", Kind::Integer),
    ("recipient_phone", Kind::Phone),
    ("lines", Kind::Lines),
];

const LINE: &[(&str, Kind)] = &[
    ("line_id", Kind::Text),
    ("kind", Kind::Text),
    ("certificate_code", Kind::Code),
    ("amount_minor", Kind::Integer),
];

const PAYMENT: &[(&str, Kind)] = &[
    ("version", Kind::Integer),
    ("event_id", Kind::Text),
    ("payment_id", Kind::Text),
    ("order_id", Kind::Text),
    ("status", Kind::Text),
    ("amount_minor", Kind::Integer),
    ("currency", Kind::Text),
];

/// The dead letter's value for a refused `All_SalesOrder` record.
pub fn order_letter(payload: &[u8]) -> Vec<u8> {
    letter(payload, ORDER)
}

/// The dead letter's value for a refused `All_Payments` record.
pub fn payment_letter(payload: &[u8]) -> Vec<u8> {
    letter(payload, PAYMENT)
}

fn letter(payload: &[u8], fields: &[(&str, Kind)]) -> Vec<u8> {
    let Ok(Value::Object(record)) = serde_json::from_slice::<Value>(payload) else {
        return WITHHELD_NOT_JSON.to_vec();
    };
    let Ok(out) = serde_json::to_vec(&Value::Object(known(&record, fields))) else {
        return WITHHELD_NOT_JSON.to_vec();
    };
    if out.len() > payload.len().saturating_add(MAX_GROWTH) {
        return WITHHELD_TOO_LARGE.to_vec();
    }
    out
}

fn known(record: &Map<String, Value>, fields: &[(&str, Kind)]) -> Map<String, Value> {
    fields
        .iter()
        .filter_map(|(name, kind)| {
            let value = kept(record.get(*name)?, *kind)?;
            Some(((*name).to_owned(), value))
        })
        .collect()
}

fn kept(value: &Value, kind: Kind) -> Option<Value> {
    match (kind, value) {
        (Kind::OptionalText | Kind::Code | Kind::Phone, Value::Null) => Some(Value::Null),
        (Kind::Integer, Value::Number(n)) => {
            let n = n.as_i64()?;
            (!contains_code(&n.to_string())).then(|| n.into())
        }
        (Kind::Text | Kind::OptionalText, Value::String(s)) => text(s).map(Value::from),
        (Kind::Code, Value::String(s)) => Some(mask_last4(visible_tail(s, 4)).into()),
        (Kind::Phone, Value::String(s)) if s.len() <= MAX_TEXT_BYTES => {
            let tail = visible_tail(s, 2);
            let hidden = s.chars().count().saturating_sub(tail.chars().count());
            Some(format!("{}{tail}", "*".repeat(hidden)).into())
        }
        (Kind::Lines, Value::Array(lines)) => Some(Value::Array(
            lines
                .iter()
                .map(|line| match line {
                    Value::Object(line) => Value::Object(known(line, LINE)),
                    _ => Value::Null,
                })
                .collect(),
        )),
        _ => None,
    }
}

/// A text as the letter may carry it: bounded and printable, and masked to its last four
/// characters if it contains something that reads as a certificate code.
fn text(s: &str) -> Option<String> {
    if s.len() > MAX_TEXT_BYTES || s.chars().any(char::is_control) {
        return None;
    }
    if contains_code(s) {
        return Some(mask_last4(visible_tail(s, 4)));
    }
    Some(s.to_owned())
}

/// Whether `text` holds 16 characters that read as a valid certificate code, in any case and
/// with any separators between them (`-`, spaces, dots, other characters that are not ASCII
/// letters or digits): wider than `GiftCode::parse`, since a person reads a code in
/// `ABCD_EFGH_JKLM_NPQ7` as well.
pub fn contains_code(text: &str) -> bool {
    let normalised: Vec<u8> = text
        .bytes()
        .filter(u8::is_ascii_alphanumeric)
        .map(|b| b.to_ascii_uppercase())
        .collect();
    normalised
        .split(|b| !ALPHABET.contains(b))
        .filter(|run| run.len() >= CODE_LEN)
        .any(|run| {
            run.windows(CODE_LEN)
                .any(|w| check_character(&w[..CODE_LEN - 1]) == Some(w[CODE_LEN - 1]))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use backbone_certificates::GiftCode;
    use serde_json::json;

    fn code() -> String {
        GiftCode::from_payload(b"ABCDEFGHJKLMNPQ")
            .map(|c| c.expose().to_owned())
            .unwrap_or_default()
    }

    fn read(letter: &[u8]) -> Value {
        serde_json::from_slice(letter).unwrap_or_default()
    }

    #[test]
    fn codes_are_found_in_any_case_and_grouping() {
        let c = code();
        let grouped = format!("{}-{}-{}-{}", &c[0..4], &c[4..8], &c[8..12], &c[12..16]);
        for text in [
            c.clone(),
            c.to_lowercase(),
            grouped.clone(),
            grouped.replace('-', "_"),
            format!("order {c} of today"),
        ] {
            assert!(contains_code(&text), "{text}");
        }
        let mut wrong_check = c[..15].to_owned();
        wrong_check.push(if c.ends_with('A') { 'B' } else { 'A' });
        for text in ["", "ORD-2026-000123", &c[..15], &wrong_check] {
            assert!(!contains_code(text), "{text}");
        }
    }

    #[test]
    fn an_order_letter_keeps_known_fields_and_masks_the_code() {
        let order = json!({"version": 1, "event_id": "e-1", "order_id": "o-1", "client_id": null,
            "currency": "RUB", "total_minor": 1500, "recipient_phone": "+79991234567",
            "lines": [{"line_id": "1", "kind": "gift_certificate", "certificate_code": "ABCD-EFGH-JKLM-NPQ7", "amount_minor": 1000},
                      {"line_id": "2", "kind": "goods", "amount_minor": 500}, 7]});
        let out = read(&order_letter(order.to_string().as_bytes()));
        assert_eq!(
            out,
            json!({"version": 1, "event_id": "e-1", "order_id": "o-1", "client_id": null,
                "currency": "RUB", "total_minor": 1500, "recipient_phone": "**********67",
                "lines": [{"line_id": "1", "kind": "gift_certificate", "certificate_code": "****-****-****-NPQ7", "amount_minor": 1000},
                          {"line_id": "2", "kind": "goods", "amount_minor": 500}, null]})
        );
    }

    #[test]
    fn unknown_fields_wrong_types_and_codes_elsewhere_are_left_out() {
        let c = code();
        let order = json!({"version": "1", "order_id": c, "client_id": {"code": c}, "note": c,
            "event_id": "e\n1", "currency": ["RUB"], "total_minor": 1.5,
            "lines": {"1": {"certificate_code": c}}});
        let out = order_letter(order.to_string().as_bytes());
        assert_eq!(read(&out), json!({"order_id": mask_last4(&c[12..])}));
        let line = json!({"version": 1, "lines": [{"certificateCode": c, "code": c, "line_id": 1,
            "certificate_code": {"value": c}, "amount_minor": "100", "kind": {"k": c}}]});
        let out = order_letter(line.to_string().as_bytes());
        assert_eq!(read(&out), json!({"version": 1, "lines": [{}]}));
        let payment = json!({"version": 1, "payment_id": c, "order_id": "o-1", "amount_minor": -5,
            "currency": "RUB", "status": "captured", "note": c, "extra": {"code": c}});
        let out = payment_letter(payment.to_string().as_bytes());
        assert_eq!(
            read(&out),
            json!({"version": 1, "payment_id": mask_last4(&c[12..]), "order_id": "o-1",
                "amount_minor": -5, "currency": "RUB", "status": "captured"})
        );
    }

    #[test]
    fn a_record_that_is_no_json_object_or_would_grow_is_withheld() {
        let c = code();
        for record in [format!("{c} not json"), format!("[\"{c}\"]"), format!("\"{c}\"")] {
            assert_eq!(order_letter(record.as_bytes()), WITHHELD_NOT_JSON, "{record}");
        }
        let short_codes: Vec<Value> = (0..200).map(|_| json!({"certificate_code": ""})).collect();
        let order = json!({"lines": short_codes}).to_string();
        assert_eq!(order_letter(order.as_bytes()), WITHHELD_TOO_LARGE);
    }

    #[test]
    fn an_integer_that_reads_as_a_code_is_dropped() {
        let digits = (0u64..100_000)
            .filter_map(|n| {
                let payload: [u8; 15] = format!("{:015}", 234_567_892_345_678 + n)
                    .into_bytes()
                    .try_into()
                    .ok()?;
                GiftCode::from_payload(&payload).ok()
            })
            .map(|c| c.expose().to_owned())
            .find(|c| c.bytes().all(|b| (b'2'..=b'9').contains(&b)));
        let Some(digits) = digits else {
            panic!("no all-digit code among the payloads tried");
        };
        let order = format!(r#"{{"version":1,"total_minor":{digits}}}"#);
        assert_eq!(read(&order_letter(order.as_bytes())), json!({"version": 1}));
    }
}
