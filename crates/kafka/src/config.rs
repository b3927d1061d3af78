use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `[kafka]` settings every service shares: where the brokers are, the consumer group, and
/// client properties. Topic names belong to each service's own configuration. Security
/// (SASL/TLS) and any other librdkafka property pass through `properties`, e.g.
/// `security.protocol = "SASL_SSL"`, `sasl.mechanism = "SCRAM-SHA-512"`.
///
/// Services flatten this into their own `[kafka]` section (which denies unknown keys).
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct KafkaSettings {
    pub brokers: String,
    /// Consumer group; each service documents its default when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
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
            group_id: None,
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
            .field("create_topics", &self.create_topics)
            .field("topic_partitions", &self.topic_partitions)
            .field("fetch_wait_max_ms", &self.fetch_wait_max_ms)
            .field("linger_ms", &self.linger_ms)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KafkaSettings {
    /// The consumer group: `group_id`, or the service's `default` when unset.
    pub fn group_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.group_id.as_deref().unwrap_or(default)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.brokers.trim().is_empty() {
            return Err("kafka.brokers must list at least one host:port".into());
        }
        if self.group_id.as_deref().is_some_and(|g| g.trim().is_empty()) {
            return Err("kafka.group_id must not be empty".into());
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

/// Checks a service's topic names: none empty, inputs distinct from outputs.
pub fn validate_topics(inputs: &[(&str, &str)], outputs: &[(&str, &str)]) -> Result<(), String> {
    for (name, topic) in inputs.iter().chain(outputs) {
        if topic.trim().is_empty() {
            return Err(format!("{name} must not be empty"));
        }
    }
    for (input_name, input) in inputs {
        if outputs.iter().any(|(_, t)| t == input) {
            return Err(format!("{input_name} must differ from the output topics"));
        }
    }
    Ok(())
}
