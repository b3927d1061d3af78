//! The consumer's callbacks into librdkafka: lag from statistics, the assignment as the group
//! hands it out, and a revocation that waits for the revoked partitions' batches in flight and
//! commits what is done before the partitions go.

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// An offset per `(topic, partition)`.
pub(super) type Offsets = BTreeMap<(String, i32), i64>;

/// Receives `(topic, partition, lag)` from the client's periodic statistics.
pub type LagObserver = Arc<dyn Fn(&str, i32, i64) + Send + Sync>;

/// The consumer's callbacks: lag from statistics, and the assignment as the group hands it out.
/// The assignment is tracked here rather than asked for with `assignment()`, which blocks on the
/// client's group thread and can wait forever while a rebalance is pending.
pub struct StatsContext {
    pub(super) lag: Option<LagObserver>,
    pub(super) assigned: Mutex<Vec<(String, i32)>>,
    /// Assignments come as increments (a cooperative assignment strategy is configured).
    pub(super) cooperative: bool,
    /// Next offset per partition of every batch handled so far.
    pub(super) processed: Arc<Mutex<BTreeMap<(String, i32), i64>>>,
    pub(super) in_flight: Arc<InFlight>,
    /// How long a revocation waits for the batches of revoked partitions to be done.
    pub(super) drain_timeout: Duration,
}

/// Batches handed out and not yet done (dropped), per partition: a revocation waits for those of
/// the partitions it takes away, so the old owner's effects are durable and its offsets committed
/// before the new owner starts on them.
#[derive(Default)]
pub(crate) struct InFlight {
    batches: Mutex<HashMap<(String, i32), usize>>,
    done: Condvar,
}

impl InFlight {
    pub(super) fn enter(&self, partitions: impl Iterator<Item = (String, i32)>) {
        let mut b = self.batches.lock().unwrap_or_else(PoisonError::into_inner);
        for p in partitions {
            *b.entry(p).or_default() += 1;
        }
    }

    fn leave(&self, partitions: impl Iterator<Item = (String, i32)>) {
        let mut b = self.batches.lock().unwrap_or_else(PoisonError::into_inner);
        for p in partitions {
            if let Some(n) = b.get_mut(&p) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    b.remove(&p);
                }
            }
        }
        self.done.notify_all();
    }

    /// Waits until no batch of `partitions` is in flight, or `timeout`; `false` on timeout.
    pub(super) fn drain(&self, partitions: &[(String, i32)], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut b = self.batches.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if !partitions.iter().any(|p| b.contains_key(p)) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            b = self
                .done
                .wait_timeout(b, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Marks a batch's partitions in flight until the batch is dropped.
pub(super) struct InFlightGuard {
    pub(super) tracker: Arc<InFlight>,
    pub(super) partitions: Vec<(String, i32)>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.tracker.leave(self.partitions.drain(..));
    }
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
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let revoked: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        let started = Instant::now();
        if self.in_flight.drain(&revoked, self.drain_timeout) {
            tracing::info!(partitions = ?revoked, waited_ms = started.elapsed().as_millis() as u64, "revocation: in-flight batches drained");
        } else {
            tracing::warn!(partitions = ?revoked, "revocation: in-flight batches not done in time; the new owner will redo them");
        }
        // Commit what is done, and wait for it, while the partitions are still ours: the new
        // owner starts right after.
        let book = self
            .processed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in book.iter().filter(|(k, _)| revoked.contains(k)) {
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next));
        }
        if tpl.count() > 0 {
            if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                tracing::warn!(error = %e, "revocation: committing the done offsets failed; the new owner may redo them");
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut assigned = self.assigned.lock().unwrap_or_else(PoisonError::into_inner);
        match rebalance {
            Rebalance::Assign(tpl) => {
                let added = tpl
                    .elements()
                    .into_iter()
                    .map(|e| (e.topic().to_owned(), e.partition()));
                // An eager assignment is the whole set; a cooperative one
                // (`partition.assignment.strategy = "cooperative-sticky"`) only what it adds.
                if self.cooperative {
                    for p in added {
                        if !assigned.contains(&p) {
                            assigned.push(p);
                        }
                    }
                } else {
                    *assigned = added.collect();
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> (String, i32) {
        ("t".to_owned(), n)
    }

    #[test]
    fn a_drain_waits_for_the_batches_of_the_revoked_partitions_only() {
        let tracker = Arc::new(InFlight::default());
        tracker.enter([p(0), p(1)].into_iter());
        assert!(tracker.drain(&[p(2)], Duration::ZERO), "nothing of p2 in flight");
        assert!(!tracker.drain(&[p(1)], Duration::from_millis(20)), "p1 in flight");
        let t = tracker.clone();
        let done = std::thread::spawn(move || t.drain(&[p(0)], Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(50));
        drop(InFlightGuard {
            tracker: tracker.clone(),
            partitions: vec![p(0), p(1)],
        });
        assert!(done.join().unwrap(), "released when the batch is dropped");
        assert!(tracker.drain(&[p(0), p(1)], Duration::ZERO));
    }
}
