//! Reads and the bulk issue of uploaded certificates.

use super::{unavailable, PgCertificates};
use backbone_certificates::events;
use backbone_certificates::{
    Amount, ApplyError, Certificate, CodeDigest, IdempotencyClaim, SealedCvc, State,
};
use sqlx::Row;
use time::OffsetDateTime;
use uuid::Uuid;

/// Inserts a batch in one statement; a code that exists already is left untouched. Counts what
/// existed before in this batch (a re-sent job) apart from codes of other batches (duplicates).
pub const ISSUE_SQL: &str = "WITH input AS (
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

pub const BALANCE_SQL: &str = "SELECT c.id, c.code_last4, c.currency, c.balance, c.state, c.cvc_verifier,
       c.balance - coalesce((SELECT sum(h.amount) FROM gift_certificate_hold h
                              WHERE h.certificate_id = c.id AND h.status = 'active' AND h.expires_at > now()), 0)::bigint
           AS available
  FROM gift_certificate c WHERE c.code_digest = $1";

/// A certificate to issue. The CVC arrives sealed; its verifier is computed by the caller.
#[derive(Debug, Clone)]
pub struct NewCertificate {
    pub id: Uuid,
    pub code_digest: CodeDigest,
    pub code_last4: String,
    pub nominal: Amount,
    pub expires_at: Option<OffsetDateTime>,
    pub cvc_verifier: [u8; 32],
    pub sealed_cvc: SealedCvc,
}

#[derive(Debug, Clone)]
pub struct IssueBatch {
    pub batch_id: String,
    /// Job number within the batch: a re-sent job is recognised and counted once.
    pub job: u32,
    /// Rows of this job the caller refused before storage (counted in the batch record).
    pub rejected: u32,
    pub certificates: Vec<NewCertificate>,
    pub channel: String,
    pub initiator: Option<String>,
    pub source_event: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IssueOutcome {
    /// Newly issued now.
    pub issued: u64,
    /// Issued earlier by this same batch (a re-sent job).
    pub already_issued: u64,
    /// Codes that exist in another batch, or twice in this request: never overwritten.
    pub duplicates: u64,
    /// The stored outcome of an earlier request with the same idempotency key.
    #[serde(default)]
    pub replayed: bool,
}

/// What a balance check needs, including the CVC verifier to check against.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BalanceView {
    pub certificate_id: Uuid,
    pub code_last4: String,
    pub currency: String,
    pub balance: i64,
    pub available: i64,
    pub state: State,
    pub cvc_verifier: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BatchView {
    pub batch_id: String,
    pub jobs: i64,
    pub submitted: i64,
    pub issued: i64,
    pub duplicates: i64,
    pub rejected: i64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_job_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HistoryEntry {
    pub operation_id: String,
    pub action: String,
    pub amount: Option<i64>,
    pub target_id: Option<String>,
    pub balance_before: i64,
    pub balance_after: i64,
    pub state_before: String,
    pub state_after: String,
    pub channel: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertificateView {
    pub certificate_id: Uuid,
    pub code_last4: String,
    pub state: State,
    pub currency: String,
    pub nominal: i64,
    pub balance: i64,
    pub held: i64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    pub client_id: Option<String>,
    pub order_id: Option<String>,
    pub payment_id: Option<String>,
    pub batch_id: Option<String>,
    /// Whether the CVC ciphertext is still stored (it is erased once the SMS is delivered).
    pub cvc_pending_delivery: bool,
    pub history: Vec<HistoryEntry>,
}

impl PgCertificates {
    /// Issues a batch job. With a claim, the job runs under the caller's idempotency key: a
    /// retry gets the first outcome back (`replayed`), a different body under the key is
    /// `KeyReused`, a concurrent one `InFlight`.
    pub async fn issue(
        &self,
        batch: &IssueBatch,
        claim: Option<&IdempotencyClaim>,
    ) -> Result<IssueOutcome, ApplyError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        if let Some(claim) = claim {
            let locked: bool = sqlx::query_scalar(super::LOCK_SQL)
                .bind(super::lock_key(&batch.channel, &claim.key))
                .fetch_one(&mut *tx)
                .await
                .map_err(unavailable)?;
            if !locked {
                return Err(ApplyError::InFlight);
            }
            let stored: Option<(Vec<u8>, serde_json::Value)> = sqlx::query_as(
                "SELECT request_hash, result FROM idempotency_key WHERE channel = $1 AND key = $2",
            )
            .bind(&batch.channel)
            .bind(&claim.key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
            if let Some((hash, result)) = stored {
                if hash != claim.request_hash {
                    return Err(ApplyError::KeyReused);
                }
                let mut outcome: IssueOutcome = serde_json::from_value(result).map_err(unavailable)?;
                outcome.replayed = true;
                return Ok(outcome);
            }
        }
        let outcome = self.issue_in(&mut tx, batch).await?;
        if let Some(claim) = claim {
            sqlx::query(
                "INSERT INTO idempotency_key (channel, key, request_hash, outcome, result, expires_at)
                 VALUES ($1, $2, $3, 'applied', $4, now() + make_interval(secs => $5))",
            )
            .bind(&batch.channel)
            .bind(&claim.key)
            .bind(claim.request_hash.to_vec())
            .bind(serde_json::to_value(outcome).map_err(unavailable)?)
            .bind(claim.retention.as_seconds_f64())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(outcome)
    }

    async fn issue_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        batch: &IssueBatch,
    ) -> Result<IssueOutcome, ApplyError> {
        let n = batch.certificates.len();
        let mut ids = Vec::with_capacity(n);
        let mut digests = Vec::with_capacity(n);
        let mut last4s = Vec::with_capacity(n);
        let mut currencies = Vec::with_capacity(n);
        let mut nominals = Vec::with_capacity(n);
        let mut expiries = Vec::with_capacity(n);
        let mut verifiers = Vec::with_capacity(n);
        let mut key_ids = Vec::with_capacity(n);
        let mut wrapped = Vec::with_capacity(n);
        let mut ciphertexts = Vec::with_capacity(n);
        let mut payloads = Vec::with_capacity(n);
        let now = OffsetDateTime::now_utc();
        for c in &batch.certificates {
            let issued = Certificate::issue(c.nominal, c.expires_at);
            payloads.push(events::issued(c.id, &c.code_last4, &issued, now).payload);
            ids.push(c.id);
            digests.push(c.code_digest.0.to_vec());
            last4s.push(c.code_last4.clone());
            currencies.push(c.nominal.currency().to_string());
            nominals.push(c.nominal.minor());
            expiries.push(c.expires_at);
            verifiers.push(c.cvc_verifier.to_vec());
            key_ids.push(c.sealed_cvc.key_id.clone());
            wrapped.push(c.sealed_cvc.wrapped_key.clone());
            ciphertexts.push(c.sealed_cvc.ciphertext.clone());
        }
        let row = sqlx::query(ISSUE_SQL)
            .bind(ids)
            .bind(digests)
            .bind(last4s)
            .bind(currencies)
            .bind(nominals)
            .bind(expiries)
            .bind(verifiers)
            .bind(key_ids)
            .bind(wrapped)
            .bind(ciphertexts)
            .bind(payloads)
            .bind(&batch.batch_id)
            .bind(&batch.channel)
            .bind(&batch.initiator)
            .bind(&batch.source_event)
            .bind(i32::try_from(batch.job).unwrap_or(i32::MAX))
            .bind(i32::try_from(batch.rejected).unwrap_or(i32::MAX))
            .fetch_one(&mut **tx)
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

    /// Totals of an upload batch over the jobs received so far.
    pub async fn batch(&self, batch_id: &str) -> Result<Option<BatchView>, ApplyError> {
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

    pub async fn balance(&self, code: &CodeDigest) -> Result<Option<BalanceView>, ApplyError> {
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
            state: State::parse(&state).ok_or_else(|| unavailable("unknown state"))?,
            cvc_verifier: row.try_get("cvc_verifier").map_err(unavailable)?,
        }))
    }

    pub async fn view(&self, code: &CodeDigest) -> Result<Option<CertificateView>, ApplyError> {
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
            state: State::parse(&state).ok_or_else(|| unavailable("unknown state"))?,
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

    /// Certificates with active holds past their expiry, for the sweeper.
    pub async fn with_expired_holds(&self, limit: i64) -> Result<Vec<Uuid>, ApplyError> {
        sqlx::query_scalar(
            "SELECT DISTINCT certificate_id FROM gift_certificate_hold
              WHERE status = 'active' AND expires_at <= now() LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)
    }

    /// Deletes idempotency records past their retention.
    pub async fn prune_idempotency_keys(&self) -> Result<u64, ApplyError> {
        let done = sqlx::query("DELETE FROM idempotency_key WHERE expires_at < now()")
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected())
    }
}
