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

/// Read-through cache of balance views, keyed by an opaque id (the code digest in hex). Each
/// entry holds the certificate's CVC verifier (hex) and the view, so a balance check is
/// verified and answered in Redis in one round trip ([`AttemptLimiter::check_cached`]).
#[derive(Clone)]
pub struct BalanceCache {
    redis: Redis,
    ttl: Duration,
}

/// Entries of an earlier layout (the view alone), deleted with the current ones.
const OLD_KIND: &str = "bal";
const KIND: &str = "bv";

impl BalanceCache {
    pub fn new(redis: Redis, ttl: Duration) -> Self {
        Self { redis, ttl }
    }

    fn key(&self, id: &str) -> String {
        self.redis.key(KIND, id)
    }

    pub async fn get<T: DeserializeOwned>(&self, id: &str) -> Result<Option<T>, RedisError> {
        let mut c = self.redis.connection.clone();
        let raw: Option<Vec<u8>> = c.get(self.key(id)).await?;
        Ok(raw.and_then(|r| {
            let at = r.iter().position(|b| *b == b'\n')?;
            serde_json::from_slice(&r[at + 1..]).ok()
        }))
    }

    /// Stores `value` with the verifier a presented CVC must match.
    pub async fn put<T: Serialize>(&self, id: &str, verifier: &[u8], value: &T) -> Result<(), RedisError> {
        let mut body = hex::encode(verifier).into_bytes();
        body.push(b'\n');
        serde_json::to_writer(&mut body, value).map_err(|e| RedisError(e.to_string()))?;
        let mut c = self.redis.connection.clone();
        let _: () = c.set_ex(self.key(id), body, self.ttl.as_secs().max(1)).await?;
        Ok(())
    }

    /// Called after every committed change to the certificate.
    pub async fn invalidate(&self, id: &str) -> Result<(), RedisError> {
        let mut c = self.redis.connection.clone();
        let _: () = c.del(&[self.key(id), self.redis.key(OLD_KIND, id)]).await?;
        Ok(())
    }
}

/// What [`AttemptLimiter::check_cached`] found, in one round trip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CachedCheck {
    /// The CVC matches the cached certificate: its view (JSON), as [`BalanceCache::put`] stored it.
    Verified(Vec<u8>),
    /// The CVC does not match; the failure is counted on the channel and the certificate.
    WrongCvc,
    /// A failure limit is reached, as [`Attempt::Blocked`].
    Blocked { retry_after_seconds: u64 },
    /// Not cached, or attempts on the certificate are being verified elsewhere right now: check
    /// the long way ([`AttemptLimiter::reserve`], the store, [`AttemptLimiter::finish`]).
    Uncached,
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
    check_cached: redis::Script,
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

/// A balance check on a cached certificate in one step: the limits as [`RESERVE_SCRIPT`] checks
/// them, then the presented verifier against the cached one, a mismatch counted at once. KEYS:
/// channel failures, certificate failures, attempts in flight, the cache entry. ARGV:
/// per-channel limit, per-certificate limit, in-flight lease (ms), presented verifier (hex),
/// channel window (s), lockout (s). Returns `{1, view}` verified, `{4, ''}` wrong (counted),
/// `{0, wait_ms}` blocked, `{3, ''}` uncached or busy. Admitted only while failures plus the
/// attempts in flight stay below the limit, so the burst bound of the long way holds.
const CHECK_CACHED_SCRIPT: &str = r"
local function blocked_for(key, limit)
  local n = tonumber(redis.call('GET', key) or '0')
  if n < limit then return -1, n end
  local ttl = redis.call('PTTL', key)
  if ttl < 0 then ttl = 1000 end
  return ttl, n
end
local wait = blocked_for(KEYS[1], tonumber(ARGV[1]))
local w, failures = blocked_for(KEYS[2], tonumber(ARGV[2]))
if w > wait then wait = w end
if wait >= 0 then return {0, wait} end
local entry = redis.call('GET', KEYS[4])
if not entry then return {3, ''} end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_ms - tonumber(ARGV[3]))
if failures + redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[2]) then return {3, ''} end
local at = string.find(entry, '\n', 1, true)
if not at then return {3, ''} end
if string.sub(entry, 1, at - 1) == ARGV[4] then return {1, string.sub(entry, at + 1)} end
if redis.call('INCR', KEYS[1]) == 1 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5])) end
if redis.call('INCR', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], tonumber(ARGV[6])) end
return {4, ''}";

impl AttemptLimiter {
    pub fn new(redis: Redis, policy: AttemptPolicy) -> Self {
        Self {
            redis,
            policy,
            reserve: redis::Script::new(RESERVE_SCRIPT),
            finish: redis::Script::new(FINISH_SCRIPT),
            check_cached: redis::Script::new(CHECK_CACHED_SCRIPT),
        }
    }

    /// A CVC-carrying balance check of `certificate` answered from `cache` in one round trip,
    /// under the same limits as [`AttemptLimiter::reserve`] and [`AttemptLimiter::finish`]:
    /// a blocked certificate or channel is refused, a wrong CVC is counted before the answer.
    /// An error means the counters cannot be trusted: the caller refuses the check.
    pub async fn check_cached(
        &self,
        channel: &str,
        certificate: &str,
        presented_verifier: &[u8],
        cache: &BalanceCache,
    ) -> Result<CachedCheck, RedisError> {
        let mut invocation = self.check_cached.prepare_invoke();
        invocation
            .key(self.redis.key("fail:ch", channel))
            .key(self.redis.key("fail:gc", certificate))
            .key(self.redis.key("try:gc", certificate))
            .key(cache.key(certificate))
            .arg(self.policy.per_channel)
            .arg(self.policy.per_certificate)
            .arg(IN_FLIGHT_LEASE_MS)
            .arg(hex::encode(presented_verifier))
            .arg(self.policy.channel_window_seconds.max(1))
            .arg(self.policy.lockout_seconds.max(1));
        let mut c = self.redis.connection.clone();
        let (verdict, value): (i64, redis::Value) = invocation.invoke_async(&mut c).await?;
        Ok(match (verdict, value) {
            (1, redis::Value::BulkString(view)) => CachedCheck::Verified(view),
            (4, _) => CachedCheck::WrongCvc,
            (0, redis::Value::Int(wait_ms)) => CachedCheck::Blocked {
                retry_after_seconds: u64::try_from(wait_ms).unwrap_or(0).div_ceil(1000).max(1),
            },
            _ => CachedCheck::Uncached,
        })
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
