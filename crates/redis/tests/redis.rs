#![allow(clippy::unwrap_used)]
//! Against the real Redis at `REDIS_URL` (default 127.0.0.1:6379); each test uses its own prefix.

use backbone_redis::{Attempt, AttemptLimiter, AttemptPolicy, BalanceCache, CachedCheck, Redis};
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
    cache
        .put("abc", &[7; 32], &(1500_i64, "RUB".to_owned()))
        .await
        .unwrap();
    assert_eq!(
        cache.get::<(i64, String)>("abc").await.unwrap(),
        Some((1500, "RUB".into()))
    );
    cache.invalidate("abc").await.unwrap();
    assert_eq!(cache.get::<(i64, String)>("abc").await.unwrap(), None);
}

fn policy(per_certificate: u32, per_channel: u32) -> AttemptPolicy {
    AttemptPolicy {
        per_certificate,
        lockout_seconds: 900,
        per_channel,
        channel_window_seconds: 60,
    }
}

fn allowed(a: &Attempt) -> bool {
    matches!(a, Attempt::Allowed(_))
}

#[tokio::test]
async fn certificate_locks_after_the_configured_failures_and_a_success_is_not_one() {
    let limiter = AttemptLimiter::new(redis().await, policy(3, 1000));
    let Attempt::Allowed(right) = limiter.reserve("POS", Some("gc1")).await.unwrap() else {
        panic!("the first attempt is admitted")
    };
    limiter.finish(&right, false).await.unwrap();
    assert_eq!(limiter.certificate_failures("gc1").await.unwrap(), 0);
    for i in 1..=3 {
        let Attempt::Allowed(wrong) = limiter.reserve("POS", Some("gc1")).await.unwrap() else {
            panic!("attempt {i} is admitted")
        };
        limiter.finish(&wrong, true).await.unwrap();
        assert_eq!(limiter.certificate_failures("gc1").await.unwrap(), i);
    }
    match limiter.reserve("POS", Some("gc1")).await.unwrap() {
        Attempt::Blocked { retry_after_seconds } => assert!(
            (899..=900).contains(&retry_after_seconds),
            "the lockout's remaining time: {retry_after_seconds}"
        ),
        other => panic!("a fourth attempt passed: {other:?}"),
    }
    assert!(
        allowed(&limiter.reserve("POS", Some("gc2")).await.unwrap()),
        "other certificates are not affected"
    );
}

#[tokio::test]
async fn a_channel_is_blocked_after_its_window_budget_for_the_window_only() {
    let limiter = AttemptLimiter::new(redis().await, policy(1000, 4));
    for _ in 0..4 {
        let Attempt::Allowed(r) = limiter.reserve("OnlineStore", None).await.unwrap() else {
            panic!("admitted")
        };
        limiter.finish(&r, true).await.unwrap();
    }
    // A blocked channel is blocked whatever certificate it names, and says when its window ends
    // (not the certificate lockout's 900 s).
    for certificate in [None, Some("gc-untouched")] {
        match limiter.reserve("OnlineStore", certificate).await.unwrap() {
            Attempt::Blocked { retry_after_seconds } => {
                assert!((59..=60).contains(&retry_after_seconds), "{retry_after_seconds}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(allowed(&limiter.reserve("POS", None).await.unwrap()));
    assert!(allowed(
        &limiter.reserve("POS", Some("gc-untouched")).await.unwrap()
    ));
}

/// 300 wrong CVCs at once on one certificate with a limit of 5: each attempt that is admitted is
/// verified (a short pause) and counted as failed; one that finds the certificate busy tries
/// again. Exactly 5 are ever admitted, however the requests interleave; the rest end blocked.
#[tokio::test]
async fn a_burst_of_concurrent_attempts_gets_no_more_than_the_limit_verified() {
    let limiter = AttemptLimiter::new(redis().await, policy(5, 10_000));
    let attempts = (0..300).map(|_| {
        let limiter = limiter.clone();
        tokio::spawn(async move {
            loop {
                match limiter.reserve("POS", Some("gc-burst")).await.unwrap() {
                    Attempt::Allowed(r) => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        limiter.finish(&r, true).await.unwrap();
                        return true;
                    }
                    Attempt::Busy => tokio::time::sleep(Duration::from_millis(2)).await,
                    Attempt::Blocked { .. } => return false,
                }
            }
        })
    });
    let outcomes = futures::future::join_all(attempts).await;
    let verified = outcomes.into_iter().filter(|o| *o.as_ref().unwrap()).count();
    assert_eq!(verified, 5);
    assert_eq!(limiter.certificate_failures("gc-burst").await.unwrap(), 5);
}

/// Attempts in flight hold their place only for a while: one whose process died does not keep
/// the certificate busy for ever (here all 5 places are taken and never given back).
#[tokio::test]
async fn attempts_in_flight_are_bounded_and_counted_once_each() {
    let limiter = AttemptLimiter::new(redis().await, policy(5, 10_000));
    let mut admitted = Vec::new();
    for _ in 0..5 {
        match limiter.reserve("POS", Some("gc-busy")).await.unwrap() {
            Attempt::Allowed(r) => admitted.push(r),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        limiter.reserve("POS", Some("gc-busy")).await.unwrap(),
        Attempt::Busy
    );
    // Ending one as a success frees its place; ending it again changes nothing.
    limiter.finish(&admitted[0], false).await.unwrap();
    limiter.finish(&admitted[0], false).await.unwrap();
    assert!(allowed(&limiter.reserve("POS", Some("gc-busy")).await.unwrap()));
    assert_eq!(limiter.certificate_failures("gc-busy").await.unwrap(), 0);
}

/// A Redis that refuses writes (here an account that may read but not write, as a read-only
/// replica or a full `maxmemory` would) refuses the attempt: the limiter fails closed.
#[tokio::test]
async fn a_redis_that_refuses_writes_refuses_the_attempt() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let admin = redis::Client::open(url.as_str()).unwrap();
    let mut admin = admin.get_multiplexed_async_connection().await.unwrap();
    let user = format!("gc-readonly-{}", uuid::Uuid::new_v4().simple());
    let password = uuid::Uuid::new_v4().simple().to_string();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(format!(">{password}"))
        .arg("~*")
        .arg("+@read")
        .arg("+@scripting")
        .arg("+@connection")
        .arg("+time")
        .arg("-@write")
        .query_async(&mut admin)
        .await
        .unwrap();
    let readonly_url = url.replacen("redis://", &format!("redis://{user}:{password}@"), 1);
    let readonly = Redis::connect(&readonly_url, &format!("test:{}:", uuid::Uuid::new_v4()))
        .await
        .unwrap();
    let limiter = AttemptLimiter::new(readonly, policy(5, 100));
    let with_cvc = limiter.reserve("POS", Some("gc1")).await;
    let on_channel = limiter.reserve("POS", None).await;
    let counted = match &on_channel {
        Ok(Attempt::Allowed(r)) => Some(limiter.finish(r, true).await),
        _ => None,
    };
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut admin)
        .await
        .unwrap();
    let message = format!("{with_cvc:?}");
    assert!(
        with_cvc.is_err(),
        "an attempt that cannot be counted must not pass: {message}"
    );
    assert!(
        message.contains("can't run this command"),
        "refused for its writes: {message}"
    );
    assert!(
        matches!(counted, Some(Err(_))),
        "a failure that cannot be counted is reported: {counted:?} after {on_channel:?}"
    );
}

/// A cached balance check: verified, refused and counted in one round trip, under the limits of
/// the long way.
#[tokio::test]
async fn a_cached_check_verifies_counts_and_blocks_in_one_step() {
    let redis = redis().await;
    let cache = BalanceCache::new(redis.clone(), Duration::from_secs(30));
    let limiter = AttemptLimiter::new(redis, policy(3, 10_000));
    let check = |verifier: [u8; 32]| {
        let (limiter, cache) = (limiter.clone(), cache.clone());
        async move {
            limiter
                .check_cached("POS", "gc-1", &verifier, &cache)
                .await
                .unwrap()
        }
    };
    assert_eq!(check([7; 32]).await, CachedCheck::Uncached);
    cache.put("gc-1", &[7; 32], &(1500_i64, "RUB")).await.unwrap();
    assert_eq!(
        check([7; 32]).await,
        CachedCheck::Verified(br#"[1500,"RUB"]"#.to_vec())
    );
    assert_eq!(limiter.certificate_failures("gc-1").await.unwrap(), 0);
    assert_eq!(check([8; 32]).await, CachedCheck::WrongCvc);
    assert_eq!(limiter.certificate_failures("gc-1").await.unwrap(), 1);
    // Attempts of the long way in flight hold their places: with all taken, the long way it is.
    let (Attempt::Allowed(first), Attempt::Allowed(second)) = (
        limiter.reserve("POS", Some("gc-1")).await.unwrap(),
        limiter.reserve("POS", Some("gc-1")).await.unwrap(),
    ) else {
        panic!("two places were free");
    };
    assert_eq!(check([7; 32]).await, CachedCheck::Uncached);
    limiter.finish(&first, true).await.unwrap();
    limiter.finish(&second, true).await.unwrap();
    // Three failures: locked, the right CVC too.
    assert!(matches!(
        check([7; 32]).await,
        CachedCheck::Blocked { retry_after_seconds } if retry_after_seconds > 800
    ));
}

#[tokio::test]
async fn a_burst_of_cached_guesses_gets_no_more_than_the_limit_verified() {
    let redis = redis().await;
    let cache = BalanceCache::new(redis.clone(), Duration::from_secs(30));
    let limiter = AttemptLimiter::new(redis, policy(5, 10_000));
    cache.put("gc-burst", &[7; 32], &1500_i64).await.unwrap();
    let guesses = (0..300u16).map(|i| {
        let (limiter, cache) = (limiter.clone(), cache.clone());
        tokio::spawn(async move {
            let mut guess = [9; 32];
            guess[..2].copy_from_slice(&i.to_be_bytes());
            limiter
                .check_cached("POS", "gc-burst", &guess, &cache)
                .await
                .unwrap()
        })
    });
    let outcomes: Vec<CachedCheck> = futures::future::join_all(guesses)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let wrong = outcomes.iter().filter(|o| **o == CachedCheck::WrongCvc).count();
    let blocked = outcomes
        .iter()
        .filter(|o| matches!(o, CachedCheck::Blocked { .. }))
        .count();
    assert_eq!((wrong, blocked), (5, 295));
    assert_eq!(limiter.certificate_failures("gc-burst").await.unwrap(), 5);
}
