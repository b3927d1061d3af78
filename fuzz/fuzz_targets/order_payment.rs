//! The `All_SalesOrder` and `All_Payments` parsers and their dead-letter builders on arbitrary
//! bytes: `backbone_orders::parse_order`, `parse_payment`, `order_letter`, `payment_letter`.
//!
//! - None panics.
//! - A refusal's reason is under 300 bytes and never quotes the input: it holds no 16-character
//!   run of the input (its UTF-8 bytes, or any text its JSON decodes to), other than a run of
//!   the reasons' own words (`certificate_code`, `error at line 1 column 2`: an input may
//!   contain them too).
//! - An accepted order's ids (`event_id`, `order_id`, `client_id`, each line's `line_id`) and an
//!   accepted payment's (`event_id`, `payment_id`, `order_id`) pass `check_id`, and each line
//!   makes a valid sale operation id.
//! - A letter is a JSON object, at most `MAX_GROWTH` bytes larger than the record, and holds no
//!   valid certificate code found in the input (in its bytes, in the texts and numbers its JSON
//!   decodes to), spelled in any case and with any `-` or space.
#![no_main]

use backbone_certificates::code::ALPHABET;
use backbone_certificates::ids::{check_id, MAX_ID_BYTES, MAX_LINE_ID_BYTES};
use backbone_certificates::service::sale_operation;
use backbone_certificates::GiftCode;
use backbone_orders::{order_letter, parse_order, parse_payment, payment_letter, MAX_GROWTH};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const MAX_REASON_BYTES: usize = 300;
const RUN: usize = 16;

/// Every reason the parsers give, numbers as `0`: a run of the input that is a run of these is
/// the reason's own words, not a quote.
fn reason_words() -> &'static [String] {
    static WORDS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    WORDS.get_or_init(|| {
        let mut words = Vec::new();
        for what in ["order", "payment"] {
            for class in ["Io", "Syntax", "Data", "Eof"] {
                words.push(format!(
                    "{what} event: {class} error at line 0 column 0 (a version number is required)"
                ));
            }
            words.push(format!("{what} event version 0"));
        }
        let fields = [
            "event_id",
            "order_id",
            "client_id",
            "payment_id",
            "lines[0].line_id",
        ];
        for field in fields {
            for rule in [
                "is empty",
                "is longer than 0 bytes",
                "contains a control character or whitespace",
            ] {
                words.push(format!("{field}: {rule}"));
            }
        }
        words.extend(
            [
                "currency: not an ISO 0 code",
                "lines[0].line_id: repeats the id of an earlier certificate line",
                "lines[0].certificate_code: missing or not a valid certificate code",
                "lines[0].amount_minor: must be greater than zero",
                "lines[0].amount_minor: the certificate lines add up to more than an amount can hold",
                "total_minor: must be greater than zero",
                "total_minor: less than the certificate lines add up to",
                "recipient_phone: not E.0",
                "amount_minor: must be greater than zero",
            ]
            .map(String::from),
        );
        words
    })
}

/// Each run of digits as one `0`.
fn digits_as_zero(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !out.ends_with('0') {
                out.push('0');
            }
        } else {
            out.push(c);
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let texts = decoded_texts(data);
    match parse_order(data) {
        Ok(Some(order)) => {
            for (field, id, max) in [
                ("event_id", order.event_id.as_str(), MAX_ID_BYTES),
                ("order_id", order.order_id.as_str(), MAX_ID_BYTES),
                (
                    "client_id",
                    order.client_id.as_deref().unwrap_or("c"),
                    MAX_ID_BYTES,
                ),
            ] {
                assert_eq!(check_id(id, max), Ok(()), "an accepted order's {field}");
            }
            for line in &order.lines {
                assert_eq!(check_id(&line.line_id, MAX_LINE_ID_BYTES), Ok(()), "a line_id");
                assert!(
                    sale_operation(&order.order_id, &line.line_id).is_ok(),
                    "a sale operation"
                );
            }
        }
        Ok(None) => {}
        Err(r) => check_reason(&r.reason, data, &texts),
    }
    match parse_payment(data) {
        Ok(Some(p)) => {
            for id in [&p.event_id, &p.payment_id, &p.order_id] {
                assert_eq!(check_id(id, MAX_ID_BYTES), Ok(()), "an accepted payment's id");
            }
        }
        Ok(None) => {}
        Err(r) => check_reason(&r.reason, data, &texts),
    }
    let codes = codes_in(data, &texts);
    for letter in [order_letter(data), payment_letter(data)] {
        assert!(
            letter.len() <= data.len() + MAX_GROWTH,
            "a {}-byte letter for a {}-byte record",
            letter.len(),
            data.len()
        );
        let parsed: Value = serde_json::from_slice(&letter).expect("a letter is JSON");
        assert!(parsed.is_object(), "a letter is a JSON object");
        let text = normalised(&String::from_utf8_lossy(&letter));
        for code in &codes {
            assert!(
                !text.contains(code.as_str()),
                "the letter carries a code of the input: {}",
                String::from_utf8_lossy(&letter)
            );
        }
    }
});

fn check_reason(reason: &str, data: &[u8], texts: &[String]) {
    assert!(
        reason.len() < MAX_REASON_BYTES,
        "a {}-byte reason: {reason}",
        reason.len()
    );
    let quoted = |run: &str| {
        let own = digits_as_zero(run);
        reason.contains(run) && !reason_words().iter().any(|w| w.contains(&own))
    };
    for window in data.windows(RUN) {
        if let Ok(run) = std::str::from_utf8(window) {
            assert!(!quoted(run), "the reason quotes the input: {reason}");
        }
    }
    for text in texts {
        for run in char_windows(text) {
            assert!(!quoted(run), "the reason quotes a value of the input: {reason}");
        }
    }
}

/// Every text the input's JSON decodes to (keys, strings, numbers), at any depth.
fn decoded_texts(data: &[u8]) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Number(n) => out.push(n.to_string()),
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            Value::Object(map) => {
                for (k, v) in map {
                    out.push(k.clone());
                    walk(v, out);
                }
            }
            Value::Null | Value::Bool(_) => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        walk(&v, &mut out);
    }
    out
}

/// Without `-` and spaces, in upper case: how `GiftCode::parse` reads a code.
fn normalised(text: &str) -> String {
    text.chars()
        .filter(|c| *c != '-' && *c != ' ')
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// The valid certificate codes in the input, normalised.
fn codes_in(data: &[u8], texts: &[String]) -> Vec<String> {
    let mut codes = Vec::new();
    let raw = String::from_utf8_lossy(data);
    for text in std::iter::once(raw.as_ref()).chain(texts.iter().map(String::as_str)) {
        let text = normalised(text);
        for candidate in char_windows(&text) {
            if !candidate.bytes().all(|b| ALPHABET.contains(&b)) {
                continue;
            }
            if let Ok(code) = GiftCode::parse(candidate) {
                codes.push(code.expose().to_owned());
            }
        }
    }
    codes.sort_unstable();
    codes.dedup();
    codes
}

/// Every run of `RUN` characters of `text`.
fn char_windows(text: &str) -> impl Iterator<Item = &str> {
    let starts: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
    starts
        .windows(RUN + 1)
        .map(|w| (w[0], w[RUN]))
        .collect::<Vec<_>>()
        .into_iter()
        .map(move |(a, b)| &text[a..b])
}
