//! The at-least-once consumer runner every per-record consumer uses: take a batch, hand each
//! record to the handler, dead-letter what can never be handled, and commit the batch's offsets
//! only after every record's effect is durable.
//!
//! Effect order per batch, and what a crash between two steps does:
//! 1. the handler's effect for record *n* commits (its own store): a crash now redelivers the
//!    batch from its first record; handlers are idempotent by record id, so nothing doubles;
//! 2. a dead letter for record *n* is acknowledged by the broker: a crash now publishes it again
//!    on redelivery (dead-letter readers de-duplicate by source position);
//! 3. after the last record, the offsets are committed: only then is the batch done.
//!
//! A transient error (store or broker away) retries the same record with capped, jittered
//! exponential backoff until it succeeds or the runner is stopped; a stop leaves the rest of the
//! batch uncommitted, for redelivery.

use crate::{ConsumedRecord, DeadLetter, DeadLetterPublisher, KafkaConsumer};
use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why a record can never be handled, and what its dead letter carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub reason_code: String,
    /// For people; never a copy of the input.
    pub reason: String,
    /// The letter's value: `None` copies the record's value (none for a tombstone or an oversized
    /// record); `Some` replaces it (a masked copy, or a note that it is withheld because it
    /// carries secrets).
    pub payload: Option<Vec<u8>>,
}

/// What became of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Its effect is durable, or it needed none.
    Done,
    /// It can never be handled: dead-letter it and go on.
    DeadLetter(Rejected),
}

/// One consumer's use case. `handle` must be idempotent: a record may come again after a crash.
#[async_trait]
pub trait RecordHandler: Send + Sync {
    /// A cause worth retrying (the store or a dependency is away).
    type Transient: std::fmt::Display + Send;

    /// Handles one record. `Ok` means its effect is durable (or it was set aside); `Err` means
    /// nothing was changed and the same record is tried again.
    async fn handle(&self, record: &ConsumedRecord) -> Result<Disposition, Self::Transient>;
}

/// Backoff between attempts at one record or one dead letter.
#[derive(Debug, Clone, Copy)]
pub struct RetryBackoff {
    pub min: Duration,
    pub max: Duration,
}

impl Default for RetryBackoff {
    fn default() -> Self {
        Self {
            min: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl RetryBackoff {
    fn builder(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .with_jitter()
            .without_max_times()
    }
}

pub struct ConsumerRunner {
    consumer: KafkaConsumer,
    dead_letters: DeadLetterPublisher,
    max_batch: usize,
    backoff: RetryBackoff,
    /// Pause after a failed receive (the broker is away), so the loop does not spin.
    receive_backoff: Duration,
    /// After a stop: how long a dead letter in flight, and then the final commit and the group
    /// leave, may take before the runner returns without them.
    stop_timeout: Duration,
}

/// The default [`ConsumerRunner::with_stop_timeout`].
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(3);

impl ConsumerRunner {
    pub fn new(consumer: KafkaConsumer, dead_letters: DeadLetterPublisher, max_batch: usize) -> Self {
        Self {
            consumer,
            dead_letters,
            max_batch: max_batch.max(1),
            backoff: RetryBackoff::default(),
            receive_backoff: Duration::from_millis(500),
            stop_timeout: DEFAULT_STOP_TIMEOUT,
        }
    }

    /// Bounds what a stop waits for: a dead letter being published, then the final offset
    /// commit and the group leave (each at most `timeout`), so a broker that stopped answering
    /// cannot hold up a shutdown.
    pub fn with_stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    pub fn with_backoff(mut self, backoff: RetryBackoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Runs until `stop`; then commits what was handled, leaves the group and returns, waiting
    /// for the broker at most the stop timeout.
    pub async fn run<H: RecordHandler>(self, handler: &H, stop: &CancellationToken) {
        while !stop.is_cancelled() {
            let batch = tokio::select! {
                b = self.consumer.next_batch(self.max_batch) => b,
                () = stop.cancelled() => break,
            };
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "kafka receive failed");
                    tokio::select! {
                        () = tokio::time::sleep(self.receive_backoff) => {}
                        () = stop.cancelled() => {}
                    }
                    continue;
                }
            };
            let mut complete = true;
            for record in &batch.records {
                if !self.handle_one(handler, record, stop).await {
                    complete = false;
                    break;
                }
            }
            if !complete {
                break;
            }
            if let Err(e) = self.consumer.commit(&batch) {
                tracing::warn!(error = %e, "offset commit failed; records will be redelivered");
            }
        }
        self.consumer.close(self.stop_timeout).await;
    }

    /// `false` when stopped before the record was handled (it is left to redelivery).
    async fn handle_one<H: RecordHandler>(
        &self,
        handler: &H,
        record: &ConsumedRecord,
        stop: &CancellationToken,
    ) -> bool {
        if let Some(size) = record.oversized {
            let rejected = Rejected {
                reason_code: crate::REASON_RECORD_TOO_LARGE.to_owned(),
                reason: format!("the record is {size} bytes, more than kafka.max_record_bytes"),
                payload: None,
            };
            return self.set_aside(record, rejected, stop).await;
        }
        let attempt = || handler.handle(record);
        let handled = attempt
            .retry(self.backoff.builder())
            .when(|_| !stop.is_cancelled())
            .notify(|e, after| {
                tracing::warn!(error = %e, retry_in = ?after, topic = %record.position.topic, "record not handled; retrying")
            })
            .await;
        let rejected = match handled {
            Ok(Disposition::Done) => return true,
            Ok(Disposition::DeadLetter(rejected)) => rejected,
            Err(_) => return false,
        };
        self.set_aside(record, rejected, stop).await
    }

    /// Publishes the record's dead letter; `false` when stopped first.
    async fn set_aside(&self, record: &ConsumedRecord, rejected: Rejected, stop: &CancellationToken) -> bool {
        tracing::warn!(
            topic = %record.position.topic,
            partition = record.position.partition,
            offset = record.position.offset,
            reason_code = %rejected.reason_code,
            reason = %rejected.reason,
            "dead-lettering a record"
        );
        let letter = DeadLetter {
            source: Some(record.position.clone()),
            key: record.key.clone(),
            payload: rejected.payload.or_else(|| record.payload.clone()),
            withheld_bytes: record.oversized,
            reason_code: rejected.reason_code,
            reason: rejected.reason,
            attempts: 1,
            replay_count: record
                .header(crate::HEADER_REPLAY_COUNT)
                .and_then(|v| v.parse().ok()),
            event_id: None,
        };
        let letters = [letter];
        let publish = || self.dead_letters.publish(&letters);
        let published = publish
            .retry(self.backoff.builder())
            .when(|_| !stop.is_cancelled())
            .notify(|e, after| tracing::warn!(error = %e, retry_in = ?after, "dead letter not published; retrying"));
        let stopped = async {
            stop.cancelled().await;
            tokio::time::sleep(self.stop_timeout).await;
        };
        tokio::select! {
            done = published => done.is_ok(),
            () = stopped => false,
        }
    }
}
