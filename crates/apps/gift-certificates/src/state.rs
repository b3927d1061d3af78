//! What every part of the service shares: the certificate service over its store, key
//! material, the Redis cache and limiter, tokens, settings, metrics and the dead-letter topic.

use crate::auth::{AdminToken, Tokens};
use crate::config::{Config, HoldsConfig};
use crate::http::admin::dead_letters::DeadLetterAdmin;
use crate::metrics::Metrics;
use crate::problem::Problem;
use anyhow::Context;
use backbone_certificates::store::{BalanceView, CertificateViews};
use backbone_certificates::{CertificateService, CodeDigest, CodeKeys, GroupCommit, GroupSettings};
use backbone_postgres::PgCertificates;
use backbone_redis::{AttemptLimiter, BalanceCache, Redis};
use secrecy::ExposeSecret;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The certificate service as this deployment runs it.
pub type Certificates = CertificateService<PgCertificates>;

/// Everything a request handler and a worker needs.
pub struct AppState {
    pub certificates: Certificates,
    /// The API's operations, in groups that commit once (`operations.*`).
    pub operations: GroupCommit,
    pub keys: Arc<dyn CodeKeys>,
    pub cache: BalanceCache,
    pub limiter: AttemptLimiter,
    pub tokens: Tokens,
    /// The admin API's token; it opens `/admin/v1/*` only.
    pub admin_token: AdminToken,
    pub holds: HoldsConfig,
    pub idempotency_retention_hours: u32,
    pub metrics: Metrics,
    pub outbox_wakeup: Arc<Notify>,
    pub sms_wakeup: Arc<Notify>,
    /// `topics.dead_letters` as the admin API reads and replays it.
    pub dead_letters: DeadLetterAdmin,
}

impl AppState {
    /// The store behind the service, for reads, the SMS queue and the outbox.
    pub fn store(&self) -> &PgCertificates {
        self.certificates.store()
    }

    /// Connects to PostgreSQL (migrating it) and Redis, and loads the keys.
    pub async fn build(cfg: &Config) -> anyhow::Result<Arc<Self>> {
        let mut kms = backbone_kms::LocalKmsConfig::new(&cfg.keys.key_file);
        kms.retired_key_files = cfg.keys.retired_key_files.clone();
        kms.digest_key_id = cfg.keys.digest_key_id.clone();
        let keys: Arc<dyn CodeKeys> = Arc::new(backbone_kms::load_local(&kms).context("master key file")?);
        // Phone numbers are sealed at rest with the CVCs' key service.
        let store = PgCertificates::connect(cfg.postgres.url.expose_secret(), cfg.postgres.max_connections)
            .await
            .context("PostgreSQL")?
            .with_keys(keys.clone());
        let sealed = store
            .seal_clear_phones()
            .await
            .context("sealing phone numbers stored in clear")?;
        if sealed > 0 {
            tracing::info!(
                sealed,
                "phone numbers stored in clear by an earlier version are sealed now"
            );
        }
        let redis = Redis::connect(cfg.redis.url.expose_secret(), &cfg.redis.key_prefix)
            .await
            .context("Redis")?;
        let certificates = CertificateService::new(store)
            .with_refusal_letters(crate::sales::refusal_letters(&cfg.topics.dead_letters));
        let metrics = Metrics::new();
        let group_size = metrics.group_size.clone();
        let (operations, group_workers) = GroupCommit::new(
            certificates.clone(),
            GroupSettings {
                workers: cfg.operations.group_workers,
                max_operations: cfg.operations.group_max_operations,
                ..GroupSettings::default()
            },
            Some(Arc::new(move |size| group_size.observe(size as f64))),
        );
        // Each ends once the last handle (this state's) is dropped and its queue is empty.
        for worker in group_workers {
            tokio::spawn(worker);
        }
        Ok(Arc::new(Self {
            certificates,
            operations,
            keys,
            cache: BalanceCache::new(redis.clone(), Duration::from_secs(cfg.redis.balance_ttl_seconds)),
            limiter: AttemptLimiter::new(redis, cfg.attempts),
            tokens: Tokens::new(&cfg.tokens),
            admin_token: AdminToken::new(&cfg.admin.token),
            holds: HoldsConfig {
                default_ttl_seconds: cfg.holds.default_ttl_seconds,
                max_ttl_seconds: cfg.holds.max_ttl_seconds,
                sweep_interval_ms: cfg.holds.sweep_interval_ms,
            },
            idempotency_retention_hours: cfg.http.idempotency_retention_hours,
            metrics,
            outbox_wakeup: Arc::new(Notify::new()),
            sms_wakeup: Arc::new(Notify::new()),
            dead_letters: DeadLetterAdmin::from_config(cfg),
        }))
    }

    /// After a committed change: drop the cached balance and wake the relay.
    pub async fn after_commit(&self, digest_hex: &str) {
        if let Err(e) = self.cache.invalidate(digest_hex).await {
            // The entry expires by itself; balance checks may be stale until then, debits never
            // read the cache.
            tracing::warn!(error = %e, "balance cache invalidation failed");
        }
        self.outbox_wakeup.notify_one();
    }

    /// Read-through: Redis first, PostgreSQL on a miss or when Redis is down.
    pub async fn balance_view(
        &self,
        digest: &CodeDigest,
        digest_hex: &str,
    ) -> Result<Option<BalanceView>, Problem> {
        match self.cache.get::<BalanceView>(digest_hex).await {
            Ok(Some(view)) => {
                self.metrics.cache.with_label_values(&["hit"]).inc();
                return Ok(Some(view));
            }
            Ok(None) => self.metrics.cache.with_label_values(&["miss"]).inc(),
            Err(e) => {
                self.metrics.cache.with_label_values(&["error"]).inc();
                tracing::warn!(error = %e, "balance cache unavailable");
            }
        }
        let view = self
            .store()
            .balance(digest)
            .await
            .map_err(|e| crate::http::apply_error(e.into()))?;
        if let Some(view) = &view {
            if let Err(e) = self.cache.put(digest_hex, &view.cvc_verifier, view).await {
                tracing::warn!(error = %e, "balance cache write failed");
            }
        }
        Ok(view)
    }
}
