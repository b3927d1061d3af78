//! gift-certificates: the master service for gift certificates. HTTP API for the channels,
//! sales from order and payment events, events out through a transactional outbox, the CVC sent
//! once by SMS, a Redis cache for balance checks.

pub mod auth;
pub mod config;
pub mod desk;
pub mod http;
pub mod metrics;
pub mod problem;
pub mod relay;
pub mod sales;
pub mod sms;
pub mod state;
pub mod upload;

pub use http::{openapi_json, router};
pub use state::{AppState, Certificates};

use crate::config::Config;
use anyhow::Context;
use backbone_certificates::store::CertificateViews;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Releases expired holds: each becomes an `expire` transaction event. Returns how many.
pub async fn sweep_once(state: &AppState) -> Result<usize, backbone_certificates::ApplyError> {
    let due = state.store().with_expired_holds(200).await?;
    let mut released = 0;
    for id in due {
        let applied = state.certificates.release_expired_holds(id).await?;
        released += applied.effects.len();
        if let Some(digest) = applied.code_digest {
            state.after_commit(&hex::encode(digest.0)).await;
        }
    }
    Ok(released)
}

/// Builds the shared state from configuration (connects to PostgreSQL and Redis, loads keys).
pub async fn build_state(cfg: &Config) -> anyhow::Result<Arc<AppState>> {
    AppState::build(cfg).await
}

/// Binds `http.listen` and runs the service until `shutdown` (see [`serve`]).
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .with_context(|| format!("binding {}", cfg.http.listen))?;
    serve(cfg, listener, shutdown).await
}

/// Runs the API, the outbox relay, the order/payment/upload consumer, the SMS sender and the
/// hold sweeper until `shutdown`; then drains: stops intake, finishes in-flight work, relays
/// what was committed, commits offsets.
pub async fn serve(
    cfg: Config,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    let state = build_state(&cfg).await?;
    let kafka = cfg.kafka.client.clone();
    if kafka.create_topics {
        let topics = [
            cfg.topics.orders.as_str(),
            cfg.topics.payments.as_str(),
            cfg.topics.uploads.as_str(),
            cfg.topics.dead_letters.as_str(),
            cfg.topics.state.as_str(),
            cfg.topics.transactions.as_str(),
            cfg.topics.bi.as_str(),
        ];
        backbone_kafka::ensure_topics(&kafka, &topics, kafka.topic_partitions).await?;
    }
    let publisher = backbone_kafka::KafkaPublisher::new(&kafka)?;
    tracing::info!(listen = %listener.local_addr()?, "gift-certificates listening");

    let mut tasks = tokio::task::JoinSet::new();
    let workers = CancellationToken::new();
    tasks.spawn(relay::run(
        publisher.clone(),
        cfg.topics.clone(),
        state.clone(),
        workers.clone(),
    ));
    tasks.spawn(sales::run(
        kafka.clone(),
        cfg.topics.clone(),
        publisher.clone(),
        state.clone(),
        shutdown.clone(),
    ));
    let sender: Option<Arc<dyn backbone_certificates::SmsSender>> = if cfg.sms.base_url.is_empty() {
        tracing::warn!("sms.base_url is empty: CVC deliveries stay queued");
        None
    } else {
        Some(Arc::new(backbone_sms::HttpSmsSender::new(&cfg.sms_provider())?))
    };
    tasks.spawn(sms::run(
        state.clone(),
        sender,
        sms::SmsSettings::from(&cfg),
        shutdown.clone(),
    ));
    let sweeper_state = state.clone();
    let sweeper_stop = shutdown.clone();
    let interval = Duration::from_millis(cfg.holds.sweep_interval_ms.max(10));
    tasks.spawn(async move {
        while !sweeper_stop.is_cancelled() {
            if let Err(e) = sweep_once(&sweeper_state).await {
                tracing::warn!(error = %e, "hold sweep failed");
            }
            if let Err(e) = sweeper_state.store().prune_idempotency_keys().await {
                tracing::warn!(error = %e, "pruning idempotency keys failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = sweeper_stop.cancelled() => {}
            }
        }
    });

    let app = router(state.clone(), cfg.http.max_body_bytes);
    let http_stop = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { http_stop.cancelled().await })
        .await?;
    // Intake has stopped; let consumers and the SMS sender finish, then relay what they wrote.
    tokio::time::sleep(Duration::from_millis(100)).await;
    workers.cancel();
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "a worker panicked");
        }
    }
    publisher.flush(Duration::from_secs(10))?;
    tracing::info!("gift-certificates stopped");
    Ok(())
}
