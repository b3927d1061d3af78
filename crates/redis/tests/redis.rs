#![allow(clippy::unwrap_used)]
//! Against the real Redis at `REDIS_URL` (default 127.0.0.1:6379); each test uses its own prefix.

use backbone_redis::{AttemptLimiter, AttemptPolicy, BalanceCache, Redis};
use std::time::Duration;

async fn redis() -> Redis {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    Redis::connect(&url, &format!("test:{}:", uuid::Uuid::new_v4()))
        .await
        .unwrap()
}

#[tokio::test]
async fn cache_round_trips_and_invalidates() {
    let cache = BalanceCache::new(redis().await, Duration::from_secs(30));
    assert_eq!(cache.get::<(i64, String)>("abc").await.unwrap(), None);
    cache.put("abc", &(1500_i64, "RUB".to_owned())).await.unwrap();
    assert_eq!(
        cache.get::<(i64, String)>("abc").await.unwrap(),
        Some((1500, "RUB".into()))
    );
    cache.invalidate("abc").await.unwrap();
    assert_eq!(cache.get::<(i64, String)>("abc").await.unwrap(), None);
}

#[tokio::test]
async fn certificate_locks_after_the_configured_failures_and_a_success_clears_it() {
    let policy = AttemptPolicy {
        per_certificate: 3,
        lockout_seconds: 60,
        per_channel: 1000,
        channel_window_seconds: 60,
    };
    let limiter = AttemptLimiter::new(redis().await, policy);
    for i in 1..=3 {
        assert!(
            !limiter.is_blocked("POS", Some("gc1")).await.unwrap(),
            "attempt {i}"
        );
        assert_eq!(limiter.record_failure("POS", Some("gc1")).await.unwrap(), Some(i));
    }
    assert!(limiter.is_blocked("POS", Some("gc1")).await.unwrap());
    assert!(
        !limiter.is_blocked("POS", Some("gc2")).await.unwrap(),
        "other certificates are not affected"
    );
    limiter.clear("gc1").await.unwrap();
    assert!(!limiter.is_blocked("POS", Some("gc1")).await.unwrap());
}

#[tokio::test]
async fn a_channel_is_blocked_after_its_window_budget() {
    let policy = AttemptPolicy {
        per_certificate: 1000,
        lockout_seconds: 60,
        per_channel: 4,
        channel_window_seconds: 60,
    };
    let limiter = AttemptLimiter::new(redis().await, policy);
    for _ in 0..4 {
        assert!(!limiter.is_blocked("OnlineStore", None).await.unwrap());
        limiter.record_failure("OnlineStore", None).await.unwrap();
    }
    assert!(limiter.is_blocked("OnlineStore", None).await.unwrap());
    // A blocked channel is blocked whatever certificate it names.
    assert!(limiter
        .is_blocked("OnlineStore", Some("gc-untouched"))
        .await
        .unwrap());
    assert!(!limiter.is_blocked("POS", None).await.unwrap());
    assert!(!limiter.is_blocked("POS", Some("gc-untouched")).await.unwrap());
}
