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

/// Counts failures in fixed windows (INCR + EXPIRE in one atomic script).
#[derive(Clone)]
pub struct AttemptLimiter {
    redis: Redis,
    policy: AttemptPolicy,
    script: redis::Script,
}

const COUNT_SCRIPT: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n";

impl AttemptLimiter {
    pub fn new(redis: Redis, policy: AttemptPolicy) -> Self {
        Self {
            redis,
            policy,
            script: redis::Script::new(COUNT_SCRIPT),
        }
    }

    pub fn policy(&self) -> AttemptPolicy {
        self.policy
    }

    async fn count(&self, key: &str) -> Result<u32, RedisError> {
        let mut c = self.redis.connection.clone();
        let v: Option<u32> = c.get(key).await?;
        Ok(v.unwrap_or(0))
    }

    /// `true` when the channel or the certificate may not try again now.
    /// Both counters in one round trip.
    pub async fn is_blocked(&self, channel: &str, certificate: Option<&str>) -> Result<bool, RedisError> {
        let channel_key = self.redis.key("fail:ch", channel);
        let Some(id) = certificate else {
            return Ok(self.count(&channel_key).await? >= self.policy.per_channel);
        };
        let mut c = self.redis.connection.clone();
        let (on_channel, on_certificate): (Option<u32>, Option<u32>) = redis::cmd("MGET")
            .arg(&channel_key)
            .arg(self.redis.key("fail:gc", id))
            .query_async(&mut c)
            .await?;
        Ok(on_channel.unwrap_or(0) >= self.policy.per_channel
            || on_certificate.unwrap_or(0) >= self.policy.per_certificate)
    }

    /// Records a failed attempt; returns the certificate's failure count, if one was named.
    pub async fn record_failure(
        &self,
        channel: &str,
        certificate: Option<&str>,
    ) -> Result<Option<u32>, RedisError> {
        let mut c = self.redis.connection.clone();
        let _: u32 = self
            .script
            .key(self.redis.key("fail:ch", channel))
            .arg(self.policy.channel_window_seconds.max(1))
            .invoke_async(&mut c)
            .await?;
        match certificate {
            Some(id) => {
                let n: u32 = self
                    .script
                    .key(self.redis.key("fail:gc", id))
                    .arg(self.policy.lockout_seconds.max(1))
                    .invoke_async(&mut c)
                    .await?;
                Ok(Some(n))
            }
            None => Ok(None),
        }
    }

    /// A correct CVC clears the certificate's failures (not the channel's).
    pub async fn clear(&self, certificate: &str) -> Result<(), RedisError> {
        let mut c = self.redis.connection.clone();
        let _: () = c.del(self.redis.key("fail:gc", certificate)).await?;
        Ok(())
    }
}
