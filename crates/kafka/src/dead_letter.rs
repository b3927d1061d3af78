//! Dead letters: records set aside with the standard headers (why, from where, how many tries),
//! for every consumer of every service.

use crate::{KafkaError, KafkaPublisher, OutgoingRecord, RecordPosition};

/// Dead-letter headers: why, from where, how many tries.
pub const HEADER_REASON: &str = "x-dlq-reason";
pub const HEADER_REASON_CODE: &str = "x-dlq-reason-code";
pub const HEADER_SOURCE_TOPIC: &str = "x-source-topic";
pub const HEADER_SOURCE_PARTITION: &str = "x-source-partition";
pub const HEADER_SOURCE_OFFSET: &str = "x-source-offset";
pub const HEADER_ATTEMPTS: &str = "x-attempts";
pub const HEADER_EVENT_ID: &str = "x-event-id";
/// How many times a record went back through its consumer from the dead-letter topic.
pub const HEADER_REPLAY_COUNT: &str = "x-replay-count";

/// One record set aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Where the record was read; `None` for letters that did not come from a topic.
    pub source: Option<RecordPosition>,
    pub key: Option<Vec<u8>>,
    /// What the letter carries: the record's value, a masked copy, or a note that it is withheld.
    pub payload: Vec<u8>,
    /// A stable, machine-readable reason (`malformed_json`, `invalid_field`, ...).
    pub reason_code: String,
    /// For people; never a copy of the input.
    pub reason: String,
    pub attempts: u32,
    /// How many times the record came back from a dead-letter topic; `x-replay-count` is
    /// written when known.
    pub replay_count: Option<u32>,
    pub event_id: Option<String>,
}

impl DeadLetter {
    /// The standard headers, in a fixed order, plus the current trace context.
    pub fn headers(&self) -> Vec<(String, String)> {
        let mut headers = backbone_telemetry::current_trace_headers();
        headers.push((HEADER_REASON.to_owned(), self.reason.clone()));
        headers.push((HEADER_REASON_CODE.to_owned(), self.reason_code.clone()));
        if let Some(source) = &self.source {
            headers.push((HEADER_SOURCE_TOPIC.to_owned(), source.topic.clone()));
            headers.push((HEADER_SOURCE_PARTITION.to_owned(), source.partition.to_string()));
            headers.push((HEADER_SOURCE_OFFSET.to_owned(), source.offset.to_string()));
        }
        headers.push((HEADER_ATTEMPTS.to_owned(), self.attempts.to_string()));
        if let Some(count) = self.replay_count {
            headers.push((HEADER_REPLAY_COUNT.to_owned(), count.to_string()));
        }
        if let Some(id) = &self.event_id {
            headers.push((HEADER_EVENT_ID.to_owned(), id.clone()));
        }
        headers
    }
}

/// Publishes dead letters to one topic and waits for the broker's acknowledgement.
#[derive(Clone)]
pub struct DeadLetterPublisher {
    publisher: KafkaPublisher,
    topic: String,
}

impl DeadLetterPublisher {
    pub fn new(publisher: KafkaPublisher, topic: impl Into<String>) -> Self {
        Self {
            publisher,
            topic: topic.into(),
        }
    }

    pub async fn publish(&self, letters: &[DeadLetter]) -> Result<(), KafkaError> {
        let records = letters
            .iter()
            .map(|l| OutgoingRecord {
                topic: &self.topic,
                key: l.key.as_deref(),
                payload: &l.payload,
                headers: l.headers(),
            })
            .collect();
        self.publisher.send_all(records).await
    }
}
