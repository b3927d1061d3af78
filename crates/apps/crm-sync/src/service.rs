use crate::config::Config;
use crate::crm::CrmAdapter;
use crate::kafka::{inbound, KafkaDeadLetters, KafkaOutcomes};
use crate::metrics::Metrics;
use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use backbone_kafka::{ConsumedBatch, DeadLetterPublisher, KafkaConsumer, KafkaPublisher};
use backbone_postgres::PgLedger;
use backbone_sync::engine::{Effects, EngineError, EngineSettings, Inbound, SyncEngine};
use backbone_sync::mapping::CrmMapping;
use backbone_sync::ports::SyncLedger;
use backon::{ExponentialBuilder, Retryable};
use secrecy::ExposeSecret;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Runs `op` to completion, then, if it failed, retries it with capped, jittered exponential
/// backoff until it succeeds, keeping readiness down meanwhile. Shutdown never interrupts an
/// attempt (a batch in flight is finished); it only stops further retries (`None`), leaving the
/// batch to redelivery.
async fn until_done<T, F, Fut>(
    what: &str,
    health: &Health,
    shutdown: &CancellationToken,
    mut op: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, EngineError>>,
{
    match op().await {
        Ok(v) => return Some(v),
        Err(e) => {
            health.metrics.pipeline_errors.inc();
            health.ready.store(false, Ordering::SeqCst);
            tracing::error!(error = %e, "{what} failed; retrying");
        }
    }
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times();
    let attempts = op.retry(backoff).sleep(tokio::time::sleep).notify(|e, delay| {
        health.metrics.pipeline_errors.inc();
        health.ready.store(false, Ordering::SeqCst);
        tracing::error!(error = %e, retry_in_ms = delay.as_millis() as u64, "{what} failed; retrying");
    });
    tokio::select! {
        result = attempts => {
            health.ready.store(true, Ordering::SeqCst);
            result.ok()
        }
        () = shutdown.cancelled() => None,
    }
}

struct Health {
    metrics: Arc<Metrics>,
    ready: AtomicBool,
    ledger: Arc<PgLedger>,
    /// The two-way stages this process runs (none with the two-way sync off).
    two_way: Arc<crate::two_way::Readiness>,
}

/// Runs the service until `shutdown` is cancelled, then stops intake, finishes the batch in
/// flight, commits offsets and flushes the producer.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mapping = cfg
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    let ledger = Arc::new(
        PgLedger::connect(cfg.postgres.url.expose_secret(), cfg.postgres.max_connections)
            .await
            .context("PostgreSQL")?,
    );
    if cfg.kafka.client.create_topics {
        let topics = [
            &cfg.kafka.input_topic,
            &cfg.kafka.outcome_topic,
            &cfg.kafka.dead_letter_topic,
        ];
        let mut topics: Vec<&str> = topics.iter().map(|t| t.as_str()).collect();
        if cfg.two_way.enabled {
            topics.extend(cfg.two_way.topics());
        }
        backbone_kafka::ensure_topics(&cfg.kafka.client, &topics, cfg.kafka.client.topic_partitions).await?;
    }
    let publisher = KafkaPublisher::new(&cfg.kafka.client)?;
    let crm = connect_crm(&cfg, mapping.clone()).await?;
    let metrics = Arc::new(Metrics::new());
    let lag_metrics = metrics.clone();
    let consumer = KafkaConsumer::new(
        &cfg.kafka.client,
        cfg.kafka.group(),
        &[cfg.kafka.input_topic.as_str()],
        Some(Arc::new(move |topic: &str, partition, lag| {
            lag_metrics.set_consumer_lag(topic, partition, lag)
        })),
    )?;
    let engine = Arc::new(engine(&cfg, mapping, crm.clone(), ledger.clone(), &publisher));
    let two_way_readiness = Arc::new(if cfg.two_way.enabled {
        let stages = cfg.two_way.stage_set().map_err(anyhow::Error::msg)?;
        crate::two_way::Readiness::new(&stages, &metrics)
    } else {
        crate::two_way::Readiness::none()
    });
    let health = Arc::new(Health {
        metrics: metrics.clone(),
        ready: AtomicBool::new(true),
        ledger: ledger.clone(),
        two_way: two_way_readiness.clone(),
    });
    let admin = cfg.http.admin_token.as_ref().map(|token| {
        let vendor = serde_json::to_value(cfg.crm.vendor)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        Arc::new(crate::admin::AdminState::new(
            ledger.clone(),
            metrics.clone(),
            cfg.kafka.clone(),
            vendor,
            token,
        ))
    });
    let http = serve_health(&cfg, health.clone(), admin, shutdown.clone()).await?;
    let two_way = if cfg.two_way.enabled {
        let store = backbone_postgres::PgClients::connect(
            cfg.postgres.url.expose_secret(),
            cfg.postgres.max_connections,
        )
        .await
        .context("PostgreSQL (two-way)")?;
        let wiring = crate::two_way::serve::Wiring {
            cfg: &cfg.two_way,
            store: Arc::new(store),
            crm: crm.clone(),
            publisher: publisher.clone(),
            kafka: &cfg.kafka.client,
            dead_letter_topic: &cfg.kafka.dead_letter_topic,
            give_up_after: cfg.retry.give_up_after,
            metrics: metrics.clone(),
            readiness: two_way_readiness,
        };
        Some(crate::two_way::serve::start(wiring, &shutdown).await?)
    } else {
        None
    };

    let consumer = Arc::new(consumer);
    let (to_finisher, from_pipeline) = mpsc::channel(cfg.pipeline.batches_in_flight);
    let due_in_flight = Arc::new(AtomicBool::new(false));
    let finisher = tokio::spawn(
        Finisher {
            engine: engine.clone(),
            consumer: consumer.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
            due_in_flight: due_in_flight.clone(),
            shutdown: shutdown.clone(),
        }
        .run(from_pipeline),
    );
    let pipeline = Pipeline {
        engine,
        crm,
        consumer: consumer.clone(),
        ledger,
        metrics,
        health: health.clone(),
        cfg: &cfg,
        shutdown: shutdown.clone(),
        to_finisher,
        due_in_flight,
    };
    pipeline.run().await;
    if let Err(e) = finisher.await {
        tracing::error!(error = %e, "finisher task failed");
    }
    if let Some(two_way) = two_way {
        // Each stage commits what it handled and leaves its group; the relay stops leading.
        for h in two_way.handles {
            let _ = h.await;
        }
        if let Some((api, _)) = two_way.api {
            let _ = api.await;
        }
    }
    tracing::info!("intake stopped, in-flight batches applied; committing offsets");
    if let Err(e) = consumer.commit_processed() {
        tracing::error!(error = %e, "final offset commit failed; the last batches will be redelivered");
    }
    consumer.unsubscribe();

    health.ready.store(false, Ordering::SeqCst);
    if let Err(e) = publisher.flush(Duration::from_secs(10)) {
        tracing::error!(error = %e, "producer flush at shutdown failed");
    }
    let _ = http.await;
    tracing::info!("crm-sync stopped");
    Ok(())
}

/// The vendor's adapter, with the mapping checked against the CRM's fields when configured.
async fn connect_crm(cfg: &Config, mapping: CrmMapping) -> anyhow::Result<Arc<CrmAdapter>> {
    let crm = Arc::new(CrmAdapter::build(&cfg.crm, mapping).map_err(anyhow::Error::msg)?);
    if cfg.crm.verify_mapping {
        crm.verify_mapping(&cfg.mapping)
            .await
            .map_err(|e| anyhow::anyhow!("the mapping does not fit the CRM:\n{e}"))?;
    }
    tracing::info!(vendor = ?cfg.crm.vendor, "CRM adapter ready");
    Ok(crm)
}

fn engine(
    cfg: &Config,
    mapping: CrmMapping,
    crm: Arc<CrmAdapter>,
    ledger: Arc<PgLedger>,
    publisher: &KafkaPublisher,
) -> SyncEngine {
    SyncEngine::new(
        mapping,
        EngineSettings {
            retry: cfg.retry.clone(),
            breaker: cfg.breaker.clone(),
            crm_batch_limit: cfg.pipeline.crm_batch_limit,
            max_clock_skew: Duration::from_millis(cfg.pipeline.max_clock_skew_ms),
            max_record_bytes: cfg.kafka.client.max_record_bytes,
        },
        crm,
        ledger,
        Arc::new(KafkaOutcomes::new(publisher.clone(), &cfg.kafka.outcome_topic)),
        Arc::new(KafkaDeadLetters(DeadLetterPublisher::new(
            publisher.clone(),
            &cfg.kafka.dead_letter_topic,
        ))),
        Box::new(rand::random::<f64>),
    )
}

/// `/metrics`, `/health/*` and `/admin/v1/*` (when configured) until `shutdown`.
async fn serve_health(
    cfg: &Config,
    health: Arc<Health>,
    admin: Option<Arc<crate::admin::AdminState>>,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .with_context(|| format!("binding {}", cfg.http.listen))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        admin = admin.is_some(),
        "serving /metrics, /health and the admin API when configured"
    );
    let app = match admin {
        Some(admin) => router(health).merge(crate::admin::router(admin)),
        None => router(health),
    };
    Ok(tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    }))
}

fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(h): State<Arc<Health>>| async move { h.metrics.render() }),
        )
        .route("/health/live", get(|| async { "live" }))
        .route(
            "/health/ready",
            get(|State(h): State<Arc<Health>>| async move {
                let db = tokio::time::timeout(Duration::from_secs(1), h.ledger.ping()).await;
                // Only the two-way stages this process runs count.
                let stalled: Vec<&str> = h.two_way.stalled().into_iter().map(|s| s.name()).collect();
                match (h.ready.load(Ordering::SeqCst), db) {
                    (false, _) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: pipeline stalled or stopping".to_owned(),
                    ),
                    (true, Ok(Ok(_))) if !h.two_way.is_started() => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: two-way stages starting".to_owned(),
                    ),
                    (true, Ok(Ok(_))) if stalled.is_empty() => (StatusCode::OK, "ready".to_owned()),
                    (true, Ok(Ok(_))) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: two-way stage retrying: {}", stalled.join(", ")),
                    ),
                    _ => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: database unreachable".to_owned(),
                    ),
                }
            }),
        )
        .with_state(health)
}

/// A decided batch on its way to durability, in consumption order.
struct Decided {
    effects: Effects,
    /// The records whose offsets to commit once applied (none for retries).
    batch: Option<ConsumedBatch>,
    records: usize,
    started: Instant,
}

/// Applies decided batches strictly in order (dead letters, ledger, outcomes), then commits their
/// offsets. Runs beside the pipeline so one batch's database and broker work overlaps the next
/// batch's CRM work.
struct Finisher {
    engine: Arc<SyncEngine>,
    consumer: Arc<KafkaConsumer>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    due_in_flight: Arc<AtomicBool>,
    shutdown: CancellationToken,
}

impl Finisher {
    async fn run(self, mut decided: mpsc::Receiver<Decided>) {
        while let Some(d) = decided.recv().await {
            // Nothing of this batch or any later one is committed until it is applied; on
            // shutdown the rest is left to redelivery.
            let applied = until_done("applying a batch", &self.health, &self.shutdown, || {
                self.engine.apply(&d.effects)
            });
            if applied.await.is_none() {
                return;
            }
            self.metrics
                .observe(d.effects.report(), d.records, d.started.elapsed().as_secs_f64());
            match &d.batch {
                Some(batch) => {
                    if let Err(e) = self.consumer.commit(batch) {
                        tracing::warn!(error = %e, "offset commit failed; records may be redelivered (harmless)");
                    }
                }
                None => self.due_in_flight.store(false, Ordering::SeqCst),
            }
        }
    }
}

struct Pipeline<'a> {
    engine: Arc<SyncEngine>,
    crm: Arc<CrmAdapter>,
    consumer: Arc<KafkaConsumer>,
    ledger: Arc<PgLedger>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    cfg: &'a Config,
    shutdown: CancellationToken,
    to_finisher: mpsc::Sender<Decided>,
    due_in_flight: Arc<AtomicBool>,
}

impl Pipeline<'_> {
    /// Runs until shutdown; dropping `self` closes the finisher's queue.
    async fn run(self) {
        let mut retry_tick = tokio::time::interval(Duration::from_millis(self.cfg.pipeline.retry_poll_ms));
        retry_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut gauges_tick = tokio::time::interval(Duration::from_secs(1));
        gauges_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // The vendor told us to stop (daily quota spent, account blocked): take no work, so
            // waiting costs no retry attempts and nothing is dead-lettered for it.
            if let Some(p) = self.crm.paused() {
                self.metrics.crm_paused.set(1);
                tracing::warn!(
                    reason = p.reason,
                    remaining_s = p.remaining.as_secs(),
                    "CRM paused: intake held"
                );
                tokio::select! {
                    () = self.shutdown.cancelled() => break,
                    () = tokio::time::sleep(p.remaining.min(Duration::from_secs(5))) => {}
                }
                continue;
            }
            self.metrics.crm_paused.set(0);
            // Batches are handled inside the select arm, so shutdown only ever lands between
            // batches: the one in flight is always finished and committed.
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                batch = self.consumer.next_batch(self.cfg.pipeline.max_batch) => match batch {
                    Ok(batch) => {
                        if !self.handle(batch).await {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka receive failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = retry_tick.tick() => {
                    if !self.handle_due().await {
                        break;
                    }
                }
                _ = gauges_tick.tick() => self.refresh_gauges().await,
            }
        }
    }

    /// Decides a batch and queues it for the finisher; `false` when the pipeline must stop.
    async fn handle(&self, mut batch: ConsumedBatch) -> bool {
        let span = tracing::info_span!("crm_sync.batch", records = batch.records.len());
        backbone_telemetry::set_parent_from_headers(&span, &batch.trace_headers);
        let started = Instant::now();
        let records: Vec<Inbound> = batch.take_records().into_iter().map(inbound).collect();
        // Only the ledger read can fail here; the same records are tried again.
        let decided = until_done("deciding a batch", &self.health, &self.shutdown, || {
            self.engine.decide(&records).instrument(span.clone())
        });
        let Some(effects) = decided.await else {
            return false;
        };
        let decided = Decided {
            effects,
            batch: Some(batch),
            records: records.len(),
            started,
        };
        self.queue(decided).await
    }

    async fn queue(&self, decided: Decided) -> bool {
        if self.to_finisher.send(decided).await.is_err() {
            tracing::error!(
                "the finisher stopped; stopping intake (uncommitted records will be redelivered)"
            );
            return false;
        }
        true
    }

    /// Decides the parked events that are due and queues them; `false` when the pipeline must stop.
    async fn handle_due(&self) -> bool {
        // One retry batch at a time: the next poll must see this one's rows unparked.
        if self.due_in_flight.load(Ordering::SeqCst) {
            return true;
        }
        let owned = self.consumer.assigned_partitions();
        if owned.is_empty() {
            return true;
        }
        let now = time::OffsetDateTime::now_utc();
        let due = match self.ledger.due(&owned, now, self.cfg.pipeline.retry_batch).await {
            Ok(due) if due.is_empty() => return true,
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "reading the retry queue failed");
                return true;
            }
        };
        let records = due.len();
        let started = Instant::now();
        let effects = match self
            .engine
            .decide_due(due)
            .instrument(tracing::info_span!("crm_sync.retry", records))
            .await
        {
            Ok(effects) => effects,
            Err(e) => {
                tracing::warn!(error = %e, "reading the ledger for due retries failed");
                return true;
            }
        };
        self.due_in_flight.store(true, Ordering::SeqCst);
        self.queue(Decided {
            effects,
            batch: None,
            records,
            started,
        })
        .await
    }

    async fn refresh_gauges(&self) {
        self.metrics
            .breaker_state
            .set(self.engine.breaker_state().as_gauge());
        match self.ledger.retry_depth().await {
            Ok(depth) => self.metrics.retry_depth.set(depth),
            Err(e) => tracing::warn!(error = %e, "reading the retry queue depth failed"),
        }
    }
}
