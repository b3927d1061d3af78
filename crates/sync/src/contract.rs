//! Contract suites: the same scenarios run against every adapter of a port (the in-memory one here,
//! the real ones in their crates' tests), so a fake can never drift from the real thing.

use crate::event::{ClientId, EventId, ShipmentId, TrackingEvent, TrackingStatus};
use crate::ports::*;
use time::{Duration, OffsetDateTime};

fn event(id: &str, minute: i64) -> TrackingEvent {
    TrackingEvent {
        event_id: EventId::parse(id).expect("valid id"),
        client_id: ClientId::parse("c-1").expect("valid id"),
        shipment_id: ShipmentId::parse(format!("s-{id}")).expect("valid id"),
        status: TrackingStatus::parse("IN_TRANSIT").expect("valid status"),
        // Whole milliseconds: every store keeps at least that precision.
        occurred_at: OffsetDateTime::from_unix_timestamp(1_793_527_200 + minute * 60).expect("valid time"),
        version: 1,
        correlation_id: format!("corr-{id}"),
    }
}

fn parked(id: &str, partition: i32, minute: i64, due: OffsetDateTime) -> ParkedEvent {
    ParkedEvent {
        event: event(id, minute),
        source: SourcePosition {
            topic: "tracking.events".into(),
            partition,
            offset: 42,
        },
        attempts: 1,
        replay_count: 0,
        next_attempt_at: due,
        first_failed_at: first_failure(),
        last_error: "503".into(),
    }
}

/// Whole milliseconds, like every event time here.
fn first_failure() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_793_527_000).expect("valid time")
}

fn shipment(s: &str) -> ShipmentId {
    ShipmentId::parse(s).expect("valid id")
}

fn attempt(id: &str, outcome: Outcome) -> AttemptRecord {
    let e = event(id, 0);
    AttemptRecord {
        event_id: Some(e.event_id),
        shipment_id: Some(e.shipment_id),
        client_id: Some("c-1".into()),
        correlation_id: Some(e.correlation_id),
        payload: Some(serde_json::json!({"status": "in_transit"})),
        http_status: Some(200),
        response_excerpt: Some("{}".into()),
        outcome,
        attempt: 1,
        error: None,
        event_time: Some(e.occurred_at),
        sent_at: OffsetDateTime::now_utc(),
        latency_ms: Some(1.5),
        source: Some(SourcePosition {
            topic: "tracking.events".into(),
            partition: 0,
            offset: 1,
        }),
    }
}

fn id(s: &str) -> EventId {
    EventId::parse(s).expect("valid id")
}

/// Every `SyncLedger` must pass this. Panics with the failed expectation.
pub async fn ledger_contract(ledger: &dyn SyncLedger) {
    let now = OffsetDateTime::now_utc();
    let owned = vec![("tracking.events".to_string(), 0)];
    a_batch_commits_its_rows_and_the_last_write_wins(ledger, now).await;
    a_final_outcome_stands_against_a_later_retry(ledger).await;
    due_events_are_the_owned_ones_oldest_first(ledger, &owned, now).await;
    reparking_updates_and_unparking_removes(ledger, &owned, now).await;
    newest_times_only_move_forward(ledger).await;
    a_trace_tells_every_attempt_the_outcome_and_the_wait(ledger).await;
    events_are_found_by_their_keys_and_counted_by_time(ledger).await;
}

/// The operator's search (shipment, client, request id: newest first, each event once, from
/// `since` on) and the activity buckets (outcomes, dead-letter reasons, lag percentiles).
async fn events_are_found_by_their_keys_and_counted_by_time(ledger: &dyn SyncLedger) {
    // Far from every other scenario's rows, which are sent "now".
    let base = OffsetDateTime::from_unix_timestamp(2_208_988_800).expect("valid time");
    let ms = Duration::milliseconds;
    let row = |id: &str, outcome: Outcome, sent: Duration, lag_ms: i64| {
        let mut a = attempt(id, outcome);
        a.client_id = Some("c-find".into());
        a.sent_at = base + sent;
        a.event_time = Some(base + sent - ms(lag_ms));
        a
    };
    let before = row("f-0", Outcome::Success, Duration::seconds(-10), 5);
    let first = row("f-1", Outcome::Success, Duration::seconds(10), 20);
    let second = row("f-2", Outcome::Success, Duration::seconds(20), 40);
    let retried = row("f-3", Outcome::RetryScheduled, Duration::seconds(30), 0);
    let mut rejected = row("f-3", Outcome::DeadLettered, Duration::seconds(400), 0);
    rejected.attempt = 2;
    rejected.error = Some("crm_rejected: 422".into());
    let mut malformed = row("f-4", Outcome::DeadLettered, Duration::seconds(410), 0);
    (malformed.client_id, malformed.error) = (None, None);
    ledger
        .commit(&LedgerBatch {
            attempts: vec![before, first, second, retried, rejected, malformed],
            ..LedgerBatch::default()
        })
        .await
        .expect("commit");

    let find = |key: TraceKey, limit: usize| async move {
        let found = ledger.find_events(&key, base, limit).await.expect("find");
        found.iter().map(|e| e.as_str().to_owned()).collect::<Vec<_>>()
    };
    assert_eq!(
        find(TraceKey::Client("c-find".into()), 10).await,
        ["f-3", "f-2", "f-1"],
        "newest attempt first, each event once, none sent before `since`"
    );
    assert_eq!(find(TraceKey::Client("c-find".into()), 2).await, ["f-3", "f-2"]);
    assert_eq!(find(TraceKey::Shipment(shipment("s-f-1")), 10).await, ["f-1"]);
    assert_eq!(find(TraceKey::Correlation("corr-f-2".into()), 10).await, ["f-2"]);
    assert!(find(TraceKey::Client("nobody".into()), 10).await.is_empty());

    let buckets = ledger
        .activity(base, Duration::minutes(5))
        .await
        .expect("activity");
    assert_eq!(buckets.len(), 2, "two buckets with attempts: {buckets:?}");
    let (early, late) = (&buckets[0], &buckets[1]);
    assert_eq!(early.start, base);
    assert_eq!(
        early.outcomes,
        [(Outcome::Success, 2), (Outcome::RetryScheduled, 1)]
            .into_iter()
            .collect()
    );
    assert!(early.dead_letter_reasons.is_empty());
    assert_eq!((early.lag_p50_ms, early.lag_p99_ms), (Some(20.0), Some(40.0)));
    assert_eq!(late.start, base + Duration::minutes(5));
    assert_eq!(late.outcomes, [(Outcome::DeadLettered, 2)].into_iter().collect());
    assert_eq!(
        late.dead_letter_reasons,
        [("crm_rejected".to_owned(), 1), ("unknown".to_owned(), 1)]
            .into_iter()
            .collect()
    );
    assert_eq!((late.lag_p50_ms, late.lag_p99_ms), (None, None), "no successes");
}

/// An event's trace: its attempts in order, its latest outcome, and its retry while it waits.
async fn a_trace_tells_every_attempt_the_outcome_and_the_wait(ledger: &dyn SyncLedger) {
    let nothing = ledger.trace(&id("tr-unknown")).await.expect("trace");
    assert_eq!(
        nothing,
        EventTrace {
            attempts: vec![],
            recorded: None,
            parked: None
        }
    );
    // Whole seconds: every store keeps them.
    let due = OffsetDateTime::from_unix_timestamp(1_893_456_000).expect("valid time");
    let mut first = attempt("tr", Outcome::RetryScheduled);
    first.http_status = Some(503);
    first.error = Some("CRM unavailable".into());
    ledger
        .commit(&LedgerBatch {
            attempts: vec![first.clone(), attempt("tr-other", Outcome::Success)],
            processed: vec![(
                id("tr"),
                Recorded {
                    outcome: Outcome::RetryScheduled,
                    replay_count: 0,
                },
            )],
            park: vec![parked("tr", 0, 0, due)],
            ..LedgerBatch::default()
        })
        .await
        .expect("commit");
    let waiting = ledger.trace(&id("tr")).await.expect("trace");
    assert_eq!(waiting.attempts.len(), 1, "only this event's attempts");
    assert_eq!(waiting.attempts[0].http_status, Some(503));
    assert_eq!(waiting.attempts[0].error.as_deref(), Some("CRM unavailable"));
    assert_eq!(waiting.attempts[0].source, first.source);
    assert_eq!(waiting.recorded.map(|r| r.outcome), Some(Outcome::RetryScheduled));
    let parked = waiting.parked.expect("waiting in the retry queue");
    assert_eq!(parked.next_attempt_at, due);
    assert_eq!(parked.last_error, "503");

    let mut second = attempt("tr", Outcome::Success);
    second.attempt = 2;
    ledger
        .commit(&LedgerBatch {
            attempts: vec![second],
            processed: vec![(
                id("tr"),
                Recorded {
                    outcome: Outcome::Success,
                    replay_count: 0,
                },
            )],
            unpark: vec![id("tr")],
            ..LedgerBatch::default()
        })
        .await
        .expect("commit");
    let done = ledger.trace(&id("tr")).await.expect("trace");
    let attempts: Vec<(u32, Outcome)> = done.attempts.iter().map(|a| (a.attempt, a.outcome)).collect();
    assert_eq!(
        attempts,
        [(1, Outcome::RetryScheduled), (2, Outcome::Success)],
        "oldest first"
    );
    assert_eq!(done.recorded.map(|r| r.outcome), Some(Outcome::Success));
    assert_eq!(done.parked, None, "no longer waiting");
}

/// The newest event time per shipment is kept across batches and never moves back.
async fn newest_times_only_move_forward(ledger: &dyn SyncLedger) {
    let at = |minute: i64| event("x", minute).occurred_at;
    let (a, b) = (shipment("n-a"), shipment("n-b"));
    assert!(ledger
        .newest_seen(std::slice::from_ref(&a))
        .await
        .expect("newest")
        .is_empty());
    let commit = |newest: Vec<(ShipmentId, OffsetDateTime)>| LedgerBatch {
        newest,
        ..LedgerBatch::default()
    };
    ledger
        .commit(&commit(vec![
            (a.clone(), at(10)),
            (a.clone(), at(12)),
            (b.clone(), at(5)),
        ]))
        .await
        .expect("commit");
    ledger
        .commit(&commit(vec![(a.clone(), at(11))]))
        .await
        .expect("commit");
    let seen = ledger
        .newest_seen(&[a.clone(), b.clone(), shipment("n-c")])
        .await
        .expect("newest");
    assert_eq!(seen.len(), 2, "only shipments with a time");
    assert_eq!(seen[&a], at(12), "an older time never replaces a newer one");
    assert_eq!(seen[&b], at(5));
}

async fn a_batch_commits_its_rows_and_the_last_write_wins(ledger: &dyn SyncLedger, now: OffsetDateTime) {
    assert!(ledger
        .recorded(&[id("unknown")])
        .await
        .expect("recorded")
        .is_empty());

    let batch = LedgerBatch {
        attempts: vec![
            attempt("a", Outcome::Success),
            attempt("b", Outcome::RetryScheduled),
        ],
        processed: vec![
            (
                id("a"),
                Recorded {
                    outcome: Outcome::RetryScheduled,
                    replay_count: 0,
                },
            ),
            (
                id("a"),
                Recorded {
                    outcome: Outcome::Success,
                    replay_count: 2,
                },
            ),
            (
                id("b"),
                Recorded {
                    outcome: Outcome::RetryScheduled,
                    replay_count: 0,
                },
            ),
            (
                id("c"),
                Recorded {
                    outcome: Outcome::RetryScheduled,
                    replay_count: 0,
                },
            ),
        ],
        park: vec![
            parked("b", 0, 5, now - Duration::seconds(1)),
            parked("c", 0, 1, now - Duration::seconds(1)),
            parked("d", 1, 0, now - Duration::seconds(1)),
            parked("e", 0, 0, now + Duration::hours(1)),
        ],
        unpark: vec![],
        newest: vec![],
    };
    ledger.commit(&batch).await.expect("commit");

    let rec = ledger
        .recorded(&[id("a"), id("b"), id("zz")])
        .await
        .expect("recorded");
    assert_eq!(rec.len(), 2, "only seen ids are returned");
    assert_eq!(
        rec[&id("a")],
        Recorded {
            outcome: Outcome::Success,
            replay_count: 2
        },
        "last write wins"
    );
}

/// A final outcome stands against a later retry_scheduled; a replay may replace it.
async fn a_final_outcome_stands_against_a_later_retry(ledger: &dyn SyncLedger) {
    let again = |outcome, replay_count| LedgerBatch {
        processed: vec![(
            id("a"),
            Recorded {
                outcome,
                replay_count,
            },
        )],
        ..LedgerBatch::default()
    };
    ledger
        .commit(&again(Outcome::RetryScheduled, 2))
        .await
        .expect("commit");
    assert_eq!(
        ledger.recorded(&[id("a")]).await.expect("recorded")[&id("a")].outcome,
        Outcome::Success
    );
    ledger
        .commit(&again(Outcome::DeadLettered, 3))
        .await
        .expect("commit");
    assert_eq!(
        ledger.recorded(&[id("a")]).await.expect("recorded")[&id("a")],
        Recorded {
            outcome: Outcome::DeadLettered,
            replay_count: 3
        }
    );
    assert_eq!(ledger.retry_depth().await.expect("depth"), 4);
}

async fn due_events_are_the_owned_ones_oldest_first(
    ledger: &dyn SyncLedger,
    owned: &[(String, i32)],
    now: OffsetDateTime,
) {
    let due = ledger.due(owned, now, 10).await.expect("due");
    let ids: Vec<&str> = due.iter().map(|p| p.event.event_id.as_str()).collect();
    assert_eq!(ids, ["c", "b"], "due, owned partition only, oldest event first");
    assert_eq!(due[1], parked("b", 0, 5, due[1].next_attempt_at));
    assert_eq!(ledger.due(owned, now, 1).await.expect("due").len(), 1, "limit");
    assert!(ledger.due(&[], now, 10).await.expect("due").is_empty());
}

async fn reparking_updates_and_unparking_removes(
    ledger: &dyn SyncLedger,
    owned: &[(String, i32)],
    now: OffsetDateTime,
) {
    let mut again = parked("b", 0, 5, now + Duration::minutes(5));
    again.attempts = 2;
    again.first_failed_at = first_failure() + Duration::minutes(3);
    ledger
        .commit(&LedgerBatch {
            park: vec![again],
            unpark: vec![id("c")],
            ..LedgerBatch::default()
        })
        .await
        .expect("commit");
    assert!(ledger.due(owned, now, 10).await.expect("due").is_empty());
    let later = ledger
        .due(owned, now + Duration::minutes(6), 10)
        .await
        .expect("due");
    let b = later
        .iter()
        .find(|p| p.event.event_id.as_str() == "b")
        .expect("b still parked");
    assert_eq!(b.attempts, 2);
    assert_eq!(
        b.first_failed_at,
        first_failure(),
        "the first failure stays the first"
    );
    assert_eq!(ledger.retry_depth().await.expect("depth"), 3);
}
