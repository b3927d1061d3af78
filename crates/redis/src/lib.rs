//! Redis adapters. Redis is never the source of truth here: the balance cache only answers
//! balance checks (never authorizes a debit), and losing the counters only resets limits.

use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use serde::{de::DeserializeOwned, Serialize};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct RedisError(String);

impl From<redis::RedisError> for RedisError {
    fn from(e: redis::RedisError) -> Self {
        RedisError(e.to_string())
    }
}

/// A multiplexed connection that reconnects by itself; cheap to clone.
#[derive(Clone)]
pub struct Redis {
    connection: ConnectionManager,
    prefix: String,
}

impl Redis {
    /// Connects to `url`; every key this service writes starts with `prefix` (for example
    /// `gc:`), so tests and deployments can share a server.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, RedisError> {
        let client = redis::Client::open(url)?;
        let connection = ConnectionManager::new(client).await?;
        Ok(Self {
            connection,
            prefix: prefix.to_owned(),
        })
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }

    pub async fn ping(&self) -> Result<(), RedisError> {
        let mut c = self.connection.clone();
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }
}

/// Read-through cache of balance views, keyed by an opaque id (the code digest in hex).
#[derive(Clone)]
pub struct BalanceCache {
    redis: Redis,
    ttl: Duration,
}

impl BalanceCache {
    pub fn new(redis: Redis, ttl: Duration) -> Self {
        Self { redis, ttl }
    }

    pub async fn get<T: DeserializeOwned>(&self, id: &str) -> Result<Option<T>, RedisError> {
        let mut c = self.redis.connection.clone();
        let raw: Option<Vec<u8>> = c.get(self.redis.key("bal", id)).await?;
        Ok(raw.and_then(|r| serde_json::from_slice(&r).ok()))
    }

    pub async fn put<T: Serialize>(&self, id: &str, value: &T) -> Result<(), RedisError> {
        let body = serde_json::to_vec(value).map_err(|e| RedisError(e.to_string()))?;
        let mut c = self.redis.connection.clone();
        let _: () = c
            .set_ex(self.redis.key("bal", id), body, self.ttl.as_secs().max(1))
            .await?;
        Ok(())
    }

    /// Called after every committed change to the certificate.
    pub async fn invalidate(&self, id: &str) -> Result<(), RedisError> {
        let mut c = self.redis.connection.clone();
        let _: () = c.del(self.redis.key("bal", id)).await?;
        Ok(())
    }
}

/// Failure limits for code and CVC guesses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttemptPolicy {
    /// Wrong CVCs on one certificate before it is locked.
    pub per_certificate: u32,
    /// How long a locked certificate stays locked (and how long failures are remembered).
    pub lockout_seconds: u64,
    /// Failed lookups (unknown code or wrong CVC) one channel may make per window.
    pub per_channel: u32,
    pub channel_window_seconds: u64,
}

impl Default for AttemptPolicy {
    fn default() -> Self {
        Self {
            per_certificate: 5,
            lockout_seconds: 900,
            per_channel: 100,
            channel_window_seconds: 60,
        }
    }
}

/// What [`AttemptLimiter::reserve`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The attempt may go ahead; end it with [`AttemptLimiter::finish`].
    Allowed(Reservation),
    /// A failure limit is reached: no attempt before `retry_after_seconds` (when the counter
    /// that blocks ends; the later of the two when both do).
    Blocked { retry_after_seconds: u64 },
    /// As many attempts on this certificate are being verified right now as it has failures
    /// left: this one must wait for one of them to end (milliseconds, usually).
    Busy,
}

/// One admitted attempt: the channel it counts on and, when it carries a CVC, its place among
/// the certificate's attempts in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    channel_key: String,
    certificate: Option<(String, String)>,
    token: String,
}

/// Failure limits for code and CVC guesses, per channel and per certificate, in fixed windows.
///
/// The certificate's limit holds under any burst: an attempt is admitted only while its
/// certificate's failures plus the attempts being verified right now stay below the limit, in one
/// atomic step (a Lua script), so at most `per_certificate` wrong CVCs are ever verified, however
/// many arrive at once; a wrong one is counted as it ends. The channel's budget is checked
/// atomically on admission and counted on failure. A Redis that cannot count (down, read-only,
/// out of memory) refuses the attempt: the limiter fails closed.
#[derive(Clone)]
pub struct AttemptLimiter {
    redis: Redis,
    policy: AttemptPolicy,
    reserve: redis::Script,
    finish: redis::Script,
}

/// How long an attempt may stay "being verified" before it no longer holds a place (a process
/// that died mid-attempt frees it after this).
const IN_FLIGHT_LEASE_MS: u64 = 15_000;

/// KEYS[1] channel failures; KEYS[2], KEYS[3] (optional) certificate failures and attempts in
/// flight (a sorted set of tokens by admission time). ARGV: per-channel limit, per-certificate
/// limit, in-flight lease (ms), token. Returns `{1, 0}` admitted, `{0, wait_ms}` blocked,
/// `{2, 0}` busy.
const RESERVE_SCRIPT: &str = r"
local function blocked_for(key, limit)
  local n = tonumber(redis.call('GET', key) or '0')
  if n < limit then return -1, n end
  local ttl = redis.call('PTTL', key)
  if ttl < 0 then ttl = 1000 end
  return ttl, n
end
local wait = blocked_for(KEYS[1], tonumber(ARGV[1]))
local failures = 0
if #KEYS > 1 then
  local w
  w, failures = blocked_for(KEYS[2], tonumber(ARGV[2]))
  if w > wait then wait = w end
end
if wait >= 0 then return {0, wait} end
if #KEYS > 1 then
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local lease = tonumber(ARGV[3])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_ms - lease)
  if failures + redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[2]) then return {2, 0} end
  redis.call('ZADD', KEYS[3], now_ms, ARGV[4])
  redis.call('PEXPIRE', KEYS[3], lease)
end
return {1, 0}";

/// Ends an attempt: KEYS as above; ARGV: token, failed (1/0), channel window (s), lockout (s).
const FINISH_SCRIPT: &str = r"
if #KEYS > 1 then redis.call('ZREM', KEYS[3], ARGV[1]) end
if ARGV[2] == '1' then
  if redis.call('INCR', KEYS[1]) == 1 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3])) end
  if #KEYS > 1 then
    if redis.call('INCR', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4])) end
  end
end
return 0";

impl AttemptLimiter {
    pub fn new(redis: Redis, policy: AttemptPolicy) -> Self {
        Self {
            redis,
            policy,
            reserve: redis::Script::new(RESERVE_SCRIPT),
            finish: redis::Script::new(FINISH_SCRIPT),
        }
    }

    pub fn policy(&self) -> AttemptPolicy {
        self.policy
    }

    /// Admits an attempt of `channel`, on `certificate` when it carries a CVC. An error means
    /// the counters cannot be trusted: the caller refuses the attempt.
    pub async fn reserve(&self, channel: &str, certificate: Option<&str>) -> Result<Attempt, RedisError> {
        let reservation = Reservation {
            channel_key: self.redis.key("fail:ch", channel),
            certificate: certificate.map(|id| (self.redis.key("fail:gc", id), self.redis.key("try:gc", id))),
            token: uuid::Uuid::new_v4().simple().to_string(),
        };
        let mut invocation = self.reserve.prepare_invoke();
        invocation.key(&reservation.channel_key);
        if let Some((failures, in_flight)) = &reservation.certificate {
            invocation.key(failures).key(in_flight);
        }
        invocation
            .arg(self.policy.per_channel)
            .arg(self.policy.per_certificate)
            .arg(IN_FLIGHT_LEASE_MS)
            .arg(&reservation.token);
        let mut c = self.redis.connection.clone();
        let (verdict, wait_ms): (i64, i64) = invocation.invoke_async(&mut c).await?;
        Ok(match verdict {
            1 => Attempt::Allowed(reservation),
            2 => Attempt::Busy,
            _ => Attempt::Blocked {
                retry_after_seconds: u64::try_from(wait_ms).unwrap_or(0).div_ceil(1000).max(1),
            },
        })
    }

    /// Ends an admitted attempt; a failed one (an unknown code, a wrong CVC, an unknown hold) is
    /// counted on the channel and the certificate. An error means a failure went uncounted: the
    /// caller must not answer as if it had been.
    pub async fn finish(&self, reservation: &Reservation, failed: bool) -> Result<(), RedisError> {
        if !failed && reservation.certificate.is_none() {
            return Ok(());
        }
        let mut invocation = self.finish.prepare_invoke();
        invocation.key(&reservation.channel_key);
        if let Some((failures, in_flight)) = &reservation.certificate {
            invocation.key(failures).key(in_flight);
        }
        invocation
            .arg(&reservation.token)
            .arg(if failed { "1" } else { "0" })
            .arg(self.policy.channel_window_seconds.max(1))
            .arg(self.policy.lockout_seconds.max(1));
        let mut c = self.redis.connection.clone();
        let _: i64 = invocation.invoke_async(&mut c).await?;
        Ok(())
    }

    /// The failures counted on a certificate now (for tests and operators).
    pub async fn certificate_failures(&self, certificate: &str) -> Result<u32, RedisError> {
        let mut c = self.redis.connection.clone();
        let v: Option<u32> = c.get(self.redis.key("fail:gc", certificate)).await?;
        Ok(v.unwrap_or(0))
    }
}
