//! Certificate sales: an order with certificate lines, and the payments towards it. Either may
//! arrive first and either may arrive again; the sale completes once distinct captured payments
//! in the order's currency add up to its total.

use crate::ports::CodeDigest;
use crate::store::OutboxLetter;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

/// One certificate sold by an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub line_id: String,
    /// Digest of the code of the card sold.
    #[serde(with = "hex_digest")]
    pub code_digest: CodeDigest,
    /// The code's last four characters, for the dead letter of a refused line (absent in sales
    /// stored before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_last4: Option<String>,
    /// What the line charged for the certificate: its nominal, in the order's currency.
    pub amount_minor: i64,
}

mod hex_digest {
    use crate::ports::CodeDigest;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &CodeDigest, s: S) -> Result<S::Ok, S::Error> {
        let hex: String = d.0.iter().map(|b| format!("{b:02x}")).collect();
        s.serialize_str(&hex)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<CodeDigest, D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        if s.len() != 64 || !s.is_ascii() {
            return Err(serde::de::Error::custom("a code digest is 64 hex digits"));
        }
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(serde::de::Error::custom)?;
        }
        Ok(CodeDigest(out))
    }
}

/// An order that sells certificates, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleOrder {
    pub order_id: String,
    pub client_id: Option<String>,
    /// Where the CVC goes, E.164.
    pub phone: Option<String>,
    pub currency: String,
    /// What the payments must add up to (the whole order).
    pub total_minor: i64,
    pub lines: Vec<OrderLine>,
    pub source_event: String,
}

impl SaleOrder {
    /// What the payments must add up to: the order's total, and never less than its certificate
    /// lines (an order of 1 kopek cannot pay for a line of 50,000.00).
    pub fn amount_due(&self) -> i64 {
        let lines = self
            .lines
            .iter()
            .fold(0i64, |sum, line| sum.saturating_add(line.amount_minor.max(0)));
        self.total_minor.max(lines)
    }
}

/// A payment towards an order, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRecord {
    pub payment_id: String,
    pub order_id: String,
    pub currency: String,
    pub amount_minor: i64,
    pub source_event: String,
}

/// A recorded order not activated yet, with every payment recorded towards it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSale {
    pub order: SaleOrder,
    /// `(payment_id, currency, amount_minor)`, ordered by payment id.
    pub payments: Vec<(String, String, i64)>,
}

/// What completing a sale did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SaleActivation {
    pub order_id: String,
    pub activated: Vec<Uuid>,
    /// Digests of the certificates changed (for cache invalidation).
    pub touched: Vec<CodeDigest>,
    /// Lines that could not be activated, with the reason (unknown code, wrong state, a price
    /// that is not the nominal).
    pub problems: Vec<RefusedLine>,
    /// True when the event was seen before and changed nothing.
    pub duplicate: bool,
}

/// A line of a paid order that was not activated, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusedLine {
    pub line_id: String,
    /// `****-****-****-ABCD`, when the order's code is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_code: Option<String>,
    pub amount_minor: i64,
    /// The refusal's stable code, as the HTTP API names it: `certificate-not-found`,
    /// `wrong-state`, `certificate-expired`, `nominal-mismatch`, `currency-mismatch`, ...
    pub reason_code: String,
}

/// The most refused lines one letter lists; `refused` counts them all.
pub const MAX_LETTER_LINES: usize = 100;

/// A paid sale with lines that were not activated: the value of its dead letter, written in the
/// same transaction as the sale (a crash cannot lose it). No code, no phone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusedSale {
    pub version: u16,
    /// Always `sale_activation`.
    pub kind: &'static str,
    pub order_id: String,
    pub client_id: Option<String>,
    pub currency: String,
    pub total_minor: i64,
    /// Lines activated by the sale.
    pub activated: usize,
    /// Lines refused.
    pub refused: usize,
    /// The first [`MAX_LETTER_LINES`] refused lines.
    pub refused_lines: Vec<RefusedLine>,
}

impl RefusedSale {
    pub fn new(order: &SaleOrder, activation: &SaleActivation) -> Self {
        Self {
            version: 1,
            kind: "sale_activation",
            order_id: order.order_id.clone(),
            client_id: order.client_id.clone(),
            currency: order.currency.clone(),
            total_minor: order.total_minor,
            activated: activation.activated.len(),
            refused: activation.problems.len(),
            refused_lines: activation
                .problems
                .iter()
                .take(MAX_LETTER_LINES)
                .cloned()
                .collect(),
        }
    }
}

/// Turns a refused sale into the dead letter the service writes to its outbox (topic and
/// headers are the deployment's).
pub type RefusalLetters = Arc<dyn Fn(&RefusedSale) -> OutboxLetter + Send + Sync>;

/// What distinct payments in the order's currency add up to. A payment delivered twice counts
/// once (by `payment_id`; a redelivery keeps the first amount); payments in another currency do
/// not count.
pub fn paid_towards<'a>(currency: &str, payments: impl IntoIterator<Item = (&'a str, &'a str, i64)>) -> i64 {
    let mut distinct: BTreeMap<&str, i64> = BTreeMap::new();
    for (payment_id, payment_currency, amount) in payments {
        if payment_currency.trim() == currency.trim() && amount > 0 {
            distinct.entry(payment_id).or_insert(amount);
        }
    }
    distinct.values().fold(0i64, |sum, a| sum.saturating_add(*a))
}

/// Whether the payments settle an order of `total` in `currency`.
pub fn settles<'a>(
    total: i64,
    currency: &str,
    payments: impl IntoIterator<Item = (&'a str, &'a str, i64)>,
) -> bool {
    paid_towards(currency, payments) >= total
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the order of arrival and however often each payment is delivered, the sale
        /// is settled exactly when distinct same-currency payments reach the total.
        #[test]
        fn settlement_ignores_order_and_duplicates(
            amounts in proptest::collection::vec((1i64..5_000, any::<bool>()), 0..8),
            total in 1i64..20_000,
            deliveries in proptest::collection::vec(any::<prop::sample::Index>(), 0..24),
        ) {
            let payments: Vec<(String, &str, i64)> = amounts
                .iter()
                .enumerate()
                .map(|(i, (a, rub))| (format!("p{i}"), if *rub { "RUB" } else { "EUR" }, *a))
                .collect();
            let expected: i64 = payments.iter().filter(|p| p.1 == "RUB").map(|p| p.2).sum();
            // Every payment once and random redeliveries, read back to front: redeliveries first.
            let mut stream: Vec<&(String, &str, i64)> = payments.iter().collect();
            if !payments.is_empty() {
                stream.extend(deliveries.iter().map(|i| &payments[i.index(payments.len())]));
                stream.reverse();
            }
            let seen = stream.iter().map(|p| (p.0.as_str(), p.1, p.2));
            prop_assert_eq!(paid_towards("RUB", seen.clone()), expected);
            prop_assert_eq!(settles(total, "RUB", seen), expected >= total);
        }
    }

    #[test]
    fn an_order_owes_at_least_its_certificate_lines() {
        let line = |amount_minor| OrderLine {
            line_id: "1".into(),
            code_digest: CodeDigest([1; 32]),
            code_last4: None,
            amount_minor,
        };
        let order = |total_minor, lines| SaleOrder {
            order_id: "o".into(),
            client_id: None,
            phone: None,
            currency: "RUB".into(),
            total_minor,
            lines,
            source_event: "e".into(),
        };
        assert_eq!(order(1, vec![line(5_000_000)]).amount_due(), 5_000_000);
        assert_eq!(order(7_500, vec![line(5_000)]).amount_due(), 7_500);
        assert_eq!(
            order(1, vec![line(i64::MAX), line(i64::MAX)]).amount_due(),
            i64::MAX
        );
    }

    #[test]
    fn order_lines_store_their_digest_as_hex_and_read_it_back() {
        let line = OrderLine {
            line_id: "1".into(),
            code_digest: CodeDigest([0xab; 32]),
            code_last4: None,
            amount_minor: 100,
        };
        let json = serde_json::to_value(&line).unwrap_or_default();
        assert_eq!(json["code_digest"], "ab".repeat(32));
        assert!(json.get("code_last4").is_none(), "{json}");
        let back: Option<OrderLine> = serde_json::from_value(json).ok();
        assert_eq!(back, Some(line));
        let short = serde_json::json!({"line_id": "1", "code_digest": "ab", "amount_minor": 1});
        assert!(serde_json::from_value::<OrderLine>(short).is_err());
    }
}
