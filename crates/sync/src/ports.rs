//! Ports: what the sync engine needs from the outside world. One trait per capability.

use crate::event::{EventId, ShipmentId, TrackingEvent};
use crate::mapping::{CrmShipmentState, CrmStatusWrite};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use time::OffsetDateTime;

/// The result of handling one event, as published on `crm.sync` and stored in `integrations_log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The CRM now shows this event's status.
    Success,
    /// The event was already handled; it had no second effect.
    Duplicate,
    /// The CRM shows a newer change (or a newer event in the same batch superseded it).
    Stale,
    /// The CRM already showed this status; nothing was written.
    Unchanged,
    /// The CRM failed transiently; the event is parked in the retry queue.
    RetryScheduled,
    /// The event cannot be synced; it is in `dead.letters` with the reason.
    DeadLettered,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Success,
        Outcome::Duplicate,
        Outcome::Stale,
        Outcome::Unchanged,
        Outcome::RetryScheduled,
        Outcome::DeadLettered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Duplicate => "duplicate",
            Outcome::Stale => "stale",
            Outcome::Unchanged => "unchanged",
            Outcome::RetryScheduled => "retry_scheduled",
            Outcome::DeadLettered => "dead_lettered",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// Whether the event needs no further work (the CRM agrees with it or it was parked in the DLQ).
    pub fn is_final(self) -> bool {
        !matches!(self, Outcome::RetryScheduled)
    }
}

/// Where a record came from: the coordinates operators need to find it again.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SourcePosition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

// ---------------------------------------------------------------------------------------------
// CRM

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrmErrorKind {
    /// Worth retrying: connect error, timeout, 408, 429, 5xx.
    Transient,
    /// Retrying cannot help: any other 4xx, or a response that breaks the contract.
    Permanent,
}

/// A failed CRM call or a refused record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CrmError {
    pub kind: CrmErrorKind,
    pub http_status: Option<u16>,
    /// From the CRM's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
    /// A short description, free of secrets.
    pub message: String,
}

impl CrmError {
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            kind: CrmErrorKind::Transient,
            http_status: None,
            retry_after: None,
            message: message.into(),
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            kind: CrmErrorKind::Permanent,
            http_status: None,
            retry_after: None,
            message: message.into(),
        }
    }

    /// Classifies an HTTP status: 408, 429 and 5xx are transient, other 4xx permanent.
    pub fn from_status(status: u16, retry_after: Option<Duration>, message: impl Into<String>) -> Self {
        let kind = if status == 408 || status == 429 || status >= 500 {
            CrmErrorKind::Transient
        } else {
            CrmErrorKind::Permanent
        };
        Self {
            kind,
            http_status: Some(status),
            retry_after,
            message: message.into(),
        }
    }

    /// The same error, to be retried: a whole call that failed is retried, whatever its status.
    pub fn as_transient(&self) -> Self {
        Self {
            kind: CrmErrorKind::Transient,
            ..self.clone()
        }
    }

    pub fn is_transient(&self) -> bool {
        self.kind == CrmErrorKind::Transient
    }
}

/// The CRM's answer to one item of a batch write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemResult {
    pub result: Result<(), CrmError>,
    pub http_status: Option<u16>,
    /// The start of the CRM's response for this item, for `integrations_log`.
    pub response_excerpt: Option<String>,
}

/// What the CRM shows for a set of shipments: the records it has (a shipment it does not know is
/// absent), and the records it returned that could not be read, each failing only its own
/// shipment's events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShipmentStates {
    known: HashMap<ShipmentId, CrmShipmentState>,
    pub unreadable: HashMap<ShipmentId, CrmError>,
}

impl ShipmentStates {
    pub fn new(known: HashMap<ShipmentId, CrmShipmentState>) -> Self {
        Self {
            known,
            unreadable: HashMap::new(),
        }
    }

    /// Marks one shipment's record as unreadable (it is no longer known).
    pub fn unreadable(&mut self, shipment: ShipmentId, error: CrmError) {
        self.known.remove(&shipment);
        self.unreadable.insert(shipment, error);
    }

    pub fn insert(&mut self, shipment: ShipmentId, state: CrmShipmentState) {
        self.known.insert(shipment, state);
    }
}

impl std::ops::Deref for ShipmentStates {
    type Target = HashMap<ShipmentId, CrmShipmentState>;

    fn deref(&self) -> &Self::Target {
        &self.known
    }
}

impl From<HashMap<ShipmentId, CrmShipmentState>> for ShipmentStates {
    fn from(known: HashMap<ShipmentId, CrmShipmentState>) -> Self {
        Self::new(known)
    }
}

impl FromIterator<(ShipmentId, CrmShipmentState)> for ShipmentStates {
    fn from_iter<I: IntoIterator<Item = (ShipmentId, CrmShipmentState)>>(iter: I) -> Self {
        Self::new(iter.into_iter().collect())
    }
}

/// A CRM that stores one status per shipment.
///
/// Implementations sign every request, carry each write's correlation id to the CRM (`X-Request-Id` on a single
/// write, a per-item `requestId` in a batch), apply
/// timeouts and batch internally as the vendor allows.
#[async_trait]
pub trait CrmGateway: Send + Sync {
    /// Reads the CRM's current state of each shipment. A shipment the CRM does not know is absent;
    /// a record that cannot be read is in `unreadable` (it fails that shipment's events only).
    /// `Err` means the call as a whole failed (nothing can be concluded).
    async fn read_states(&self, shipments: &[ShipmentId]) -> Result<ShipmentStates, CrmError>;

    /// Writes statuses. `Ok` holds exactly one result per write, in order; `Err` means no write
    /// can be assumed to have happened (all are retried; the read-before-write and the CRM's own
    /// idempotency by event id make a retry of an applied write harmless).
    async fn write_statuses(&self, writes: &[CrmStatusWrite]) -> Result<Vec<ItemResult>, CrmError>;
}

// ---------------------------------------------------------------------------------------------
// Ledger (integrations_log, processed events, retry queue)

/// What an earlier delivery of an event ended in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub outcome: Outcome,
    pub replay_count: u32,
}

/// One row of `integrations_log`.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    pub event_id: Option<EventId>,
    pub shipment_id: Option<ShipmentId>,
    pub client_id: Option<String>,
    pub correlation_id: Option<String>,
    /// The CRM body for this event (what was or would have been sent).
    pub payload: Option<serde_json::Value>,
    pub http_status: Option<u16>,
    pub response_excerpt: Option<String>,
    pub outcome: Outcome,
    pub attempt: u32,
    pub error: Option<String>,
    pub event_time: Option<OffsetDateTime>,
    pub sent_at: OffsetDateTime,
    /// Duration of the CRM call (or batch call) this attempt was part of.
    pub latency_ms: Option<f64>,
    pub source: Option<SourcePosition>,
}

/// An event parked for a later attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct ParkedEvent {
    pub event: TrackingEvent,
    pub source: SourcePosition,
    /// Attempts made so far.
    pub attempts: u32,
    pub replay_count: u32,
    pub next_attempt_at: OffsetDateTime,
    /// When the first attempt failed: the retry budget is an age, counted from here.
    pub first_failed_at: OffsetDateTime,
    pub last_error: String,
}

/// Everything one batch changes in the database, applied in one transaction.
#[derive(Debug, Default, Clone)]
pub struct LedgerBatch {
    pub attempts: Vec<AttemptRecord>,
    /// Latest outcome per event id. An existing `success`, `stale` or `unchanged` is kept unless
    /// the new record has a higher replay count (a deliberate replay).
    pub processed: Vec<(EventId, Recorded)>,
    /// Inserted or rescheduled in the retry queue.
    pub park: Vec<ParkedEvent>,
    /// Removed from the retry queue.
    pub unpark: Vec<EventId>,
    /// The newest event time now known to be in the CRM, per shipment (a stored time only ever
    /// moves forward).
    pub newest: Vec<(ShipmentId, OffsetDateTime)>,
}

#[derive(Debug, thiserror::Error)]
#[error("ledger unavailable: {0}")]
pub struct LedgerError(pub String);

/// The durable record of what happened: `integrations_log`, processed event ids, retry queue.
#[async_trait]
pub trait SyncLedger: Send + Sync {
    /// The recorded outcome of those ids that were seen before.
    async fn recorded(&self, ids: &[EventId]) -> Result<HashMap<EventId, Recorded>, LedgerError>;

    /// The newest event time recorded for each of `shipments` that has one: what the CRM shows
    /// as far as this service knows, even where the CRM's own timestamp did not move (a later
    /// event with the same status).
    async fn newest_seen(
        &self,
        shipments: &[ShipmentId],
    ) -> Result<HashMap<ShipmentId, OffsetDateTime>, LedgerError>;

    /// Applies the whole batch atomically: either every row is written or none is.
    async fn commit(&self, batch: &LedgerBatch) -> Result<(), LedgerError>;

    /// Parked events due at `now` whose source partition is one of `partitions` (the partitions
    /// this instance owns, so one shipment is never worked on by two instances at once), oldest
    /// event first.
    async fn due(
        &self,
        partitions: &[(String, i32)],
        now: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>, LedgerError>;

    /// Size of the retry queue.
    async fn retry_depth(&self) -> Result<i64, LedgerError>;

    /// Everything recorded of one event: every attempt (oldest first), its recorded outcome,
    /// and its place in the retry queue if it waits there. For operators (`crm-sync trace`).
    async fn trace(&self, id: &EventId) -> Result<EventTrace, LedgerError>;

    /// The ids of the events with an attempt sent at or after `since` that carries `key`,
    /// newest attempt first, each once, at most `limit`: how an operator finds the events to
    /// trace from a shipment, a client or a request id. (`since` bounds the scan.)
    async fn find_events(
        &self,
        key: &TraceKey,
        since: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<EventId>, LedgerError>;

    /// The attempts of `integrations_log` sent at or after `since`, counted in buckets of
    /// `bucket` (the first starts at `since`): outcomes, dead letters by reason, and the
    /// event-to-CRM lag of the successes. Only buckets with an attempt are returned, oldest first.
    async fn activity(
        &self,
        since: OffsetDateTime,
        bucket: time::Duration,
    ) -> Result<Vec<ActivityBucket>, LedgerError>;
}

/// What [`SyncLedger::find_events`] looks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceKey {
    Shipment(ShipmentId),
    Client(String),
    /// The request id the event carried (`correlation_id`), which is also the `X-Request-Id`
    /// of its CRM call.
    Correlation(String),
}

/// One bucket of [`SyncLedger::activity`].
#[derive(Debug, Clone, PartialEq)]
pub struct ActivityBucket {
    pub start: OffsetDateTime,
    /// Attempts by outcome; outcomes without one are absent.
    pub outcomes: BTreeMap<Outcome, u64>,
    /// Dead-lettered attempts by reason code (the `error` text up to its first `:`).
    pub dead_letter_reasons: BTreeMap<String, u64>,
    /// From the event's time to the CRM's acknowledgement, over the successes: the nearest-rank
    /// 50th and 99th percentiles, in milliseconds.
    pub lag_p50_ms: Option<f64>,
    pub lag_p99_ms: Option<f64>,
}

/// The reason code of a dead-lettered attempt's `error` (`"malformed_json: ..."`).
pub fn reason_code_of(error: &str) -> &str {
    error.split(':').next().unwrap_or(error).trim()
}

/// The nearest-rank percentile `p` (0 < p <= 1) of `sorted`, as PostgreSQL's `percentile_disc`.
pub fn nearest_rank(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    // `as` is exact here: both are small, non-negative counts.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// What [`SyncLedger::trace`] finds of one event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventTrace {
    /// Its `integrations_log` rows, oldest first.
    pub attempts: Vec<AttemptRecord>,
    /// Its latest outcome, when it was seen.
    pub recorded: Option<Recorded>,
    /// Waiting for its next attempt.
    pub parked: Option<ParkedEvent>,
}

// ---------------------------------------------------------------------------------------------
// Outbound topics

/// A record for `crm.sync`: one for every record read, valid or not.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutcomeRecord {
    pub version: u32,
    /// `null` for a refused record whose event id is missing or invalid.
    pub event_id: Option<EventId>,
    /// `null` for a refused record whose shipment id is missing or invalid.
    pub shipment_id: Option<ShipmentId>,
    pub outcome: Outcome,
    /// For `dead_lettered`: the `x-dlq-reason-code` of the dead letter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<DeadLetterReason>,
    /// For a duplicate: what the first delivery ended in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_outcome: Option<Outcome>,
    pub attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crm_status: Option<String>,
    /// Absent for a refused record that has no valid event time.
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub occurred_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub processed_at: OffsetDateTime,
    /// Event-to-outcome latency (for `success`: event to CRM acknowledgement); absent without
    /// an event time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub correlation_id: String,
    /// Where a refused record was read (it may have no ids to find it by).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<SourcePosition>,
    /// The Kafka key: the shipment id, or a refused record's own key.
    #[serde(skip)]
    pub key: Option<Vec<u8>>,
}

/// A record for `dead.letters`: the original bytes plus why and where from.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub key: Option<Vec<u8>>,
    /// `None` for a record without a value (a tombstone) or one whose value is withheld.
    pub payload: Option<Vec<u8>>,
    /// The size of a value withheld because it is larger than consumers accept.
    pub withheld_bytes: Option<usize>,
    pub reason_code: DeadLetterReason,
    pub reason: String,
    pub source: SourcePosition,
    pub attempts: u32,
    pub replay_count: u32,
    pub event_id: Option<EventId>,
}

/// Why an event was set aside: the stable `x-dlq-reason-code` of crm-sync's dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterReason {
    MalformedJson,
    InvalidField,
    UnsupportedVersion,
    UnmappedStatus,
    /// The CRM refused the write for good.
    CrmRejected,
    /// Transient failures outlasted the retry budget.
    AttemptsExhausted,
    /// The record is larger than `kafka.max_record_bytes`; its value is withheld.
    RecordTooLarge,
    /// The event is dated further ahead than `pipeline.max_clock_skew_ms` allows.
    EventInFuture,
}

impl DeadLetterReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::MalformedJson => "malformed_json",
            DeadLetterReason::InvalidField => "invalid_field",
            DeadLetterReason::UnsupportedVersion => "unsupported_version",
            DeadLetterReason::UnmappedStatus => "unmapped_status",
            DeadLetterReason::CrmRejected => "crm_rejected",
            DeadLetterReason::AttemptsExhausted => "attempts_exhausted",
            DeadLetterReason::RecordTooLarge => "record_too_large",
            DeadLetterReason::EventInFuture => "event_in_future",
        }
    }
}

impl std::fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("publishing failed: {0}")]
pub struct PublishError(pub String);

/// Publishes outcomes to `crm.sync`. Returns once the broker has acknowledged every record.
#[async_trait]
pub trait OutcomeSink: Send + Sync {
    async fn publish(&self, outcomes: &[OutcomeRecord]) -> Result<(), PublishError>;
}

/// Parks records in `dead.letters`. Returns once the broker has acknowledged every record.
#[async_trait]
pub trait DeadLetterSink: Send + Sync {
    async fn dead_letter(&self, letters: &[DeadLetter]) -> Result<(), PublishError>;
}
