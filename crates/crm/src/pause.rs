//! A vendor-wide pause: set when the vendor says "not before T" for the whole account (Salesforce
//! daily quota, a Kommo IP block, Bitrix24's per-method time limit). While paused the adapter
//! refuses calls locally, without spending the vendor's quota, and the service stops taking
//! work (see `crm-sync`), so waiting does not burn retry attempts.

use backbone_sync::ports::CrmError;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Why and until when calls are held back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PauseState {
    pub reason: &'static str,
    pub remaining: Duration,
}

#[derive(Debug, Default)]
pub struct VendorPause {
    until: Mutex<Option<(Instant, &'static str)>>,
}

impl VendorPause {
    pub fn pause(&self, for_duration: Duration, reason: &'static str) {
        let until = Instant::now() + for_duration;
        let mut g = self
            .until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if g.is_none_or(|(u, _)| u < until) {
            *g = Some((until, reason));
        }
    }

    pub fn state(&self) -> Option<PauseState> {
        let g = self
            .until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (until, reason) = (*g)?;
        let remaining = until.checked_duration_since(Instant::now())?;
        (!remaining.is_zero()).then_some(PauseState { reason, remaining })
    }

    /// `Err` (transient, with the remaining time as `Retry-After`) while paused.
    pub fn check(&self) -> Result<(), CrmError> {
        match self.state() {
            None => Ok(()),
            Some(p) => Err(CrmError {
                retry_after: Some(p.remaining),
                ..CrmError::transient(format!(
                    "CRM calls paused for {}s more: {}",
                    p.remaining.as_secs(),
                    p.reason
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_pause_refuses_until_it_ends_and_a_shorter_one_never_shortens_it() {
        let p = VendorPause::default();
        assert!(p.check().is_ok());
        p.pause(Duration::from_secs(60), "quota");
        p.pause(Duration::from_secs(5), "other");
        let e = p.check().unwrap_err();
        assert!(e.is_transient());
        assert_eq!(e.retry_after, Some(Duration::from_secs(60)));
        assert_eq!(p.state().map(|s| s.reason), Some("quota"));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(p.check().is_ok());
    }
}
