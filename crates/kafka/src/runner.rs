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
//!
//! With [`ConsumerRunner::with_key_concurrency`] above 1, a batch is split by record key: the
//! records of one key are handled one after another in offset order, up to that many keys at
//! once, and the offsets are still committed only after every key's records are done. Within a
//! key, a record that a later record of the same batch [supersedes](RecordHandler::supersedes) is
//! not handled: the later one's effect covers it, and both are committed together (a crash before
//! the commit redelivers both).

use crate::{ConsumedRecord, DeadLetter, DeadLetterPublisher, KafkaConsumer};
use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use std::collections::HashMap;
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

    /// Whether handling `later` (the same key, later in the same batch) makes handling `earlier`
    /// needless, so `earlier` can be skipped (coalesced into `later`). Consulted only with a key
    /// concurrency above 1. By default no record supersedes another.
    fn supersedes(&self, _later: &ConsumedRecord, _earlier: &ConsumedRecord) -> bool {
        false
    }

    /// Called for each record skipped because a later one supersedes it (for metrics and logs).
    fn coalesced(&self, _record: &ConsumedRecord) {}
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
    /// How many keys of one batch are handled at once (1: the batch in order, one record at a time).
    key_concurrency: usize,
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
            key_concurrency: 1,
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

    /// Handles up to `n` keys of a batch at once (records of one key stay in order, and are
    /// coalesced where the handler says a later one supersedes an earlier one). For handlers
    /// whose effects for distinct keys are independent of each other.
    pub fn with_key_concurrency(mut self, n: usize) -> Self {
        self.key_concurrency = n.max(1);
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
            let complete = if self.key_concurrency > 1 {
                self.handle_by_key(handler, &batch.records, stop).await
            } else {
                self.handle_in_order(handler, &batch.records, stop).await
            };
            if !complete {
                break;
            }
            if let Err(e) = self.consumer.commit(&batch) {
                tracing::warn!(error = %e, "offset commit failed; records will be redelivered");
            }
        }
        self.consumer.close(self.stop_timeout).await;
    }

    /// `false` when stopped before every record was handled (the rest is left to redelivery).
    async fn handle_in_order<H: RecordHandler>(
        &self,
        handler: &H,
        records: &[ConsumedRecord],
        stop: &CancellationToken,
    ) -> bool {
        for record in records {
            if !self.handle_one(handler, record, stop).await {
                return false;
            }
        }
        true
    }

    /// One key's records in order, up to `key_concurrency` keys at once; `false` when stopped
    /// before every record was handled.
    async fn handle_by_key<H: RecordHandler>(
        &self,
        handler: &H,
        records: &[ConsumedRecord],
        stop: &CancellationToken,
    ) -> bool {
        // Indices, not references: the stream's closure must not borrow a lifetime of its own.
        let groups = by_key(records);
        let handled: Vec<bool> = futures::stream::iter(groups)
            .map(|group: Vec<usize>| async move {
                for (i, &at) in group.iter().enumerate() {
                    let record = &records[at];
                    if group[i + 1..]
                        .iter()
                        .any(|&later| handler.supersedes(&records[later], record))
                    {
                        handler.coalesced(record);
                        continue;
                    }
                    if !self.handle_one(handler, record, stop).await {
                        return false;
                    }
                }
                true
            })
            .buffer_unordered(self.key_concurrency)
            .collect()
            .await;
        handled.into_iter().all(|done| done)
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

/// The indices of the records grouped by key, each group in batch order, the groups in order of
/// first appearance. Records without a key form one group of their own.
fn by_key(records: &[ConsumedRecord]) -> Vec<Vec<usize>> {
    let mut index: HashMap<Option<&[u8]>, usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (at, record) in records.iter().enumerate() {
        let slot = *index.entry(record.key.as_deref()).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[slot].push(at);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RecordPosition;
    use std::sync::PoisonError;

    fn record(offset: i64, key: Option<&str>) -> ConsumedRecord {
        ConsumedRecord {
            position: RecordPosition {
                topic: "t".into(),
                partition: 0,
                offset,
            },
            key: key.map(|k| k.as_bytes().to_vec()),
            headers: vec![],
            payload: None,
            timestamp: None,
            oversized: None,
        }
    }

    /// `key|what` records.
    fn batch(values: &[&str]) -> Vec<ConsumedRecord> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| ConsumedRecord {
                payload: Some(v.as_bytes().to_vec()),
                ..record(i as i64, v.split('|').next())
            })
            .collect()
    }

    /// Records what it handles; `a|wait` waits until `b|go` was handled (so only a runner that
    /// works on two keys at once gets past it); a `…|card` record is superseded by a later equal one.
    #[derive(Default)]
    struct ByKey {
        handled: std::sync::Mutex<Vec<String>>,
        coalesced: std::sync::Mutex<Vec<i64>>,
        go: tokio::sync::Notify,
    }

    #[async_trait]
    impl RecordHandler for ByKey {
        type Transient = String;

        async fn handle(&self, record: &ConsumedRecord) -> Result<Disposition, String> {
            let value = String::from_utf8_lossy(record.value()).into_owned();
            if value == "a|wait" {
                tokio::time::timeout(Duration::from_secs(5), self.go.notified())
                    .await
                    .map_err(|_| "b was never handled while a waited".to_owned())?;
            }
            if value == "b|go" {
                self.go.notify_one();
            }
            self.handled
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(value);
            Ok(Disposition::Done)
        }

        fn supersedes(&self, later: &ConsumedRecord, earlier: &ConsumedRecord) -> bool {
            earlier.value().ends_with(b"|card") && later.value() == earlier.value()
        }

        fn coalesced(&self, record: &ConsumedRecord) {
            self.coalesced
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(record.position.offset);
        }
    }

    fn runner(key_concurrency: usize) -> ConsumerRunner {
        // Never connected: the keyed pass below only hands records to the handler.
        let settings = crate::KafkaSettings {
            brokers: "127.0.0.1:1".into(),
            ..crate::KafkaSettings::default()
        };
        let consumer = KafkaConsumer::new(&settings, "g", &["t"], None).expect("a consumer");
        let publisher = crate::KafkaPublisher::new(&settings).expect("a producer");
        ConsumerRunner::new(consumer, DeadLetterPublisher::new(publisher, "dlq"), 100)
            .with_key_concurrency(key_concurrency)
            .with_backoff(RetryBackoff {
                min: Duration::from_secs(60),
                max: Duration::from_secs(60),
            })
    }

    #[tokio::test]
    async fn keys_of_a_batch_run_at_once_in_order_per_key_and_superseded_records_are_coalesced() {
        let records = batch(&["a|wait", "b|go", "a|card", "b|x", "a|card", "a|last"]);
        let handler = ByKey::default();
        let stop = CancellationToken::new();
        let done = tokio::time::timeout(
            Duration::from_secs(20),
            runner(4).handle_by_key(&handler, &records, &stop),
        )
        .await
        .expect("a|wait got past: b ran meanwhile");
        assert!(done, "every record handled");
        let handled = handler
            .handled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let of =
            |key: &str| -> Vec<String> { handled.iter().filter(|v| v.starts_with(key)).cloned().collect() };
        assert_eq!(
            of("a|"),
            ["a|wait", "a|card", "a|last"],
            "key a in order, one card"
        );
        assert_eq!(of("b|"), ["b|go", "b|x"]);
        assert_eq!(
            *handler.coalesced.lock().unwrap_or_else(PoisonError::into_inner),
            [2]
        );
    }

    #[tokio::test]
    async fn a_superseded_record_leaves_the_rest_handled_and_a_stop_leaves_the_batch_incomplete() {
        let records = batch(&["a|card", "a|card", "b|x"]);
        let handler = ByKey::default();
        let stop = CancellationToken::new();
        assert!(runner(2).handle_by_key(&handler, &records, &stop).await);
        assert_eq!(
            handler
                .handled
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len(),
            2
        );
        // A stop while a record is being retried leaves the batch incomplete (uncommitted).
        let records = batch(&["a|wait"]);
        stop.cancel();
        assert!(!runner(2).handle_by_key(&handler, &records, &stop).await);
    }

    #[test]
    fn records_group_by_key_in_batch_order() {
        let records = [
            record(0, Some("a")),
            record(1, Some("b")),
            record(2, None),
            record(3, Some("a")),
            record(4, None),
        ];
        let offsets: Vec<Vec<i64>> = by_key(&records)
            .iter()
            .map(|g| g.iter().map(|&at| records[at].position.offset).collect())
            .collect();
        assert_eq!(offsets, vec![vec![0, 3], vec![1], vec![2, 4]]);
    }
}
