//! The two-way sync of client cards, tasks and history (`docs/two-way-sync.md`): its
//! configuration and the stages each instance runs beside the parcel-status pipeline: the outbox
//! relay (one leader), the dispatcher, the webhook processor and the `All_Clients` consumer (each
//! its own consumer group).

pub mod reconcile;
pub mod relay;
pub mod serve;
pub mod stages;

use crate::metrics::Metrics;
use backbone_kafka::{ConsumerRunner, DeadLetterPublisher, KafkaConsumer, KafkaPublisher, KafkaSettings};
use backbone_sync::clients::flows::{Dispatcher, Processor};
use backbone_sync::clients::{ClientCrm, ClientStore, Ownership};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// `[two_way]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TwoWayConfig {
    /// Runs the two-way stages and serves the API (off: the parcel-status flow alone).
    pub enabled: bool,
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
            api: crate::api::config::ApiConfig::default(),
            webhooks: backbone_crm::webhooks::WebhookConfig::default(),
        }
    }
}

impl TwoWayConfig {
    pub fn validate(&self) -> Result<(), String> {
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
        self.api.validate()?;
        backbone_crm::webhooks::Webhooks::new(&self.webhooks)
            .map_err(|e| format!("two_way.webhooks: {e}"))?;
        if self.relay_batch < 1 || self.relay_batch > 10_000 {
            return Err("two_way.relay_batch must be 1..=10000".into());
        }
        if self.relay_idle_poll_ms == 0 || self.max_batch == 0 {
            return Err("two_way.relay_idle_poll_ms and two_way.max_batch must be > 0".into());
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

/// What the stages share.
pub struct Parts {
    pub store: Arc<dyn ClientStore>,
    pub crm: Arc<dyn ClientCrm>,
    pub publisher: KafkaPublisher,
    pub kafka: KafkaSettings,
    pub dead_letter_topic: String,
    pub give_up_after: Duration,
    pub metrics: Arc<Metrics>,
}

/// Starts the relay and the three consumers; each returns after `stop`.
pub fn start(
    cfg: &TwoWayConfig,
    parts: Parts,
    stop: &CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let dead_letters = || DeadLetterPublisher::new(parts.publisher.clone(), parts.dead_letter_topic.clone());
    let relay = relay::Relay {
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
        publisher: parts.publisher.clone(),
        dead_letters: dead_letters(),
        batch: cfg.relay_batch,
        idle_poll: Duration::from_millis(cfg.relay_idle_poll_ms),
        published: parts.metrics.outbox_published.clone(),
    };
    let mut handles = vec![tokio::spawn(relay.run(stop.clone()))];

    let consumer = |group: &str, topic: &str| -> anyhow::Result<ConsumerRunner> {
        let c = KafkaConsumer::new(&parts.kafka, group, &[topic], None)?;
        Ok(ConsumerRunner::new(c, dead_letters(), cfg.max_batch))
    };
    let outgoing = stages::Outgoing {
        flow: Dispatcher {
            store: parts.store.clone(),
            crm: parts.crm.clone(),
            ownership: cfg.ownership.clone(),
        },
        clock: stages::RetryClock::new(parts.give_up_after),
        metrics: parts.metrics.clone(),
    };
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
    };
    let clients = stages::Clients {
        store: parts.store.clone(),
        clock: stages::RetryClock::new(parts.give_up_after),
        metrics: parts.metrics.clone(),
    };
    let runner = consumer(&cfg.dispatcher_group, &cfg.outgoing_topic)?;
    let s = stop.clone();
    handles.push(tokio::spawn(async move { runner.run(&outgoing, &s).await }));
    let runner = consumer(&cfg.processor_group, &cfg.incoming_topic)?;
    let s = stop.clone();
    handles.push(tokio::spawn(async move { runner.run(&incoming, &s).await }));
    let runner = consumer(&cfg.clients_group, &cfg.clients_topic)?;
    let s = stop.clone();
    handles.push(tokio::spawn(async move { runner.run(&clients, &s).await }));

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
    Ok(handles)
}
