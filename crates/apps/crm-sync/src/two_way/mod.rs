//! The two-way sync of client cards, tasks and history (`docs/two-way-sync.md`): its
//! configuration and the stages an instance runs beside the parcel-status pipeline: the HTTP API
//! and webhook intake, the outbox relay (one leader), the dispatcher, the webhook processor and
//! the `All_Clients` consumer (each its own consumer group). `two_way.stages` picks which of them
//! this process runs, so each can be deployed and scaled on its own.

pub mod reconcile;
pub mod relay;
pub mod serve;
pub mod stages;

use crate::metrics::Metrics;
use backbone_kafka::{
    ConsumerRunner, DeadLetterPublisher, KafkaConsumer, KafkaPublisher, KafkaSettings, OutboxRelay,
};
use backbone_sync::clients::flows::{Dispatcher, Processor};
use backbone_sync::clients::{ClientCrm, ClientStore, Ownership};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One of the two-way stages a process can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// `/v1/...`, `/webhooks/...`, `/openapi.json` on `two_way.api.listen`.
    Api,
    /// The outbox relay (`crm_outbox` → `crm.outgoing`, `crm.incoming`), one leader at a time.
    Relay,
    /// `crm.outgoing` → the CRM.
    Dispatcher,
    /// `crm.incoming` → re-read the CRM → our copy → `crm.processed` / `crm.failed`.
    Processor,
    /// `All_Clients` → our copy.
    Clients,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Api,
        Stage::Relay,
        Stage::Dispatcher,
        Stage::Processor,
        Stage::Clients,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Api => "api",
            Stage::Relay => "relay",
            Stage::Dispatcher => "dispatcher",
            Stage::Processor => "processor",
            Stage::Clients => "clients",
        }
    }

    pub fn parse(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The stages one process runs: a list (`["relay", "dispatcher"]`) or, as an environment
/// variable is most easily written, one comma-separated string (`relay,dispatcher`).
fn stage_names<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Names {
        List(Vec<String>),
        Joined(String),
    }
    Ok(match Names::deserialize(d)? {
        Names::List(names) => names,
        Names::Joined(s) if s.trim().is_empty() => Vec::new(),
        Names::Joined(s) => s.split(',').map(|n| n.trim().to_owned()).collect(),
    })
}

/// `[two_way]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TwoWayConfig {
    /// Runs the two-way stages (off: the parcel-status flow alone).
    pub enabled: bool,
    /// Which stages this process runs (`api`, `relay`, `dispatcher`, `processor`, `clients`;
    /// default all). Checked at start-up: an unknown name or an empty list is refused.
    #[serde(deserialize_with = "stage_names")]
    pub stages: Vec<String>,
    /// Who decides each card field when both sides changed it.
    pub ownership: Ownership,
    pub outgoing_topic: String,
    pub incoming_topic: String,
    pub processed_topic: String,
    pub failed_topic: String,
    /// Client reference data from our systems.
    pub clients_topic: String,
    pub dispatcher_group: String,
    pub processor_group: String,
    pub clients_group: String,
    /// Outbox rows per relay pass.
    pub relay_batch: i64,
    /// How often an idle relay looks for new rows.
    pub relay_idle_poll_ms: u64,
    /// Records per consumer batch.
    pub max_batch: usize,
    /// Clients the dispatcher and the processor handle at once within one consumer batch (one
    /// client's records stay in order; 1 handles a batch one record at a time).
    pub concurrency: usize,
    /// `/v1/...`, `/webhooks/...`, `/openapi.json`.
    pub api: crate::api::config::ApiConfig,
    /// The vendors whose webhooks are served, with their credentials.
    #[serde(skip_serializing)]
    pub webhooks: backbone_crm::webhooks::WebhookConfig,
}

impl Default for TwoWayConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            stages: Stage::ALL.iter().map(|s| s.name().to_owned()).collect(),
            ownership: Ownership::default(),
            outgoing_topic: "crm.outgoing".into(),
            incoming_topic: "crm.incoming".into(),
            processed_topic: "crm.processed".into(),
            failed_topic: "crm.failed".into(),
            clients_topic: "All_Clients".into(),
            dispatcher_group: "crm-sync-dispatcher".into(),
            processor_group: "crm-sync-processor".into(),
            clients_group: "crm-sync-clients".into(),
            relay_batch: 1000,
            relay_idle_poll_ms: 10,
            max_batch: 200,
            concurrency: 8,
            api: crate::api::config::ApiConfig::default(),
            webhooks: backbone_crm::webhooks::WebhookConfig::default(),
        }
    }
}

impl TwoWayConfig {
    /// The stages `two_way.stages` names, in their canonical order.
    pub fn stage_set(&self) -> Result<std::collections::BTreeSet<Stage>, String> {
        let known = || Stage::ALL.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ");
        if self.stages.is_empty() {
            return Err(format!(
                "two_way.stages is empty while two_way.enabled is true: name at least one of {}, or turn two_way.enabled off",
                known()
            ));
        }
        let mut set = std::collections::BTreeSet::new();
        for name in &self.stages {
            let Some(stage) = Stage::parse(name) else {
                return Err(format!(
                    "two_way.stages: unknown stage {name:?}; the stages are {}",
                    known()
                ));
            };
            if !set.insert(stage) {
                return Err(format!("two_way.stages: {name:?} is listed twice"));
            }
        }
        Ok(set)
    }

    /// Whether this process runs `stage` (`false` for any stage when the list is invalid).
    pub fn runs(&self, stage: Stage) -> bool {
        self.stage_set().is_ok_and(|s| s.contains(&stage))
    }

    pub fn validate(&self) -> Result<(), String> {
        let stages = self.stage_set()?;
        backbone_kafka::validate_topics(
            &[
                ("two_way.outgoing_topic", &self.outgoing_topic),
                ("two_way.incoming_topic", &self.incoming_topic),
                ("two_way.clients_topic", &self.clients_topic),
            ],
            &[
                ("two_way.processed_topic", &self.processed_topic),
                ("two_way.failed_topic", &self.failed_topic),
            ],
        )?;
        // The API's tokens and the webhook credentials matter only where the API is served.
        if stages.contains(&Stage::Api) {
            self.api.validate()?;
            backbone_crm::webhooks::Webhooks::new(&self.webhooks)
                .map_err(|e| format!("two_way.webhooks: {e}"))?;
        }
        if self.relay_batch < 1 || self.relay_batch > 10_000 {
            return Err("two_way.relay_batch must be 1..=10000".into());
        }
        if self.relay_idle_poll_ms == 0 || self.max_batch == 0 {
            return Err("two_way.relay_idle_poll_ms and two_way.max_batch must be > 0".into());
        }
        if !(1..=64).contains(&self.concurrency) {
            return Err("two_way.concurrency must be 1..=64".into());
        }
        let groups = [&self.dispatcher_group, &self.processor_group, &self.clients_group];
        if groups.iter().any(|g| g.is_empty())
            || groups[0] == groups[1]
            || groups[1] == groups[2]
            || groups[0] == groups[2]
        {
            return Err("two_way consumer groups must be set and distinct".into());
        }
        Ok(())
    }

    pub fn topics(&self) -> [&str; 5] {
        [
            &self.outgoing_topic,
            &self.incoming_topic,
            &self.processed_topic,
            &self.failed_topic,
            &self.clients_topic,
        ]
    }
}

/// Whether one running stage is making progress: down while it retries a failure worth retrying
/// (PostgreSQL, the broker or the CRM away), up again after its next success.
#[derive(Clone)]
pub struct StageUp {
    up: Arc<AtomicBool>,
    gauge: Option<prometheus::IntGauge>,
}

impl StageUp {
    pub fn set(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if let Some(g) = &self.gauge {
            g.set(i64::from(up));
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }
}

/// The readiness of the two-way stages this process runs, and of those only.
pub struct Readiness {
    stages: BTreeMap<Stage, StageUp>,
    /// Set once the stages are running (the API bound, the consumers created).
    started: AtomicBool,
}

impl Readiness {
    pub fn new(stages: &BTreeSet<Stage>, metrics: &Metrics) -> Self {
        let stages = stages
            .iter()
            .map(|&s| {
                let up = StageUp {
                    up: Arc::new(AtomicBool::new(true)),
                    gauge: Some(metrics.two_way_stage_up.with_label_values(&[s.name()])),
                };
                up.set(true);
                (s, up)
            })
            .collect();
        Self {
            stages,
            started: AtomicBool::new(false),
        }
    }

    /// No stage: a process with the two-way sync off.
    pub fn none() -> Self {
        Self {
            stages: BTreeMap::new(),
            started: AtomicBool::new(true),
        }
    }

    /// The stages are running.
    pub fn set_started(&self) {
        self.started.store(true, Ordering::SeqCst);
    }

    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    /// The flag of a running stage (a detached one for a stage this process does not run).
    pub fn stage(&self, stage: Stage) -> StageUp {
        self.stages.get(&stage).cloned().unwrap_or_else(|| StageUp {
            up: Arc::new(AtomicBool::new(true)),
            gauge: None,
        })
    }

    pub fn running(&self) -> impl Iterator<Item = Stage> + '_ {
        self.stages.keys().copied()
    }

    /// The running stages that are retrying a failure now.
    pub fn stalled(&self) -> Vec<Stage> {
        self.stages
            .iter()
            .filter(|(_, up)| !up.is_up())
            .map(|(s, _)| *s)
            .collect()
    }
}

/// What the stages share.
pub struct Parts {
    pub store: Arc<dyn ClientStore>,
    pub crm: Arc<dyn ClientCrm>,
    pub publisher: KafkaPublisher,
    pub kafka: KafkaSettings,
    pub dead_letter_topic: String,
    pub give_up_after: Duration,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
}

/// Starts the relay and the consumers of the stages `readiness` names; each returns after
/// `stop`. The API is served by [`serve::start`].
pub fn start(
    cfg: &TwoWayConfig,
    parts: Parts,
    stop: &CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let runs = |s: Stage| parts.readiness.running().any(|r| r == s);
    let dead_letters = || DeadLetterPublisher::new(parts.publisher.clone(), parts.dead_letter_topic.clone());
    let mut handles = Vec::new();
    if runs(Stage::Relay) {
        parts.metrics.register_relay()?;
        let outbox = relay::ClientOutbox {
            topics: [
                (
                    backbone_sync::clients::apply::TOPIC_OUTGOING.to_owned(),
                    cfg.outgoing_topic.clone(),
                ),
                (
                    backbone_sync::clients::apply::TOPIC_INCOMING.to_owned(),
                    cfg.incoming_topic.clone(),
                ),
            ]
            .into_iter()
            .collect(),
            store: parts.store.clone(),
            dead_letters: dead_letters(),
        };
        let observed = relay::Observed {
            published: parts.metrics.outbox_published.clone(),
            up: parts.readiness.stage(Stage::Relay),
        };
        let mut relay = OutboxRelay::new(parts.publisher.clone());
        relay.batch = cfg.relay_batch;
        relay.idle_poll = Duration::from_millis(cfg.relay_idle_poll_ms);
        let s = stop.clone();
        handles.push(tokio::spawn(async move {
            relay.run(&outbox, &observed, "two-way", &s).await;
        }));

        // The outbox depth, reported by the relay's processes only.
        let store = parts.store.clone();
        let depth = parts.metrics.outbox_depth.clone();
        let s = stop.clone();
        handles.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Ok(d) = store.outbox_depth().await {
                            depth.set(d);
                        }
                    }
                    () = s.cancelled() => return,
                }
            }
        }));
    }

    let consumer = |group: &str, topic: &str| -> anyhow::Result<ConsumerRunner> {
        let c = KafkaConsumer::new(&parts.kafka, group, &[topic], None)?;
        Ok(ConsumerRunner::new(c, dead_letters(), cfg.max_batch))
    };
    if runs(Stage::Dispatcher) {
        let outgoing = stages::Outgoing {
            flow: Dispatcher {
                store: parts.store.clone(),
                crm: parts.crm.clone(),
                ownership: cfg.ownership.clone(),
            },
            clock: stages::RetryClock::new(parts.give_up_after),
            metrics: parts.metrics.clone(),
            up: parts.readiness.stage(Stage::Dispatcher),
        };
        let runner =
            consumer(&cfg.dispatcher_group, &cfg.outgoing_topic)?.with_key_concurrency(cfg.concurrency);
        let s = stop.clone();
        handles.push(tokio::spawn(async move { runner.run(&outgoing, &s).await }));
    }
    if runs(Stage::Processor) {
        let incoming = stages::Incoming {
            flow: Processor {
                store: parts.store.clone(),
                crm: parts.crm.clone(),
                ownership: cfg.ownership.clone(),
            },
            publisher: parts.publisher.clone(),
            processed_topic: cfg.processed_topic.clone(),
            failed_topic: cfg.failed_topic.clone(),
            clock: stages::RetryClock::new(parts.give_up_after),
            metrics: parts.metrics.clone(),
            up: parts.readiness.stage(Stage::Processor),
        };
        let runner =
            consumer(&cfg.processor_group, &cfg.incoming_topic)?.with_key_concurrency(cfg.concurrency);
        let s = stop.clone();
        handles.push(tokio::spawn(async move { runner.run(&incoming, &s).await }));
    }
    if runs(Stage::Clients) {
        let clients = stages::Clients {
            store: parts.store.clone(),
            clock: stages::RetryClock::new(parts.give_up_after),
            metrics: parts.metrics.clone(),
            up: parts.readiness.stage(Stage::Clients),
        };
        let runner = consumer(&cfg.clients_group, &cfg.clients_topic)?;
        let s = stop.clone();
        handles.push(tokio::spawn(async move { runner.run(&clients, &s).await }));
    }
    Ok(handles)
}
