//! Orders and payments as the gift-certificates service sees them: the versioned event
//! contracts of `All_SalesOrder` and `All_Payments` (`docs/events/gift-certificates-in-v1.md`),
//! and their validation into domain values. When a sale completes (the settlement rule) is the
//! certificate sale's: `backbone_certificates::sale`. Pure: no I/O.

use backbone_certificates::{Currency, DeadLetterReason, GiftCode};
use serde::Deserialize;

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

/// The version is read first, so a record of another version is reported as such rather than
/// as malformed.
fn check_version(payload: &[u8], what: &str) -> Result<(), Rejection> {
    #[derive(Deserialize)]
    struct Versioned {
        version: u16,
    }
    match serde_json::from_slice::<Versioned>(payload) {
        Ok(v) if v.version == CONTRACT_VERSION => Ok(()),
        Ok(v) => Err(reject(
            DeadLetterReason::UnsupportedVersion,
            format!("{what} event version {}", v.version),
        )),
        Err(e) => Err(reject(
            DeadLetterReason::MalformedJson,
            format!(
                "{what} event: {:?} error at line {} column {} (a version number is required)",
                e.classify(),
                e.line(),
                e.column()
            ),
        )),
    }
}

/// Parses and validates an order event. `Ok(None)`: an order without certificate lines.
pub fn parse_order(payload: &[u8]) -> Result<Option<CertificateOrder>, Rejection> {
    check_version(payload, "order")?;
    let e: OrderEvent = serde_json::from_slice(payload).map_err(|e| {
        // serde may quote a value, which could be a code: name the place, not the content.
        reject(
            DeadLetterReason::MalformedJson,
            format!(
                "order event: {:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            ),
        )
    })?;
    if e.version != CONTRACT_VERSION {
        return Err(reject(
            DeadLetterReason::UnsupportedVersion,
            format!("order event version {}", e.version),
        ));
    }
    let currency =
        Currency::parse(&e.currency).map_err(|_| reject(DeadLetterReason::InvalidField, "currency"))?;
    let mut lines = Vec::new();
    for line in e.lines.iter().filter(|l| l.kind == "gift_certificate") {
        let code = line
            .certificate_code
            .as_deref()
            .and_then(|c| GiftCode::parse(c).ok())
            .ok_or_else(|| {
                reject(
                    DeadLetterReason::InvalidField,
                    format!("line {}: certificate_code", line.line_id),
                )
            })?;
        if line.amount_minor <= 0 {
            return Err(reject(
                DeadLetterReason::InvalidField,
                format!("line {}: amount_minor", line.line_id),
            ));
        }
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
        return Err(reject(DeadLetterReason::InvalidField, "total_minor"));
    }
    if let Some(phone) = &e.recipient_phone {
        if !valid_phone(phone) {
            return Err(reject(
                DeadLetterReason::InvalidField,
                "recipient_phone is not E.164",
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
pub fn parse_payment(payload: &[u8]) -> Result<Option<Payment>, Rejection> {
    check_version(payload, "payment")?;
    let e: PaymentEvent = serde_json::from_slice(payload)
        .map_err(|e| reject(DeadLetterReason::MalformedJson, format!("payment event: {e}")))?;
    if e.version != CONTRACT_VERSION {
        return Err(reject(
            DeadLetterReason::UnsupportedVersion,
            format!("payment event version {}", e.version),
        ));
    }
    if e.status != "captured" {
        return Ok(None);
    }
    let currency =
        Currency::parse(&e.currency).map_err(|_| reject(DeadLetterReason::InvalidField, "currency"))?;
    if e.amount_minor <= 0 {
        return Err(reject(DeadLetterReason::InvalidField, "amount_minor"));
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
}
