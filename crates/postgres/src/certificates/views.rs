//! Reads that take no lock: balance checks, the certificate view, upload batch totals, and the
//! sweeper's and pruner's queries.

use super::rows::{state as state_of, unavailable};
use super::PgCertificates;
use async_trait::async_trait;
use backbone_certificates::store::{
    BalanceView, BatchView, CertificateView, CertificateViews, HistoryEntry, StoreError,
};
use backbone_certificates::CodeDigest;
use sqlx::Row;
use uuid::Uuid;

pub(crate) const BALANCE_SQL: &str = "SELECT c.id, c.code_last4, c.currency, c.balance, c.state, c.cvc_verifier,
       c.balance - coalesce((SELECT sum(h.amount) FROM gift_certificate_hold h
                              WHERE h.certificate_id = c.id AND h.status = 'active' AND h.expires_at > now()), 0)::bigint
           AS available
  FROM gift_certificate c WHERE c.code_digest = $1";

#[async_trait]
impl CertificateViews for PgCertificates {
    async fn batch(&self, batch_id: &str) -> Result<Option<BatchView>, StoreError> {
        let row = sqlx::query(
            "SELECT count(*) AS jobs, coalesce(sum(submitted), 0)::bigint AS submitted,
                    coalesce(sum(issued), 0)::bigint AS issued, coalesce(sum(duplicates), 0)::bigint AS duplicates,
                    coalesce(sum(rejected), 0)::bigint AS rejected, max(received_at) AS last_job_at
               FROM certificate_batch_job WHERE batch_id = $1",
        )
        .bind(batch_id)
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        let jobs: i64 = row.try_get("jobs").map_err(unavailable)?;
        if jobs == 0 {
            return Ok(None);
        }
        Ok(Some(BatchView {
            batch_id: batch_id.to_owned(),
            jobs,
            submitted: row.try_get("submitted").map_err(unavailable)?,
            issued: row.try_get("issued").map_err(unavailable)?,
            duplicates: row.try_get("duplicates").map_err(unavailable)?,
            rejected: row.try_get("rejected").map_err(unavailable)?,
            last_job_at: row.try_get("last_job_at").map_err(unavailable)?,
        }))
    }

    async fn balance(&self, code: &CodeDigest) -> Result<Option<BalanceView>, StoreError> {
        let Some(row) = sqlx::query(BALANCE_SQL)
            .bind(code.0.to_vec())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let state: String = row.try_get("state").map_err(unavailable)?;
        let currency: String = row.try_get("currency").map_err(unavailable)?;
        Ok(Some(BalanceView {
            certificate_id: row.try_get("id").map_err(unavailable)?,
            code_last4: row.try_get("code_last4").map_err(unavailable)?,
            currency: currency.trim().to_owned(),
            balance: row.try_get("balance").map_err(unavailable)?,
            available: row.try_get("available").map_err(unavailable)?,
            state: state_of(&state)?,
            cvc_verifier: row.try_get("cvc_verifier").map_err(unavailable)?,
        }))
    }

    async fn view(&self, code: &CodeDigest) -> Result<Option<CertificateView>, StoreError> {
        let Some(row) = sqlx::query(
            "SELECT id, code_last4, state, currency, nominal, balance, held, expires_at, client_id, order_id,
                    payment_id, batch_id, cvc_ciphertext IS NOT NULL AS cvc_pending
               FROM gift_certificate WHERE code_digest = $1",
        )
        .bind(code.0.to_vec())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let id: Uuid = row.try_get("id").map_err(unavailable)?;
        let history = sqlx::query(
            "SELECT operation_id, action, amount, target_id, balance_before, balance_after, state_before,
                    state_after, channel, at
               FROM gift_certificate_operation WHERE certificate_id = $1 ORDER BY id LIMIT 200",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|r| {
            Ok(HistoryEntry {
                operation_id: r.try_get("operation_id")?,
                action: r.try_get("action")?,
                amount: r.try_get("amount")?,
                target_id: r.try_get("target_id")?,
                balance_before: r.try_get("balance_before")?,
                balance_after: r.try_get("balance_after")?,
                state_before: r.try_get("state_before")?,
                state_after: r.try_get("state_after")?,
                channel: r.try_get("channel")?,
                at: r.try_get("at")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(unavailable)?;
        let state: String = row.try_get("state").map_err(unavailable)?;
        let currency: String = row.try_get("currency").map_err(unavailable)?;
        Ok(Some(CertificateView {
            certificate_id: id,
            code_last4: row.try_get("code_last4").map_err(unavailable)?,
            state: state_of(&state)?,
            currency: currency.trim().to_owned(),
            nominal: row.try_get("nominal").map_err(unavailable)?,
            balance: row.try_get("balance").map_err(unavailable)?,
            held: row.try_get("held").map_err(unavailable)?,
            expires_at: row.try_get("expires_at").map_err(unavailable)?,
            client_id: row.try_get("client_id").map_err(unavailable)?,
            order_id: row.try_get("order_id").map_err(unavailable)?,
            payment_id: row.try_get("payment_id").map_err(unavailable)?,
            batch_id: row.try_get("batch_id").map_err(unavailable)?,
            cvc_pending_delivery: row.try_get("cvc_pending").map_err(unavailable)?,
            history,
        }))
    }

    async fn with_expired_holds(&self, limit: i64) -> Result<Vec<Uuid>, StoreError> {
        sqlx::query_scalar(
            "SELECT DISTINCT certificate_id FROM gift_certificate_hold
              WHERE status = 'active' AND expires_at <= now() LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)
    }

    async fn prune_idempotency_keys(&self) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM idempotency_key WHERE expires_at < now()")
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}
