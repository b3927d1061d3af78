//! The sync engine: takes a batch of records (fresh from `tracking.events` or due from the retry
//! queue) and brings each one to a durable outcome.
//!
//! Order of effects for one batch, and what a crash between two of them leaves behind:
//!
//! 1. read the ledger (which event ids were handled before, and the newest event time known per
//!    shipment) — nothing written yet;
//! 2. read the CRM, write what is needed — a crash here leaves CRM writes without a log row; the
//!    redelivered events find the CRM already showing their status and end as `unchanged`;
//! 3. publish dead letters and wait for the broker — a crash here may publish a dead letter twice
//!    (the redelivery dead-letters it again), never zero times;
//! 4. commit the ledger batch (log rows, processed ids, retry queue) in one transaction;
//! 5. publish outcomes to `crm.sync` — a crash before this ends is repaired by the redelivery,
//!    which publishes `duplicate` carrying the first outcome;
//! 6. the caller commits the source offsets.

use crate::breaker::{BreakerState, CircuitBreaker};
use crate::event::{EventId, InvalidEvent, ShipmentId, TrackingEvent};
use crate::mapping::{CrmMapping, CrmStatusWrite};
use crate::ports::*;
use crate::retry::{RetryPolicy, RetryStep};
use crate::rules::{decide, WriteDecision};
use futures::future::join_all;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

mod accumulator;
mod batch;
mod newest;

use accumulator::Accumulator;
pub use batch::{BatchReport, Effects, Inbound};
use newest::PendingNewest;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

pub struct EngineSettings {
    pub retry: RetryPolicy,
    pub breaker: crate::breaker::BreakerPolicy,
    /// Most shipments per CRM call.
    pub crm_batch_limit: usize,
    /// How far ahead of this service's clock an event may be dated; a later one is refused
    /// (`event_in_future`), since it would freeze its shipment.
    pub max_clock_skew: Duration,
    /// The intake limit on record size, named in the reason of an oversized record.
    pub max_record_bytes: usize,
}

impl EngineSettings {
    /// Five minutes: clocks of well-run hosts agree far better.
    pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);
}

/// A uniform sample in `[0, 1)`, injected so the domain needs no random-number crate.
pub type Jitter = Box<dyn Fn() -> f64 + Send + Sync>;

pub struct SyncEngine {
    mapping: CrmMapping,
    retry: RetryPolicy,
    crm_batch_limit: usize,
    max_clock_skew: Duration,
    max_record_bytes: usize,
    pending_newest: PendingNewest,
    crm: Arc<dyn CrmGateway>,
    ledger: Arc<dyn SyncLedger>,
    outcomes: Arc<dyn OutcomeSink>,
    dead_letters: Arc<dyn DeadLetterSink>,
    breaker: Mutex<CircuitBreaker>,
    jitter: Jitter,
}

pub(super) struct Candidate {
    pub(super) event: TrackingEvent,
    pub(super) source: SourcePosition,
    pub(super) key: Option<Vec<u8>>,
    pub(super) payload: Vec<u8>,
    pub(super) attempt: u32,
    pub(super) replay_count: u32,
    /// When an earlier attempt first failed (parked events).
    pub(super) first_failed_at: Option<OffsetDateTime>,
}

#[derive(Default)]
pub(super) struct Call {
    pub(super) http_status: Option<u16>,
    pub(super) response_excerpt: Option<String>,
    pub(super) error: Option<String>,
    pub(super) latency_ms: Option<f64>,
}

impl SyncEngine {
    pub fn new(
        mapping: CrmMapping,
        settings: EngineSettings,
        crm: Arc<dyn CrmGateway>,
        ledger: Arc<dyn SyncLedger>,
        outcomes: Arc<dyn OutcomeSink>,
        dead_letters: Arc<dyn DeadLetterSink>,
        jitter: Jitter,
    ) -> Self {
        Self {
            mapping,
            retry: settings.retry,
            crm_batch_limit: settings.crm_batch_limit.max(1),
            max_clock_skew: settings.max_clock_skew,
            max_record_bytes: settings.max_record_bytes,
            pending_newest: PendingNewest::default(),
            crm,
            ledger,
            outcomes,
            dead_letters,
            breaker: Mutex::new(CircuitBreaker::new(settings.breaker)),
            jitter,
        }
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .state()
    }

    /// Handles records fresh from the topic: [`decide`](Self::decide) then
    /// [`apply`](Self::apply). On `Err` nothing may be committed: the caller retries the same batch
    /// (every step is idempotent).
    pub async fn process(&self, inbound: &[Inbound]) -> Result<BatchReport, EngineError> {
        let effects = self.decide(inbound).await?;
        self.apply(&effects).await?;
        Ok(effects.report)
    }

    /// Handles parked events that are due.
    pub async fn process_due(&self, parked: Vec<ParkedEvent>) -> Result<BatchReport, EngineError> {
        let effects = self.decide_due(parked).await?;
        self.apply(&effects).await?;
        Ok(effects.report)
    }

    /// Steps 1 and 2 for fresh records: reads the ledger and the CRM and writes to the CRM what is
    /// needed. The returned effects still have to be [applied](Self::apply), in batch order; the
    /// next batch may be decided meanwhile (the CRM phase of one batch always ends before the next
    /// one's begins, so per-shipment order holds).
    pub async fn decide(&self, inbound: &[Inbound]) -> Result<Effects, EngineError> {
        let mut acc = Accumulator::new(&self.mapping);
        let mut parsed = Vec::with_capacity(inbound.len());
        let horizon = OffsetDateTime::now_utc() + self.max_clock_skew;
        for m in inbound {
            match self.intake(m, horizon) {
                Ok(event) => parsed.push(Candidate {
                    event,
                    source: m.source.clone(),
                    key: m.key.clone(),
                    payload: m.payload.clone().unwrap_or_default(),
                    attempt: 1,
                    replay_count: m.replay_count,
                    first_failed_at: None,
                }),
                Err(invalid) => acc.invalid(m, &invalid),
            }
        }

        let ids: Vec<EventId> = parsed.iter().map(|c| c.event.event_id.clone()).collect();
        let recorded = if ids.is_empty() {
            HashMap::new()
        } else {
            self.ledger.recorded(&ids).await?
        };
        let mut in_batch = HashSet::with_capacity(parsed.len());
        let mut fresh = Vec::with_capacity(parsed.len());
        for c in parsed {
            if !in_batch.insert(c.event.event_id.clone()) {
                acc.duplicate(&c, None);
                continue;
            }
            match recorded.get(&c.event.event_id) {
                Some(r) if !(r.outcome == Outcome::DeadLettered && c.replay_count > r.replay_count) => {
                    acc.duplicate(&c, Some(r.outcome));
                }
                _ => fresh.push(c),
            }
        }
        let newest = self.newest_seen(&fresh).await?;
        Ok(self.sync(fresh, newest, acc).await)
    }

    /// A record as an event, or why it is refused: too large, no value, not a valid event, or
    /// dated beyond `horizon`.
    fn intake(&self, m: &Inbound, horizon: OffsetDateTime) -> Result<TrackingEvent, InvalidEvent> {
        if let Some(size) = m.oversized {
            return Err(InvalidEvent::TooLarge {
                size,
                limit: self.max_record_bytes,
            });
        }
        let payload = m.payload.as_deref().ok_or(InvalidEvent::Tombstone)?;
        let event = TrackingEvent::from_json(payload)?;
        if event.occurred_at > horizon {
            return Err(InvalidEvent::InFuture {
                skew_s: self.max_clock_skew.as_secs(),
            });
        }
        Ok(event)
    }

    /// The newest event time known per shipment of `candidates`: the ledger's, or a newer one
    /// concluded by a batch not committed yet.
    async fn newest_seen(
        &self,
        candidates: &[Candidate],
    ) -> Result<HashMap<ShipmentId, OffsetDateTime>, EngineError> {
        if candidates.is_empty() {
            return Ok(HashMap::new());
        }
        let mut shipments: Vec<ShipmentId> = candidates.iter().map(|c| c.event.shipment_id.clone()).collect();
        shipments.sort_unstable();
        shipments.dedup();
        let mut newest = self.ledger.newest_seen(&shipments).await?;
        self.pending_newest.raise(&shipments, &mut newest);
        Ok(newest)
    }

    /// Steps 1 and 2 for parked events that are due.
    pub async fn decide_due(&self, parked: Vec<ParkedEvent>) -> Result<Effects, EngineError> {
        let candidates: Vec<Candidate> = parked
            .into_iter()
            .map(|p| Candidate {
                payload: serde_json::to_vec(&p.event.to_wire()).unwrap_or_default(),
                key: Some(p.event.shipment_id.as_str().as_bytes().to_vec()),
                event: p.event,
                source: p.source,
                attempt: p.attempts + 1,
                replay_count: p.replay_count,
                first_failed_at: Some(p.first_failed_at),
            })
            .collect();
        let newest = self.newest_seen(&candidates).await?;
        Ok(self
            .sync(candidates, newest, Accumulator::new(&self.mapping))
            .await)
    }

    /// Steps 3 to 5: dead letters, the ledger transaction, outcomes. Safe to call again with the
    /// same effects after a failure.
    pub async fn apply(&self, effects: &Effects) -> Result<(), EngineError> {
        let done = |step| effects.done.load(Ordering::SeqCst) >= step;
        if !done(1) && !effects.letters.is_empty() {
            self.dead_letters.dead_letter(&effects.letters).await?;
        }
        effects.done.fetch_max(1, Ordering::SeqCst);
        if !done(2) {
            self.ledger.commit(&effects.ledger).await?;
            self.pending_newest.forget(&effects.ledger.newest);
        }
        effects.done.fetch_max(2, Ordering::SeqCst);
        if !done(3) && !effects.outcomes.is_empty() {
            self.outcomes.publish(&effects.outcomes).await?;
        }
        effects.done.fetch_max(3, Ordering::SeqCst);
        Ok(())
    }

    async fn sync(
        &self,
        candidates: Vec<Candidate>,
        newest_seen: HashMap<ShipmentId, OffsetDateTime>,
        mut acc: Accumulator<'_>,
    ) -> Effects {
        // Map; an unmapped status is a bad event, not a CRM problem.
        let mut mapped = Vec::with_capacity(candidates.len());
        for c in candidates {
            match self.mapping.to_crm(&c.event) {
                Ok(w) => mapped.push((c, w)),
                Err(invalid) => {
                    acc.dead_letter(&c, None, invalid.code(), invalid.to_string(), Call::default())
                }
            }
        }

        // Within a batch only the newest event of a shipment needs the CRM; the others are stale.
        let mut newest: HashMap<ShipmentId, usize> = HashMap::with_capacity(mapped.len());
        for (i, (c, _)) in mapped.iter().enumerate() {
            let slot = newest.entry(c.event.shipment_id.clone()).or_insert(i);
            if mapped[*slot].0.event.occurred_at <= c.event.occurred_at {
                *slot = i;
            }
        }
        let mut leads = Vec::with_capacity(newest.len());
        for (i, (c, w)) in mapped.into_iter().enumerate() {
            if newest.get(&c.event.shipment_id) == Some(&i) {
                leads.push((c, w));
            } else {
                let call = Call {
                    error: Some("superseded by a newer event in the same batch".into()),
                    ..Call::default()
                };
                acc.conclude(&c, Some(&w), Outcome::Stale, call);
            }
        }

        // CRM calls of one batch run concurrently: they touch distinct shipments.
        let newest_seen = &newest_seen;
        let chunk_results = join_all(chunks(leads, self.crm_batch_limit).into_iter().map(
            |chunk| async move {
                let mut chunk_acc = Accumulator::new(&self.mapping);
                self.sync_chunk(chunk, newest_seen, &mut chunk_acc).await;
                chunk_acc
            },
        ))
        .await;
        for chunk_acc in chunk_results {
            acc.merge(chunk_acc);
        }
        let effects = acc.into_effects();
        self.pending_newest.remember(&effects.ledger.newest);
        effects
    }

    async fn sync_chunk(
        &self,
        chunk: Vec<(Candidate, CrmStatusWrite)>,
        newest_seen: &HashMap<ShipmentId, OffsetDateTime>,
        acc: &mut Accumulator<'_>,
    ) {
        if let Err(wait) = self.admit() {
            return self.refuse_chunk(&chunk, wait, acc);
        }
        let Some(mut states) = self.read_chunk(&chunk, acc).await else {
            return;
        };
        let mut to_write = Vec::with_capacity(chunk.len());
        for (c, w) in chunk {
            if let Some(err) = states.unreadable.remove(&c.event.shipment_id) {
                let err = CrmError {
                    message: format!("the CRM's record of this shipment is unreadable: {}", err.message),
                    ..err
                };
                let call = Call {
                    http_status: err.http_status,
                    error: Some(format!("the CRM's record of this shipment is unreadable: {err}")),
                    ..Call::default()
                };
                self.failed(acc, &c, &w, &err, call, true);
                continue;
            }
            let seen = newest_seen.get(&c.event.shipment_id).copied();
            match decide(&w, states.get(&c.event.shipment_id), seen) {
                WriteDecision::Write => to_write.push((c, w)),
                WriteDecision::Unchanged => acc.conclude(&c, Some(&w), Outcome::Unchanged, Call::default()),
                WriteDecision::Stale => {
                    let call = Call {
                        error: Some("the CRM shows a newer change".into()),
                        ..Call::default()
                    };
                    acc.conclude(&c, Some(&w), Outcome::Stale, call);
                }
            }
        }
        if !to_write.is_empty() {
            self.write_chunk(to_write, acc).await;
        }
    }

    /// The breaker is open: no call is made, and every event of the chunk is parked until the
    /// breaker's next probe. A refusal is not an attempt: it costs no retry budget.
    fn refuse_chunk(&self, chunk: &[(Candidate, CrmStatusWrite)], wait: Duration, acc: &mut Accumulator<'_>) {
        let err = CrmError {
            retry_after: Some(wait),
            ..CrmError::transient("circuit breaker open")
        };
        for (c, w) in chunk {
            let call = Call {
                error: Some(err.message.clone()),
                ..Call::default()
            };
            self.failed(acc, c, w, &err, call, false);
        }
    }

    /// What the CRM shows for the chunk's shipments; `None` when the read failed (every event
    /// of the chunk is then handled as failed).
    async fn read_chunk(
        &self,
        chunk: &[(Candidate, CrmStatusWrite)],
        acc: &mut Accumulator<'_>,
    ) -> Option<ShipmentStates> {
        let ids: Vec<ShipmentId> = chunk.iter().map(|(c, _)| c.event.shipment_id.clone()).collect();
        let started = Instant::now();
        match self.crm.read_states(&ids).await {
            Ok(states) => {
                self.breaker_result(true);
                Some(states)
            }
            Err(err) => {
                // A failed call says nothing about the records in it (a rotated token, clock skew
                // or one broken record in the answer): park them all, count it against the CRM.
                let err = err.as_transient();
                self.breaker_result(false);
                for (c, w) in chunk {
                    let call = Call {
                        http_status: err.http_status,
                        error: Some(format!("read failed: {err}")),
                        latency_ms: Some(ms(started.elapsed())),
                        ..Call::default()
                    };
                    self.failed(acc, c, w, &err, call, true);
                }
                None
            }
        }
    }

    /// Writes the statuses and concludes each event by its own result.
    async fn write_chunk(&self, to_write: Vec<(Candidate, CrmStatusWrite)>, acc: &mut Accumulator<'_>) {
        let writes: Vec<CrmStatusWrite> = to_write.iter().map(|(_, w)| w.clone()).collect();
        let started = Instant::now();
        let result = self.crm.write_statuses(&writes).await;
        let latency = ms(started.elapsed());
        let results = match result {
            Ok(r) if r.len() == writes.len() => r,
            Ok(r) => {
                let err = CrmError::transient(format!(
                    "CRM answered {} results for {} writes",
                    r.len(),
                    writes.len()
                ));
                vec![
                    ItemResult {
                        result: Err(err),
                        http_status: None,
                        response_excerpt: None
                    };
                    writes.len()
                ]
            }
            Err(err) => vec![
                ItemResult {
                    http_status: err.http_status,
                    result: Err(err.as_transient()),
                    response_excerpt: None
                };
                writes.len()
            ],
        };
        let all_transient = results
            .iter()
            .all(|r| matches!(&r.result, Err(e) if e.is_transient()));
        self.breaker_result(!all_transient);

        for ((c, w), item) in to_write.into_iter().zip(results) {
            let call = Call {
                http_status: item.http_status,
                response_excerpt: item.response_excerpt,
                error: item.result.as_ref().err().map(ToString::to_string),
                latency_ms: Some(latency),
            };
            match item.result {
                Ok(()) => acc.conclude(&c, Some(&w), Outcome::Success, call),
                Err(err) => self.failed(acc, &c, &w, &err, call, true),
            }
        }
    }

    /// A transient error parks the event (or dead-letters it once its first failure is older
    /// than the retry budget); a permanent one dead-letters it at once. `called` is false for a
    /// breaker refusal: no call was made, so the attempt is not counted.
    fn failed(
        &self,
        acc: &mut Accumulator<'_>,
        c: &Candidate,
        w: &CrmStatusWrite,
        err: &CrmError,
        call: Call,
        called: bool,
    ) {
        if !err.is_transient() {
            return acc.dead_letter(
                c,
                Some(w),
                DeadLetterReason::CrmRejected,
                err.message.clone(),
                call,
            );
        }
        let now = OffsetDateTime::now_utc();
        let first_failed_at = c.first_failed_at.unwrap_or(now);
        let age = Duration::try_from(now - first_failed_at).unwrap_or_default();
        let made = if called {
            c.attempt
        } else {
            c.attempt.saturating_sub(1)
        };
        let step = match (
            called,
            self.retry
                .next(made.max(1), age, err.retry_after, (self.jitter)()),
        ) {
            // Only a real call can exhaust an attempt cap; a refusal still ends at the age limit.
            (false, RetryStep::GiveUp) if age < self.retry.give_up_after => {
                RetryStep::RetryAfter(err.retry_after.unwrap_or(self.retry.base_delay))
            }
            (_, step) => step,
        };
        match step {
            RetryStep::GiveUp => {
                let reason = format!(
                    "gave up after {made} attempts over {} s: {}",
                    age.as_secs(),
                    err.message
                );
                acc.dead_letter(c, Some(w), DeadLetterReason::AttemptsExhausted, reason, call);
            }
            RetryStep::RetryAfter(delay) => {
                acc.park(c, made, first_failed_at, err, delay);
                acc.conclude(c, Some(w), Outcome::RetryScheduled, call);
            }
        }
    }

    fn admit(&self) -> Result<(), Duration> {
        self.breaker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(Instant::now())
    }

    fn breaker_result(&self, ok: bool) {
        let mut b = self.breaker.lock().unwrap_or_else(PoisonError::into_inner);
        if ok {
            b.on_success();
        } else {
            b.on_failure(Instant::now());
        }
    }
}

fn chunks<T>(items: Vec<T>, size: usize) -> Vec<Vec<T>> {
    let mut out = Vec::with_capacity(items.len().div_ceil(size));
    let mut it = items.into_iter().peekable();
    while it.peek().is_some() {
        out.push(it.by_ref().take(size).collect());
    }
    out
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(super) fn lag_ms(from: OffsetDateTime, to: OffsetDateTime) -> f64 {
    ((to - from).as_seconds_f64() * 1000.0).max(0.0)
}
