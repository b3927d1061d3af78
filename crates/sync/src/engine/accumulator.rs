//! What one batch leaves to make durable, collected in order: log rows, processed ids, parked
//! events, dead letters and outcomes, and the batch's report.

use super::{lag_ms, BatchReport, Call, Candidate, Effects, Inbound};
use crate::event::{InvalidEvent, TrackingEvent};
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

    /// A record refused at intake (too large, no value, not a valid event, dated in the
    /// future): dead-lettered, logged, and given an outcome naming whatever ids it has.
    pub(super) fn invalid(&mut self, m: &Inbound, invalid: &InvalidEvent) {
        tracing::warn!(
            topic = %m.source.topic, partition = m.source.partition, offset = m.source.offset,
            reason_code = %invalid.code(), reason = %invalid, "invalid event dead-lettered"
        );
        let code = invalid.code();
        let (event_id, shipment_id) = match &m.payload {
            Some(p) if m.oversized.is_none() => TrackingEvent::salvage_ids(p),
            _ => (None, None),
        };
        let now = OffsetDateTime::now_utc();
        let error = format!("{code}: {invalid}");
        self.count(Outcome::DeadLettered);
        self.report.dead_letter_reasons.push(code);
        self.outcomes.push(OutcomeRecord {
            version: 1,
            correlation_id: event_id.as_ref().map_or_else(
                || format!("{}/{}/{}", m.source.topic, m.source.partition, m.source.offset),
                ToString::to_string,
            ),
            event_id: event_id.clone(),
            shipment_id: shipment_id.clone(),
            outcome: Outcome::DeadLettered,
            reason_code: Some(code),
            first_outcome: None,
            attempt: 1,
            crm_status: None,
            occurred_at: None,
            processed_at: now,
            latency_ms: None,
            error: Some(error.clone()),
            source: Some(m.source.clone()),
            key: m.key.clone(),
        });
        self.ledger.attempts.push(AttemptRecord {
            event_id: event_id.clone(),
            shipment_id,
            client_id: None,
            correlation_id: None,
            payload: None,
            http_status: None,
            response_excerpt: None,
            outcome: Outcome::DeadLettered,
            attempt: 1,
            error: Some(error),
            event_time: None,
            sent_at: now,
            latency_ms: None,
            source: Some(m.source.clone()),
        });
        self.letters.push(DeadLetter {
            key: m.key.clone(),
            payload: m.payload.clone(),
            withheld_bytes: m.oversized,
            reason_code: code,
            reason: invalid.to_string(),
            source: m.source.clone(),
            attempts: 1,
            replay_count: m.replay_count,
            event_id,
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
        self.conclude_with(c, w, outcome, None, call);
    }

    fn conclude_with(
        &mut self,
        c: &Candidate,
        w: Option<&CrmStatusWrite>,
        outcome: Outcome,
        reason_code: Option<DeadLetterReason>,
        call: Call,
    ) {
        let call = call.stored();
        let now = OffsetDateTime::now_utc();
        self.count(outcome);
        if outcome == Outcome::Success {
            self.report.success_lag_ms.push(lag_ms(c.event.occurred_at, now));
        }
        // The CRM now reflects this event (written, or already showing its status): no older
        // event may be written over it, whatever the CRM's own timestamp says.
        if matches!(outcome, Outcome::Success | Outcome::Unchanged) {
            self.ledger
                .newest
                .push((c.event.shipment_id.clone(), c.event.occurred_at));
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
            .push(outcome_record(c, w, outcome, None, reason_code, error, now));
    }

    /// Parks the event after `attempts` calls, the first of which failed at `first_failed_at`.
    pub(super) fn park(
        &mut self,
        c: &Candidate,
        attempts: u32,
        first_failed_at: OffsetDateTime,
        err: &CrmError,
        delay: Duration,
    ) {
        let last_error = crm_text(&err.message);
        tracing::info!(
            event_id = %c.event.event_id, correlation_id = %c.event.correlation_id, shipment_id = %c.event.shipment_id,
            attempts, retry_in_ms = delay.as_millis() as u64, error = %last_error, "CRM failed; event parked"
        );
        self.ledger.park.push(ParkedEvent {
            event: c.event.clone(),
            source: c.source.clone(),
            attempts,
            replay_count: c.replay_count,
            next_attempt_at: OffsetDateTime::now_utc() + delay,
            first_failed_at,
            last_error,
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
        let reason = crm_text(&reason);
        tracing::warn!(
            event_id = %c.event.event_id, correlation_id = %c.event.correlation_id, shipment_id = %c.event.shipment_id,
            attempt = c.attempt, reason_code = %code, reason = %reason, "event dead-lettered"
        );
        self.report.dead_letter_reasons.push(code);
        call.error = Some(format!("{code}: {reason}"));
        self.letters.push(DeadLetter {
            key: c.key.clone(),
            payload: Some(c.payload.clone()),
            withheld_bytes: None,
            reason_code: code,
            reason,
            source: c.source.clone(),
            attempts: c.attempt,
            replay_count: c.replay_count,
            event_id: Some(c.event.event_id.clone()),
        });
        self.conclude_with(c, w, Outcome::DeadLettered, Some(code), call);
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
        self.ledger.newest.extend(other.ledger.newest);
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
    reason_code: Option<DeadLetterReason>,
    error: Option<String>,
    now: OffsetDateTime,
) -> OutcomeRecord {
    OutcomeRecord {
        version: 1,
        event_id: Some(c.event.event_id.clone()),
        shipment_id: Some(c.event.shipment_id.clone()),
        outcome,
        reason_code,
        first_outcome,
        attempt: c.attempt,
        crm_status: w.map(|w| w.crm_status.clone()),
        occurred_at: Some(c.event.occurred_at),
        processed_at: now,
        latency_ms: Some(lag_ms(c.event.occurred_at, now)),
        error,
        correlation_id: c.event.correlation_id.clone(),
        source: None,
        key: Some(c.event.shipment_id.as_str().as_bytes().to_vec()),
    }
}

/// The longest CRM-sourced text stored (error messages, response excerpts).
pub const MAX_CRM_TEXT_BYTES: usize = 1024;

/// CRM-sourced text fit to store: no NUL or other control characters (PostgreSQL refuses NUL in
/// text), at most [`MAX_CRM_TEXT_BYTES`], cut at a character boundary.
pub fn crm_text(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len().min(MAX_CRM_TEXT_BYTES));
    for c in raw.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > MAX_CRM_TEXT_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

impl Call {
    /// The call's texts as they may be stored.
    fn stored(self) -> Self {
        Self {
            response_excerpt: self.response_excerpt.as_deref().map(crm_text),
            error: self.error.as_deref().map(crm_text),
            ..self
        }
    }
}
