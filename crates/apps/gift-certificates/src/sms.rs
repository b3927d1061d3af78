//! Sends each activated certificate's CVC by SMS, once: each job is leased on its own for its
//! one send, the CVC and the phone number opened only in memory for the message, and both
//! erased in the transaction that records the delivery (only while the lease is still held). Provider failures retry with jittered exponential backoff; after `max_attempts` the
//! job is parked as failed and a dead letter (no CVC, no full phone number) is published;
//! `gift-certificates sms requeue` puts it back.

use crate::config::Config;
use crate::state::AppState;
use backbone_certificates::store::{OutboxLetter, SmsJob, SmsOutcome, SmsQueue};
use backbone_certificates::{DeadLetterReason, KeyError, SmsError, SmsMessage, SmsSender};
use backon::{BackoffBuilder, ExponentialBuilder};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

pub use backbone_orders::valid_phone;

/// Jobs one call of [`send_due`] handles at most before it yields.
pub const ROUND: usize = 16;

#[derive(Debug, Clone)]
pub struct SmsSettings {
    pub max_attempts: u32,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub poll: Duration,
    pub template: String,
    pub dead_letter_topic: String,
    /// How long a claimed job is reserved for this sender: one send, so longer than the
    /// provider's timeout (`sms.timeout_ms` + 30 s).
    pub lease: time::Duration,
}

impl From<&Config> for SmsSettings {
    fn from(cfg: &Config) -> Self {
        Self {
            max_attempts: cfg.sms.max_attempts,
            min_backoff: Duration::from_millis(cfg.sms.min_backoff_ms),
            max_backoff: Duration::from_millis(cfg.sms.max_backoff_ms),
            poll: Duration::from_millis(cfg.sms.poll_interval_ms),
            template: cfg.sms.template.clone(),
            dead_letter_topic: cfg.topics.dead_letters.clone(),
            lease: time::Duration::seconds((cfg.sms.timeout_ms / 1000 + 30) as i64),
        }
    }
}

impl SmsSettings {
    fn backoff(&self, attempt: u32) -> Duration {
        ExponentialBuilder::default()
            .with_min_delay(self.min_backoff)
            .with_max_delay(self.max_backoff)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(attempt.saturating_sub(1) as usize)
            .unwrap_or(self.max_backoff)
    }
}

/// What one attempt at `job` ended in.
pub async fn attempt(
    state: &AppState,
    sender: &dyn SmsSender,
    settings: &SmsSettings,
    job: &SmsJob,
) -> SmsOutcome {
    let Some(sealed) = &job.sealed else {
        return SmsOutcome::Failed {
            error: "the CVC is no longer stored".into(),
        };
    };
    let Some(phone) = &job.phone else {
        return SmsOutcome::Failed {
            error: "the phone number does not open under the configured keys".into(),
        };
    };
    let retry_or_fail = |error: String| {
        if job.attempts >= settings.max_attempts as i32 {
            SmsOutcome::Failed {
                error: format!("gave up after {} attempts: {error}", job.attempts),
            }
        } else {
            let delay = settings.backoff(job.attempts as u32);
            SmsOutcome::Retry {
                error,
                next_at: OffsetDateTime::now_utc() + delay,
            }
        }
    };
    let cvc = match state.keys.open_cvc(&job.code_digest, sealed) {
        Ok(cvc) => cvc,
        Err(KeyError::Unavailable(e)) => return retry_or_fail(format!("key service: {e}")),
        Err(e @ KeyError::Open) => return SmsOutcome::Failed { error: e.to_string() },
    };
    let message = SmsMessage {
        to: phone.clone(),
        text: settings
            .template
            .replace("{last4}", &job.code_last4)
            .replace("{cvc}", cvc.expose()),
        idempotency_key: format!("cvc-sms:{}", job.certificate_id),
    };
    match sender.send(&message).await {
        Ok(receipt) => SmsOutcome::Sent {
            provider_id: receipt.provider_id,
        },
        Err(SmsError::Transient(e)) => retry_or_fail(e),
        Err(SmsError::Rejected(e)) => SmsOutcome::Failed {
            error: format!("provider refused: {e}"),
        },
    }
}

/// Claims and sends due jobs, one at a time, at most [`ROUND`] of them; returns how many were
/// handled.
pub async fn send_due(
    state: &AppState,
    sender: &dyn SmsSender,
    settings: &SmsSettings,
) -> Result<usize, backbone_certificates::ApplyError> {
    let mut handled = 0;
    while handled < ROUND && send_one(state, sender, settings).await? {
        handled += 1;
    }
    Ok(handled)
}

/// Claims the most overdue job and sends it; `false` when none is due. The job's lease starts
/// when it is claimed, right before its one send, and is longer than the provider's timeout:
/// while this sender waits on a slow provider, no other sender can take the job and send the
/// CVC again. The outcome is recorded only while the lease is held.
pub async fn send_one(
    state: &AppState,
    sender: &dyn SmsSender,
    settings: &SmsSettings,
) -> Result<bool, backbone_certificates::ApplyError> {
    let Some(job) = state.store().claim_sms(settings.lease).await? else {
        return Ok(false);
    };
    let outcome = attempt(state, sender, settings, &job).await;
    let letter = match &outcome {
        SmsOutcome::Failed { error } => Some(dead_letter(&job, error, &settings.dead_letter_topic)),
        _ => None,
    };
    if !state.store().finish_sms(&job, &outcome, letter.as_ref()).await? {
        // The lease ran out and another sender claimed the job: it owns the outcome now.
        tracing::warn!(certificate_id = %job.certificate_id, attempts = job.attempts, "CVC SMS lease lost; another sender owns the delivery, outcome not recorded");
        state.metrics.sms.with_label_values(&["lease_lost"]).inc();
        return Ok(true);
    }
    let label = match &outcome {
        SmsOutcome::Sent { .. } => "sent",
        SmsOutcome::Retry { error, .. } => {
            tracing::warn!(certificate_id = %job.certificate_id, attempts = job.attempts, error = %error, "CVC SMS failed; will retry");
            "retry"
        }
        SmsOutcome::Failed { error } => {
            tracing::error!(certificate_id = %job.certificate_id, attempts = job.attempts, error = %error, "CVC SMS dead-lettered");
            state
                .metrics
                .dead_letters
                .with_label_values(&[DeadLetterReason::SmsFailed.as_str()])
                .inc();
            state.outbox_wakeup.notify_one();
            "failed"
        }
    };
    state.metrics.sms.with_label_values(&[label]).inc();
    Ok(true)
}

/// The dead letter of a delivery given up: no CVC, the last two digits of the phone, the
/// standard headers.
fn dead_letter(job: &SmsJob, error: &str, topic: &str) -> OutboxLetter {
    let phone_last2 = &job.phone_last2;
    let headers = backbone_kafka::DeadLetter {
        source: None,
        key: None,
        payload: None,
        withheld_bytes: None,
        reason_code: DeadLetterReason::SmsFailed.as_str().into(),
        reason: error.to_owned(),
        attempts: u32::try_from(job.attempts).unwrap_or(0),
        replay_count: None,
        event_id: None,
    }
    .headers();
    OutboxLetter {
        topic: topic.to_owned(),
        key: job.certificate_id.to_string(),
        payload: serde_json::json!({
            "version": 1,
            "kind": "cvc_sms",
            "certificate_id": job.certificate_id,
            "code_last4": job.code_last4,
            "phone_last2": phone_last2,
            "attempts": job.attempts,
            "reason": error,
        }),
        headers,
    }
}

/// Sends due deliveries until `stop`. A send in flight when `stop` comes gets [`STOP_GRACE`] to
/// finish; one still waiting on the provider then is dropped unrecorded, and its lease runs out
/// so a running instance sends it (under the same provider idempotency key).
pub async fn run(
    state: Arc<AppState>,
    sender: Option<Arc<dyn SmsSender>>,
    settings: SmsSettings,
    stop: CancellationToken,
) {
    let Some(sender) = sender else { return };
    while !stop.is_cancelled() {
        let sent = tokio::select! {
            sent = send_one(&state, sender.as_ref(), &settings) => sent,
            () = crate::after_stop(&stop, STOP_GRACE) => {
                tracing::warn!("stopping with a CVC SMS in flight; it is left to its lease");
                return;
            }
        };
        match sent {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "SMS queue unavailable"),
        }
        tokio::select! {
            _ = state.sms_wakeup.notified() => {}
            _ = tokio::time::sleep(settings.poll) => {}
            _ = stop.cancelled() => {}
        }
    }
}

/// How long a send in flight may take once a stop is asked (part of the shutdown budget).
pub const STOP_GRACE: Duration = Duration::from_secs(3);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_are_e164() {
        assert!(valid_phone("+79991234567"));
        for bad in ["79991234567", "+7999", "+7999123456789012", "+7999-123-45-67", ""] {
            assert!(!valid_phone(bad), "{bad}");
        }
    }
}
