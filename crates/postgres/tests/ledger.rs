//! The PostgreSQL ledger against a real server: a fresh database per test (`#[sqlx::test]`).

#![allow(clippy::unwrap_used)]

mod common;

use backbone_postgres::PgLedger;
use backbone_sync::contract::ledger_contract;
use sqlx::PgPool;

#[sqlx::test(migrator = "backbone_postgres::sync::MIGRATOR")]
async fn pg_ledger_meets_the_ledger_contract(pool: PgPool) {
    let ledger = PgLedger::connect(&common::url_of(&pool), 2).await.unwrap();
    ledger_contract(&ledger).await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM integrations_log")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        rows, 11,
        "the contract's attempts: two in its first batch, three in its trace, six in its search"
    );
    let payload: serde_json::Value =
        sqlx::query_scalar("SELECT payload FROM integrations_log WHERE event_id = 'a'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(payload["status"], "in_transit");
}

#[sqlx::test(migrator = "backbone_postgres::sync::MIGRATOR")]
async fn migrations_are_reversible(pool: PgPool) {
    backbone_postgres::sync::MIGRATOR.undo(&pool, 0).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('integrations_log', 'processed_events', 'sync_retry')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 0);
    backbone_postgres::sync::MIGRATOR.run(&pool).await.unwrap();
}

#[sqlx::test(migrator = "backbone_postgres::sync::MIGRATOR")]
async fn log_rows_keep_awkward_text_intact(pool: PgPool) {
    use backbone_sync::ports::{AttemptRecord, LedgerBatch, Outcome, SyncLedger};
    let error = "line one\nline two\twith a tab, a \\ backslash and \r a return; ünïcödé";
    let payload = serde_json::json!({"status": "quote \" and backslash \\ inside"});
    let row = AttemptRecord {
        event_id: None,
        shipment_id: None,
        client_id: None,
        correlation_id: None,
        payload: Some(payload.clone()),
        http_status: Some(503),
        response_excerpt: Some("{\"detail\":\"tab\there\"}".into()),
        outcome: Outcome::RetryScheduled,
        attempt: 3,
        error: Some(error.into()),
        event_time: None,
        sent_at: time::OffsetDateTime::now_utc(),
        latency_ms: Some(12.25),
        source: None,
    };
    let ledger = PgLedger::connect(&common::url_of(&pool), 2).await.unwrap();
    ledger
        .commit(&LedgerBatch {
            attempts: vec![row],
            ..LedgerBatch::default()
        })
        .await
        .unwrap();
    let (e, p, x, l, h): (String, serde_json::Value, String, f64, i16) = sqlx::query_as(
        "SELECT error, payload, response_excerpt, latency_ms, http_status FROM integrations_log",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(e, error);
    assert_eq!(p, payload);
    assert_eq!(x, "{\"detail\":\"tab\there\"}");
    assert_eq!((l, h), (12.25, 503));
}

/// A parked event whose last error carries a NUL byte (from a CRM's error body) commits: the
/// ledger drops the NUL, which PostgreSQL text cannot hold (before, the whole batch's commit was
/// refused, and retried for ever).
#[sqlx::test(migrator = "backbone_postgres::sync::MIGRATOR")]
async fn a_nul_byte_in_a_parked_error_does_not_fail_the_commit(pool: PgPool) {
    use backbone_sync::event::TrackingEvent;
    use backbone_sync::ports::{LedgerBatch, ParkedEvent, SourcePosition, SyncLedger};
    let ledger = PgLedger::connect(&common::url_of(&pool), 2).await.unwrap();
    let event = TrackingEvent::from_json(
        br#"{"event_id":"e-nul","client_id":"c","shipment_id":"s","status":"IN_TRANSIT","occurred_at":"2026-11-01T10:00:00Z","version":1}"#,
    )
    .unwrap();
    let now = time::OffsetDateTime::now_utc();
    let batch = LedgerBatch {
        park: vec![ParkedEvent {
            event,
            source: SourcePosition {
                topic: "tracking.events".into(),
                partition: 0,
                offset: 7,
            },
            attempts: 1,
            replay_count: 0,
            next_attempt_at: now,
            first_failed_at: now,
            last_error: "upstream\0failed".into(),
        }],
        ..LedgerBatch::default()
    };
    ledger.commit(&batch).await.expect("the commit succeeds");
    let stored: String = sqlx::query_scalar("SELECT last_error FROM sync_retry WHERE event_id = 'e-nul'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, "upstreamfailed");
}
