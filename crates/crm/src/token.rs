//! Access tokens fetched once and shared: a token is renewed when it expires or when the vendor
//! rejects it, and only one renewal runs at a time (single flight). That matters most for
//! rotating refresh tokens (Kommo, Bitrix24 OAuth): two concurrent refreshes with the same
//! single-use refresh token would leave one of them holding a revoked token.

use async_trait::async_trait;
use backbone_sync::ports::CrmError;
use secrecy::SecretString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Renew this long before the vendor's stated expiry, so a token never expires in flight.
const EARLY_RENEWAL: Duration = Duration::from_secs(60);

/// A freshly fetched token.
pub struct Fetched {
    pub access_token: SecretString,
    pub expires_in: Option<Duration>,
    /// Where data calls go, when the token endpoint says so (Salesforce `instance_url`).
    pub instance_url: Option<String>,
}

#[derive(Debug)]
pub struct AccessToken {
    pub value: SecretString,
    pub instance_url: Option<String>,
    generation: u64,
    renew_at: Option<Instant>,
}

/// Fetches a new token (a grant or a refresh). Called by [`TokenCache`] only, one call at a time.
#[async_trait]
pub trait TokenSource: Send + Sync {
    async fn fetch(&self) -> Result<Fetched, CrmError>;
}

#[derive(Debug, Default)]
pub struct TokenCache {
    current: tokio::sync::Mutex<Option<Arc<AccessToken>>>,
    fetches: AtomicU64,
}

impl TokenCache {
    /// The cached token, or a new one when there is none or it is about to expire.
    pub async fn get(&self, source: &dyn TokenSource) -> Result<Arc<AccessToken>, CrmError> {
        let mut current = self.current.lock().await;
        if let Some(t) = current.as_ref() {
            if t.renew_at.is_none_or(|at| Instant::now() < at) {
                return Ok(t.clone());
            }
        }
        self.fetch_into(&mut current, source).await
    }

    /// The vendor rejected `rejected`: renew it, unless another caller already has.
    pub async fn renew(
        &self,
        rejected: &AccessToken,
        source: &dyn TokenSource,
    ) -> Result<Arc<AccessToken>, CrmError> {
        let mut current = self.current.lock().await;
        if let Some(t) = current.as_ref() {
            if t.generation != rejected.generation {
                return Ok(t.clone());
            }
        }
        self.fetch_into(&mut current, source).await
    }

    /// Token fetches so far (for tests and metrics).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }

    async fn fetch_into(
        &self,
        slot: &mut Option<Arc<AccessToken>>,
        source: &dyn TokenSource,
    ) -> Result<Arc<AccessToken>, CrmError> {
        let generation = self.fetches.fetch_add(1, Ordering::SeqCst) + 1;
        let fetched = source.fetch().await?;
        let token = Arc::new(AccessToken {
            value: fetched.access_token,
            instance_url: fetched.instance_url,
            generation,
            renew_at: fetched
                .expires_in
                .map(|d| Instant::now() + d.saturating_sub(EARLY_RENEWAL)),
        });
        *slot = Some(token.clone());
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::sync::atomic::AtomicU32;

    struct Counting(AtomicU32);

    #[async_trait]
    impl TokenSource for Counting {
        async fn fetch(&self) -> Result<Fetched, CrmError> {
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(Fetched {
                access_token: SecretString::from(format!("t{n}")),
                expires_in: Some(Duration::from_secs(3600)),
                instance_url: None,
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_renewals_of_one_rejected_token_fetch_once() {
        let cache = Arc::new(TokenCache::default());
        let source = Arc::new(Counting(AtomicU32::new(0)));
        let first = cache.get(source.as_ref()).await.unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (cache, source, first) = (cache.clone(), source.clone(), first.clone());
                tokio::spawn(async move { cache.renew(&first, source.as_ref()).await.unwrap() })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().value.expose_secret(), "t2");
        }
        assert_eq!(source.0.load(Ordering::SeqCst), 2, "one grant, one renewal");
    }

    #[tokio::test(start_paused = true)]
    async fn an_expiring_token_is_renewed_before_use() {
        let cache = TokenCache::default();
        let source = Counting(AtomicU32::new(0));
        assert_eq!(cache.get(&source).await.unwrap().value.expose_secret(), "t1");
        tokio::time::advance(Duration::from_secs(3500)).await;
        assert_eq!(cache.get(&source).await.unwrap().value.expose_secret(), "t1");
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(cache.get(&source).await.unwrap().value.expose_secret(), "t2");
    }
}
