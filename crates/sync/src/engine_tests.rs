//! The engine against in-memory ports: the rules of the pipeline, one scenario each.

use crate::breaker::BreakerPolicy;
use crate::engine::{EngineSettings, Inbound, SyncEngine};
use crate::event::ShipmentId;
use crate::mapping::{CrmMapping, MappingConfig};
use crate::memory::{MemoryCrm, MemoryLedger, MemoryTopics};
use crate::ports::{CrmError, Outcome, SourcePosition, SyncLedger};
use crate::retry::RetryPolicy;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

struct Harness {
    crm: Arc<MemoryCrm>,
    ledger: Arc<MemoryLedger>,
    topics: Arc<MemoryTopics>,
    engine: SyncEngine,
}

static OFFSET: AtomicI64 = AtomicI64::new(0);

fn harness(max_attempts: u32, failure_threshold: u32) -> Harness {
    let crm = Arc::new(MemoryCrm::default());
    let ledger = Arc::new(MemoryLedger::default());
    let topics = Arc::new(MemoryTopics::default());
    let engine = SyncEngine::new(
        CrmMapping::new(MappingConfig::default()).unwrap(),
        EngineSettings {
            retry: RetryPolicy {
                max_attempts,
                ..RetryPolicy::default()
            },
            breaker: BreakerPolicy {
                failure_threshold,
                open_for: Duration::from_secs(60),
            },
            crm_batch_limit: 100,
            max_clock_skew: EngineSettings::DEFAULT_MAX_CLOCK_SKEW,
            max_record_bytes: 900_000,
        },
        crm.clone(),
        ledger.clone(),
        topics.clone(),
        topics.clone(),
        Box::new(|| 0.5),
    );
    Harness {
        crm,
        ledger,
        topics,
        engine,
    }
}

fn event(id: &str, shipment: &str, status: &str, minute: u8) -> Inbound {
    let payload = format!(
        r#"{{"event_id":"{id}","client_id":"c-{shipment}","shipment_id":"{shipment}","status":"{status}","occurred_at":"2026-11-01T10:{minute:02}:00Z","version":1}}"#
    );
    raw(shipment, payload.as_bytes())
}

fn raw(key: &str, payload: &[u8]) -> Inbound {
    Inbound {
        source: SourcePosition {
            topic: "tracking.events".into(),
            partition: 0,
            offset: OFFSET.fetch_add(1, Ordering::Relaxed),
        },
        key: Some(key.as_bytes().to_vec()),
        payload: Some(payload.to_vec()),
        oversized: None,
        replay_count: 0,
    }
}

fn sid(s: &str) -> ShipmentId {
    ShipmentId::parse(s).unwrap()
}

fn outcomes_of(h: &Harness, event_id: &str) -> Vec<Outcome> {
    h.topics
        .outcomes()
        .iter()
        .filter(|o| o.event_id.as_ref().is_some_and(|e| e.as_str() == event_id))
        .map(|o| o.outcome)
        .collect()
}

/// Makes every parked event due and runs one retry batch over them.
async fn retry_all_parked(h: &Harness) -> crate::engine::BatchReport {
    h.ledger.make_all_due();
    let due = h
        .ledger
        .due(&partitions(), time::OffsetDateTime::now_utc(), 10)
        .await
        .unwrap();
    h.engine.process_due(due).await.unwrap()
}

fn partitions() -> Vec<(String, i32)> {
    vec![("tracking.events".into(), 0)]
}

#[tokio::test]
async fn writes_new_statuses_and_logs_every_event() {
    let h = harness(3, 5);
    let r = h
        .engine
        .process(&[
            event("e1", "s1", "IN_TRANSIT", 0),
            event("e2", "s2", "DELIVERED", 0),
        ])
        .await
        .unwrap();
    assert_eq!(r.count(Outcome::Success), 2);
    assert_eq!(h.crm.state(&sid("s2")).unwrap().status, "delivered");
    assert_eq!(h.ledger.log().len(), 2);
    assert_eq!(r.success_lag_ms.len(), 2);
    let first = &h.ledger.log()[0];
    assert_eq!(first.payload.as_ref().unwrap()["shipmentId"], "s1");
}

#[tokio::test]
async fn redelivered_and_duplicated_events_have_no_second_effect() {
    let h = harness(3, 5);
    h.engine
        .process(&[
            event("e1", "s1", "IN_TRANSIT", 0),
            event("e1", "s1", "IN_TRANSIT", 0),
        ])
        .await
        .unwrap();
    h.engine
        .process(&[event("e1", "s1", "IN_TRANSIT", 0)])
        .await
        .unwrap();
    assert_eq!(h.crm.writes().len(), 1);
    assert_eq!(
        outcomes_of(&h, "e1"),
        [Outcome::Duplicate, Outcome::Success, Outcome::Duplicate]
    );
    let redelivered = h.topics.outcomes().into_iter().last().unwrap();
    assert_eq!(redelivered.first_outcome, Some(Outcome::Success));
}

#[tokio::test]
async fn an_older_event_never_overwrites_a_newer_one() {
    let h = harness(3, 5);
    // Across batches: newest first, then an older one arrives late.
    h.engine
        .process(&[event("e2", "s1", "DELIVERED", 5)])
        .await
        .unwrap();
    h.engine
        .process(&[event("e1", "s1", "IN_TRANSIT", 1)])
        .await
        .unwrap();
    // Within one batch, out of order.
    h.engine
        .process(&[
            event("f2", "s2", "DELIVERED", 5),
            event("f1", "s2", "IN_TRANSIT", 1),
        ])
        .await
        .unwrap();
    assert_eq!(h.crm.state(&sid("s1")).unwrap().status, "delivered");
    assert_eq!(h.crm.state(&sid("s2")).unwrap().status, "delivered");
    assert_eq!(outcomes_of(&h, "e1"), [Outcome::Stale]);
    assert_eq!(outcomes_of(&h, "f1"), [Outcome::Stale]);
    assert_eq!(h.crm.writes().len(), 2);
}

#[tokio::test]
async fn an_unchanged_status_is_not_written_again() {
    let h = harness(3, 5);
    h.engine
        .process(&[event("e1", "s1", "IN_TRANSIT", 1)])
        .await
        .unwrap();
    h.engine
        .process(&[event("e2", "s1", "IN_TRANSIT", 2)])
        .await
        .unwrap();
    assert_eq!(outcomes_of(&h, "e2"), [Outcome::Unchanged]);
    assert_eq!(h.crm.writes().len(), 1);
}

#[tokio::test]
async fn bad_events_go_to_dead_letters_with_their_reason() {
    let h = harness(3, 5);
    let r = h
        .engine
        .process(&[
            raw("k", b"{oops"),
            event("e1", "s1", "TELEPORTED", 0),
            event("e2", "s2", "IN_TRANSIT", 0),
        ])
        .await
        .unwrap();
    assert_eq!(r.count(Outcome::DeadLettered), 2);
    assert_eq!(r.count(Outcome::Success), 1);
    let letters = h.topics.dead_letters();
    let reasons: Vec<_> = letters.iter().map(|l| l.reason_code.as_str()).collect();
    assert_eq!(reasons, ["malformed_json", "unmapped_status"]);
    assert_eq!(letters[0].payload.as_deref(), Some(&b"{oops"[..]));
    assert_eq!(letters[0].source.topic, "tracking.events");
    assert_eq!(h.ledger.log().len(), 3, "bad events are logged too");
}

#[tokio::test]
async fn transient_failures_park_then_succeed() {
    let h = harness(5, 5);
    h.crm
        .fail_next_calls([CrmError::from_status(503, Some(Duration::from_secs(7)), "down")]);
    let r = h
        .engine
        .process(&[event("e1", "s1", "IN_TRANSIT", 0)])
        .await
        .unwrap();
    assert_eq!(r.count(Outcome::RetryScheduled), 1);
    let parked = h.ledger.parked();
    assert_eq!(parked.len(), 1);
    let wait = parked[0].next_attempt_at - time::OffsetDateTime::now_utc();
    assert!(wait > time::Duration::seconds(6), "Retry-After honoured: {wait}");

    assert!(h
        .ledger
        .due(&partitions(), time::OffsetDateTime::now_utc(), 10)
        .await
        .unwrap()
        .is_empty());
    let r = retry_all_parked(&h).await;
    assert_eq!(r.count(Outcome::Success), 1);
    assert!(h.ledger.parked().is_empty());
    let attempts: Vec<u32> = h.ledger.log().iter().map(|a| a.attempt).collect();
    assert_eq!(attempts, [1, 2]);
}

#[tokio::test]
async fn permanent_errors_dead_letter_at_once() {
    let h = harness(5, 5);
    h.crm
        .fail_writes_for(&sid("s1"), [CrmError::from_status(422, None, "bad status")]);
    let r = h
        .engine
        .process(&[event("e1", "s1", "IN_TRANSIT", 0)])
        .await
        .unwrap();
    assert_eq!(r.count(Outcome::DeadLettered), 1);
    assert_eq!(h.topics.dead_letters()[0].reason_code.as_str(), "crm_rejected");
    assert!(h.ledger.parked().is_empty());
}

#[tokio::test]
async fn exhausted_attempts_dead_letter_and_leave_the_queue() {
    let h = harness(2, 100);
    let e503 = || CrmError::from_status(503, None, "down");
    h.crm.fail_next_calls([e503(), e503()]);
    h.engine
        .process(&[event("e1", "s1", "IN_TRANSIT", 0)])
        .await
        .unwrap();
    let r = retry_all_parked(&h).await;
    assert_eq!(
        r.dead_letter_reasons,
        [crate::ports::DeadLetterReason::AttemptsExhausted]
    );
    assert_eq!(h.topics.dead_letters()[0].attempts, 2);
    assert!(h.ledger.parked().is_empty());
}

#[tokio::test]
async fn a_parked_event_overtaken_by_a_newer_one_ends_stale() {
    // Per-shipment order: a later event may overtake a parked one; the stale rule makes that
    // harmless because the parked event re-reads the CRM before writing.
    let h = harness(5, 5);
    h.crm
        .fail_writes_for(&sid("s1"), [CrmError::from_status(429, None, "slow down")]);
    h.engine
        .process(&[event("e1", "s1", "IN_TRANSIT", 1)])
        .await
        .unwrap();
    h.engine
        .process(&[event("e2", "s1", "DELIVERED", 2)])
        .await
        .unwrap();
    retry_all_parked(&h).await;
    assert_eq!(h.crm.state(&sid("s1")).unwrap().status, "delivered");
    assert_eq!(outcomes_of(&h, "e1"), [Outcome::RetryScheduled, Outcome::Stale]);
    assert_eq!(h.crm.writes().len(), 1);
}

#[tokio::test]
async fn parked_events_of_partitions_owned_elsewhere_are_not_due_here() {
    let h = harness(5, 5);
    h.crm.fail_next_calls([CrmError::transient("connect refused")]);
    h.engine
        .process(&[event("e1", "s1", "IN_TRANSIT", 1)])
        .await
        .unwrap();
    h.ledger.make_all_due();
    let elsewhere = vec![("tracking.events".to_string(), 7)];
    assert!(h
        .ledger
        .due(&elsewhere, time::OffsetDateTime::now_utc(), 10)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn the_breaker_opens_and_stops_calling_the_crm() {
    let h = harness(10, 2);
    let e = || CrmError::transient("timeout");
    h.crm.fail_next_calls([e(), e()]);
    h.engine
        .process(&[event("e1", "s1", "IN_TRANSIT", 1)])
        .await
        .unwrap();
    h.engine
        .process(&[event("e2", "s2", "IN_TRANSIT", 1)])
        .await
        .unwrap();
    assert_eq!(h.engine.breaker_state().as_gauge(), 2);
    let calls = h.crm.calls();
    let r = h
        .engine
        .process(&[event("e3", "s3", "IN_TRANSIT", 1)])
        .await
        .unwrap();
    assert_eq!(h.crm.calls(), calls, "no call while open");
    assert_eq!(r.count(Outcome::RetryScheduled), 1);
    let parked = h
        .ledger
        .parked()
        .into_iter()
        .find(|p| p.event.event_id.as_str() == "e3")
        .unwrap();
    assert!(parked.next_attempt_at > time::OffsetDateTime::now_utc() + time::Duration::seconds(50));
}

#[tokio::test]
async fn replayed_dead_letters_are_processed_again() {
    let h = harness(5, 5);
    h.crm
        .fail_writes_for(&sid("s1"), [CrmError::from_status(400, None, "bad")]);
    h.engine
        .process(&[event("e1", "s1", "IN_TRANSIT", 0)])
        .await
        .unwrap();
    let mut again = event("e1", "s1", "IN_TRANSIT", 0);
    h.engine.process(&[again.clone()]).await.unwrap();
    assert!(h.crm.writes().is_empty(), "a plain redelivery stays a duplicate");
    again.replay_count = 1;
    h.engine.process(&[again]).await.unwrap();
    assert_eq!(
        outcomes_of(&h, "e1"),
        [Outcome::DeadLettered, Outcome::Duplicate, Outcome::Success]
    );
}

#[tokio::test]
async fn a_crash_after_the_crm_write_and_before_the_commit_writes_nothing_twice() {
    let h = harness(5, 5);
    h.ledger.fail_next_commit();
    let batch = vec![event("e1", "s1", "IN_TRANSIT", 0)];
    assert!(h.engine.process(&batch).await.is_err());
    assert!(
        h.topics.outcomes().is_empty(),
        "nothing published before the commit"
    );
    // The offset was not committed, so the same records come again.
    let r = h.engine.process(&batch).await.unwrap();
    assert_eq!(r.count(Outcome::Unchanged), 1);
    assert_eq!(h.crm.writes().len(), 1);
}

#[tokio::test]
async fn memory_ledger_meets_the_ledger_contract() {
    crate::contract::ledger_contract(&MemoryLedger::default()).await;
}

#[tokio::test]
async fn a_failed_whole_call_parks_its_events_even_when_permanent() {
    // A rotated token (401) or a broken answer says nothing about the records: park, don't DLQ.
    let h = harness(5, 5);
    h.crm
        .fail_next_calls([CrmError::from_status(401, None, "token rejected")]);
    let r = h
        .engine
        .process(&[event("e1", "s1", "IN_TRANSIT", 0)])
        .await
        .unwrap();
    assert_eq!(r.count(Outcome::RetryScheduled), 1);
    assert!(h.topics.dead_letters().is_empty());
}

#[tokio::test]
async fn a_retried_apply_resumes_after_the_step_that_failed() {
    let h = harness(5, 5);
    let effects = h
        .engine
        .decide(&[raw("k", b"{bad"), event("e1", "s1", "IN_TRANSIT", 0)])
        .await
        .unwrap();
    h.ledger.fail_next_commit();
    assert!(h.engine.apply(&effects).await.is_err());
    h.engine.apply(&effects).await.unwrap();
    assert_eq!(
        h.topics.dead_letters().len(),
        1,
        "dead letters were not published twice"
    );
    assert_eq!(h.ledger.log().len(), 2);
    h.engine.apply(&effects).await.unwrap();
    assert_eq!(h.ledger.log().len(), 2, "an applied batch is not written again");
    assert_eq!(
        h.topics.outcomes().len(),
        2,
        "one per record, the refused one too"
    );
}

#[tokio::test]
async fn a_final_outcome_clears_a_parked_copy_from_an_overlapping_batch() {
    let h = harness(5, 5);
    h.crm.fail_next_calls([CrmError::transient("down")]);
    let first = h
        .engine
        .decide(&[event("e1", "s1", "IN_TRANSIT", 0)])
        .await
        .unwrap();
    // The next batch is decided before the first is applied, and carries a copy of e1.
    let second = h
        .engine
        .decide(&[event("e1", "s1", "IN_TRANSIT", 0)])
        .await
        .unwrap();
    h.engine.apply(&first).await.unwrap();
    h.engine.apply(&second).await.unwrap();
    assert!(
        h.ledger.parked().is_empty(),
        "the success removed the parked copy"
    );
    assert_eq!(h.crm.writes().len(), 1);
}

/// A record over the intake limit and a tombstone are dead-lettered without a value, a refused
/// record names the ids it has, and every refused record gets an outcome with its reason code.
#[tokio::test]
async fn every_refused_record_gets_a_dead_letter_and_an_outcome() {
    let h = harness(0, 5);
    let mut big = raw("s-big", b"");
    big.payload = None;
    big.oversized = Some(1_048_576);
    let mut tombstone = raw("s-gone", b"");
    tombstone.payload = None;
    let bad_field = event("e-bad", "s-bad", "IN_TRANSIT", 0);
    let bad_field = raw(
        "s-bad",
        &String::from_utf8(bad_field.payload.unwrap())
            .unwrap()
            .replace(r#""client_id":"c-s-bad""#, r#""client_id":"""#)
            .into_bytes(),
    );
    let r = h
        .engine
        .process(&[big, tombstone, bad_field, event("e-ok", "s-ok", "IN_TRANSIT", 0)])
        .await
        .unwrap();
    assert_eq!(r.count(Outcome::DeadLettered), 3);
    assert_eq!(r.count(Outcome::Success), 1);
    let letters = h.topics.dead_letters();
    let codes: Vec<&str> = letters.iter().map(|l| l.reason_code.as_str()).collect();
    assert_eq!(codes, ["record_too_large", "malformed_json", "invalid_field"]);
    assert_eq!(letters[0].payload, None, "the value is withheld");
    assert_eq!(letters[0].withheld_bytes, Some(1_048_576));
    assert_eq!(letters[1].payload, None, "a tombstone stays null");
    let outcomes = h.topics.outcomes();
    assert_eq!(outcomes.len(), 4, "one outcome per record");
    let refused: Vec<_> = outcomes
        .iter()
        .filter(|o| o.outcome == Outcome::DeadLettered)
        .collect();
    assert!(refused
        .iter()
        .all(|o| o.reason_code.is_some() && o.source.is_some()));
    let salvaged = refused
        .iter()
        .find(|o| o.event_id.is_some())
        .expect("ids salvaged");
    assert_eq!(salvaged.event_id.as_ref().unwrap().as_str(), "e-bad");
    assert_eq!(salvaged.shipment_id.as_ref().unwrap().as_str(), "s-bad");
    assert_eq!(salvaged.key.as_deref(), Some(&b"s-bad"[..]));
}

/// An event dated far ahead (year 2999) is refused with its own reason instead of freezing its
/// shipment: the next valid event is written.
#[tokio::test]
async fn an_event_beyond_the_clock_skew_is_refused_and_does_not_freeze_its_shipment() {
    let h = harness(0, 5);
    let future = event("e-future", "s1", "DELIVERED", 0);
    let future = raw(
        "s1",
        &String::from_utf8(future.payload.unwrap())
            .unwrap()
            .replace("2026-11-01", "2999-11-01")
            .into_bytes(),
    );
    let r = h.engine.process(&[future]).await.unwrap();
    assert_eq!(
        r.dead_letter_reasons,
        [crate::ports::DeadLetterReason::EventInFuture]
    );
    h.engine
        .process(&[event("e-now", "s1", "IN_TRANSIT", 5)])
        .await
        .unwrap();
    assert_eq!(h.crm.state(&sid("s1")).unwrap().status, "in_transit");
}

/// IN_TRANSIT@10:00 is written; IN_TRANSIT@12:00 finds it unchanged (the CRM's time stays at
/// 10:00); AT_PICKUP_POINT@11:00 is older than what the CRM reflects and must end stale.
#[tokio::test]
async fn an_older_status_never_wins_after_a_newer_event_with_the_same_status() {
    let h = harness(0, 5);
    for (id, status, minute) in [
        ("e10", "IN_TRANSIT", 10),
        ("e12", "IN_TRANSIT", 12),
        ("e11", "AT_PICKUP_POINT", 11),
    ] {
        h.engine
            .process(&[event(id, "s1", status, minute)])
            .await
            .unwrap();
    }
    assert_eq!(h.crm.state(&sid("s1")).unwrap().status, "in_transit");
    assert_eq!(outcomes_of(&h, "e12"), [Outcome::Unchanged]);
    assert_eq!(outcomes_of(&h, "e11"), [Outcome::Stale]);
    // The newest time is durable: a fresh engine over the same ledger decides the same.
    let again = harness(0, 5);
    let shipments = [sid("s1")];
    let newest = h.ledger.newest_seen(&shipments).await.unwrap();
    assert_eq!(newest[&sid("s1")].minute(), 12);
    drop(again);
}

/// The open breaker refuses without calling: that costs no attempt, so an attempt cap is never
/// reached by refusals alone (before, each refusal counted and the event was dead-lettered).
#[tokio::test]
async fn breaker_refusals_cost_no_attempts() {
    let h = harness(2, 1);
    h.crm.fail_next_calls([CrmError::transient("timeout")]);
    h.engine
        .process(&[event("e1", "s1", "IN_TRANSIT", 1)])
        .await
        .unwrap();
    assert_eq!(h.engine.breaker_state().as_gauge(), 2, "open after one failure");
    for _ in 0..3 {
        let calls = h.crm.calls();
        let r = retry_all_parked(&h).await;
        assert_eq!(h.crm.calls(), calls, "refused without a call");
        assert_eq!(r.count(Outcome::RetryScheduled), 1);
        assert!(h.topics.dead_letters().is_empty());
    }
    assert_eq!(h.ledger.parked()[0].attempts, 1, "one call made");
}

/// The budget is an age: an event whose first failure is older than `give_up_after` is given up
/// at its next failure, however few attempts it took.
#[tokio::test]
async fn an_event_is_given_up_by_the_age_of_its_first_failure() {
    let h = harness(0, 100);
    let e503 = || CrmError::from_status(503, None, "down");
    h.crm.fail_next_calls([e503(), e503(), e503()]);
    h.engine
        .process(&[event("e1", "s1", "IN_TRANSIT", 0)])
        .await
        .unwrap();
    let r = retry_all_parked(&h).await;
    assert_eq!(r.count(Outcome::RetryScheduled), 1, "young: retried");
    h.ledger.backdate_first_failures(Duration::from_secs(25 * 3600));
    let r = retry_all_parked(&h).await;
    assert_eq!(
        r.dead_letter_reasons,
        [crate::ports::DeadLetterReason::AttemptsExhausted]
    );
    assert!(h.ledger.parked().is_empty());
}

/// A NUL byte and a huge CRM error body never reach the ledger as they are: PostgreSQL refuses NUL
/// in text, which used to fail the batch's commit for ever.
#[tokio::test]
async fn crm_text_is_stripped_of_nul_and_bounded_before_it_is_stored() {
    let h = harness(0, 100);
    let body = format!("bad\0gateway {}", "x".repeat(10_000));
    h.crm.fail_next_calls([CrmError::from_status(503, None, body)]);
    h.engine
        .process(&[event("e1", "s1", "IN_TRANSIT", 0)])
        .await
        .unwrap();
    let parked = &h.ledger.parked()[0];
    assert!(!parked.last_error.contains('\0') && parked.last_error.len() <= 1024);
    let row = &h.ledger.log()[0];
    let error = row.error.as_deref().unwrap();
    assert!(!error.contains('\0') && error.len() <= 1024, "{}", error.len());
}

/// One CRM record that cannot be read fails only its own shipment's event; the others of the
/// same read are written (before, the whole chunk failed and ended dead-lettered).
#[tokio::test]
async fn one_unreadable_crm_record_fails_only_its_shipment() {
    let h = harness(0, 100);
    h.crm
        .break_record(&sid("s2"), CrmError::permanent("record lacks a valid status"));
    let r = h
        .engine
        .process(&[
            event("e1", "s1", "IN_TRANSIT", 0),
            event("e2", "s2", "IN_TRANSIT", 0),
            event("e3", "s3", "IN_TRANSIT", 0),
        ])
        .await
        .unwrap();
    assert_eq!(r.count(Outcome::Success), 2);
    assert_eq!(r.count(Outcome::DeadLettered), 1);
    assert_eq!(outcomes_of(&h, "e2"), [Outcome::DeadLettered]);
    assert_eq!(h.topics.dead_letters()[0].reason_code.as_str(), "crm_rejected");
    assert!(
        h.crm.state(&sid("s2")).is_none(),
        "nothing written over the broken record"
    );
}
