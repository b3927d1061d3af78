use crate::{ConsumedRecord, KafkaError, KafkaSettings};
use futures::FutureExt;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

mod rebalance;

pub use rebalance::LagObserver;
use rebalance::{InFlight, InFlightGuard, Offsets, StatsContext};

/// A consumer-group member that hands out batches and commits them only when told to (after
/// their effects are durable).
pub struct KafkaConsumer {
    consumer: Arc<StreamConsumer<StatsContext>>,
    /// Next offset per partition of every batch handled so far (shared with the context, which
    /// forgets revoked partitions).
    processed: Arc<Mutex<BTreeMap<(String, i32), i64>>>,
    max_record_bytes: usize,
    /// Next offset per partition of every record handed out.
    handed: Mutex<BTreeMap<(String, i32), i64>>,
    in_flight: Arc<InFlight>,
    watchdog: Arc<Watchdog>,
}

/// Rejoins the group when this member has waited `rejoin_after` for records while the group's
/// partitions hold unconsumed ones: an assignment left empty (or fetching nothing) after another
/// member died, which the local broker does not repair by itself (ADR 0001).
///
/// The wait is tracked across calls (callers may drop a `next_batch` and call again, as
/// crm-sync's loop does on every retry tick), and the check runs as a task of its own, so a
/// dropped wait never cancels it.
struct Watchdog {
    rejoin_after: Option<Duration>,
    /// A client of the same group that never joins it: asks for metadata, watermarks and the
    /// group's committed offsets without disturbing the member.
    probe: Arc<BaseConsumer>,
    member: Arc<StreamConsumer<StatsContext>>,
    topics: Vec<String>,
    state: Mutex<WatchState>,
    checking: std::sync::atomic::AtomicBool,
    rejoins: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct WatchState {
    /// Since when the member has been waiting for a record (cleared when one arrives).
    waiting_since: Option<Instant>,
    last_check: Option<Instant>,
    /// The group's committed offsets at the last check that found records waiting: a rejoin
    /// needs two checks a window apart with records waiting and no commit in between (so a
    /// member does not rejoin while the others are merely busy).
    last_committed: Option<Offsets>,
}

impl Watchdog {
    /// Starts a check when the member has waited a window and none ran for a window.
    fn tick(self: &Arc<Self>, window: Duration, handed: Offsets) {
        let due = {
            let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let since = *st.waiting_since.get_or_insert_with(Instant::now);
            let due = since.elapsed() >= window && st.last_check.is_none_or(|t| t.elapsed() >= window);
            if due {
                st.last_check = Some(Instant::now());
            }
            due
        };
        if !due || self.checking.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            this.check(handed).await;
            this.checking.store(false, std::sync::atomic::Ordering::SeqCst);
        });
    }

    fn record_arrived(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .waiting_since = None;
    }

    async fn check(&self, handed: Offsets) {
        let probe = self.probe.clone();
        let topics = self.topics.clone();
        let found = tokio::task::spawn_blocking(move || unconsumed(&probe, &topics, &handed)).await;
        let (waiting, committed) = match found {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "stall check failed");
                return;
            }
            Err(_) => return,
        };
        let waited = {
            let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let stuck = waiting > 0 && st.last_committed.as_ref() == Some(&committed);
            st.last_committed = (waiting > 0 && !stuck).then_some(committed);
            if !stuck {
                return;
            }
            st.waiting_since.map(|t| t.elapsed()).unwrap_or_default()
        };
        tracing::warn!(
            waited_s = waited.as_secs(),
            unconsumed = waiting,
            "no records while the group's partitions hold unconsumed ones; rejoining the group"
        );
        self.rejoins.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.member.unsubscribe();
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        if let Err(e) = self.member.subscribe(&topics) {
            tracing::error!(error = %e, "resubscribing failed");
        }
    }
}

/// Records received together, with the offsets to commit once they are handled.
pub struct ConsumedBatch {
    pub records: Vec<ConsumedRecord>,
    /// Trace context of the first record that carried one.
    pub trace_headers: HashMap<String, String>,
    next_offsets: BTreeMap<(String, i32), i64>,
    /// Keeps the batch's partitions in flight until the batch is dropped.
    _in_flight: Option<InFlightGuard>,
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
        let in_flight = Arc::new(InFlight::default());
        let mut config = settings.client_config();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", settings.fetch_wait_max_ms.to_string())
            // After an empty or failed fetch librdkafka waits `fetch.error.backoff.ms` (500 ms by
            // default) before fetching that partition again: a latency cliff at low rates.
            .set("fetch.error.backoff.ms", "10")
            .set("statistics.interval.ms", "5000")
            .set("session.timeout.ms", settings.session_timeout_ms.to_string());
        // librdkafka heartbeats every 3 s; a session shorter than the default 10 s needs them
        // more often (a third of it), or a live member would be taken for dead.
        if settings.session_timeout_ms < 10_000 {
            config.set(
                "heartbeat.interval.ms",
                (settings.session_timeout_ms / 3).max(100).to_string(),
            );
        }
        if let Some(id) = &settings.group_instance_id {
            config.set("group.instance.id", id);
        }
        let consumer: StreamConsumer<StatsContext> = config.create_with_context(StatsContext {
            lag,
            assigned: Mutex::default(),
            processed: processed.clone(),
            in_flight: in_flight.clone(),
            drain_timeout: Duration::from_millis(settings.drain_timeout_ms),
            cooperative: settings
                .properties
                .get("partition.assignment.strategy")
                .is_some_and(|s| s.contains("cooperative")),
        })?;
        consumer.subscribe(topics)?;
        let consumer = Arc::new(consumer);
        let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        Ok(Self {
            consumer: consumer.clone(),
            processed,
            max_record_bytes: settings.max_record_bytes,
            handed: Mutex::default(),
            in_flight,
            watchdog: Arc::new(Watchdog {
                member: consumer,
                topics,
                probe: Arc::new(
                    settings
                        .client_config()
                        .set("group.id", group)
                        .set("enable.auto.commit", "false")
                        .create()?,
                ),
                rejoin_after: (settings.rejoin_after_ms > 0)
                    .then(|| Duration::from_millis(settings.rejoin_after_ms)),
                state: Mutex::default(),
                checking: std::sync::atomic::AtomicBool::new(false),
                rejoins: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    /// How many times the watchdog rejoined the group.
    pub fn rejoins(&self) -> u64 {
        self.watchdog.rejoins.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits for the first record of a batch; while waiting, checks every half window whether
    /// the watchdog is due.
    async fn first_record(&self) -> Result<BorrowedMessage<'_>, KafkaError> {
        let Some(window) = self.watchdog.rejoin_after else {
            return Ok(self.consumer.recv().await?);
        };
        loop {
            let handed = self.handed.lock().unwrap_or_else(PoisonError::into_inner).clone();
            self.watchdog.tick(window, handed);
            tokio::select! {
                m = self.consumer.recv() => {
                    self.watchdog.record_arrived();
                    return Ok(m?);
                }
                () = tokio::time::sleep(window / 2) => {}
            }
        }
    }

    /// Waits for at least one record, then takes whatever else is already buffered, up to `max`.
    pub async fn next_batch(&self, max: usize) -> Result<ConsumedBatch, KafkaError> {
        let mut batch = ConsumedBatch {
            records: Vec::with_capacity(max.min(4096)),
            trace_headers: HashMap::new(),
            next_offsets: BTreeMap::new(),
            _in_flight: None,
        };
        let first = self.first_record().await?;
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
        let partitions: Vec<(String, i32)> = batch.next_offsets.keys().cloned().collect();
        self.in_flight.enter(partitions.iter().cloned());
        batch._in_flight = Some(InFlightGuard {
            tracker: self.in_flight.clone(),
            partitions,
        });
        let mut handed = self.handed.lock().unwrap_or_else(PoisonError::into_inner);
        for (k, v) in &batch.next_offsets {
            handed.insert(k.clone(), *v);
        }
        Ok(batch)
    }

    /// Records the batch as handled and commits its offsets in the background. A commit that is
    /// lost only causes redelivery, which the pipeline absorbs (every effect is idempotent).
    ///
    /// Only partitions still owned are committed: a partition revoked meanwhile belongs to its
    /// new owner, whose commits must not be moved back.
    pub fn commit(&self, batch: &ConsumedBatch) -> Result<(), KafkaError> {
        let owned = self.assigned_partitions();
        let offsets: BTreeMap<(String, i32), i64> = batch
            .next_offsets
            .iter()
            .filter(|(k, _)| owned.contains(k))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        if offsets.len() < batch.next_offsets.len() {
            tracing::warn!(
                "a batch finished after its partitions were revoked; their offsets are left to the new owner"
            );
        }
        if offsets.is_empty() {
            return Ok(());
        }
        let mut book = self.processed.lock().unwrap_or_else(PoisonError::into_inner);
        for (k, v) in &offsets {
            book.insert(k.clone(), *v);
        }
        drop(book);
        self.commit_offsets(&offsets, CommitMode::Async)
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

    /// Commits the offsets of every handled batch and leaves the group (shutdown), on a thread
    /// of its own: a broker that does not answer holds up neither the caller's runtime nor the
    /// caller for more than `timeout`. `false` when the time ran out; the commit and the close
    /// then go on in the background, and what they do not commit is delivered again to the
    /// partitions' next owner.
    pub async fn close(self, timeout: Duration) -> bool {
        let (done, finished) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("kafka-consumer-close".into())
            .spawn(move || {
                let committed = self.commit_processed();
                drop(self);
                let _ = done.send(committed);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the consumer's closing thread");
            return false;
        }
        match tokio::time::timeout(timeout, finished).await {
            Ok(Ok(Ok(()))) => true,
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "final offset commit failed");
                true
            }
            Ok(Err(_)) => false,
            Err(_) => {
                tracing::warn!(
                    timeout_ms = timeout.as_millis() as u64,
                    "the broker did not confirm the final commit and the group leave in time; going on without"
                );
                false
            }
        }
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

/// Records of `topics` that no member has consumed: per partition, the high watermark minus the
/// group's committed offset (or what this member has already handed out, when further on); and
/// the committed offsets themselves.
fn unconsumed(
    consumer: &BaseConsumer,
    topics: &[String],
    handed: &BTreeMap<(String, i32), i64>,
) -> Result<(i64, Offsets), KafkaError> {
    let timeout = Duration::from_secs(5);
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
        for t in metadata.topics().iter().filter(|t| t.name() == topic) {
            for p in t.partitions() {
                tpl.add_partition(topic, p.id());
            }
        }
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    let mut waiting = 0;
    let mut book = BTreeMap::new();
    for e in committed.elements() {
        let (low, high) = consumer.fetch_watermarks(e.topic(), e.partition(), timeout)?;
        let from = match e.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        book.insert((e.topic().to_owned(), e.partition()), from);
        let from = handed
            .get(&(e.topic().to_owned(), e.partition()))
            .map_or(from, |h| from.max(*h));
        waiting += (high - from).max(0);
    }
    Ok((waiting, book))
}
