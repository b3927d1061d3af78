use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `[kafka]` configuration. Security (SASL/TLS) and any other librdkafka property pass through
/// `properties`, e.g. `security.protocol = "SASL_SSL"`, `sasl.mechanism = "SCRAM-SHA-512"`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    pub brokers: String,
    pub group_id: String,
    pub input_topic: String,
    pub outcome_topic: String,
    pub dead_letter_topic: String,
    /// Create missing topics at start-up (local stacks; the local broker does not auto-create).
    pub create_topics: bool,
    pub topic_partitions: i32,
    /// How long a fetch may wait for data; low values keep latency low.
    pub fetch_wait_max_ms: u32,
    /// How long the producer waits to fill a batch.
    pub linger_ms: u32,
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            group_id: "crm-sync".into(),
            input_topic: "tracking.events".into(),
            outcome_topic: "crm.sync".into(),
            dead_letter_topic: "dead.letters".into(),
            create_topics: false,
            topic_partitions: 6,
            fetch_wait_max_ms: 5,
            linger_ms: 2,
            properties: BTreeMap::new(),
        }
    }
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Pass-through properties may hold `sasl.password`: show their names only.
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("input_topic", &self.input_topic)
            .field("outcome_topic", &self.outcome_topic)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("create_topics", &self.create_topics)
            .field("topic_partitions", &self.topic_partitions)
            .field("fetch_wait_max_ms", &self.fetch_wait_max_ms)
            .field("linger_ms", &self.linger_ms)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KafkaSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.brokers.trim().is_empty() {
            return Err("kafka.brokers must list at least one host:port".into());
        }
        for (name, t) in [
            ("kafka.input_topic", &self.input_topic),
            ("kafka.outcome_topic", &self.outcome_topic),
            ("kafka.dead_letter_topic", &self.dead_letter_topic),
            ("kafka.group_id", &self.group_id),
        ] {
            if t.trim().is_empty() {
                return Err(format!("{name} must not be empty"));
            }
        }
        if self.input_topic == self.outcome_topic || self.input_topic == self.dead_letter_topic {
            return Err("kafka.input_topic must differ from the output topics".into());
        }
        if self.topic_partitions < 1 {
            return Err("kafka.topic_partitions must be >= 1".into());
        }
        // Let librdkafka judge the pass-through properties now, not at the first message.
        self.client_config()
            .create::<rdkafka::producer::BaseProducer>()
            .map(|_| ())
            .map_err(|e| format!("kafka.properties rejected by the Kafka client: {e}"))
    }

    /// Base client configuration shared by every client.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}
