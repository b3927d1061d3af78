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
/// Set when the letter carries no value because the record's was too large: its size in bytes.
pub const HEADER_VALUE_WITHHELD: &str = "x-dlq-value-withheld";
/// The longest `x-dlq-reason` written; a longer reason is cut at a character boundary.
pub const MAX_REASON_BYTES: usize = 512;

/// One record set aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Where the record was read; `None` for letters that did not come from a topic.
    pub source: Option<RecordPosition>,
    pub key: Option<Vec<u8>>,
    /// What the letter carries: the record's value, a masked copy, or a note that it is withheld;
    /// `None` for a record without a value (a tombstone, or one too large to carry).
    pub payload: Option<Vec<u8>>,
    /// The size of a value that is not carried because it was too large.
    pub withheld_bytes: Option<usize>,
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
        headers.push((HEADER_REASON.to_owned(), bounded_reason(&self.reason)));
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
        if let Some(bytes) = self.withheld_bytes {
            headers.push((HEADER_VALUE_WITHHELD.to_owned(), bytes.to_string()));
        }
        headers
    }

    /// Key and value in bytes (what counts against the record size limit).
    fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len) + self.payload.as_ref().map_or(0, Vec::len)
    }

    /// The same letter without its value, noting the value's size.
    fn withheld(&self) -> Self {
        Self {
            payload: None,
            withheld_bytes: Some(self.withheld_bytes.unwrap_or(self.size())),
            key: self.key.clone().filter(|k| k.len() <= crate::MAX_KEPT_KEY_BYTES),
            ..self.clone()
        }
    }
}

/// A reason fit for a header: no control characters, at most [`MAX_REASON_BYTES`].
fn bounded_reason(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len().min(MAX_REASON_BYTES));
    for c in reason.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > MAX_REASON_BYTES {
            break;
        }
        out.push(c);
    }
    out
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

    /// Publishes every letter. A letter larger than consumers accept goes out without its value
    /// (`x-dlq-value-withheld`); if the broker still refuses one as too large, the call is made
    /// again with every value withheld, so a size refusal never repeats.
    pub async fn publish(&self, letters: &[DeadLetter]) -> Result<(), KafkaError> {
        let limit = self.publisher.max_record_bytes();
        let fitted: Vec<DeadLetter> = letters
            .iter()
            .map(|l| if l.size() > limit { l.withheld() } else { l.clone() })
            .collect();
        match self.send(&fitted).await {
            Err(e) if e.too_large => {
                tracing::warn!(error = %e, "a dead letter was refused as too large; sending the batch without values");
                let bare: Vec<DeadLetter> = fitted.iter().map(DeadLetter::withheld).collect();
                self.send(&bare).await
            }
            other => other,
        }
    }

    async fn send(&self, letters: &[DeadLetter]) -> Result<(), KafkaError> {
        let records = letters
            .iter()
            .map(|l| OutgoingRecord {
                topic: &self.topic,
                key: l.key.as_deref(),
                payload: l.payload.as_deref(),
                headers: l.headers(),
            })
            .collect();
        self.publisher.send_all(records).await
    }
}
