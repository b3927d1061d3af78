//! CVC deliveries: one per certificate, claimed with a lease so a crashed sender's job is taken
//! over, and the CVC ciphertext erased in the transaction that records the delivery.

use super::{unavailable, PgCertificates};
use backbone_certificates::{ApplyError, CodeDigest, SealedCvc};
use sqlx::{Postgres, Row, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

pub(crate) async fn enqueue(
    tx: &mut Transaction<'_, Postgres>,
    certificate_id: Uuid,
    phone: &str,
) -> Result<(), ApplyError> {
    sqlx::query(
        "INSERT INTO sms_delivery (certificate_id, phone, status) VALUES ($1, $2, 'pending')
         ON CONFLICT (certificate_id) DO NOTHING",
    )
    .bind(certificate_id)
    .bind(phone)
    .execute(&mut **tx)
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// A claimed delivery. `sealed` is `None` when the CVC was already erased (delivered before).
#[derive(Debug, Clone)]
pub struct SmsJob {
    pub certificate_id: Uuid,
    pub phone: String,
    pub attempts: i32,
    pub code_digest: CodeDigest,
    pub code_last4: String,
    pub sealed: Option<SealedCvc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmsOutcome {
    Sent {
        provider_id: String,
    },
    /// Try again at `next_at`.
    Retry {
        error: String,
        next_at: OffsetDateTime,
    },
    /// Give up: the job is parked as failed and a dead letter is written (without the CVC).
    Failed {
        error: String,
    },
}

impl PgCertificates {
    /// Records that `certificate_id`'s CVC goes by SMS to `phone` (idempotent).
    pub async fn enqueue_sms(&self, certificate_id: Uuid, phone: &str) -> Result<(), ApplyError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        enqueue(&mut tx, certificate_id, phone).await?;
        tx.commit().await.map_err(unavailable)
    }

    /// Claims due deliveries for `lease`: another sender takes them over if this one dies.
    pub async fn claim_sms(&self, limit: i64, lease: time::Duration) -> Result<Vec<SmsJob>, ApplyError> {
        let rows = sqlx::query(
            "WITH due AS (
                 SELECT certificate_id FROM sms_delivery
                  WHERE status = 'pending' AND next_attempt_at <= now()
                  ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED
             ), claimed AS (
                 UPDATE sms_delivery d SET next_attempt_at = now() + make_interval(secs => $2),
                        attempts = d.attempts + 1
                   FROM due WHERE d.certificate_id = due.certificate_id
                 RETURNING d.certificate_id, d.phone, d.attempts
             )
             SELECT claimed.*, c.code_digest, c.code_last4, c.cvc_key_id, c.cvc_wrapped_key, c.cvc_ciphertext
               FROM claimed JOIN gift_certificate c ON c.id = claimed.certificate_id",
        )
        .bind(limit)
        .bind(lease.as_seconds_f64())
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.into_iter()
            .map(|r| {
                let digest: Vec<u8> = r.try_get("code_digest").map_err(unavailable)?;
                let mut code = [0u8; 32];
                if digest.len() == 32 {
                    code.copy_from_slice(&digest);
                }
                let key_id: Option<String> = r.try_get("cvc_key_id").map_err(unavailable)?;
                let wrapped: Option<Vec<u8>> = r.try_get("cvc_wrapped_key").map_err(unavailable)?;
                let ciphertext: Option<Vec<u8>> = r.try_get("cvc_ciphertext").map_err(unavailable)?;
                let sealed = match (key_id, wrapped, ciphertext) {
                    (Some(key_id), Some(wrapped_key), Some(ciphertext)) => Some(SealedCvc {
                        key_id,
                        wrapped_key,
                        ciphertext,
                    }),
                    _ => None,
                };
                Ok(SmsJob {
                    certificate_id: r.try_get("certificate_id").map_err(unavailable)?,
                    phone: r.try_get("phone").map_err(unavailable)?,
                    attempts: r.try_get("attempts").map_err(unavailable)?,
                    code_digest: CodeDigest(code),
                    code_last4: r.try_get("code_last4").map_err(unavailable)?,
                    sealed,
                })
            })
            .collect()
    }

    /// Records the outcome of one attempt. `Sent` erases the CVC ciphertext in the same
    /// transaction; `Failed` writes a dead letter through the outbox.
    pub async fn finish_sms(
        &self,
        job: &SmsJob,
        outcome: &SmsOutcome,
        dlq_topic: &str,
        dlq_headers: &[(String, String)],
    ) -> Result<(), ApplyError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        match outcome {
            SmsOutcome::Sent { provider_id } => {
                sqlx::query(
                    "UPDATE sms_delivery SET status = 'sent', sent_at = now(), provider_id = $2, last_error = NULL
                      WHERE certificate_id = $1",
                )
                .bind(job.certificate_id)
                .bind(provider_id)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
                sqlx::query(
                    "UPDATE gift_certificate SET cvc_key_id = NULL, cvc_wrapped_key = NULL, cvc_ciphertext = NULL
                      WHERE id = $1",
                )
                .bind(job.certificate_id)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
                sqlx::query(
                    "INSERT INTO audit_log (at, action, certificate_id, channel, details)
                     VALUES (now(), 'cvc_sms_sent', $1, 'internal', jsonb_build_object('provider_id', $2::text,
                             'attempts', $3::int))",
                )
                .bind(job.certificate_id)
                .bind(provider_id)
                .bind(job.attempts)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            }
            SmsOutcome::Retry { error, next_at } => {
                sqlx::query(
                    "UPDATE sms_delivery SET next_attempt_at = $2, last_error = $3 WHERE certificate_id = $1",
                )
                .bind(job.certificate_id)
                .bind(next_at)
                .bind(error)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            }
            SmsOutcome::Failed { error } => {
                sqlx::query(
                    "UPDATE sms_delivery SET status = 'failed', last_error = $2 WHERE certificate_id = $1",
                )
                .bind(job.certificate_id)
                .bind(error)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
                let letter = serde_json::json!({
                    "version": 1,
                    "kind": "cvc_sms",
                    "certificate_id": job.certificate_id,
                    "code_last4": job.code_last4,
                    "phone_last2": job.phone.chars().rev().take(2).collect::<Vec<_>>().into_iter().rev().collect::<String>(),
                    "attempts": job.attempts,
                    "reason": error,
                });
                let headers: serde_json::Map<String, serde_json::Value> = dlq_headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone().into()))
                    .collect();
                sqlx::query("INSERT INTO outbox (topic, key, payload, headers) VALUES ($1, $2, $3, $4)")
                    .bind(dlq_topic)
                    .bind(job.certificate_id.to_string())
                    .bind(letter)
                    .bind(serde_json::Value::Object(headers))
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            }
        }
        tx.commit().await.map_err(unavailable)
    }

    /// Puts failed deliveries back in the queue (all of them, or one certificate's). Only jobs
    /// whose CVC was not erased can be sent again.
    pub async fn requeue_failed_sms(&self, certificate_id: Option<Uuid>) -> Result<u64, ApplyError> {
        let done = sqlx::query(
            "UPDATE sms_delivery d SET status = 'pending', attempts = 0, next_attempt_at = now()
               FROM gift_certificate c
              WHERE c.id = d.certificate_id AND d.status = 'failed' AND c.cvc_ciphertext IS NOT NULL
                AND ($1::uuid IS NULL OR d.certificate_id = $1)",
        )
        .bind(certificate_id)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected())
    }
}
