//! The two-way sync's consumers, each a [`RecordHandler`] under the shared at-least-once runner,
//! each in its own consumer group so each scales on its own:
//! - [`Outgoing`] (`crm.outgoing` → CRM): the dispatcher;
//! - [`Incoming`] (`crm.incoming` → our copy, then `crm.processed` / `crm.failed`): the processor;
//! - [`Clients`] (`All_Clients` → our copy, through the same use case as the HTTP API).
//!
//! No record stalls a stage: a record that cannot be read is dead-lettered with a reason code; a
//! cause worth retrying (PostgreSQL or the CRM away) retries the same record with backoff, by age:
//! past `retry.give_up_after_s` it is set aside (`attempts_exhausted`) and the stage goes on.

use crate::metrics::Metrics;
use async_trait::async_trait;
use backbone_kafka::{ConsumedRecord, Disposition, KafkaPublisher, OutgoingRecord, RecordHandler, Rejected};
use backbone_sync::clients::flows::{Dispatcher, FlowError, Processor};
use backbone_sync::clients::records::{
    ClientReference, Failed, IncomingHint, OutgoingChange, Processed, HEADER_REQUEST_ID, VERSION,
};
use backbone_sync::clients::{CardChange, ClientStore, IdempotencyClaim, Idempotent, Source, StoreError};
use backbone_sync::ports::SourcePosition;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tracing::Instrument;

/// First failure time per record, so retries are bounded by age, not by count.
#[derive(Default)]
pub struct RetryClock {
    first_failed: Mutex<HashMap<(String, i32, i64), Instant>>,
    pub give_up_after: Duration,
}

impl RetryClock {
    pub fn new(give_up_after: Duration) -> Self {
        Self {
            first_failed: Mutex::default(),
            give_up_after,
        }
    }

    fn key(r: &ConsumedRecord) -> (String, i32, i64) {
        (r.position.topic.clone(), r.position.partition, r.position.offset)
    }

    /// Records a failure; `true` when the record has been failing for longer than allowed.
    fn exhausted(&self, r: &ConsumedRecord) -> bool {
        let mut m = self.first_failed.lock().unwrap_or_else(PoisonError::into_inner);
        if m.len() > 10_000 {
            m.clear();
        }
        let first = *m.entry(Self::key(r)).or_insert_with(Instant::now);
        first.elapsed() >= self.give_up_after
    }

    fn done(&self, r: &ConsumedRecord) {
        self.first_failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&Self::key(r));
    }
}

fn rejected(code: &str, reason: impl Into<String>) -> Disposition {
    Disposition::DeadLetter(Rejected {
        reason_code: code.to_owned(),
        reason: reason.into(),
        payload: None,
    })
}

fn position(r: &ConsumedRecord) -> SourcePosition {
    SourcePosition {
        topic: r.position.topic.clone(),
        partition: r.position.partition,
        offset: r.position.offset,
    }
}

fn span(stage: &'static str, r: &ConsumedRecord) -> tracing::Span {
    let request_id = r.header(HEADER_REQUEST_ID).unwrap_or("");
    let span = tracing::info_span!(
        "crm_sync.two_way",
        stage,
        request_id = %request_id,
        topic = %r.position.topic,
        partition = r.position.partition,
        offset = r.position.offset
    );
    let headers: HashMap<String, String> = r
        .headers
        .iter()
        .filter(|(k, _)| k == "traceparent" || k == "tracestate")
        .filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.clone()?).ok()?)))
        .collect();
    backbone_telemetry::set_parent_from_headers(&span, &headers);
    span
}

/// The dispatcher's consumer.
pub struct Outgoing {
    pub flow: Dispatcher,
    pub clock: RetryClock,
    pub metrics: Arc<Metrics>,
    pub up: super::StageUp,
}

#[async_trait]
impl RecordHandler for Outgoing {
    type Transient = String;

    async fn handle(&self, record: &ConsumedRecord) -> Result<Disposition, String> {
        let handled = self.handle_record(record).await;
        self.up.set(handled.is_ok());
        handled
    }

    /// A dispatch always writes what is stored now, not what the record carried, so a card
    /// change (or a change of one task) followed by another of the same kind in the same batch
    /// needs no CRM round trip of its own: the later one writes both. An interaction is never
    /// superseded, and neither is a change that forces a field the later one does not.
    fn supersedes(&self, later: &ConsumedRecord, earlier: &ConsumedRecord) -> bool {
        let parse = |r: &ConsumedRecord| {
            serde_json::from_slice::<OutgoingChange>(r.value())
                .ok()
                .filter(|c| c.version == VERSION)
        };
        let (Some(later), Some(earlier)) = (parse(later), parse(earlier)) else {
            return false;
        };
        covers(&later, &earlier)
    }

    fn coalesced(&self, record: &ConsumedRecord) {
        self.metrics.two_way_dispatched("coalesced");
        tracing::debug!(
            request_id = record.header(HEADER_REQUEST_ID).unwrap_or(""),
            offset = record.position.offset,
            "change coalesced into a later one of the same batch"
        );
    }
}

/// Whether dispatching `later` writes everything dispatching `earlier` would.
fn covers(later: &OutgoingChange, earlier: &OutgoingChange) -> bool {
    use backbone_sync::clients::records::ChangeKind;
    if later.client_id != earlier.client_id
        || later.kind != earlier.kind
        || !earlier.forced.iter().all(|f| later.forced.contains(f))
    {
        return false;
    }
    match earlier.kind {
        ChangeKind::Card => true,
        ChangeKind::Task => matches!(
            (&later.task, &earlier.task),
            (Some(l), Some(e)) if l.task_id == e.task_id
        ),
        _ => false,
    }
}

impl Outgoing {
    async fn handle_record(&self, record: &ConsumedRecord) -> Result<Disposition, String> {
        let change: OutgoingChange = match serde_json::from_slice(record.value()) {
            Ok(c) => c,
            Err(_) => return Ok(rejected("malformed_json", "not a crm.outgoing v1 record")),
        };
        if change.version != VERSION {
            return Ok(rejected("unsupported_version", "crm.outgoing version must be 1"));
        }
        let result = self
            .flow
            .dispatch(&change)
            .instrument(span("dispatcher", record))
            .await;
        match result {
            Ok(d) => {
                self.clock.done(record);
                let outcome = if d.written.is_empty() && !d.entity_written {
                    "unchanged"
                } else {
                    "written"
                };
                self.metrics.two_way_dispatched(outcome);
                Ok(Disposition::Done)
            }
            Err(e) if e.is_transient() => {
                if self.clock.exhausted(record) {
                    self.clock.done(record);
                    self.metrics.two_way_dispatched("dead_lettered");
                    return Ok(rejected("attempts_exhausted", format!("still failing: {e}")));
                }
                Err(e.to_string())
            }
            Err(e) => {
                self.clock.done(record);
                self.metrics.two_way_dispatched("dead_lettered");
                Ok(rejected(e.reason_code(), e.to_string()))
            }
        }
    }
}

/// The processor's consumer.
pub struct Incoming {
    pub flow: Processor,
    pub publisher: KafkaPublisher,
    pub processed_topic: String,
    pub failed_topic: String,
    pub clock: RetryClock,
    pub metrics: Arc<Metrics>,
    pub up: super::StageUp,
}

impl Incoming {
    async fn publish(&self, topic: &str, key: &str, payload: &[u8], request_id: &str) -> Result<(), String> {
        self.publisher
            .send_all(vec![OutgoingRecord {
                topic,
                key: Some(key.as_bytes()),
                payload: Some(payload),
                headers: vec![
                    ("content-type".into(), "application/json".into()),
                    (HEADER_REQUEST_ID.into(), request_id.into()),
                ],
            }])
            .await
            .map_err(|e| e.to_string())
    }

    async fn failed(
        &self,
        record: &ConsumedRecord,
        hint: &IncomingHint,
        code: &str,
        reason: String,
    ) -> Result<Disposition, String> {
        let failed = Failed {
            version: VERSION,
            webhook_id: Some(hint.webhook_id),
            vendor: Some(hint.hint.vendor.clone()),
            crm_id: Some(hint.hint.crm_id.clone()),
            client_id: hint.hint.client_id.clone(),
            reason_code: code.to_owned(),
            reason,
            request_id: Some(hint.request_id.clone()),
            source: position(record),
            failed_at: OffsetDateTime::now_utc(),
        };
        let bytes = serde_json::to_vec(&failed).map_err(|e| e.to_string())?;
        self.publish(&self.failed_topic, &hint.key(), &bytes, &hint.request_id)
            .await?;
        self.metrics.two_way_failed(code);
        Ok(Disposition::Done)
    }
}

#[async_trait]
impl RecordHandler for Incoming {
    type Transient = String;

    async fn handle(&self, record: &ConsumedRecord) -> Result<Disposition, String> {
        let handled = self.handle_record(record).await;
        self.up.set(handled.is_ok());
        handled
    }
}

impl Incoming {
    async fn handle_record(&self, record: &ConsumedRecord) -> Result<Disposition, String> {
        let hint: IncomingHint = match serde_json::from_slice(record.value()) {
            Ok(h) => h,
            Err(_) => return Ok(rejected("malformed_json", "not a crm.incoming v1 record")),
        };
        if hint.version != VERSION {
            return Ok(rejected("unsupported_version", "crm.incoming version must be 1"));
        }
        let result = self
            .flow
            .process(&hint)
            .instrument(span("processor", record))
            .await;
        let done = match result {
            Ok(done) => done,
            Err(e) if e.is_transient() => {
                if self.clock.exhausted(record) {
                    self.clock.done(record);
                    return self
                        .failed(record, &hint, "attempts_exhausted", format!("still failing: {e}"))
                        .await;
                }
                return Err(e.to_string());
            }
            Err(e) => {
                self.clock.done(record);
                let code = match &e {
                    FlowError::Crm(_) => "crm_rejected",
                    other => other.reason_code(),
                };
                return self.failed(record, &hint, code, e.to_string()).await;
            }
        };
        self.clock.done(record);
        let processed = Processed {
            version: VERSION,
            webhook_id: hint.webhook_id,
            vendor: hint.hint.vendor.clone(),
            entity: hint.hint.entity,
            crm_id: hint.hint.crm_id.clone(),
            client_id: done.client_id.clone(),
            outcome: done.outcome,
            applied: done.applied,
            sent_back: done.sent_back,
            asked: done.asked,
            request_id: hint.request_id.clone(),
            processed_at: OffsetDateTime::now_utc(),
        };
        let key = done
            .client_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| hint.key());
        let bytes = serde_json::to_vec(&processed).map_err(|e| e.to_string())?;
        self.publish(&self.processed_topic, &key, &bytes, &hint.request_id)
            .await?;
        self.metrics.two_way_processed(outcome_name(&processed));
        Ok(Disposition::Done)
    }
}

fn outcome_name(p: &Processed) -> &'static str {
    use backbone_sync::clients::records::ProcessedOutcome as O;
    match p.outcome {
        O::Applied => "applied",
        O::Echo => "echo",
        O::Unchanged => "unchanged",
        O::Conflict => "conflict",
        O::Gone => "gone",
    }
}

/// The `All_Clients` consumer: each record is a whole card, applied like a `PUT` with source
/// `all_clients`, idempotent by `event_id`. A field changed on our side after the record's
/// `occurred_at` is kept (an older record never overwrites a newer change).
pub struct Clients {
    pub store: Arc<dyn ClientStore>,
    pub clock: RetryClock,
    pub metrics: Arc<Metrics>,
    pub up: super::StageUp,
}

#[async_trait]
impl RecordHandler for Clients {
    type Transient = String;

    async fn handle(&self, record: &ConsumedRecord) -> Result<Disposition, String> {
        let handled = self.handle_record(record).await;
        self.up.set(handled.is_ok());
        handled
    }
}

impl Clients {
    async fn handle_record(&self, record: &ConsumedRecord) -> Result<Disposition, String> {
        let reference = match ClientReference::parse(record.value()) {
            Ok(r) => r,
            Err(e) => {
                self.metrics.two_way_clients(e.code());
                return Ok(rejected(e.code(), e.to_string()));
            }
        };
        let result = self.apply(&reference).await;
        match result {
            Ok(outcome) => {
                self.clock.done(record);
                self.metrics.two_way_clients(outcome);
                Ok(match outcome {
                    "event_id_reused" => rejected(
                        "event_id_reused",
                        "this event_id was applied before with other content",
                    ),
                    _ => Disposition::Done,
                })
            }
            Err(StoreError::Unavailable(e)) => {
                if self.clock.exhausted(record) {
                    self.clock.done(record);
                    return Ok(rejected(
                        "attempts_exhausted",
                        format!("store still failing: {e}"),
                    ));
                }
                Err(e)
            }
            Err(e) => {
                self.clock.done(record);
                Ok(rejected("store_refused", e.to_string()))
            }
        }
    }
}

impl Clients {
    async fn apply(&self, r: &ClientReference) -> Result<&'static str, StoreError> {
        let current = self.store.card(&r.client_id).await?;
        let change = CardChange {
            client_id: r.client_id.clone(),
            fields: r.fields_to_apply(current.as_ref()),
            replace: false,
            must_exist: false,
            source: Source::AllClients,
            at: r.occurred_at,
            request_id: r
                .request_id
                .clone()
                .unwrap_or_else(|| format!("all-clients-{}", short_digest(r.event_id.as_bytes()))),
        };
        let claim = IdempotencyClaim {
            key: r.event_id.clone(),
            scope: "All_Clients".into(),
            request_digest: short_digest(
                serde_json::to_string(&(&r.client_id, &r.card, r.occurred_at.unix_timestamp()))
                    .unwrap_or_default()
                    .as_bytes(),
            ),
        };
        Ok(match self.store.change_card(&change, Some(&claim)).await? {
            Idempotent::Fresh(c) if c.changed.is_empty() => "unchanged",
            Idempotent::Fresh(_) => "applied",
            Idempotent::Replayed(_) => "duplicate",
            Idempotent::KeyReused => "event_id_reused",
        })
    }
}

fn short_digest(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::covers;
    use backbone_sync::clients::records::OutgoingChange;
    use serde_json::json;

    fn change(client: &str, kind: &str, extra: serde_json::Value) -> OutgoingChange {
        let mut v = json!({
            "version": 1, "change_id": 1, "client_id": client, "kind": kind,
            "source": "api", "request_id": "r", "occurred_at": "2026-12-01T10:00:00Z"
        });
        for (k, x) in extra.as_object().cloned().unwrap_or_default() {
            v[k] = x;
        }
        serde_json::from_value(v).expect("a crm.outgoing v1 record")
    }

    fn task(id: &str) -> serde_json::Value {
        json!({"task": {"task_id": id, "client_id": "c-1", "title": "Call", "state": "open"}})
    }

    #[test]
    fn a_later_card_change_of_the_same_client_covers_an_earlier_one() {
        let card = change("c-1", "card", json!({"fields": ["phone"]}));
        assert!(covers(
            &change("c-1", "card", json!({"fields": ["email"]})),
            &card
        ));
        assert!(
            !covers(&change("c-2", "card", json!({})), &card),
            "another client"
        );
        assert!(
            !covers(&change("c-1", "task", task("t-1")), &card),
            "another kind"
        );
    }

    #[test]
    fn a_forced_field_is_covered_only_by_a_change_forcing_it_too() {
        let forced = change("c-1", "card", json!({"forced": ["manager"]}));
        assert!(!covers(&change("c-1", "card", json!({})), &forced));
        assert!(covers(
            &change("c-1", "card", json!({"forced": ["manager", "phone"]})),
            &forced
        ));
        assert!(covers(&forced, &change("c-1", "card", json!({}))));
    }

    #[test]
    fn a_task_change_is_covered_by_a_later_change_of_that_task_only_and_interactions_never() {
        let t1 = change("c-1", "task", task("t-1"));
        assert!(covers(&change("c-1", "task", task("t-1")), &t1));
        assert!(!covers(&change("c-1", "task", task("t-2")), &t1));
        let note = json!({"interaction": {"interaction_id": "n-1", "client_id": "c-1", "channel": "call",
            "direction": "inbound", "text": "hi", "at": "2026-12-01T10:00:00Z"}});
        let n1 = change("c-1", "interaction", note.clone());
        assert!(!covers(&change("c-1", "interaction", note), &n1));
    }
}
