//! crm-sync's side of Kafka: its `[kafka]` section (the shared client settings and its own
//! topics), and the sync engine's outcome and dead-letter ports over the neutral adapter.

use async_trait::async_trait;
use backbone_kafka::{
    ConsumedRecord, DeadLetterPublisher, KafkaPublisher, KafkaSettings, OutgoingRecord, RecordPosition,
    HEADER_REPLAY_COUNT,
};
use backbone_sync::engine::Inbound;
use backbone_sync::ports::{
    DeadLetter, DeadLetterSink, OutcomeRecord, OutcomeSink, PublishError, SourcePosition,
};
use serde::{Deserialize, Serialize};

/// The consumer group when `kafka.group_id` is unset.
pub const DEFAULT_GROUP: &str = "crm-sync";

/// `[kafka]`: brokers, group and client properties, and crm-sync's three topics.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    #[serde(flatten)]
    pub client: KafkaSettings,
    /// Parcel-status events from the Tracking Service (keyed by shipment id).
    pub input_topic: String,
    /// One outcome record per handled event.
    pub outcome_topic: String,
    /// Records that cannot be synced, with the reason in `x-dlq-*` headers.
    pub dead_letter_topic: String,
    /// Topics `dlq replay` may send letters back to besides `input_topic` (a letter's
    /// `x-source-topic` is only followed when it is one of these).
    pub replay_topics: Vec<String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            client: KafkaSettings::default(),
            input_topic: "tracking.events".into(),
            outcome_topic: "crm.sync".into(),
            dead_letter_topic: "dead.letters".into(),
            replay_topics: Vec::new(),
        }
    }
}

impl KafkaConfig {
    pub fn group(&self) -> &str {
        self.client.group_or(DEFAULT_GROUP)
    }

    pub fn validate(&self) -> Result<(), String> {
        self.client.validate()?;
        backbone_kafka::validate_topics(
            &[("kafka.input_topic", &self.input_topic)],
            &[
                ("kafka.outcome_topic", &self.outcome_topic),
                ("kafka.dead_letter_topic", &self.dead_letter_topic),
            ],
        )
    }
}

/// A consumed record as the sync engine reads it.
pub fn inbound(record: ConsumedRecord) -> Inbound {
    let replay_count = record
        .header(HEADER_REPLAY_COUNT)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let RecordPosition {
        topic,
        partition,
        offset,
    } = record.position;
    Inbound {
        source: SourcePosition {
            topic,
            partition,
            offset,
        },
        key: record.key,
        payload: record.payload,
        oversized: record.oversized,
        replay_count,
    }
}

/// Outcomes on `crm.sync`, keyed by shipment id.
pub struct KafkaOutcomes {
    publisher: KafkaPublisher,
    topic: String,
}

impl KafkaOutcomes {
    pub fn new(publisher: KafkaPublisher, topic: impl Into<String>) -> Self {
        Self {
            publisher,
            topic: topic.into(),
        }
    }
}

#[async_trait]
impl OutcomeSink for KafkaOutcomes {
    async fn publish(&self, outcomes: &[OutcomeRecord]) -> Result<(), PublishError> {
        let bodies: Vec<Vec<u8>> = outcomes
            .iter()
            .map(serde_json::to_vec)
            .collect::<Result<_, _>>()
            .map_err(|e| PublishError(e.to_string()))?;
        let trace = backbone_telemetry::current_trace_headers();
        let records = outcomes
            .iter()
            .zip(&bodies)
            .map(|(o, body)| {
                let mut headers = trace.clone();
                headers.push(("x-correlation-id".into(), o.correlation_id.clone()));
                OutgoingRecord {
                    topic: &self.topic,
                    key: o.key.as_deref(),
                    payload: Some(body),
                    headers,
                }
            })
            .collect();
        self.publisher
            .send_all(records)
            .await
            .map_err(|e| PublishError(e.message))
    }
}

/// Dead letters on `dead.letters`, with the standard headers.
pub struct KafkaDeadLetters(pub DeadLetterPublisher);

#[async_trait]
impl DeadLetterSink for KafkaDeadLetters {
    async fn dead_letter(&self, letters: &[DeadLetter]) -> Result<(), PublishError> {
        let letters: Vec<backbone_kafka::DeadLetter> = letters
            .iter()
            .map(|l| backbone_kafka::DeadLetter {
                source: Some(RecordPosition {
                    topic: l.source.topic.clone(),
                    partition: l.source.partition,
                    offset: l.source.offset,
                }),
                key: l.key.clone(),
                payload: l.payload.clone(),
                withheld_bytes: l.withheld_bytes,
                reason_code: l.reason_code.as_str().to_owned(),
                reason: l.reason.clone(),
                attempts: l.attempts,
                replay_count: Some(l.replay_count),
                event_id: l.event_id.as_ref().map(ToString::to_string),
            })
            .collect();
        self.0
            .publish(&letters)
            .await
            .map_err(|e| PublishError(e.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kafka_section_keeps_its_keys_and_refuses_unknown_ones() {
        let parsed: KafkaConfig = serde_json::from_value(serde_json::json!({
            "brokers": "b:9092", "group_id": "g", "input_topic": "in", "outcome_topic": "out",
            "dead_letter_topic": "dlq", "create_topics": true, "topic_partitions": 3
        }))
        .expect("every documented key");
        assert_eq!(parsed.client.brokers, "b:9092");
        assert_eq!(parsed.group(), "g");
        assert_eq!(parsed.input_topic, "in");
        assert_eq!(parsed.client.topic_partitions, 3);
        let defaults: KafkaConfig =
            serde_json::from_value(serde_json::json!({"brokers": "b:9092"})).expect("defaults");
        assert_eq!(defaults.group(), DEFAULT_GROUP);
        assert_eq!(defaults.dead_letter_topic, "dead.letters");
        let err =
            serde_json::from_value::<KafkaConfig>(serde_json::json!({"brokers": "b", "input_topc": "x"}))
                .expect_err("a misspelt key is refused");
        assert!(err.to_string().contains("input_topc"), "{err}");
    }
}
