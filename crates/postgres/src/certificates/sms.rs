//! CVC deliveries: one per certificate, claimed one at a time with a lease token of its own (a
//! crashed sender's job is taken over once the lease runs out; a sender whose lease ran out
//! records nothing), and the CVC ciphertext and the phone number erased in the transaction that
//! records the delivery.

use super::rows::{digest, unavailable};
use super::{phones, PgCertificates};
use async_trait::async_trait;
use backbone_certificates::store::{OutboxLetter, SmsBacklog, SmsJob, SmsOutcome, SmsQueue, StoreError};
use backbone_certificates::SealedCvc;
use sqlx::Row;
use uuid::Uuid;

/// The failed deliveries a requeue takes, over `sms_delivery d` and `gift_certificate c` (`$1`:
/// one certificate's, or all when null): those whose CVC and number are still stored, so that they
/// can be sent. One text for the requeue and its dry run, so the count is what the requeue does.
macro_rules! requeueable {
    () => {
        "c.id = d.certificate_id AND d.status = 'failed' AND c.cvc_ciphertext IS NOT NULL
          AND (d.phone_ciphertext IS NOT NULL OR d.phone IS NOT NULL)
          AND ($1::uuid IS NULL OR d.certificate_id = $1)"
    };
}

/// Puts the failed deliveries back in the queue with their attempts reset; with an operator
/// (`$2`), one audit row per delivery names them, in the same statement.
const REQUEUE_SQL: &str = concat!(
    "WITH requeued AS (
    UPDATE sms_delivery d SET status = 'pending', attempts = 0, next_attempt_at = now(), updated_at = now()
      FROM gift_certificate c
     WHERE ",
    requeueable!(),
    "
 RETURNING d.certificate_id
), audit AS (
    INSERT INTO audit_log (at, action, certificate_id, channel, initiator, details)
    SELECT now(), 'cvc_sms_requeued', certificate_id, 'internal', $2, '{}'::jsonb
      FROM requeued WHERE $2::text IS NOT NULL
)
SELECT count(*) FROM requeued"
);

/// How many deliveries [`REQUEUE_SQL`] would take now.
const COUNT_REQUEUEABLE_SQL: &str = concat!(
    "SELECT count(*) FROM sms_delivery d, gift_certificate c WHERE ",
    requeueable!()
);

impl PgCertificates {
    /// Puts failed deliveries whose CVC is still stored back in the queue (one certificate's, or
    /// all), as [`SmsQueue::requeue_failed_sms`] does; with `operator`, each requeued delivery
    /// gets an audit row naming them (`cvc_sms_requeued`), committed with the requeue. Returns how
    /// many were requeued.
    pub async fn requeue_failed_sms_by(
        &self,
        certificate_id: Option<Uuid>,
        operator: Option<&str>,
    ) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(REQUEUE_SQL)
            .bind(certificate_id)
            .bind(operator)
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

#[async_trait]
impl SmsQueue for PgCertificates {
    async fn claim_sms(&self, lease: time::Duration) -> Result<Option<SmsJob>, StoreError> {
        let token = Uuid::new_v4();
        let Some(r) = sqlx::query(
            "WITH due AS (
                 SELECT certificate_id FROM sms_delivery
                  WHERE status = 'pending' AND next_attempt_at <= now()
                  ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED
             ), claimed AS (
                 UPDATE sms_delivery d SET next_attempt_at = now() + make_interval(secs => $1),
                        attempts = d.attempts + 1, lease_token = $2, updated_at = now()
                   FROM due WHERE d.certificate_id = due.certificate_id
                 RETURNING d.certificate_id, d.attempts, d.phone, d.phone_last2, d.phone_key_id,
                           d.phone_wrapped_key, d.phone_ciphertext
             )
             SELECT claimed.*, c.code_digest, c.code_last4, c.cvc_key_id, c.cvc_wrapped_key, c.cvc_ciphertext
               FROM claimed JOIN gift_certificate c ON c.id = claimed.certificate_id",
        )
        .bind(lease.as_seconds_f64())
        .bind(token)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let certificate_id: Uuid = r.try_get("certificate_id").map_err(unavailable)?;
        let code: Vec<u8> = r.try_get("code_digest").map_err(unavailable)?;
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
        Ok(Some(SmsJob {
            certificate_id,
            lease: token,
            phone: phones::open(&self.keys, &phones::delivery_context(certificate_id), &r)?,
            phone_last2: r.try_get("phone_last2").map_err(unavailable)?,
            attempts: r.try_get("attempts").map_err(unavailable)?,
            code_digest: digest(&code)?,
            code_last4: r.try_get("code_last4").map_err(unavailable)?,
            sealed,
        }))
    }

    async fn finish_sms(
        &self,
        job: &SmsJob,
        outcome: &SmsOutcome,
        letter: Option<&OutboxLetter>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        // Every update names the lease: one taken over by another sender changes nothing.
        let held = match outcome {
            SmsOutcome::Sent { provider_id } => {
                sqlx::query(
                    "UPDATE sms_delivery SET status = 'sent', sent_at = now(), provider_id = $3, last_error = NULL,
                            lease_token = NULL, phone = NULL, phone_key_id = NULL, phone_wrapped_key = NULL,
                            phone_ciphertext = NULL, updated_at = now()
                      WHERE certificate_id = $1 AND lease_token = $2 AND status = 'pending'",
                )
                .bind(job.certificate_id)
                .bind(job.lease)
                .bind(provider_id)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?
                .rows_affected()
                    == 1
            }
            SmsOutcome::Retry { error, next_at } => {
                sqlx::query(
                    "UPDATE sms_delivery SET next_attempt_at = $3, last_error = $4, lease_token = NULL,
                            updated_at = now()
                      WHERE certificate_id = $1 AND lease_token = $2 AND status = 'pending'",
                )
                .bind(job.certificate_id)
                .bind(job.lease)
                .bind(next_at)
                .bind(error)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?
                .rows_affected()
                    == 1
            }
            SmsOutcome::Failed { error } => {
                sqlx::query(
                    "UPDATE sms_delivery SET status = 'failed', last_error = $3, lease_token = NULL,
                            updated_at = now()
                      WHERE certificate_id = $1 AND lease_token = $2 AND status = 'pending'",
                )
                .bind(job.certificate_id)
                .bind(job.lease)
                .bind(error)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?
                .rows_affected()
                    == 1
            }
        };
        if !held {
            tx.rollback().await.map_err(unavailable)?;
            return Ok(false);
        }
        match outcome {
            SmsOutcome::Sent { provider_id } => {
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
            SmsOutcome::Retry { .. } => {}
            SmsOutcome::Failed { .. } => {
                if let Some(letter) = letter {
                    super::outbox::insert_letter(&mut tx, letter).await?;
                }
            }
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(true)
    }

    async fn requeue_failed_sms(&self, certificate_id: Option<Uuid>) -> Result<u64, StoreError> {
        self.requeue_failed_sms_by(certificate_id, None).await
    }

    async fn requeueable_sms(&self, certificate_id: Option<Uuid>) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(COUNT_REQUEUEABLE_SQL)
            .bind(certificate_id)
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn sms_backlog(&self) -> Result<SmsBacklog, StoreError> {
        let (pending, failed): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'failed')
               FROM sms_delivery WHERE status <> 'sent'",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(SmsBacklog { pending, failed })
    }
}
