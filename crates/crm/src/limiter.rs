//! A client-side rate limiter: a leaky bucket of `burst` requests draining at `per_second`, the
//! shape Bitrix24 documents for its own limiter (GCRA form: one "theoretical arrival time").
//! A refusal from the vendor pushes the bucket back so every caller waits, not just the one
//! that was refused.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    tolerance: Duration,
    tat: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// `burst` >= 1 requests at once, then `per_second` (> 0) on average.
    pub fn new(burst: u32, per_second: f64) -> Self {
        let interval = Duration::from_secs_f64(1.0 / per_second.max(f64::MIN_POSITIVE));
        Self {
            interval,
            tolerance: interval.saturating_mul(burst.max(1) - 1),
            tat: Mutex::new(None),
        }
    }

    /// How long the next request would have to wait, reserving its slot.
    fn reserve(&self, now: Instant) -> Duration {
        let mut tat = self.tat.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = tat.map_or(now, |t| t.max(now));
        let allowed_at = current.checked_sub(self.tolerance).unwrap_or(now).max(now);
        *tat = Some(current + self.interval);
        allowed_at - now
    }

    /// Waits for a slot.
    pub async fn acquire(&self) {
        let wait = self.reserve(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// The vendor refused a request for its rate: treat the bucket as full for `for_at_least`.
    pub fn back_off(&self, for_at_least: Duration) {
        let now = Instant::now();
        let mut tat = self.tat.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let full = now + self.tolerance + for_at_least;
        *tat = Some(tat.map_or(full, |t| t.max(full)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_passes_then_the_drain_rate_holds() {
        let l = RateLimiter::new(50, 2.0);
        let start = Instant::now();
        for _ in 0..50 {
            l.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst is free");
        for _ in 0..4 {
            l.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::from_secs(2), "then 2 per second");
    }

    #[tokio::test(start_paused = true)]
    async fn seven_per_second_without_burst() {
        let l = RateLimiter::new(1, 7.0);
        let start = Instant::now();
        for _ in 0..8 {
            l.acquire().await;
        }
        let e = start.elapsed();
        assert!(
            e >= Duration::from_millis(999) && e <= Duration::from_millis(1001),
            "{e:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_makes_every_caller_wait() {
        let l = RateLimiter::new(50, 2.0);
        l.back_off(Duration::from_secs(3));
        let start = Instant::now();
        l.acquire().await;
        assert!(start.elapsed() >= Duration::from_secs(3));
    }
}
