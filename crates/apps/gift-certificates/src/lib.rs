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

/// Creates the database when missing and applies gift-certificates' pending migrations, as the
/// service does at start-up; returns how many migrations gift-certificates has. Needs only
/// `[postgres]` (no Redis, keys or tokens). sqlx holds an advisory lock while it migrates, so
/// concurrent runs (a job and a starting instance) wait for each other.
pub async fn migrate(cfg: &Config) -> anyhow::Result<usize> {
    use secrecy::ExposeSecret;
    cfg.postgres
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    backbone_postgres::PgCertificates::connect(cfg.postgres.url.expose_secret(), 2)
        .await
        .context("PostgreSQL")?;
    Ok(backbone_postgres::certificates::MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .count())
}

/// Binds `http.listen` and runs the service until `shutdown` (see [`serve`]).
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .with_context(|| format!("binding {}", cfg.http.listen))?;
    serve(cfg, listener, shutdown).await
}

/// The most a shutdown takes, from the stop to [`serve`] returning, even with a broker that no
/// longer answers (`docs/gift-certificates.md`, "Shutdown"). Every step has a fixed share of it:
/// HTTP requests in flight [`HTTP_GRACE`]; the consumer's record in flight, dead letter, final
/// commit and group leave [`backbone_kafka::DEFAULT_STOP_TIMEOUT`] each; the SMS in flight
/// [`sms::STOP_GRACE`]; the relay's last pass [`relay::STOP_GRACE`]; the producer's flush
/// [`FLUSH_BUDGET`]. What is not done by then is left to the next instance: unacknowledged
/// outbox rows stay, uncommitted offsets are redelivered, an unrecorded SMS waits for its lease.
pub const SHUTDOWN_BUDGET: Duration = Duration::from_secs(10);
/// How long requests in flight may take once a stop is asked.
pub const HTTP_GRACE: Duration = Duration::from_secs(2);
/// How long the producer's final flush may take.
pub const FLUSH_BUDGET: Duration = Duration::from_secs(1);

/// Completes `grace` after `stop` is cancelled.
pub(crate) async fn after_stop(stop: &CancellationToken, grace: Duration) {
    stop.cancelled().await;
    tokio::time::sleep(grace).await;
}

/// Runs the API, the outbox relay, the order/payment/upload consumer, the SMS sender, the hold
/// sweeper and the metrics refresh until `shutdown`; then drains, within [`SHUTDOWN_BUDGET`]:
/// stops intake, finishes in-flight work, relays what was committed, commits offsets.
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
    tasks.spawn(metrics::run_refresh(
        state.clone(),
        metrics::REFRESH_INTERVAL,
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
    let server = std::future::IntoFuture::into_future(
        axum::serve(listener, app).with_graceful_shutdown(async move { http_stop.cancelled().await }),
    );
    tokio::select! {
        served = server => served?,
        () = after_stop(&shutdown, HTTP_GRACE) => {
            tracing::warn!("requests still in flight after the HTTP grace; their connections are closed");
        }
    }
    let stopped = tokio::time::Instant::now();
    // What is left once the HTTP grace and the flush are set aside, less a margin for the rest
    // (dropping the clients).
    let deadline =
        stopped + SHUTDOWN_BUDGET.saturating_sub(HTTP_GRACE + FLUSH_BUDGET + Duration::from_millis(500));
    // Intake has stopped; let consumers and the SMS sender finish, then relay what they wrote.
    tokio::time::sleep(Duration::from_millis(100)).await;
    workers.cancel();
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(Err(e))) => tracing::error!(error = %e, "a worker panicked"),
            Ok(Some(Ok(()))) => {}
            Ok(None) => break,
            Err(_) => {
                tracing::warn!(
                    unfinished = tasks.len(),
                    "workers still busy at the end of the shutdown budget; leaving them"
                );
                tasks.detach_all();
                break;
            }
        }
    }
    if let Err(e) = publisher.flush(FLUSH_BUDGET) {
        tracing::warn!(error = %e, "producer flush at shutdown did not complete; unacknowledged events stay in the outbox");
    }
    tracing::info!("gift-certificates stopped");
    Ok(())
}
