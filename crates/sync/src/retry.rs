//! The retry schedule for parked events: exponential backoff with jitter, honouring the CRM's
//! `Retry-After`, bounded by an attempt limit.

use serde::{Deserialize, Serialize};
use serde_with::{serde_as, DurationMilliSeconds};
use std::time::Duration;

#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included; the last failure dead-letters the event.
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
            max_attempts: 8,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(300),
        }
    }
}

/// What follows a transient failure of attempt number `attempt` (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryStep {
    RetryAfter(Duration),
    GiveUp,
}

impl RetryPolicy {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("retry.max_attempts must be at least 1".into());
        }
        if self.base_delay.is_zero() || self.base_delay > self.max_delay {
            return Err("retry.base_delay_ms must be > 0 and <= retry.max_delay_ms".into());
        }
        Ok(())
    }

    /// `jitter` is a uniform sample in `[0, 1)`; the delay is drawn from the upper half of the
    /// exponential step ("equal jitter"), so retries spread out but never collapse to zero.
    pub fn next(&self, attempt: u32, retry_after: Option<Duration>, jitter: f64) -> RetryStep {
        if attempt >= self.max_attempts {
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

    #[test]
    fn schedule_doubles_and_caps() {
        let p = RetryPolicy::default();
        let at_top = |n| match p.next(n, None, 1.0) {
            RetryStep::RetryAfter(d) => d,
            RetryStep::GiveUp => panic!("gave up at {n}"),
        };
        assert_eq!(at_top(1), Duration::from_millis(500));
        assert_eq!(at_top(2), Duration::from_millis(1000));
        assert_eq!(at_top(3), Duration::from_millis(2000));
        assert_eq!(p.next(8, None, 0.5), RetryStep::GiveUp);
        let long = RetryPolicy {
            max_attempts: 100,
            ..p
        };
        assert_eq!(
            long.next(60, None, 1.0),
            RetryStep::RetryAfter(Duration::from_secs(300))
        );
    }

    #[test]
    fn retry_after_is_a_floor_but_capped() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.next(1, Some(Duration::from_secs(30)), 0.0),
            RetryStep::RetryAfter(Duration::from_secs(30))
        );
        assert_eq!(
            p.next(1, Some(Duration::from_secs(3600)), 0.0),
            RetryStep::RetryAfter(Duration::from_secs(300))
        );
    }

    #[test]
    fn validation_rejects_nonsense() {
        assert!(RetryPolicy {
            max_attempts: 0,
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
        fn delay_is_within_half_and_full_step(attempt in 1u32..8, jitter in 0.0f64..1.0) {
            let p = RetryPolicy::default();
            let full = p.base_delay.saturating_mul(1 << (attempt - 1)).min(p.max_delay);
            match p.next(attempt, None, jitter) {
                RetryStep::RetryAfter(d) => {
                    prop_assert!(d >= full / 2 && d <= full, "{d:?} vs {full:?}");
                }
                RetryStep::GiveUp => prop_assert!(false, "gave up early"),
            }
        }
    }
}
