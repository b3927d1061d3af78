//! The retry schedule for parked events: exponential backoff with jitter and a capped delay,
//! honouring the CRM's `Retry-After`, bounded by age: an event is given up when its first failure
//! is older than `give_up_after` (24 hours by default), however many attempts that took. An
//! optional attempt cap can bound it further.

use serde::{Deserialize, Serialize};
use serde_with::{serde_as, DurationMilliSeconds, DurationSeconds};
use std::time::Duration;

#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// How long after its first failure an event is still retried; the first failure after that
    /// dead-letters it (`attempts_exhausted`).
    #[serde_as(as = "DurationSeconds<u64>")]
    #[serde(rename = "give_up_after_s")]
    pub give_up_after: Duration,
    /// Attempts in all, the first one included, when set above 0; 0 (the default) leaves the
    /// budget to `give_up_after` alone. Refusals by the open circuit breaker are not attempts.
    pub max_attempts: u32,
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    #[serde(rename = "base_delay_ms")]
    pub base_delay: Duration,
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    #[serde(rename = "max_delay_ms")]
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            give_up_after: Duration::from_secs(24 * 3600),
            max_attempts: 0,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(300),
        }
    }
}

/// What follows a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryStep {
    RetryAfter(Duration),
    GiveUp,
}

impl RetryPolicy {
    pub fn validate(&self) -> Result<(), String> {
        if self.give_up_after < Duration::from_secs(1) {
            return Err("retry.give_up_after_s must be at least 1".into());
        }
        if self.base_delay.is_zero() || self.base_delay > self.max_delay {
            return Err("retry.base_delay_ms must be > 0 and <= retry.max_delay_ms".into());
        }
        Ok(())
    }

    /// The step after attempt number `attempt` (1-based; calls actually made) failed, `age`
    /// after the event's first failure. `jitter` is a uniform sample in `[0, 1)`; the delay is
    /// drawn from the upper half of the exponential step ("equal jitter"), so retries spread
    /// out but never collapse to zero. `Retry-After` is a floor, capped at `max_delay`.
    pub fn next(&self, attempt: u32, age: Duration, retry_after: Option<Duration>, jitter: f64) -> RetryStep {
        if age >= self.give_up_after || (self.max_attempts > 0 && attempt >= self.max_attempts) {
            return RetryStep::GiveUp;
        }
        let exp = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(30)))
            .min(self.max_delay);
        let jittered = exp.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
        let delay = match retry_after {
            Some(ra) => jittered.max(ra.min(self.max_delay)),
            None => jittered,
        };
        RetryStep::RetryAfter(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: Duration = Duration::ZERO;

    fn delay(p: &RetryPolicy, attempt: u32, jitter: f64) -> Duration {
        match p.next(attempt, NOW, None, jitter) {
            RetryStep::RetryAfter(d) => d,
            RetryStep::GiveUp => panic!("gave up at {attempt}"),
        }
    }

    #[test]
    fn schedule_doubles_and_caps() {
        let p = RetryPolicy::default();
        assert_eq!(delay(&p, 1, 1.0), Duration::from_millis(500));
        assert_eq!(delay(&p, 2, 1.0), Duration::from_millis(1000));
        assert_eq!(delay(&p, 3, 1.0), Duration::from_millis(2000));
        assert_eq!(delay(&p, 60, 1.0), Duration::from_secs(300));
    }

    /// A CRM outage of minutes or hours is outlasted: the default budget is a day, not a count
    /// (it used to be 8 attempts, about a minute in all).
    #[test]
    fn the_default_budget_outlasts_a_long_outage_and_ends_after_a_day() {
        let p = RetryPolicy::default();
        let mut waited = Duration::ZERO;
        let mut attempt = 1;
        while waited < Duration::from_secs(23 * 3600) {
            match p.next(attempt, waited, None, 0.0) {
                RetryStep::RetryAfter(d) => waited += d,
                RetryStep::GiveUp => panic!("gave up after {attempt} attempts, {waited:?}"),
            }
            attempt += 1;
        }
        assert!(attempt > 100, "{attempt} attempts in 23 hours");
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(p.next(attempt, day, None, 0.5), RetryStep::GiveUp);
        let capped = RetryPolicy { max_attempts: 3, ..p };
        assert!(matches!(capped.next(2, NOW, None, 0.5), RetryStep::RetryAfter(_)));
        assert_eq!(capped.next(3, NOW, None, 0.5), RetryStep::GiveUp);
    }

    #[test]
    fn retry_after_is_a_floor_but_capped() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.next(1, NOW, Some(Duration::from_secs(30)), 0.0),
            RetryStep::RetryAfter(Duration::from_secs(30))
        );
        assert_eq!(
            p.next(1, NOW, Some(Duration::from_secs(3600)), 0.0),
            RetryStep::RetryAfter(Duration::from_secs(300))
        );
    }

    #[test]
    fn validation_rejects_nonsense() {
        assert!(RetryPolicy {
            give_up_after: Duration::ZERO,
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(RetryPolicy {
            base_delay: Duration::ZERO,
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(RetryPolicy::default().validate().is_ok());
    }

    proptest! {
        #[test]
        fn delay_is_within_half_and_full_step(attempt in 1u32..40, jitter in 0.0f64..1.0) {
            let p = RetryPolicy::default();
            let full = p.base_delay.saturating_mul(1 << (attempt - 1).min(30)).min(p.max_delay);
            let d = delay(&p, attempt, jitter);
            prop_assert!(d >= full / 2 && d <= full, "{d:?} vs {full:?}");
        }
    }
}
