//! In-memory adapters of every port: for domain tests, contract suites and local experiments.

use crate::event::{EventId, ShipmentId};
use crate::mapping::{CrmShipmentState, CrmStatusWrite};
use crate::ports::*;
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use time::OffsetDateTime;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A CRM that stores one status per shipment and fails on demand.
#[derive(Default)]
pub struct MemoryCrm {
    inner: Mutex<CrmInner>,
}

#[derive(Default)]
struct CrmInner {
    states: HashMap<ShipmentId, CrmShipmentState>,
    writes: Vec<CrmStatusWrite>,
    /// Errors returned by the next calls, whole-call, in order.
    call_failures: VecDeque<CrmError>,
    /// Per-shipment errors returned for that shipment's next writes.
    item_failures: HashMap<ShipmentId, VecDeque<CrmError>>,
    /// Shipments whose record reads back unreadable (a broken record in the CRM).
    broken: HashMap<ShipmentId, CrmError>,
    calls: u64,
}

impl MemoryCrm {
    pub fn fail_next_calls(&self, errors: impl IntoIterator<Item = CrmError>) {
        lock(&self.inner).call_failures.extend(errors);
    }

    pub fn fail_writes_for(&self, shipment: &ShipmentId, errors: impl IntoIterator<Item = CrmError>) {
        lock(&self.inner)
            .item_failures
            .entry(shipment.clone())
            .or_default()
            .extend(errors);
    }

    /// The shipment's record reads back unreadable, with `error`, until [`Self::repair`].
    pub fn break_record(&self, shipment: &ShipmentId, error: CrmError) {
        lock(&self.inner).broken.insert(shipment.clone(), error);
    }

    pub fn repair(&self, shipment: &ShipmentId) {
        lock(&self.inner).broken.remove(shipment);
    }

    /// Sets what the CRM shows, as if someone else wrote it.
    pub fn set_state(&self, shipment: &ShipmentId, state: CrmShipmentState) {
        lock(&self.inner).states.insert(shipment.clone(), state);
    }

    pub fn state(&self, shipment: &ShipmentId) -> Option<CrmShipmentState> {
        lock(&self.inner).states.get(shipment).cloned()
    }

    pub fn writes(&self) -> Vec<CrmStatusWrite> {
        lock(&self.inner).writes.clone()
    }

    pub fn calls(&self) -> u64 {
        lock(&self.inner).calls
    }

    fn begin_call(&self) -> Result<MutexGuard<'_, CrmInner>, CrmError> {
        let mut inner = lock(&self.inner);
        inner.calls += 1;
        match inner.call_failures.pop_front() {
            Some(e) => Err(e),
            None => Ok(inner),
        }
    }
}

#[async_trait]
impl CrmGateway for MemoryCrm {
    async fn read_states(&self, shipments: &[ShipmentId]) -> Result<ShipmentStates, CrmError> {
        let inner = self.begin_call()?;
        let mut states: ShipmentStates = shipments
            .iter()
            .filter_map(|s| inner.states.get(s).map(|st| (s.clone(), st.clone())))
            .collect();
        for s in shipments {
            if let Some(e) = inner.broken.get(s) {
                states.unreadable(s.clone(), e.clone());
            }
        }
        Ok(states)
    }

    async fn write_statuses(&self, writes: &[CrmStatusWrite]) -> Result<Vec<ItemResult>, CrmError> {
        let mut inner = self.begin_call()?;
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            if let Some(err) = inner
                .item_failures
                .get_mut(&w.shipment_id)
                .and_then(VecDeque::pop_front)
            {
                out.push(ItemResult {
                    http_status: err.http_status,
                    result: Err(err),
                    response_excerpt: None,
                });
                continue;
            }
            inner.states.insert(
                w.shipment_id.clone(),
                CrmShipmentState {
                    status: w.crm_status.clone(),
                    updated_at: w.timestamp,
                },
            );
            inner.writes.push(w.clone());
            out.push(ItemResult {
                result: Ok(()),
                http_status: Some(200),
                response_excerpt: None,
            });
        }
        Ok(out)
    }
}

/// A ledger in memory; `fail_next_commit` simulates the database going away mid-batch.
#[derive(Default)]
pub struct MemoryLedger {
    inner: Mutex<LedgerInner>,
}

#[derive(Default)]
struct LedgerInner {
    log: Vec<AttemptRecord>,
    processed: HashMap<EventId, Recorded>,
    retry: BTreeMap<EventId, ParkedEvent>,
    newest: HashMap<ShipmentId, OffsetDateTime>,
    fail_next_commit: bool,
}

impl MemoryLedger {
    pub fn log(&self) -> Vec<AttemptRecord> {
        lock(&self.inner).log.clone()
    }

    pub fn parked(&self) -> Vec<ParkedEvent> {
        lock(&self.inner).retry.values().cloned().collect()
    }

    pub fn fail_next_commit(&self) {
        lock(&self.inner).fail_next_commit = true;
    }

    /// Moves every parked event's first failure back by `by`.
    pub fn backdate_first_failures(&self, by: std::time::Duration) {
        for p in lock(&self.inner).retry.values_mut() {
            p.first_failed_at -= by;
        }
    }

    /// Makes every parked event due now.
    pub fn make_all_due(&self) {
        let now = OffsetDateTime::now_utc();
        for p in lock(&self.inner).retry.values_mut() {
            p.next_attempt_at = now;
        }
    }
}

#[async_trait]
impl SyncLedger for MemoryLedger {
    async fn recorded(&self, ids: &[EventId]) -> Result<HashMap<EventId, Recorded>, LedgerError> {
        let inner = lock(&self.inner);
        Ok(ids
            .iter()
            .filter_map(|id| inner.processed.get(id).map(|r| (id.clone(), r.clone())))
            .collect())
    }

    async fn newest_seen(
        &self,
        shipments: &[ShipmentId],
    ) -> Result<HashMap<ShipmentId, OffsetDateTime>, LedgerError> {
        let inner = lock(&self.inner);
        Ok(shipments
            .iter()
            .filter_map(|s| inner.newest.get(s).map(|t| (s.clone(), *t)))
            .collect())
    }

    async fn commit(&self, batch: &LedgerBatch) -> Result<(), LedgerError> {
        let batch = batch.clone();
        let mut inner = lock(&self.inner);
        if std::mem::take(&mut inner.fail_next_commit) {
            return Err(LedgerError("injected commit failure".into()));
        }
        inner.log.extend(batch.attempts);
        for (id, r) in batch.processed {
            let replaceable = inner.processed.get(&id).is_none_or(|old| {
                matches!(old.outcome, Outcome::RetryScheduled | Outcome::DeadLettered)
                    || r.replay_count > old.replay_count
            });
            if replaceable {
                inner.processed.insert(id, r);
            }
        }
        for id in batch.unpark {
            inner.retry.remove(&id);
        }
        for mut p in batch.park {
            // The first failure of an event parked before stays its first.
            if let Some(old) = inner.retry.get(&p.event.event_id) {
                p.first_failed_at = p.first_failed_at.min(old.first_failed_at);
            }
            inner.retry.insert(p.event.event_id.clone(), p);
        }
        for (s, t) in batch.newest {
            let slot = inner.newest.entry(s).or_insert(t);
            *slot = (*slot).max(t);
        }
        Ok(())
    }

    async fn due(
        &self,
        partitions: &[(String, i32)],
        now: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>, LedgerError> {
        let inner = lock(&self.inner);
        let mut due: Vec<ParkedEvent> = inner
            .retry
            .values()
            .filter(|p| p.next_attempt_at <= now)
            .filter(|p| {
                partitions
                    .iter()
                    .any(|(t, n)| *t == p.source.topic && *n == p.source.partition)
            })
            .cloned()
            .collect();
        due.sort_by_key(|p| p.event.occurred_at);
        due.truncate(limit);
        Ok(due)
    }

    async fn retry_depth(&self) -> Result<i64, LedgerError> {
        Ok(i64::try_from(lock(&self.inner).retry.len()).unwrap_or(i64::MAX))
    }

    async fn trace(&self, id: &EventId) -> Result<EventTrace, LedgerError> {
        let inner = lock(&self.inner);
        Ok(EventTrace {
            attempts: inner
                .log
                .iter()
                .filter(|a| a.event_id.as_ref() == Some(id))
                .cloned()
                .collect(),
            recorded: inner.processed.get(id).cloned(),
            parked: inner.retry.get(id).cloned(),
        })
    }

    async fn find_events(
        &self,
        key: &TraceKey,
        since: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<EventId>, LedgerError> {
        let inner = lock(&self.inner);
        let carries = |a: &AttemptRecord| {
            a.sent_at >= since
                && match key {
                    TraceKey::Shipment(s) => a.shipment_id.as_ref() == Some(s),
                    TraceKey::Client(c) => a.client_id.as_deref() == Some(c.as_str()),
                    TraceKey::Correlation(c) => a.correlation_id.as_deref() == Some(c.as_str()),
                }
        };
        let mut found: Vec<EventId> = Vec::new();
        if limit == 0 {
            return Ok(found);
        }
        // The log is in insertion order: newest last.
        for a in inner.log.iter().rev().filter(|a| carries(a)) {
            match &a.event_id {
                Some(id) if !found.contains(id) => found.push(id.clone()),
                _ => {}
            }
            if found.len() >= limit {
                break;
            }
        }
        Ok(found)
    }

    async fn activity(
        &self,
        since: OffsetDateTime,
        bucket: time::Duration,
    ) -> Result<Vec<ActivityBucket>, LedgerError> {
        let inner = lock(&self.inner);
        let width = bucket.whole_seconds().max(1);
        let mut buckets: BTreeMap<i64, (ActivityBucket, Vec<f64>)> = BTreeMap::new();
        for a in inner.log.iter().filter(|a| a.sent_at >= since) {
            let n = (a.sent_at - since).whole_seconds().div_euclid(width);
            let (b, lags) = buckets.entry(n).or_insert_with(|| {
                (
                    ActivityBucket {
                        start: since + time::Duration::seconds(n * width),
                        outcomes: BTreeMap::new(),
                        dead_letter_reasons: BTreeMap::new(),
                        lag_p50_ms: None,
                        lag_p99_ms: None,
                    },
                    Vec::new(),
                )
            });
            *b.outcomes.entry(a.outcome).or_default() += 1;
            if a.outcome == Outcome::DeadLettered {
                let reason = a.error.as_deref().map_or("unknown", reason_code_of);
                *b.dead_letter_reasons.entry(reason.to_owned()).or_default() += 1;
            }
            if let (Outcome::Success, Some(at)) = (a.outcome, a.event_time) {
                lags.push((a.sent_at - at).as_seconds_f64() * 1000.0);
            }
        }
        Ok(buckets
            .into_values()
            .map(|(mut b, mut lags)| {
                lags.sort_by(f64::total_cmp);
                b.lag_p50_ms = nearest_rank(&lags, 0.5);
                b.lag_p99_ms = nearest_rank(&lags, 0.99);
                b
            })
            .collect())
    }
}

/// Collects published outcomes and dead letters.
#[derive(Default)]
pub struct MemoryTopics {
    outcomes: Mutex<Vec<OutcomeRecord>>,
    letters: Mutex<Vec<DeadLetter>>,
}

impl MemoryTopics {
    pub fn outcomes(&self) -> Vec<OutcomeRecord> {
        lock(&self.outcomes).clone()
    }

    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        lock(&self.letters).clone()
    }
}

#[async_trait]
impl OutcomeSink for MemoryTopics {
    async fn publish(&self, outcomes: &[OutcomeRecord]) -> Result<(), PublishError> {
        lock(&self.outcomes).extend_from_slice(outcomes);
        Ok(())
    }
}

#[async_trait]
impl DeadLetterSink for MemoryTopics {
    async fn dead_letter(&self, letters: &[DeadLetter]) -> Result<(), PublishError> {
        lock(&self.letters).extend_from_slice(letters);
        Ok(())
    }
}
