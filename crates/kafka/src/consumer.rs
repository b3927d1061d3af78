use crate::{ConsumedRecord, KafkaError, KafkaSettings};
use futures::FutureExt;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

/// Receives `(topic, partition, lag)` from the client's periodic statistics.
pub type LagObserver = Arc<dyn Fn(&str, i32, i64) + Send + Sync>;

/// The consumer's callbacks: lag from statistics, and the assignment as the group hands it out.
/// The assignment is tracked here rather than asked for with `assignment()`, which blocks on the
/// client's group thread and can wait forever while a rebalance is pending.
pub struct StatsContext {
    lag: Option<LagObserver>,
    assigned: Mutex<Vec<(String, i32)>>,
    /// Next offset per partition of every batch handled so far.
    processed: Arc<Mutex<BTreeMap<(String, i32), i64>>>,
}

impl ClientContext for StatsContext {
    fn stats(&self, stats: Statistics) {
        let Some(observe) = &self.lag else { return };
        for (topic, t) in &stats.topics {
            for (id, p) in &t.partitions {
                // librdkafka reports -1 for partitions it does not fetch, and an internal "-1" id.
                if *id >= 0 && p.consumer_lag >= 0 {
                    observe(topic, *id, p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for StatsContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut assigned = self.assigned.lock().unwrap_or_else(PoisonError::into_inner);
        match rebalance {
            Rebalance::Assign(tpl) => {
                *assigned = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                tracing::info!(partitions = ?*assigned, "partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                // Offsets of revoked partitions are no longer ours to commit.
                let revoked: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                assigned.retain(|p| !revoked.contains(p));
                self.processed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .retain(|p, _| !revoked.contains(p));
                tracing::info!(partitions = ?revoked, "partitions revoked");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance failed"),
        }
    }
}

/// A consumer-group member that hands out batches and commits them only when told to (after
/// their effects are durable).
pub struct KafkaConsumer {
    consumer: StreamConsumer<StatsContext>,
    /// Next offset per partition of every batch handled so far (shared with the context, which
    /// forgets revoked partitions).
    processed: Arc<Mutex<BTreeMap<(String, i32), i64>>>,
    max_record_bytes: usize,
}

/// Records received together, with the offsets to commit once they are handled.
pub struct ConsumedBatch {
    pub records: Vec<ConsumedRecord>,
    /// Trace context of the first record that carried one.
    pub trace_headers: HashMap<String, String>,
    next_offsets: BTreeMap<(String, i32), i64>,
}

impl KafkaConsumer {
    /// A member of `group` reading `topics` (records keep their source topic).
    pub fn new(
        settings: &KafkaSettings,
        group: &str,
        topics: &[&str],
        lag: Option<LagObserver>,
    ) -> Result<Self, KafkaError> {
        let processed = Arc::new(Mutex::new(BTreeMap::new()));
        let consumer: StreamConsumer<StatsContext> = settings
            .client_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", settings.fetch_wait_max_ms.to_string())
            // After an empty or failed fetch librdkafka waits `fetch.error.backoff.ms` (500 ms by
            // default) before fetching that partition again: a latency cliff at low rates.
            .set("fetch.error.backoff.ms", "10")
            .set("statistics.interval.ms", "5000")
            .set("session.timeout.ms", "10000")
            .create_with_context(StatsContext {
                lag,
                assigned: Mutex::default(),
                processed: processed.clone(),
            })?;
        consumer.subscribe(topics)?;
        Ok(Self {
            consumer,
            processed,
            max_record_bytes: settings.max_record_bytes,
        })
    }

    /// Waits for at least one record, then takes whatever else is already buffered, up to `max`.
    pub async fn next_batch(&self, max: usize) -> Result<ConsumedBatch, KafkaError> {
        let mut batch = ConsumedBatch {
            records: Vec::with_capacity(max.min(4096)),
            trace_headers: HashMap::new(),
            next_offsets: BTreeMap::new(),
        };
        let first = self.consumer.recv().await?;
        batch.push(&first, self.max_record_bytes);
        drop(first);
        while batch.records.len() < max {
            match self.consumer.recv().now_or_never() {
                Some(Ok(m)) => batch.push(&m, self.max_record_bytes),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "kafka consumer error while draining a batch");
                    break;
                }
                None => break,
            }
        }
        Ok(batch)
    }

    /// Records the batch as handled and commits its offsets in the background. A commit that is
    /// lost only causes redelivery, which the pipeline absorbs (every effect is idempotent).
    pub fn commit(&self, batch: &ConsumedBatch) -> Result<(), KafkaError> {
        if batch.next_offsets.is_empty() {
            return Ok(());
        }
        let mut book = self.processed.lock().unwrap_or_else(PoisonError::into_inner);
        for (k, v) in &batch.next_offsets {
            book.insert(k.clone(), *v);
        }
        drop(book);
        self.commit_offsets(&batch.next_offsets, CommitMode::Async)
    }

    /// Commits, and waits for, the offsets of every handled batch on partitions still owned
    /// (shutdown).
    pub fn commit_processed(&self) -> Result<(), KafkaError> {
        let owned: std::collections::HashSet<(String, i32)> =
            self.assigned_partitions().into_iter().collect();
        let book = self
            .processed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let owned_book: BTreeMap<(String, i32), i64> =
            book.into_iter().filter(|(k, _)| owned.contains(k)).collect();
        if owned_book.is_empty() {
            return Ok(());
        }
        self.commit_offsets(&owned_book, CommitMode::Sync)
    }

    fn commit_offsets(
        &self,
        offsets: &BTreeMap<(String, i32), i64>,
        mode: CommitMode,
    ) -> Result<(), KafkaError> {
        let mut tpl = TopicPartitionList::with_capacity(offsets.len());
        for ((topic, partition), next) in offsets {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
        }
        Ok(self.consumer.commit(&tpl, mode)?)
    }

    /// Partitions this member owns now.
    pub fn assigned_partitions(&self) -> Vec<(String, i32)> {
        self.consumer
            .context()
            .assigned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn unsubscribe(&self) {
        self.consumer.unsubscribe();
    }
}

impl ConsumedBatch {
    /// Moves the records out; the batch keeps its offsets for the commit.
    pub fn take_records(&mut self) -> Vec<ConsumedRecord> {
        std::mem::take(&mut self.records)
    }

    fn push(&mut self, m: &BorrowedMessage<'_>, max_record_bytes: usize) {
        let record = ConsumedRecord::from_message(m, max_record_bytes);
        // The first record that carries a trace context names the batch's parent span.
        for name in ["traceparent", "tracestate"] {
            if self.trace_headers.contains_key(name) {
                continue;
            }
            if let Some(v) = record.header_values(name).next() {
                self.trace_headers.insert(name.to_owned(), v.to_owned());
            }
        }
        self.next_offsets
            .insert((record.position.topic.clone(), m.partition()), m.offset() + 1);
        self.records.push(record);
    }
}
