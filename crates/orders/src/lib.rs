//! Orders and payments as the gift-certificates service sees them: the versioned event
//! contracts of `All_SalesOrder` and `All_Payments` (`docs/events/gift-certificates-in-v1.md`),
//! and their validation into domain values. When a sale completes (the settlement rule) is the
//! certificate sale's: `backbone_certificates::sale`. What the dead letter of a refused event
//! carries instead of the event: [`order_letter`], [`payment_letter`]. Pure: no I/O.

use backbone_certificates::ids::{check_id, MAX_ID_BYTES, MAX_LINE_ID_BYTES};
use backbone_certificates::{Currency, DeadLetterReason, GiftCode};
use serde::Deserialize;

mod dead_letter;

pub use dead_letter::{
    contains_code, order_letter, payment_letter, MAX_GROWTH, WITHHELD_NOT_JSON, WITHHELD_TOO_LARGE,
};

/// The kind of order line that sells a certificate; other kinds are not the service's.
pub const CERTIFICATE_LINE: &str = "gift_certificate";

/// The only version of both contracts this crate reads.
pub const CONTRACT_VERSION: u16 = 1;

/// `All_SalesOrder`, version 1.
#[derive(Debug, Deserialize)]
pub struct OrderEvent {
    pub version: u16,
    pub event_id: String,
    pub order_id: String,
    pub client_id: Option<String>,
    pub currency: String,
    /// What the payments must add up to.
    pub total_minor: i64,
    /// Where the CVC of each certificate sold goes (E.164).
    pub recipient_phone: Option<String>,
    pub lines: Vec<OrderLineEvent>,
}

#[derive(Deserialize)]
pub struct OrderLineEvent {
    pub line_id: String,
    /// `gift_certificate` lines are ours; other kinds are ignored.
    pub kind: String,
    pub certificate_code: Option<String>,
    pub amount_minor: i64,
}

impl std::fmt::Debug for OrderLineEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderLineEvent")
            .field("line_id", &self.line_id)
            .field("kind", &self.kind)
            .field("certificate_code", &self.certificate_code.as_ref().map(|_| "***"))
            .field("amount_minor", &self.amount_minor)
            .finish()
    }
}

/// `All_Payments`, version 1.
#[derive(Debug, Deserialize)]
pub struct PaymentEvent {
    pub version: u16,
    pub event_id: String,
    pub payment_id: String,
    pub order_id: String,
    /// Only `captured` payments count towards a sale.
    pub status: String,
    pub amount_minor: i64,
    pub currency: String,
}

/// Why an event cannot be taken: a stable code for the dead-letter header and a reason that
/// names fields, never the values of codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: DeadLetterReason,
    pub reason: String,
}

pub fn reject(code: DeadLetterReason, reason: impl Into<String>) -> Rejection {
    Rejection {
        code,
        reason: reason.into(),
    }
}

/// An order that sells certificates.
#[derive(Debug, Clone)]
pub struct CertificateOrder {
    pub event_id: String,
    pub order_id: String,
    pub client_id: Option<String>,
    pub phone: Option<String>,
    pub currency: Currency,
    pub total_minor: i64,
    pub lines: Vec<CertificateLine>,
}

#[derive(Debug, Clone)]
pub struct CertificateLine {
    pub line_id: String,
    pub code: GiftCode,
    pub amount_minor: i64,
}

/// A captured payment towards an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub event_id: String,
    pub payment_id: String,
    pub order_id: String,
    pub currency: Currency,
    pub amount_minor: i64,
}

/// E.164: `+` and 8 to 15 digits.
pub fn valid_phone(phone: &str) -> bool {
    phone
        .strip_prefix('+')
        .is_some_and(|d| (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
}

/// A refusal of a value read from JSON: the position only, since serde's message may quote the
/// value (which could be a code).
fn malformed(what: &str, e: &serde_json::Error) -> Rejection {
    reject(
        DeadLetterReason::MalformedJson,
        format!(
            "{what} event: {:?} error at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        ),
    )
}

/// The version is read first, so a record of another version is reported as such rather than
/// as malformed.
fn check_version(payload: &[u8], what: &str) -> Result<(), Rejection> {
    #[derive(Deserialize)]
    struct Versioned {
        version: u16,
    }
    match serde_json::from_slice::<Versioned>(payload) {
        Ok(v) if v.version == CONTRACT_VERSION => Ok(()),
        Ok(v) => Err(unsupported(what, v.version)),
        Err(e) => {
            let mut r = malformed(what, &e);
            r.reason.push_str(" (a version number is required)");
            Err(r)
        }
    }
}

fn unsupported(what: &str, version: u16) -> Rejection {
    reject(
        DeadLetterReason::UnsupportedVersion,
        format!("{what} event version {version}"),
    )
}

/// An id under the shared rule (`backbone_certificates::ids`): refused by naming the field and
/// the rule, never the value.
fn check(field: impl std::fmt::Display, value: &str, max: usize) -> Result<(), Rejection> {
    check_id(value, max).map_err(|e| reject(DeadLetterReason::InvalidField, format!("{field}: {e}")))
}

/// Parses and validates an order event. `Ok(None)`: an order without certificate lines.
///
/// Every id an accepted order carries passes `check_id` (`order_id`, `event_id`, `client_id`
/// within `MAX_ID_BYTES`, each certificate line's `line_id` within `MAX_LINE_ID_BYTES`), so the
/// sale's operation ids (`sale:<order_id>:<line_id>`) and everything stored from it are
/// well-formed: bad data is refused here, never found out later as a storage error.
pub fn parse_order(payload: &[u8]) -> Result<Option<CertificateOrder>, Rejection> {
    check_version(payload, "order")?;
    let e: OrderEvent = serde_json::from_slice(payload).map_err(|e| malformed("order", &e))?;
    if e.version != CONTRACT_VERSION {
        return Err(unsupported("order", e.version));
    }
    let currency = Currency::parse(&e.currency)
        .map_err(|_| reject(DeadLetterReason::InvalidField, "currency: not an ISO 4217 code"))?;
    check("event_id", &e.event_id, MAX_ID_BYTES)?;
    check("order_id", &e.order_id, MAX_ID_BYTES)?;
    if let Some(client_id) = &e.client_id {
        check("client_id", client_id, MAX_ID_BYTES)?;
    }
    let mut lines: Vec<CertificateLine> = Vec::new();
    let mut certificates_total: i64 = 0;
    for (i, line) in e.lines.iter().enumerate() {
        if line.kind != CERTIFICATE_LINE {
            continue;
        }
        check(
            format_args!("lines[{i}].line_id"),
            &line.line_id,
            MAX_LINE_ID_BYTES,
        )?;
        if lines.iter().any(|l| l.line_id == line.line_id) {
            return Err(reject(
                DeadLetterReason::InvalidField,
                format!("lines[{i}].line_id: repeats the id of an earlier certificate line"),
            ));
        }
        let code = line
            .certificate_code
            .as_deref()
            .and_then(|c| GiftCode::parse(c).ok())
            .ok_or_else(|| {
                reject(
                    DeadLetterReason::InvalidField,
                    format!("lines[{i}].certificate_code: missing or not a valid certificate code"),
                )
            })?;
        if line.amount_minor <= 0 {
            return Err(reject(
                DeadLetterReason::InvalidField,
                format!("lines[{i}].amount_minor: must be greater than zero"),
            ));
        }
        certificates_total = certificates_total.checked_add(line.amount_minor).ok_or_else(|| {
            reject(
                DeadLetterReason::InvalidField,
                format!(
                    "lines[{i}].amount_minor: the certificate lines add up to more than an amount can hold"
                ),
            )
        })?;
        lines.push(CertificateLine {
            line_id: line.line_id.clone(),
            code,
            amount_minor: line.amount_minor,
        });
    }
    if lines.is_empty() {
        return Ok(None);
    }
    if e.total_minor <= 0 {
        return Err(reject(
            DeadLetterReason::InvalidField,
            "total_minor: must be greater than zero",
        ));
    }
    if e.total_minor < certificates_total {
        return Err(reject(
            DeadLetterReason::InvalidField,
            "total_minor: less than the certificate lines add up to",
        ));
    }
    if let Some(phone) = &e.recipient_phone {
        if !valid_phone(phone) {
            return Err(reject(
                DeadLetterReason::InvalidField,
                "recipient_phone: not E.164",
            ));
        }
    }
    Ok(Some(CertificateOrder {
        event_id: e.event_id,
        order_id: e.order_id,
        client_id: e.client_id,
        phone: e.recipient_phone,
        currency,
        total_minor: e.total_minor,
        lines,
    }))
}

/// Parses and validates a payment event. `Ok(None)`: not captured (yet), so it does not count.
/// Its ids are checked whatever its status, like an order's.
pub fn parse_payment(payload: &[u8]) -> Result<Option<Payment>, Rejection> {
    check_version(payload, "payment")?;
    let e: PaymentEvent = serde_json::from_slice(payload).map_err(|e| malformed("payment", &e))?;
    if e.version != CONTRACT_VERSION {
        return Err(unsupported("payment", e.version));
    }
    check("event_id", &e.event_id, MAX_ID_BYTES)?;
    check("payment_id", &e.payment_id, MAX_ID_BYTES)?;
    check("order_id", &e.order_id, MAX_ID_BYTES)?;
    if e.status != "captured" {
        return Ok(None);
    }
    let currency = Currency::parse(&e.currency)
        .map_err(|_| reject(DeadLetterReason::InvalidField, "currency: not an ISO 4217 code"))?;
    if e.amount_minor <= 0 {
        return Err(reject(
            DeadLetterReason::InvalidField,
            "amount_minor: must be greater than zero",
        ));
    }
    Ok(Some(Payment {
        event_id: e.event_id,
        payment_id: e.payment_id,
        order_id: e.order_id,
        currency,
        amount_minor: e.amount_minor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use backbone_certificates::service::sale_operation;

    fn code() -> String {
        GiftCode::from_payload(b"ABCDEFGHJKLMNPQ")
            .map(|c| c.expose().to_owned())
            .unwrap_or_default()
    }

    #[test]
    fn an_order_with_a_certificate_line_parses() {
        let payload = format!(
            r#"{{"version":1,"event_id":"e1","order_id":"o1","client_id":"c1","currency":"RUB","total_minor":1500,
                "recipient_phone":"+79990001122","lines":[{{"line_id":"1","kind":"gift_certificate","certificate_code":"{}","amount_minor":1000}},
                {{"line_id":"2","kind":"goods","certificate_code":null,"amount_minor":500}}]}}"#,
            code()
        );
        let order = parse_order(payload.as_bytes()).ok().flatten();
        let order = order.as_ref();
        assert_eq!(order.map(|o| o.lines.len()), Some(1));
        assert_eq!(order.map(|o| o.total_minor), Some(1500));
    }

    #[test]
    fn bad_orders_are_rejected_with_a_code_and_without_the_code_value() {
        let bad_code = "ABCDEFGHJKLMNPQA";
        let cases = [
            ("{not json".to_owned(), "malformed_json"),
            (
                r#"{"version":2,"event_id":"e","order_id":"o","currency":"RUB","total_minor":1,"lines":[]}"#
                    .to_owned(),
                "unsupported_version",
            ),
            (
                format!(
                    r#"{{"version":1,"event_id":"e","order_id":"o","currency":"RUB","total_minor":1,"lines":[{{"line_id":"1","kind":"gift_certificate","certificate_code":"{bad_code}","amount_minor":1}}]}}"#
                ),
                "invalid_field",
            ),
            (
                format!(
                    r#"{{"version":1,"event_id":"e","order_id":"o","currency":"RUB","total_minor":1,"recipient_phone":"555","lines":[{{"line_id":"1","kind":"gift_certificate","certificate_code":"{}","amount_minor":1}}]}}"#,
                    code()
                ),
                "invalid_field",
            ),
            (
                format!(
                    r#"{{"version":1,"event_id":"e","order_id":"o","currency":"RUB","total_minor":1,"lines":[{{"line_id":"1","kind":"gift_certificate","certificate_code":{{"x":"{bad_code}"}},"amount_minor":1}}]}}"#
                ),
                "malformed_json",
            ),
        ];
        for (payload, expected) in cases {
            match parse_order(payload.as_bytes()) {
                Err(r) => {
                    assert_eq!(r.code.as_str(), expected, "{payload}");
                    assert!(!r.reason.contains(bad_code), "{}", r.reason);
                }
                Ok(o) => panic!("accepted {payload}: {o:?}"),
            }
        }
    }

    #[test]
    fn only_captured_payments_count() {
        let pending = br#"{"version":1,"event_id":"e","payment_id":"p","order_id":"o","status":"pending","amount_minor":5,"currency":"RUB"}"#;
        assert_eq!(parse_payment(pending), Ok(None));
        let future = br#"{"version":9,"event_id":"x"}"#;
        assert_eq!(
            parse_payment(future).map_err(|r| r.code.as_str()),
            Err("unsupported_version")
        );
        let negative = br#"{"version":1,"event_id":"e","payment_id":"p","order_id":"o","status":"captured","amount_minor":-5,"currency":"RUB"}"#;
        assert_eq!(
            parse_payment(negative).map_err(|r| r.code.as_str()),
            Err("invalid_field")
        );
    }

    fn order_with(field: &str, value: serde_json::Value, line_id: serde_json::Value) -> Vec<u8> {
        let mut order = serde_json::json!({"version": 1, "event_id": "e-1", "order_id": "o-1", "client_id": "c-1",
            "currency": "RUB", "total_minor": 100,
            "lines": [{"line_id": line_id, "kind": "gift_certificate", "certificate_code": code(), "amount_minor": 100}]});
        order[field] = value;
        order.to_string().into_bytes()
    }

    #[test]
    fn an_order_with_a_bad_id_is_an_invalid_field_that_names_the_field() {
        let long = "o".repeat(120);
        let cases = [
            (
                order_with("order_id", long.clone().into(), "1".into()),
                "order_id",
                long.as_str(),
            ),
            (
                order_with("event_id", long.clone().into(), "1".into()),
                "event_id",
                long.as_str(),
            ),
            (
                order_with("client_id", "client\0id".into(), "1".into()),
                "client_id",
                "client\0id",
            ),
            (
                order_with("client_id", "x".repeat(70).into(), "1".into()),
                "client_id",
                "",
            ),
            (
                order_with("order_id", "o 1".into(), "1".into()),
                "order_id",
                "o 1",
            ),
            (order_with("order_id", "".into(), "1".into()), "order_id", ""),
            (
                order_with("version", 1.into(), "1\n".into()),
                "lines[0].line_id",
                "1\n",
            ),
            (
                order_with("version", 1.into(), "l".repeat(33).into()),
                "lines[0].line_id",
                "",
            ),
        ];
        for (payload, field, bad) in cases {
            let got = parse_order(&payload);
            let Err(r) = got else {
                panic!("{field}: accepted");
            };
            assert_eq!(r.code, DeadLetterReason::InvalidField, "{field}: {}", r.reason);
            assert!(r.reason.starts_with(field), "{field}: {}", r.reason);
            assert!(bad.is_empty() || !r.reason.contains(bad), "{}", r.reason);
        }
    }

    #[test]
    fn a_payment_with_a_bad_id_is_an_invalid_field() {
        let base = serde_json::json!({"version": 1, "event_id": "e", "payment_id": "p", "order_id": "o",
            "status": "captured", "amount_minor": 5, "currency": "RUB"});
        for (field, value) in [
            ("payment_id", "p".repeat(120)),
            ("order_id", "o\n".to_owned()),
            ("event_id", "e\0".to_owned()),
            ("payment_id", String::new()),
        ] {
            let mut payment = base.clone();
            payment[field] = value.clone().into();
            let got = parse_payment(payment.to_string().as_bytes());
            let Err(r) = got else {
                panic!("{field}: accepted");
            };
            assert_eq!(r.code, DeadLetterReason::InvalidField, "{field}: {}", r.reason);
            assert!(r.reason.starts_with(field), "{}", r.reason);
            assert!(!r.reason.contains(&value) || value.is_empty(), "{}", r.reason);
        }
    }

    proptest::proptest! {
        /// Whatever ids an order carries, an accepted one has ids within the shared rule, and
        /// each of its lines makes a valid sale operation id: activation cannot fail on them.
        #[test]
        fn an_accepted_order_makes_valid_sale_operations(
            order_id in "\\PC{0,70}|[a-z]{60,70}",
            line_id in "\\PC{0,34}|\\s{1,3}|[0-9]{30,34}",
            client_id in proptest::option::of("\\PC{0,70}"),
        ) {
            let payload = serde_json::json!({"version": 1, "event_id": "e", "order_id": order_id,
                "client_id": client_id, "currency": "RUB", "total_minor": 100,
                "lines": [{"line_id": line_id, "kind": "gift_certificate", "certificate_code": code(), "amount_minor": 100}]});
            if let Ok(Some(order)) = parse_order(payload.to_string().as_bytes()) {
                proptest::prop_assert!(check_id(&order.order_id, MAX_ID_BYTES).is_ok());
                proptest::prop_assert!(check_id(&order.event_id, MAX_ID_BYTES).is_ok());
                if let Some(client_id) = &order.client_id {
                    proptest::prop_assert!(check_id(client_id, MAX_ID_BYTES).is_ok());
                }
                for line in &order.lines {
                    proptest::prop_assert!(check_id(&line.line_id, MAX_LINE_ID_BYTES).is_ok());
                    proptest::prop_assert!(sale_operation(&order.order_id, &line.line_id).is_ok());
                }
            }
        }

        /// The bound behind it: any ids that pass `check_id` make a sale operation id.
        #[test]
        fn ids_within_the_rule_always_make_a_sale_operation(
            order_id in "[\\PC&&\\S]{1,16}",
            line_id in "[\\PC&&\\S]{1,8}",
        ) {
            proptest::prop_assert_eq!(check_id(&order_id, MAX_ID_BYTES), Ok(()));
            proptest::prop_assert_eq!(check_id(&line_id, MAX_LINE_ID_BYTES), Ok(()));
            proptest::prop_assert!(sale_operation(&order_id, &line_id).is_ok());
        }
    }
}
