//! Kafka adapters, domain-neutral: a consumed record, a consumer-group member that commits only
//! when told to, the at-least-once consumer runner, an idempotent publisher, and the dead-letter
//! publisher with the standard headers, and the outbox relay. Only standard Kafka APIs are used (idempotent producer,
//! consumer groups, manual commits), so the same code runs against Apache Kafka, Redpanda, MSK
//! or the local broker. Dead letters are read back, replayed to an allow-list of topics
//! ([`replay_letters`]) and shown masked ([`mask_payload`]) by the same code in every service,
//! in the same wire shapes ([`DeadLetterList`], [`DeadLetterDetail`], [`DeadLetterReplayRequest`],
//! [`ReplaySummary`]).

mod config;
mod consumer;
mod dead_letter;
mod dlq;
mod letters;
mod mask;
mod producer;
mod record;
mod relay;
mod replay;
mod runner;

pub use config::{validate_topics, KafkaSettings, DEFAULT_MAX_RECORD_BYTES, LETTER_HEADROOM};
pub use consumer::{ConsumedBatch, KafkaConsumer, LagObserver};
pub use dead_letter::{
    DeadLetter, DeadLetterPublisher, HEADER_ATTEMPTS, HEADER_EVENT_ID, HEADER_REASON, HEADER_REASON_CODE,
    HEADER_REPLAY_COUNT, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION, HEADER_SOURCE_TOPIC,
    HEADER_VALUE_WITHHELD, MAX_REASON_BYTES,
};
pub use dlq::{read_dead_letters, scan_dead_letters, DeadLetterView, ReplayFilter};
pub use letters::{
    list_limit, select_letters, shown_payload, DeadLetterDetail, DeadLetterList, DeadLetterReplayRequest,
    DeadLetterSummary, LetterPosition, ReplaySelection, ReplaySummary, ReplayedLetter, SelectionError,
    DEFAULT_LISTED_LETTERS, MAX_LISTED_LETTERS, MAX_REPLAYED_LETTERS,
};
pub use mask::{mask_payload, mask_value};
pub use producer::{KafkaPublisher, OutgoingRecord};
pub use record::{ConsumedRecord, RecordPosition, MAX_KEPT_KEY_BYTES, REASON_RECORD_TOO_LARGE};
pub use relay::{Drained, Lease, Outbox, OutboxRelay, RelayObserver};
pub use replay::{
    replay_headers, replay_letters, DeadLetterSource, PlannedReplay, ReplayOutcome, ReplayPolicy,
    ReplayRequest, HEADER_REPLAYED_BY, HEADER_REPLAYED_FROM, MAX_PAYLOAD_EVENT_ID_BYTES,
    REFUSED_NO_SOURCE_TOPIC, REPLAY_CHUNK,
};
pub use runner::{ConsumerRunner, Disposition, RecordHandler, Rejected, RetryBackoff, DEFAULT_STOP_TIMEOUT};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

#[derive(Debug, thiserror::Error)]
#[error("kafka: {message}")]
pub struct KafkaError {
    pub message: String,
    /// The broker or the client refused a record as too large: retrying the same bytes cannot
    /// help.
    pub too_large: bool,
    /// The broker refused the record itself as invalid (`INVALID_RECORD`, a timestamp out of
    /// range): retrying the same record cannot help either.
    pub invalid: bool,
}

/// Reason code of a record the broker refused as too large.
pub const REASON_TOO_LARGE: &str = REASON_RECORD_TOO_LARGE;
/// Reason code of a record the broker refused as invalid.
pub const REASON_INVALID_RECORD: &str = "record_invalid";

impl KafkaError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            too_large: false,
            invalid: false,
        }
    }

    /// The reason code when sending the same record again can never succeed
    /// ([`REASON_TOO_LARGE`], [`REASON_INVALID_RECORD`]); `None` for a cause worth retrying
    /// (the broker away, a timeout, a missing topic, refused credentials).
    pub fn permanent(&self) -> Option<&'static str> {
        if self.too_large {
            Some(REASON_TOO_LARGE)
        } else if self.invalid {
            Some(REASON_INVALID_RECORD)
        } else {
            None
        }
    }
}

impl From<rdkafka::error::KafkaError> for KafkaError {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        KafkaError::new(e.to_string())
    }
}

/// Creates the topics that do not exist yet (for local stacks and tests; production topics are
/// provisioned by the platform).
pub async fn ensure_topics(
    settings: &KafkaSettings,
    topics: &[&str],
    partitions: i32,
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = settings.client_config().create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = admin.create_topics(&new, &AdminOptions::new()).await?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(KafkaError::new(format!("creating topic {topic}: {code}"))),
        }
    }
    Ok(())
}
