//! Certificate sales from order and payment events. Either may come first and either may be
//! delivered again; the sale activates its certificates once, in the transaction that records
//! the event that completes the payment.

use super::{unavailable, PgCertificates};
use backbone_certificates::events::Origin;
use backbone_certificates::{
    ApplyError, CertificateRef, CodeDigest, Command, OperationId, OperationRequest, SaleLinks,
};
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderLine {
    pub line_id: String,
    /// Digest of the code of the card sold.
    #[serde(with = "hex_digest")]
    pub code_digest: CodeDigest,
    pub amount_minor: i64,
}

mod hex_digest {
    use backbone_certificates::CodeDigest;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &CodeDigest, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(d.0))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<CodeDigest, D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(CodeDigest(out))
    }
}

#[derive(Debug, Clone)]
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

#[derive(Debug, Clone)]
pub struct PaymentRecord {
    pub payment_id: String,
    pub order_id: String,
    pub currency: String,
    pub amount_minor: i64,
    pub source_event: String,
}

/// What completing a sale did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SaleActivation {
    pub order_id: String,
    pub activated: Vec<Uuid>,
    /// Digests of the certificates changed (for cache invalidation).
    pub touched: Vec<CodeDigest>,
    /// Lines that could not be activated, with the reason (unknown code, wrong state).
    pub problems: Vec<(String, String)>,
    /// True when the event was seen before and changed nothing.
    pub duplicate: bool,
}

/// Serialises the order's events across instances: without it, an order and its last payment
/// stored at the same moment by two consumers would each miss the other's uncommitted row, and
/// the sale would never complete.
async fn lock_order(tx: &mut Transaction<'_, Postgres>, order_id: &str) -> Result<(), ApplyError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('sale:' || $1, 0))")
        .bind(order_id)
        .execute(&mut **tx)
        .await
        .map_err(unavailable)?;
    Ok(())
}

impl PgCertificates {
    /// Records an order with certificate lines; activates them if payments already cover it.
    pub async fn record_order(&self, order: &SaleOrder) -> Result<Option<SaleActivation>, ApplyError> {
        let total = order.total_minor;
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        lock_order(&mut tx, &order.order_id).await?;
        let inserted = sqlx::query(
            "INSERT INTO certificate_sale (order_id, client_id, phone, currency, total_minor, lines, source_event)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(&order.order_id)
        .bind(&order.client_id)
        .bind(&order.phone)
        .bind(&order.currency)
        .bind(total)
        .bind(serde_json::to_value(&order.lines).map_err(unavailable)?)
        .bind(&order.source_event)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?
        .rows_affected();
        let outcome = self.complete_sale(&mut tx, &order.order_id, None).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(outcome.or_else(|| {
            (inserted == 0).then(|| SaleActivation {
                order_id: order.order_id.clone(),
                duplicate: true,
                ..SaleActivation::default()
            })
        }))
    }

    /// Records a payment; activates the order's certificates once payments cover the order.
    pub async fn record_payment(
        &self,
        payment: &PaymentRecord,
    ) -> Result<Option<SaleActivation>, ApplyError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        lock_order(&mut tx, &payment.order_id).await?;
        sqlx::query(
            "INSERT INTO sale_payment (payment_id, order_id, currency, amount_minor, source_event)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (payment_id) DO NOTHING",
        )
        .bind(&payment.payment_id)
        .bind(&payment.order_id)
        .bind(&payment.currency)
        .bind(payment.amount_minor)
        .bind(&payment.source_event)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        let outcome = self
            .complete_sale(&mut tx, &payment.order_id, Some(&payment.payment_id))
            .await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(outcome)
    }

    async fn complete_sale(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        order_id: &str,
        payment_id: Option<&str>,
    ) -> Result<Option<SaleActivation>, ApplyError> {
        let Some(sale) = sqlx::query(
            "SELECT s.client_id, s.phone, s.total_minor, s.currency, s.lines, s.source_event,
                    (SELECT coalesce(jsonb_agg(jsonb_build_array(p.payment_id, p.currency, p.amount_minor)
                                               ORDER BY p.payment_id), '[]'::jsonb)
                       FROM sale_payment p WHERE p.order_id = s.order_id) AS payments
               FROM certificate_sale s
              WHERE s.order_id = $1 AND s.activated_at IS NULL
                FOR UPDATE",
        )
        .bind(order_id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let total: i64 = sale.try_get("total_minor").map_err(unavailable)?;
        let currency: String = sale.try_get("currency").map_err(unavailable)?;
        let payments: serde_json::Value = sale.try_get("payments").map_err(unavailable)?;
        let payments: Vec<(String, String, i64)> = serde_json::from_value(payments).map_err(unavailable)?;
        let counted = payments
            .iter()
            .map(|(id, cur, amount)| (id.as_str(), cur.as_str(), *amount));
        if !backbone_orders::settles(total, &currency, counted) {
            return Ok(None);
        }
        let payment_ids = payments
            .iter()
            .map(|(id, _, _)| id.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let lines: serde_json::Value = sale.try_get("lines").map_err(unavailable)?;
        let lines: Vec<OrderLine> = serde_json::from_value(lines).map_err(unavailable)?;
        let phone: Option<String> = sale.try_get("phone").map_err(unavailable)?;
        let links = SaleLinks {
            client_id: sale.try_get("client_id").map_err(unavailable)?,
            order_id: Some(order_id.to_owned()),
            payment_id: payment_id.map(str::to_owned).or(Some(payment_ids)),
        };
        let mut activation = SaleActivation {
            order_id: order_id.to_owned(),
            ..SaleActivation::default()
        };
        for line in &lines {
            let request = OperationRequest {
                certificate: CertificateRef::Code(line.code_digest),
                operation: OperationId::parse(format!("sale:{order_id}:{}", line.line_id))
                    .map_err(unavailable)?,
                command: Command::Activate { links: links.clone() },
                origin: Origin {
                    channel: "Payments".into(),
                    initiator: None,
                    source_event: Some(format!("order:{order_id}")),
                },
                idempotency: None,
                cvc_verifier: None,
                cvc_sms_to: phone.clone(),
            };
            match self.apply_in(tx, &request).await {
                Ok(applied) => {
                    activation.activated.push(applied.certificate_id);
                    activation.touched.push(line.code_digest);
                }
                Err(ApplyError::Unavailable(e)) => return Err(ApplyError::Unavailable(e)),
                Err(other) => activation
                    .problems
                    .push((line.line_id.clone(), other.to_string())),
            }
        }
        sqlx::query("UPDATE certificate_sale SET activated_at = now() WHERE order_id = $1")
            .bind(order_id)
            .execute(&mut **tx)
            .await
            .map_err(unavailable)?;
        Ok(Some(activation))
    }
}
