//! What the admin API (the operator console) reads: one certificate with its holds, history and
//! audit; the overview's figures, each one set-based statement; upload batches; CVC deliveries.
//! Reads only, no lock. Codes are named by their last four characters, phone numbers by their
//! last two: nothing here can show more of them.

use super::rows::{state as state_of, unavailable};
use super::PgCertificates;
use backbone_certificates::store::{BatchView, StoreError};
use backbone_certificates::{CodeDigest, State};
use serde::Deserialize;
use sqlx::types::Json;
use sqlx::Row;
use time::OffsetDateTime;
use uuid::Uuid;

/// A certificate as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminCertificate {
    pub certificate_id: Uuid,
    pub code_last4: String,
    pub state: State,
    pub currency: String,
    pub nominal: i64,
    pub balance: i64,
    /// Balance less active holds that have not expired.
    pub available: i64,
    pub expires_at: Option<OffsetDateTime>,
    pub client_id: Option<String>,
    pub order_id: Option<String>,
    pub payment_id: Option<String>,
    pub batch_id: Option<String>,
    /// Whether the CVC is still stored sealed (until its SMS is delivered).
    pub cvc_pending_delivery: bool,
    /// Newest first, at most the limit asked for.
    pub holds: Vec<AdminHold>,
    /// Newest first, at most the limit asked for.
    pub history: Vec<AdminOperation>,
    /// Newest first, at most the limit asked for.
    pub audit: Vec<AdminAudit>,
}

/// A hold, whatever became of it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AdminHold {
    pub hold_id: String,
    pub amount: i64,
    /// `active`, `captured`, `released` or `expired`.
    pub status: String,
    /// The channel that made it.
    pub channel: String,
    pub captured_amount: Option<i64>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// One effect in the certificate's history (`gift_certificate_operation`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AdminOperation {
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
    /// What caused it, from its audit row: `http:<digest of the Idempotency-Key>`,
    /// `order:<order id>`, or nothing.
    pub source_event: Option<String>,
}

/// One row of the certificate's audit log.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AdminAudit {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub action: String,
    pub channel: String,
    /// The person or system named with the request (`X-Initiator`, `X-Operator`).
    pub initiator: Option<String>,
    pub operation_id: Option<String>,
    pub details: serde_json::Value,
}

/// The outbox right now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutboxSummary {
    pub pending: i64,
    pub parked: i64,
    /// Age of the oldest event waiting; `None` when none waits.
    pub oldest_pending_age_seconds: Option<f64>,
}

/// Upload batches right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadSummary {
    /// Batches opened over the API (a batch stays open).
    pub open: i64,
    /// Batches opened, or with a job received, in the last 24 hours.
    pub recent: i64,
}

/// One bucket of the activity series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivityBucket {
    pub start: OffsetDateTime,
    /// Effects recorded (`gift_certificate_operation`): activate, authorize, capture, void,
    /// refund, cancel and expire.
    pub operations: i64,
    /// Refusals by the certificate's rules stored under an Idempotency-Key.
    pub refused: i64,
}

/// An upload batch: the totals of its jobs, and who opened it when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadBatch {
    /// As `CertificateViews::batch` reads them (zeros for a batch without a job yet).
    pub totals: BatchView,
    /// `None` for batches loaded before batches were opened over the API.
    pub opened_by: Option<String>,
    pub opened_at: Option<OffsetDateTime>,
}

/// A CVC delivery not sent yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmsDelivery {
    pub certificate_id: Uuid,
    pub code_last4: String,
    pub phone_last2: String,
    /// `pending` or `failed`.
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub updated_at: OffsetDateTime,
}

/// One statement: the certificate, its available balance, and its newest holds, history (with
/// each effect's source from its audit row) and audit rows, as of one snapshot.
const CERTIFICATE_SQL: &str = "SELECT c.id, c.code_last4, c.state, c.currency, c.nominal, c.balance, c.expires_at,
       c.client_id, c.order_id, c.payment_id, c.batch_id, c.cvc_ciphertext IS NOT NULL AS cvc_pending,
       c.balance - coalesce((SELECT sum(h.amount) FROM gift_certificate_hold h
                              WHERE h.certificate_id = c.id AND h.status = 'active' AND h.expires_at > now()), 0)::bigint
           AS available,
       (SELECT coalesce(jsonb_agg(to_jsonb(x) ORDER BY x.created_at DESC, x.hold_id), '[]'::jsonb)
          FROM (SELECT hold_id, amount, status, channel, captured_amount, created_at, expires_at
                  FROM gift_certificate_hold WHERE certificate_id = c.id
                 ORDER BY created_at DESC, hold_id LIMIT $2) x) AS holds,
       (SELECT coalesce(jsonb_agg(to_jsonb(x) - 'id' ORDER BY x.id DESC), '[]'::jsonb)
          FROM (SELECT o.id, o.operation_id, o.action, o.amount, o.target_id, o.balance_before, o.balance_after,
                       o.state_before, o.state_after, o.channel, o.at, a.source_event
                  FROM gift_certificate_operation o
                  LEFT JOIN audit_log a ON a.certificate_id = o.certificate_id AND a.operation_id = o.operation_id
                 WHERE o.certificate_id = c.id ORDER BY o.id DESC LIMIT $2) x) AS history,
       (SELECT coalesce(jsonb_agg(to_jsonb(x) - 'id' ORDER BY x.at DESC, x.id DESC), '[]'::jsonb)
          FROM (SELECT id, at, action, channel, initiator, operation_id, details FROM audit_log
                 WHERE certificate_id = c.id ORDER BY at DESC, id DESC LIMIT $2) x) AS audit
  FROM gift_certificate c WHERE c.code_digest = $1";

/// Effects and stored refusals per bucket: `$1` the first bucket's start, `$2` the width in
/// seconds, `$3` the number of buckets; every bucket, oldest first, zeros where nothing happened.
const ACTIVITY_SQL: &str = "WITH ops AS (
    SELECT floor(extract(epoch FROM at - $1) / $2::bigint)::int AS n, count(*) AS c
      FROM gift_certificate_operation
     WHERE at >= $1 AND at < $1 + make_interval(secs => $2::bigint * $3::int)
     GROUP BY 1
), refused AS (
    SELECT floor(extract(epoch FROM created_at - $1) / $2::bigint)::int AS n, count(*) AS c
      FROM idempotency_key
     WHERE outcome = 'refused' AND created_at >= $1
       AND created_at < $1 + make_interval(secs => $2::bigint * $3::int)
     GROUP BY 1
)
SELECT n, coalesce(ops.c, 0)::bigint AS operations, coalesce(refused.c, 0)::bigint AS refused
  FROM generate_series(0, $3::int - 1) AS n LEFT JOIN ops USING (n) LEFT JOIN refused USING (n)
 ORDER BY n";

/// Every upload batch, opened over the API or only known by its jobs, newest activity first.
const UPLOADS_SQL: &str = "WITH jobs AS (
    SELECT batch_id, count(*) AS jobs, sum(submitted)::bigint AS submitted, sum(issued)::bigint AS issued,
           sum(duplicates)::bigint AS duplicates, sum(rejected)::bigint AS rejected, max(received_at) AS last_job_at
      FROM certificate_batch_job GROUP BY batch_id
)
SELECT batch_id, coalesce(j.jobs, 0) AS jobs, coalesce(j.submitted, 0) AS submitted, coalesce(j.issued, 0) AS issued,
       coalesce(j.duplicates, 0) AS duplicates, coalesce(j.rejected, 0) AS rejected, j.last_job_at,
       b.opened_by, b.opened_at
  FROM certificate_batch b FULL JOIN jobs j USING (batch_id)
 ORDER BY greatest(j.last_job_at, b.opened_at) DESC, batch_id
 LIMIT $1";

/// Deliveries not sent, in the states `$1`, most recently changed first.
const SMS_SQL: &str =
    "SELECT d.certificate_id, c.code_last4, d.phone_last2, d.status, d.attempts, d.last_error, d.updated_at
  FROM sms_delivery d JOIN gift_certificate c ON c.id = d.certificate_id
 WHERE d.status <> 'sent' AND d.status = ANY($1)
 ORDER BY d.updated_at DESC, d.certificate_id
 LIMIT $2";

impl PgCertificates {
    /// The certificate with this code, with at most `limit` of each of its holds, history
    /// entries and audit rows (the newest); `None` when no certificate has this code.
    pub async fn admin_certificate(
        &self,
        code: &CodeDigest,
        limit: i64,
    ) -> Result<Option<AdminCertificate>, StoreError> {
        let Some(row) = sqlx::query(CERTIFICATE_SQL)
            .bind(code.0.to_vec())
            .bind(limit)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let state: String = row.try_get("state").map_err(unavailable)?;
        let currency: String = row.try_get("currency").map_err(unavailable)?;
        let Json(holds): Json<Vec<AdminHold>> = row.try_get("holds").map_err(unavailable)?;
        let Json(history): Json<Vec<AdminOperation>> = row.try_get("history").map_err(unavailable)?;
        let Json(audit): Json<Vec<AdminAudit>> = row.try_get("audit").map_err(unavailable)?;
        Ok(Some(AdminCertificate {
            certificate_id: row.try_get("id").map_err(unavailable)?,
            code_last4: row.try_get("code_last4").map_err(unavailable)?,
            state: state_of(&state)?,
            currency: currency.trim().to_owned(),
            nominal: row.try_get("nominal").map_err(unavailable)?,
            balance: row.try_get("balance").map_err(unavailable)?,
            available: row.try_get("available").map_err(unavailable)?,
            expires_at: row.try_get("expires_at").map_err(unavailable)?,
            client_id: row.try_get("client_id").map_err(unavailable)?,
            order_id: row.try_get("order_id").map_err(unavailable)?,
            payment_id: row.try_get("payment_id").map_err(unavailable)?,
            batch_id: row.try_get("batch_id").map_err(unavailable)?,
            cvc_pending_delivery: row.try_get("cvc_pending").map_err(unavailable)?,
            holds,
            history,
            audit,
        }))
    }

    /// How many certificates are in each state; states without any are absent.
    pub async fn certificates_by_state(&self) -> Result<Vec<(State, i64)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM gift_certificate GROUP BY state")
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
        rows.into_iter()
            .map(|(state, n)| Ok((state_of(&state)?, n)))
            .collect()
    }

    /// The outbox's pending and parked events, and how long the oldest pending one has waited.
    pub async fn outbox_summary(&self) -> Result<OutboxSummary, StoreError> {
        let (pending, parked, oldest): (i64, i64, Option<f64>) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM outbox), (SELECT count(*) FROM outbox_parked),
                    (SELECT extract(epoch FROM now() - min(created_at))::float8 FROM outbox)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(OutboxSummary {
            pending,
            parked,
            oldest_pending_age_seconds: oldest,
        })
    }

    /// Opened upload batches, and the batches active in the last 24 hours.
    pub async fn upload_summary(&self) -> Result<UploadSummary, StoreError> {
        let (open, recent): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM certificate_batch),
                    (SELECT count(*) FROM (SELECT batch_id FROM certificate_batch_job
                                            WHERE received_at > now() - interval '24 hours'
                                           UNION
                                           SELECT batch_id FROM certificate_batch
                                            WHERE opened_at > now() - interval '24 hours') r)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(UploadSummary { open, recent })
    }

    /// `buckets` buckets of `width_seconds` from `since` on, oldest first, each with the effects
    /// recorded and the refusals stored in it; empty buckets have zeros.
    pub async fn activity(
        &self,
        since: OffsetDateTime,
        width_seconds: i64,
        buckets: i32,
    ) -> Result<Vec<ActivityBucket>, StoreError> {
        let rows: Vec<(i32, i64, i64)> = sqlx::query_as(ACTIVITY_SQL)
            .bind(since)
            .bind(width_seconds)
            .bind(buckets)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(|(n, operations, refused)| ActivityBucket {
                start: since + time::Duration::seconds(width_seconds * i64::from(n)),
                operations,
                refused,
            })
            .collect())
    }

    /// At most `limit` upload batches, the most recently active (opened or sent a job) first.
    pub async fn upload_batches(&self, limit: i64) -> Result<Vec<UploadBatch>, StoreError> {
        let rows = sqlx::query(UPLOADS_SQL)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                Ok(UploadBatch {
                    totals: BatchView {
                        batch_id: r.try_get("batch_id")?,
                        jobs: r.try_get("jobs")?,
                        submitted: r.try_get("submitted")?,
                        issued: r.try_get("issued")?,
                        duplicates: r.try_get("duplicates")?,
                        rejected: r.try_get("rejected")?,
                        last_job_at: r.try_get("last_job_at")?,
                    },
                    opened_by: r.try_get("opened_by")?,
                    opened_at: r.try_get("opened_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(unavailable)
    }

    /// At most `limit` deliveries not sent yet whose status is one of `statuses` (`pending`,
    /// `failed`), the most recently changed first.
    pub async fn sms_deliveries(
        &self,
        statuses: &[&str],
        limit: i64,
    ) -> Result<Vec<SmsDelivery>, StoreError> {
        let rows = sqlx::query(SMS_SQL)
            .bind(statuses)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                Ok(SmsDelivery {
                    certificate_id: r.try_get("certificate_id")?,
                    code_last4: r.try_get("code_last4")?,
                    phone_last2: r.try_get("phone_last2")?,
                    status: r.try_get("status")?,
                    attempts: r.try_get("attempts")?,
                    last_error: r.try_get("last_error")?,
                    updated_at: r.try_get("updated_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(unavailable)
    }

    /// The id of the certificate with this code, if there is one.
    pub async fn certificate_id(&self, code: &CodeDigest) -> Result<Option<Uuid>, StoreError> {
        sqlx::query_scalar("SELECT id FROM gift_certificate WHERE code_digest = $1")
            .bind(code.0.to_vec())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)
    }
}
