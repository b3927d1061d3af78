//! One unit of work is one PostgreSQL transaction (READ COMMITTED). An operation is four
//! statements in it: the advisory lock on the idempotency key, the row lock, the load, and one
//! write statement (version-guarded, CHECK-constrained) for the certificate, its changed holds,
//! the operation, audit, outbox and idempotency rows. An operation asked for with a reason (the
//! admin API's cancel) adds it to its audit row in a fifth.

use super::phones;
use super::rows::{self, unavailable};
use super::sql::*;
use async_trait::async_trait;
use backbone_certificates::events::Outgoing;
use backbone_certificates::sale::{OrderLine, PaymentRecord, PendingSale, SaleOrder};
use backbone_certificates::store::*;
use backbone_certificates::{CertificateRef, IdempotencyClaim, OperationId};
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

/// Inserts a batch in one statement; a code that exists already is left untouched. Counts what
/// existed before in this batch (a re-sent job) apart from codes of other batches (duplicates).
pub(crate) const ISSUE_SQL: &str = "WITH input AS (
    SELECT * FROM UNNEST($1::uuid[], $2::bytea[], $3::text[], $4::text[], $5::bigint[], $6::timestamptz[],
                         $7::bytea[], $8::text[], $9::bytea[], $10::bytea[], $11::jsonb[])
        AS t(id, code_digest, code_last4, currency, nominal, expires_at, cvc_verifier, cvc_key_id,
             cvc_wrapped_key, cvc_ciphertext, event)
), ins AS (
    INSERT INTO gift_certificate (id, code_digest, code_last4, currency, nominal, balance, state, expires_at,
                                  batch_id, cvc_verifier, cvc_key_id, cvc_wrapped_key, cvc_ciphertext)
    SELECT id, code_digest, code_last4, currency, nominal, nominal, 'Issued', expires_at, $12, cvc_verifier,
           cvc_key_id, cvc_wrapped_key, cvc_ciphertext
      FROM input
        ON CONFLICT (code_digest) DO NOTHING
 RETURNING id
), events AS (
    INSERT INTO outbox (topic, key, payload)
    SELECT 'GiftCertificateState', input.id::text, input.event FROM input JOIN ins USING (id) ORDER BY input.id
), audit AS (
    INSERT INTO audit_log (at, action, channel, initiator, source_event, details)
    SELECT now(), 'issue', $13, $14, $15,
           jsonb_build_object('batch_id', $12::text, 'submitted', cardinality($1::uuid[]),
                              'issued', (SELECT count(*) FROM ins))
), counts AS (
    SELECT (SELECT count(*) FROM ins) AS issued,
           (SELECT count(*) FROM gift_certificate g JOIN input i USING (code_digest) WHERE g.batch_id = $12) AS already
), job AS (
    INSERT INTO certificate_batch_job (batch_id, job, submitted, issued, duplicates, rejected)
    SELECT $12, $16, cardinality($1::uuid[]) + $17, issued,
           cardinality($1::uuid[]) - issued - already, $17
      FROM counts
        ON CONFLICT (batch_id, job) DO NOTHING
)
SELECT issued, already FROM counts";

pub(crate) struct PgUnit {
    pub(crate) tx: Transaction<'static, Postgres>,
    /// Seals phone numbers (see `phones`).
    pub(crate) keys: super::phones::Keys,
}

pub(crate) fn lock_key(channel: &str, key: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(channel.as_bytes())
        .chain_update([0u8])
        .chain_update(key.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

#[async_trait]
impl UnitOfWork for PgUnit {
    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.commit().await.map_err(unavailable)
    }

    async fn rollback(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.rollback().await.map_err(unavailable)
    }
}

#[async_trait]
impl KeyClaims for PgUnit {
    async fn claim_key(&mut self, channel: &str, key: &str) -> Result<bool, StoreError> {
        sqlx::query_scalar(LOCK_SQL)
            .bind(lock_key(channel, key))
            .fetch_one(&mut *self.tx)
            .await
            .map_err(unavailable)
    }

    async fn stored_result(&mut self, channel: &str, key: &str) -> Result<Option<StoredResult>, StoreError> {
        let stored: Option<serde_json::Value> = sqlx::query_scalar(STORED_RESULT_SQL)
            .bind(channel)
            .bind(key)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(unavailable)?;
        stored.map(rows::stored_result).transpose()
    }

    async fn remember(
        &mut self,
        channel: &str,
        claim: &IdempotencyClaim,
        outcome: KeyOutcome,
        result: serde_json::Value,
    ) -> Result<(), StoreError> {
        sqlx::query(REMEMBER_SQL)
            .bind(channel)
            .bind(&claim.key)
            .bind(claim.request_hash.to_vec())
            .bind(outcome.as_str())
            .bind(result)
            .bind(claim.retention.as_seconds_f64())
            .execute(&mut *self.tx)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl CertificateRows for PgUnit {
    async fn lock(
        &mut self,
        by: CertificateRef,
        lookup: Lookup<'_>,
    ) -> Result<Option<LockedCertificate>, StoreError> {
        let lock = match by {
            CertificateRef::Code(digest) => sqlx::query_scalar(LOCK_BY_CODE_SQL).bind(digest.0.to_vec()),
            CertificateRef::Id(id) => sqlx::query_scalar(LOCK_BY_ID_SQL).bind(id),
        };
        let id: Option<Uuid> = lock.fetch_optional(&mut *self.tx).await.map_err(unavailable)?;
        let Some(id) = id else { return Ok(None) };
        let (channel, key) = lookup.key.unzip();
        let row = sqlx::query(LOAD_SQL)
            .bind(id)
            .bind(lookup.target.map(|t| t.as_str()))
            .bind(lookup.operation.as_str())
            .bind(channel)
            .bind(key)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(rows::locked).transpose()
    }

    async fn save(&mut self, op: SavedOperation<'_>) -> Result<(), StoreError> {
        let channel = op.origin.channel.as_str();
        let links = op.after.links();
        let claim = op.idempotency;
        let [holds, operations, events, result] = rows::write_json(&op)?;
        let written: i64 = sqlx::query_scalar(WRITE_SQL)
            .bind(op.locked.id)
            .bind(op.after.balance())
            .bind(op.after.held_total())
            .bind(op.after.state().as_str())
            .bind(&links.client_id)
            .bind(&links.order_id)
            .bind(&links.payment_id)
            .bind(op.locked.version)
            .bind(holds)
            .bind(operations)
            .bind(channel)
            .bind(&op.origin.initiator)
            .bind(&op.origin.source_event)
            .bind(events)
            .bind(claim.map(|c| c.key.as_str()))
            .bind(claim.map(|c| c.request_hash.to_vec()))
            .bind(result)
            .bind(claim.map(|c| c.retention.as_seconds_f64()).unwrap_or(0.0))
            .fetch_one(&mut *self.tx)
            .await
            .map_err(unavailable)?;
        if written != 1 {
            // The row is locked, so this means a bug or a manual change: refuse, change nothing.
            return Err(StoreError("certificate version changed under a row lock".into()));
        }
        Ok(())
    }

    async fn record_reason(
        &mut self,
        certificate: Uuid,
        operation: &OperationId,
        reason: &str,
    ) -> Result<(), StoreError> {
        let updated = sqlx::query(RECORD_REASON_SQL)
            .bind(certificate)
            .bind(operation.as_str())
            .bind(reason)
            .execute(&mut *self.tx)
            .await
            .map_err(unavailable)?
            .rows_affected();
        if updated != 1 {
            return Err(StoreError(format!("no audit row of operation {operation}")));
        }
        Ok(())
    }

    async fn issue(&mut self, batch: &IssueBatch, events: &[Outgoing]) -> Result<IssueOutcome, StoreError> {
        let n = batch.certificates.len();
        let c = &batch.certificates;
        let row = sqlx::query(ISSUE_SQL)
            .bind(c.iter().map(|c| c.id).collect::<Vec<_>>())
            .bind(c.iter().map(|c| c.code_digest.0.to_vec()).collect::<Vec<_>>())
            .bind(c.iter().map(|c| c.code_last4.clone()).collect::<Vec<_>>())
            .bind(
                c.iter()
                    .map(|c| c.nominal.currency().to_string())
                    .collect::<Vec<_>>(),
            )
            .bind(c.iter().map(|c| c.nominal.minor()).collect::<Vec<_>>())
            .bind(c.iter().map(|c| c.expires_at).collect::<Vec<_>>())
            .bind(c.iter().map(|c| c.cvc_verifier.to_vec()).collect::<Vec<_>>())
            .bind(c.iter().map(|c| c.sealed_cvc.key_id.clone()).collect::<Vec<_>>())
            .bind(
                c.iter()
                    .map(|c| c.sealed_cvc.wrapped_key.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(
                c.iter()
                    .map(|c| c.sealed_cvc.ciphertext.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(events.iter().map(|e| e.payload.clone()).collect::<Vec<_>>())
            .bind(&batch.batch_id)
            .bind(batch.channel.as_str())
            .bind(&batch.initiator)
            .bind(&batch.source_event)
            .bind(i32::try_from(batch.job).unwrap_or(i32::MAX))
            .bind(i32::try_from(batch.rejected).unwrap_or(i32::MAX))
            .fetch_one(&mut *self.tx)
            .await
            .map_err(unavailable)?;
        let issued: i64 = row.try_get("issued").map_err(unavailable)?;
        let already: i64 = row.try_get("already").map_err(unavailable)?;
        let (issued, already) = (issued as u64, already as u64);
        Ok(IssueOutcome {
            issued,
            already_issued: already,
            duplicates: (n as u64).saturating_sub(issued + already),
            replayed: false,
        })
    }
}

#[async_trait]
impl SaleRecords for PgUnit {
    /// Without it, an order and its last payment stored at the same moment by two consumers
    /// would each miss the other's uncommitted row, and the sale would never complete.
    async fn lock_order(&mut self, order_id: &str) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('sale:' || $1, 0))")
            .bind(order_id)
            .execute(&mut *self.tx)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn insert_order(&mut self, order: &SaleOrder) -> Result<bool, StoreError> {
        let sealed = match &order.phone {
            Some(phone) => Some((
                phones::seal(&self.keys, &phones::sale_context(&order.order_id), phone)?,
                phones::last2(phone),
            )),
            None => None,
        };
        let inserted = sqlx::query(
            "INSERT INTO certificate_sale (order_id, client_id, currency, total_minor, lines, source_event,
                                           phone_last2, phone_key_id, phone_wrapped_key, phone_ciphertext)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(&order.order_id)
        .bind(&order.client_id)
        .bind(&order.currency)
        .bind(order.total_minor)
        .bind(serde_json::to_value(&order.lines).map_err(unavailable)?)
        .bind(&order.source_event)
        .bind(sealed.as_ref().map(|(_, l)| l))
        .bind(sealed.as_ref().map(|(s, _)| &s.key_id))
        .bind(sealed.as_ref().map(|(s, _)| &s.wrapped_key))
        .bind(sealed.as_ref().map(|(s, _)| &s.ciphertext))
        .execute(&mut *self.tx)
        .await
        .map_err(unavailable)?
        .rows_affected();
        Ok(inserted == 1)
    }

    async fn insert_payment(&mut self, payment: &PaymentRecord) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO sale_payment (payment_id, order_id, currency, amount_minor, source_event)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (payment_id) DO NOTHING",
        )
        .bind(&payment.payment_id)
        .bind(&payment.order_id)
        .bind(&payment.currency)
        .bind(payment.amount_minor)
        .bind(&payment.source_event)
        .execute(&mut *self.tx)
        .await
        .map_err(unavailable)?
        .rows_affected();
        Ok(inserted == 1)
    }

    async fn pending_sale(&mut self, order_id: &str) -> Result<Option<PendingSale>, StoreError> {
        let Some(sale) = sqlx::query(
            "SELECT s.client_id, s.phone, s.phone_key_id, s.phone_wrapped_key, s.phone_ciphertext,
                    s.total_minor, s.currency, s.lines, s.source_event,
                    (SELECT coalesce(jsonb_agg(jsonb_build_array(p.payment_id, p.currency, p.amount_minor)
                                               ORDER BY p.payment_id), '[]'::jsonb)
                       FROM sale_payment p WHERE p.order_id = s.order_id) AS payments
               FROM certificate_sale s
              WHERE s.order_id = $1 AND s.activated_at IS NULL
                FOR UPDATE",
        )
        .bind(order_id)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let payments: serde_json::Value = sale.try_get("payments").map_err(unavailable)?;
        let lines: serde_json::Value = sale.try_get("lines").map_err(unavailable)?;
        let currency: String = sale.try_get("currency").map_err(unavailable)?;
        Ok(Some(PendingSale {
            order: SaleOrder {
                order_id: order_id.to_owned(),
                client_id: sale.try_get("client_id").map_err(unavailable)?,
                phone: phones::open(&self.keys, &phones::sale_context(order_id), &sale)?,
                currency: currency.trim().to_owned(),
                total_minor: sale.try_get("total_minor").map_err(unavailable)?,
                lines: serde_json::from_value::<Vec<OrderLine>>(lines).map_err(unavailable)?,
                source_event: sale.try_get("source_event").map_err(unavailable)?,
            },
            payments: serde_json::from_value(payments).map_err(unavailable)?,
        }))
    }

    async fn mark_activated(&mut self, order_id: &str) -> Result<(), StoreError> {
        // The number has served: it goes with the sale's activation (its deliveries have their own).
        sqlx::query(
            "UPDATE certificate_sale SET activated_at = now(), phone = NULL, phone_key_id = NULL,
                    phone_wrapped_key = NULL, phone_ciphertext = NULL
              WHERE order_id = $1",
        )
        .bind(order_id)
        .execute(&mut *self.tx)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn queue_letter(&mut self, letter: &OutboxLetter) -> Result<(), StoreError> {
        super::outbox::insert_letter(&mut self.tx, letter).await
    }
}

#[async_trait]
impl SmsQueueing for PgUnit {
    async fn queue_cvc_sms(&mut self, certificate_id: Uuid, phone: &str) -> Result<(), StoreError> {
        let sealed = phones::seal(&self.keys, &phones::delivery_context(certificate_id), phone)?;
        sqlx::query(
            "INSERT INTO sms_delivery (certificate_id, status, phone_last2, phone_key_id, phone_wrapped_key,
                                       phone_ciphertext)
             VALUES ($1, 'pending', $2, $3, $4, $5)
             ON CONFLICT (certificate_id) DO NOTHING",
        )
        .bind(certificate_id)
        .bind(phones::last2(phone))
        .bind(&sealed.key_id)
        .bind(&sealed.wrapped_key)
        .bind(&sealed.ciphertext)
        .execute(&mut *self.tx)
        .await
        .map_err(unavailable)?;
        Ok(())
    }
}
