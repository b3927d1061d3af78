//! A circuit breaker for the CRM: after `failure_threshold` consecutive transient failures it opens
//! and refuses calls for `open_for`; then one probe call decides whether it closes again.

use serde::{Deserialize, Serialize};
use serde_with::{serde_as, DurationMilliSeconds};
use std::time::{Duration, Instant};

#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerPolicy {
    pub failure_threshold: u32,
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    #[serde(rename = "open_for_ms")]
    pub open_for: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(10),
        }
    }
}

/// How long callers wait while the single half-open probe is in flight.
const PROBE_WAIT: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

impl BreakerState {
    /// 0 = closed, 1 = half-open, 2 = open: the value of the `breaker_state` gauge.
    pub fn as_gauge(&self) -> i64 {
        match self {
            BreakerState::Closed { .. } => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open { .. } => 2,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    policy: BreakerPolicy,
    state: BreakerState,
}

impl CircuitBreaker {
    pub fn new(policy: BreakerPolicy) -> Self {
        Self {
            policy,
            state: BreakerState::Closed {
                consecutive_failures: 0,
            },
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether a call may go out now. `Err(wait)` says how long until the next probe.
    pub fn admit(&mut self, now: Instant) -> Result<(), Duration> {
        match self.state {
            BreakerState::Closed { .. } => Ok(()),
            // The probe is out: others wait for its verdict.
            BreakerState::HalfOpen => Err(PROBE_WAIT),
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen;
                Ok(())
            }
            BreakerState::Open { until } => Err(until - now),
        }
    }

    pub fn on_success(&mut self) {
        self.state = BreakerState::Closed {
            consecutive_failures: 0,
        };
    }

    /// Records a transient failure (the CRM being down or overloaded, not a refused record).
    pub fn on_failure(&mut self, now: Instant) {
        self.state = match self.state {
            BreakerState::Closed { consecutive_failures } => {
                let failures = consecutive_failures + 1;
                if failures >= self.policy.failure_threshold {
                    BreakerState::Open {
                        until: now + self.policy.open_for,
                    }
                } else {
                    BreakerState::Closed {
                        consecutive_failures: failures,
                    }
                }
            }
            BreakerState::HalfOpen | BreakerState::Open { .. } => BreakerState::Open {
                until: now + self.policy.open_for,
            },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_probes_once_and_closes() {
        let mut b = CircuitBreaker::new(BreakerPolicy {
            failure_threshold: 3,
            open_for: Duration::from_secs(10),
        });
        let t0 = Instant::now();
        for _ in 0..2 {
            assert!(b.admit(t0).is_ok());
            b.on_failure(t0);
        }
        assert_eq!(
            b.state(),
            BreakerState::Closed {
                consecutive_failures: 2
            }
        );
        b.on_failure(t0);
        assert_eq!(b.admit(t0 + Duration::from_secs(4)), Err(Duration::from_secs(6)));
        assert!(b.admit(t0 + Duration::from_secs(10)).is_ok());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(
            b.admit(t0 + Duration::from_secs(10)).is_err(),
            "one probe at a time"
        );
        b.on_success();
        assert_eq!(b.state().as_gauge(), 0);
    }

    #[test]
    fn failed_probe_reopens_for_a_full_period() {
        let mut b = CircuitBreaker::new(BreakerPolicy {
            failure_threshold: 1,
            ..Default::default()
        });
        let t0 = Instant::now();
        b.on_failure(t0);
        let t1 = t0 + Duration::from_secs(11);
        assert!(b.admit(t1).is_ok());
        b.on_failure(t1);
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: t1 + Duration::from_secs(10)
            }
        );
    }

    #[test]
    fn success_resets_the_failure_count() {
        let mut b = CircuitBreaker::new(BreakerPolicy {
            failure_threshold: 2,
            ..Default::default()
        });
        let t0 = Instant::now();
        b.on_failure(t0);
        b.on_success();
        b.on_failure(t0);
        assert_eq!(
            b.state(),
            BreakerState::Closed {
                consecutive_failures: 1
            }
        );
    }
}
