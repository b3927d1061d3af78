use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `[kafka]` settings every service shares: where the brokers are, the consumer group, and
/// client properties. Topic names belong to each service's own configuration. Security
/// (SASL/TLS) and any other librdkafka property pass through `properties`, e.g.
/// `security.protocol = "SASL_SSL"`, `sasl.mechanism = "SCRAM-SHA-512"`.
///
/// Services flatten this into their own `[kafka]` section (which denies unknown keys).
/// The default `max_record_bytes`: below the broker's usual 1 MB `message.max.bytes`, so a
/// dead letter of any accepted record (its value plus the `x-dlq-*` headers) still fits.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 900_000;
/// What a dead letter may add to the record it carries: bounded headers (reason, source, ...).
pub const LETTER_HEADROOM: usize = 64 * 1024;
const MAX_RECORD_BYTES_RANGE: std::ops::RangeInclusive<usize> = 1024..=64 * 1024 * 1024;

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
    /// Largest record (key, value and headers) a consumer accepts. A larger one is set aside at
    /// intake without its value (reason `record_too_large`); the producer's `message.max.bytes`
    /// is this plus [`LETTER_HEADROOM`], so every accepted record fits in its dead letter.
    pub max_record_bytes: usize,
    /// How long a revocation waits for the batches of the revoked partitions to be done (their
    /// effects durable, their offsets committed) before it lets them go.
    pub drain_timeout_ms: u64,
    /// A member that has waited this long for records, twice in a row, while the group's
    /// partitions hold unconsumed records and no member commits, rejoins the group (0: never).
    /// Longer than the session timeout, so a dead member has left first.
    pub rejoin_after_ms: u64,
    /// How long the group waits for a silent member before it hands the member's partitions to
    /// the others (`session.timeout.ms`): the failover time of a crashed instance.
    pub session_timeout_ms: u32,
    /// Static membership (KIP-345, `group.instance.id`): unique per instance and stable across
    /// its restarts (a pod name). A member that restarts within the session timeout gets its
    /// partitions back without a rebalance; one that stays away past it is replaced. Unset:
    /// dynamic membership, a member leaves the group on shutdown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_instance_id: Option<String>,
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
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            drain_timeout_ms: 30_000,
            rejoin_after_ms: 15_000,
            session_timeout_ms: 10_000,
            group_instance_id: None,
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
            .field("max_record_bytes", &self.max_record_bytes)
            .field("drain_timeout_ms", &self.drain_timeout_ms)
            .field("rejoin_after_ms", &self.rejoin_after_ms)
            .field("session_timeout_ms", &self.session_timeout_ms)
            .field("group_instance_id", &self.group_instance_id)
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
        if !(1_000..=300_000).contains(&self.session_timeout_ms) {
            return Err("kafka.session_timeout_ms must be within 1000..=300000".into());
        }
        if self.rejoin_after_ms != 0 && self.rejoin_after_ms <= u64::from(self.session_timeout_ms) {
            return Err("kafka.rejoin_after_ms must be 0 or longer than kafka.session_timeout_ms".into());
        }
        if self
            .group_instance_id
            .as_deref()
            .is_some_and(|id| id.trim().is_empty() || id.len() > 249)
        {
            return Err("kafka.group_instance_id must be 1 to 249 characters".into());
        }
        if self.topic_partitions < 1 {
            return Err("kafka.topic_partitions must be >= 1".into());
        }
        if !MAX_RECORD_BYTES_RANGE.contains(&self.max_record_bytes) {
            return Err(format!(
                "kafka.max_record_bytes must be within {}..={}",
                MAX_RECORD_BYTES_RANGE.start(),
                MAX_RECORD_BYTES_RANGE.end()
            ));
        }
        if let Some(limit) = self.properties.get("message.max.bytes") {
            let fits = limit
                .parse::<usize>()
                .is_ok_and(|l| l >= self.producer_max_bytes());
            if !fits {
                return Err(format!(
                    "kafka.properties.message.max.bytes must be at least kafka.max_record_bytes + {LETTER_HEADROOM} ({}), so every accepted record can be dead-lettered",
                    self.producer_max_bytes()
                ));
            }
        }
        // Let librdkafka judge the pass-through properties now, not at the first message.
        self.client_config()
            .create::<rdkafka::producer::BaseProducer>()
            .map(|_| ())
            .map_err(|e| format!("kafka.properties rejected by the Kafka client: {e}"))
    }

    /// The producer's `message.max.bytes`: what a consumer accepts plus a dead letter's headers.
    pub fn producer_max_bytes(&self) -> usize {
        self.max_record_bytes.saturating_add(LETTER_HEADROOM)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_membership_settings_are_checked() {
        let ok = KafkaSettings::default();
        assert_eq!(ok.validate(), Ok(()));
        let short = KafkaSettings {
            session_timeout_ms: 999,
            ..KafkaSettings::default()
        };
        assert!(short.validate().unwrap_err().contains("session_timeout_ms"));
        // The rejoin watchdog must not fire before a dead member has left.
        let early_rejoin = KafkaSettings {
            session_timeout_ms: 20_000,
            ..KafkaSettings::default()
        };
        assert!(early_rejoin.validate().unwrap_err().contains("rejoin_after_ms"));
        let no_rejoin = KafkaSettings {
            session_timeout_ms: 20_000,
            rejoin_after_ms: 0,
            ..KafkaSettings::default()
        };
        assert_eq!(no_rejoin.validate(), Ok(()));
        for bad in ["", " ", &"x".repeat(250)] {
            let s = KafkaSettings {
                group_instance_id: Some(bad.to_owned()),
                ..KafkaSettings::default()
            };
            assert!(s.validate().unwrap_err().contains("group_instance_id"), "{bad:?}");
        }
        let pod = KafkaSettings {
            group_instance_id: Some("crm-sync-0".into()),
            ..KafkaSettings::default()
        };
        assert_eq!(pod.validate(), Ok(()));
    }
}
