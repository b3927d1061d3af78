//! What one batch leaves to make durable, collected in order: log rows, processed ids, parked
//! events, dead letters and outcomes, and the batch's report.

use super::{lag_ms, BatchReport, Call, Candidate, Effects, Inbound};
use crate::event::InvalidEvent;
use crate::mapping::{CrmMapping, CrmStatusWrite};
use crate::ports::*;
use std::sync::atomic::AtomicU8;
use std::time::Duration;
use time::OffsetDateTime;

/// Collects the effects of one batch until they are flushed in order.
pub(super) struct Accumulator<'a> {
    mapping: &'a CrmMapping,
    ledger: LedgerBatch,
    outcomes: Vec<OutcomeRecord>,
    letters: Vec<DeadLetter>,
    report: BatchReport,
}

impl<'a> Accumulator<'a> {
    pub(super) fn new(mapping: &'a CrmMapping) -> Self {
        Self {
            mapping,
            ledger: LedgerBatch::default(),
            outcomes: Vec::new(),
            letters: Vec::new(),
            report: BatchReport::default(),
        }
    }

    fn count(&mut self, outcome: Outcome) {
        *self.report.counts.entry(outcome).or_default() += 1;
    }

    /// A record that is not a valid tracking event.
    pub(super) fn invalid(&mut self, m: &Inbound, invalid: &InvalidEvent) {
        tracing::warn!(
            topic = %m.source.topic, partition = m.source.partition, offset = m.source.offset,
            reason_code = %invalid.code(), reason = %invalid, "invalid event dead-lettered"
        );
        self.count(Outcome::DeadLettered);
        self.report.dead_letter_reasons.push(invalid.code());
        self.ledger.attempts.push(AttemptRecord {
            event_id: None,
            shipment_id: None,
            client_id: None,
            correlation_id: None,
            payload: None,
            http_status: None,
            response_excerpt: None,
            outcome: Outcome::DeadLettered,
            attempt: 1,
            error: Some(format!("{}: {invalid}", invalid.code())),
            event_time: None,
            sent_at: OffsetDateTime::now_utc(),
            latency_ms: None,
            source: Some(m.source.clone()),
        });
        self.letters.push(DeadLetter {
            key: m.key.clone(),
            payload: m.payload.clone(),
            reason_code: invalid.code(),
            reason: invalid.to_string(),
            source: m.source.clone(),
            attempts: 1,
            replay_count: m.replay_count,
            event_id: None,
        });
    }

    /// An event handled before: logged and reported, but the processed record keeps the first
    /// outcome.
    pub(super) fn duplicate(&mut self, c: &Candidate, first: Option<Outcome>) {
        let w = self.mapping.to_crm(&c.event).ok();
        let now = OffsetDateTime::now_utc();
        self.count(Outcome::Duplicate);
        self.ledger
            .attempts
            .push(self.attempt_row(c, w.as_ref(), Outcome::Duplicate, Call::default(), now));
        self.outcomes.push(outcome_record(
            c,
            w.as_ref(),
            Outcome::Duplicate,
            first,
            None,
            now,
        ));
    }

    /// Records an outcome: log row, processed id, outcome record, and leaves the retry queue when
    /// the outcome is final.
    pub(super) fn conclude(
        &mut self,
        c: &Candidate,
        w: Option<&CrmStatusWrite>,
        outcome: Outcome,
        call: Call,
    ) {
        let now = OffsetDateTime::now_utc();
        self.count(outcome);
        if outcome == Outcome::Success {
            self.report.success_lag_ms.push(lag_ms(c.event.occurred_at, now));
        }
        let error = call.error.clone();
        let row = self.attempt_row(c, w, outcome, call, now);
        self.ledger.attempts.push(row);
        self.ledger.processed.push((
            c.event.event_id.clone(),
            Recorded {
                outcome,
                replay_count: c.replay_count,
            },
        ));
        // A final outcome clears any parked copy (one may have been parked by an overlapping
        // batch); deleting a row that is not there costs an index probe.
        if outcome.is_final() {
            self.ledger.unpark.push(c.event.event_id.clone());
        }
        self.outcomes
            .push(outcome_record(c, w, outcome, None, error, now));
    }

    pub(super) fn park(&mut self, c: &Candidate, err: &CrmError, delay: Duration) {
        tracing::info!(
            event_id = %c.event.event_id, correlation_id = %c.event.correlation_id, shipment_id = %c.event.shipment_id,
            attempt = c.attempt, retry_in_ms = delay.as_millis() as u64, error = %err.message, "CRM failed; event parked"
        );
        self.ledger.park.push(ParkedEvent {
            event: c.event.clone(),
            source: c.source.clone(),
            attempts: c.attempt,
            replay_count: c.replay_count,
            next_attempt_at: OffsetDateTime::now_utc() + delay,
            last_error: err.message.clone(),
        });
    }

    pub(super) fn dead_letter(
        &mut self,
        c: &Candidate,
        w: Option<&CrmStatusWrite>,
        code: DeadLetterReason,
        reason: String,
        mut call: Call,
    ) {
        tracing::warn!(
            event_id = %c.event.event_id, correlation_id = %c.event.correlation_id, shipment_id = %c.event.shipment_id,
            attempt = c.attempt, reason_code = %code, reason = %reason, "event dead-lettered"
        );
        self.report.dead_letter_reasons.push(code);
        call.error = Some(format!("{code}: {reason}"));
        self.letters.push(DeadLetter {
            key: c.key.clone(),
            payload: c.payload.clone(),
            reason_code: code,
            reason,
            source: c.source.clone(),
            attempts: c.attempt,
            replay_count: c.replay_count,
            event_id: Some(c.event.event_id.clone()),
        });
        self.conclude(c, w, Outcome::DeadLettered, call);
    }

    fn attempt_row(
        &self,
        c: &Candidate,
        w: Option<&CrmStatusWrite>,
        outcome: Outcome,
        call: Call,
        now: OffsetDateTime,
    ) -> AttemptRecord {
        AttemptRecord {
            event_id: Some(c.event.event_id.clone()),
            shipment_id: Some(c.event.shipment_id.clone()),
            client_id: Some(c.event.client_id.to_string()),
            correlation_id: Some(c.event.correlation_id.clone()),
            payload: w.map(|w| serde_json::Value::Object(self.mapping.render(w))),
            http_status: call.http_status,
            response_excerpt: call.response_excerpt,
            outcome,
            attempt: c.attempt,
            error: call.error,
            event_time: Some(c.event.occurred_at),
            sent_at: now,
            latency_ms: call.latency_ms,
            source: Some(c.source.clone()),
        }
    }

    pub(super) fn merge(&mut self, other: Accumulator<'_>) {
        self.ledger.attempts.extend(other.ledger.attempts);
        self.ledger.processed.extend(other.ledger.processed);
        self.ledger.park.extend(other.ledger.park);
        self.ledger.unpark.extend(other.ledger.unpark);
        self.outcomes.extend(other.outcomes);
        self.letters.extend(other.letters);
        for (o, n) in other.report.counts {
            *self.report.counts.entry(o).or_default() += n;
        }
        self.report.success_lag_ms.extend(other.report.success_lag_ms);
        self.report
            .dead_letter_reasons
            .extend(other.report.dead_letter_reasons);
    }

    pub(super) fn into_effects(self) -> Effects {
        Effects {
            ledger: self.ledger,
            outcomes: self.outcomes,
            letters: self.letters,
            report: self.report,
            done: AtomicU8::new(0),
        }
    }
}

fn outcome_record(
    c: &Candidate,
    w: Option<&CrmStatusWrite>,
    outcome: Outcome,
    first_outcome: Option<Outcome>,
    error: Option<String>,
    now: OffsetDateTime,
) -> OutcomeRecord {
    OutcomeRecord {
        version: 1,
        event_id: c.event.event_id.clone(),
        shipment_id: c.event.shipment_id.clone(),
        outcome,
        first_outcome,
        attempt: c.attempt,
        crm_status: w.map(|w| w.crm_status.clone()),
        occurred_at: c.event.occurred_at,
        processed_at: now,
        latency_ms: lag_ms(c.event.occurred_at, now),
        error,
        correlation_id: c.event.correlation_id.clone(),
    }
}
