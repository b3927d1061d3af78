//! What goes into a batch and what it leaves behind: the records taken in, the effects still to
//! make durable, and the report for metrics.

use crate::ports::{DeadLetter, DeadLetterReason, LedgerBatch, Outcome, OutcomeRecord, SourcePosition};
use std::collections::HashMap;
use std::sync::atomic::AtomicU8;

/// One record consumed from `tracking.events`.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub source: SourcePosition,
    pub key: Option<Vec<u8>>,
    /// `None` for a tombstone, or for a record too large to take in.
    pub payload: Option<Vec<u8>>,
    /// `Some(size)` when the record was larger than the intake limit (its value was dropped).
    pub oversized: Option<usize>,
    /// How many times this record was replayed from `dead.letters` (header `x-replay-count`).
    pub replay_count: u32,
}

/// Everything a decided batch still has to make durable, in order: dead letters, the ledger
/// transaction, outcomes.
#[derive(Debug)]
pub struct Effects {
    pub(super) ledger: LedgerBatch,
    pub(super) outcomes: Vec<OutcomeRecord>,
    pub(super) letters: Vec<DeadLetter>,
    pub(super) report: BatchReport,
    /// Steps already done (0 none, 1 dead letters, 2 ledger, 3 outcomes), so a retried apply
    /// resumes where the failed one stopped instead of writing the log rows again.
    pub(super) done: AtomicU8,
}

impl Effects {
    /// What the batch ends in once applied.
    pub fn report(&self) -> &BatchReport {
        &self.report
    }
}

/// What a batch ended in, for metrics.
#[derive(Debug, Default, Clone)]
pub struct BatchReport {
    pub counts: HashMap<Outcome, u64>,
    /// Event-to-CRM latency of each successful write, in milliseconds.
    pub success_lag_ms: Vec<f64>,
    pub dead_letter_reasons: Vec<DeadLetterReason>,
}

impl BatchReport {
    pub fn count(&self, outcome: Outcome) -> u64 {
        self.counts.get(&outcome).copied().unwrap_or(0)
    }
}
