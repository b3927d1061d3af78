//! Wires the two-way sync into a running crm-sync: the store, the API and webhook endpoints, and
//! the stages, those of `two_way.stages` only, all stopped by the service's shutdown.

use super::{Parts, Readiness, Stage, TwoWayConfig};
use crate::api::{router, ApiState};
use crate::metrics::Metrics;
use anyhow::Context;
use backbone_kafka::{KafkaPublisher, KafkaSettings};
use backbone_sync::clients::{ClientCrm, ClientStore};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The running two-way side: join these after the shutdown.
pub struct Running {
    pub handles: Vec<JoinHandle<()>>,
    /// The API server, where this process runs the `api` stage.
    pub api: Option<(JoinHandle<std::io::Result<()>>, std::net::SocketAddr)>,
}

pub struct Wiring<'a> {
    pub cfg: &'a TwoWayConfig,
    pub store: Arc<dyn ClientStore>,
    pub crm: Arc<dyn ClientCrm>,
    pub publisher: KafkaPublisher,
    pub kafka: &'a KafkaSettings,
    pub dead_letter_topic: &'a str,
    pub give_up_after: Duration,
    pub metrics: Arc<Metrics>,
    /// The stages to run, with their readiness.
    pub readiness: Arc<Readiness>,
}

pub async fn start(w: Wiring<'_>, shutdown: &CancellationToken) -> anyhow::Result<Running> {
    let stages: Vec<&str> = w.readiness.running().map(Stage::name).collect();
    tracing::info!(stages = %stages.join(","), "two-way stages of this process");
    let api = if w.readiness.running().any(|s| s == Stage::Api) {
        Some(serve_api(&w, shutdown).await?)
    } else {
        None
    };
    let readiness = w.readiness.clone();
    let handles = super::start(
        w.cfg,
        Parts {
            store: w.store,
            crm: w.crm,
            publisher: w.publisher,
            kafka: w.kafka.clone(),
            dead_letter_topic: w.dead_letter_topic.to_owned(),
            give_up_after: w.give_up_after,
            metrics: w.metrics,
            readiness: w.readiness,
        },
        shutdown,
    )?;
    readiness.set_started();
    Ok(Running { handles, api })
}

async fn serve_api(
    w: &Wiring<'_>,
    shutdown: &CancellationToken,
) -> anyhow::Result<(JoinHandle<std::io::Result<()>>, std::net::SocketAddr)> {
    let webhooks = backbone_crm::webhooks::Webhooks::new(&w.cfg.webhooks)
        .map_err(|e| anyhow::anyhow!("two_way.webhooks: {e}"))?;
    let state = ApiState::new(w.store.clone(), Arc::new(webhooks), w.cfg.api.clone())
        .with_metrics(crate::api::ApiMetrics::register(&w.metrics.registry)?);
    let listener = tokio::net::TcpListener::bind(w.cfg.api.listen)
        .await
        .with_context(|| format!("binding two_way.api.listen {}", w.cfg.api.listen))?;
    let api_addr = listener.local_addr()?;
    tracing::info!(addr = %api_addr, "serving the two-way API and webhooks");
    let app = router(state);
    let stop = shutdown.clone();
    let api = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    Ok((api, api_addr))
}
