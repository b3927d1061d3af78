//! The PostgreSQL client store against a real server: the whole `ClientStore` contract, each
//! scenario on a fresh database (`#[sqlx::test]`), and what only a real server can show:
//! transactions that commit late, locks held across connections, many deliveries at once.

#![allow(clippy::unwrap_used)]

mod common;

use async_trait::async_trait;
use backbone_postgres::PgClients;
use backbone_sync::clients::contract::{self, Audit, AuditedConflict};
use backbone_sync::clients::model::{ClientId, Field, Source, Value};
use backbone_sync::clients::ports::*;
use sqlx::types::Json;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// What the contract checks beyond the port, read with SQL.
struct PgAudit(PgPool);

#[async_trait]
impl Audit for PgAudit {
    async fn conflicts(&self, client: &ClientId) -> Vec<AuditedConflict> {
        type Row = (
            String,
            String,
            String,
            Option<i64>,
            Option<Json<Value>>,
            Option<String>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT field, rule, resolution, operator_task_id, chosen, request_id
             FROM crm_conflict_log WHERE client_id = $1 ORDER BY id",
        )
        .bind(client.as_str())
        .fetch_all(&self.0)
        .await
        .unwrap();
        rows.into_iter()
            .map(
                |(field, rule, resolution, operator_task, chosen, request_id)| AuditedConflict {
                    field: Field::parse(&field).unwrap(),
                    rule,
                    resolution,
                    operator_task,
                    chosen: chosen.map(|c| c.0),
                    request_id: request_id.unwrap_or_default(),
                },
            )
            .collect()
    }

    async fn webhook_processed(&self, id: i64) -> bool {
        sqlx::query_scalar("SELECT processed_at IS NOT NULL FROM crm_webhook WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.0)
            .await
            .unwrap()
            .unwrap_or(false)
    }

    async fn two_way_attempts(&self) -> Vec<Option<String>> {
        sqlx::query_scalar("SELECT correlation_id FROM integrations_log WHERE flow = 'two_way' ORDER BY id")
            .fetch_all(&self.0)
            .await
            .unwrap()
    }
}

async fn store(pool: &PgPool) -> PgClients {
    PgClients::connect(&common::url_of(pool), 4).await.unwrap()
}

macro_rules! pg {
    ($name:ident) => {
        #[sqlx::test(migrator = "backbone_postgres::sync::MIGRATOR")]
        async fn $name(pool: PgPool) {
            let store = store(&pool).await;
            let audit = PgAudit(pool);
            let run = contract::$name(&store, &audit);
            tokio::time::timeout(Duration::from_secs(60), run)
                .await
                .expect("the scenario ends");
        }
    };
}

backbone_sync::client_store_scenarios!(pg);

fn client(id: &str) -> ClientId {
    ClientId::parse(id).unwrap()
}

fn put(id: &str, first_name: &str) -> CardChange {
    CardChange {
        client_id: client(id),
        fields: BTreeMap::from([(Field::FirstName, Value::text(first_name))]),
        replace: true,
        must_exist: false,
        source: Source::Api,
        at: time::OffsetDateTime::now_utc(),
        request_id: "req-1".into(),
    }
}

#[sqlx::test(migrator = "backbone_postgres::sync::MIGRATOR")]
async fn a_row_that_commits_late_behind_a_higher_id_is_still_relayed(pool: PgPool) {
    let store = store(&pool).await;
    // A writer takes the lower id and is slow to commit.
    let mut slow = pool.begin().await.unwrap();
    let low: i64 = sqlx::query_scalar(
        "INSERT INTO crm_outbox (topic, key, payload) VALUES ('crm.outgoing', 'c-slow', '{}') RETURNING id",
    )
    .fetch_one(&mut *slow)
    .await
    .unwrap();
    // Another client's change commits with a higher id.
    store.change_card(&put("c-fast", "Ada"), None).await.unwrap();
    let rows = store.outbox_next(100).await.unwrap();
    assert_eq!(rows.len(), 1, "only committed rows are seen");
    let high = rows[0].id;
    assert!(high > low);
    // The relay publishes it and deletes it.
    store.outbox_delete(&[high]).await.unwrap();
    slow.commit().await.unwrap();
    // A relay that polled "id > last" would skip the lower id now; this one finds it.
    let rows = store.outbox_next(100).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), vec![low]);
    assert_eq!(rows[0].key, "c-slow");
}

#[sqlx::test(migrator = "backbone_postgres::sync::MIGRATOR")]
async fn fifty_deliveries_of_one_hint_at_once_store_one_row(pool: PgPool) {
    let store = Arc::new(PgClients::connect(&common::url_of(&pool), 16).await.unwrap());
    let hint = Hint {
        vendor: "generic".into(),
        delivery_id: "0b7f2c4e-5d0e-4c7e-9a34-0d7f3b1e9c11".into(),
        entity: Entity::Contact,
        crm_id: "crm-1".into(),
        client_id: Some(client("c-1")),
        event: "contact.updated".into(),
        occurred_at: None,
    };
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (store, hint) = (store.clone(), hint.clone());
            tokio::spawn(async move { store.intake(&[hint], &format!("req-{i}")).await.unwrap() })
        })
        .collect();
    let mut stored = 0;
    for t in tasks {
        if matches!(t.await.unwrap()[0], Intake::Stored(_)) {
            stored += 1;
        }
    }
    assert_eq!(stored, 1);
    let counts: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM crm_webhook), (SELECT count(*) FROM crm_outbox WHERE topic = 'crm.incoming')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(counts, (1, 1));
}

#[sqlx::test(migrator = "backbone_postgres::sync::MIGRATOR")]
async fn one_hint_is_stored_with_a_record_naming_its_webhook(pool: PgPool) {
    let store = store(&pool).await;
    let hint = Hint {
        vendor: "generic".into(),
        delivery_id: "5f0c6e1d-9a7b-4c2e-8f3a-1b0c9d8e7f6a".into(),
        entity: Entity::Contact,
        crm_id: "crm-7".into(),
        client_id: Some(client("c-7")),
        event: "contact.updated".into(),
        occurred_at: None,
    };
    let Intake::Stored(id) = store
        .intake(std::slice::from_ref(&hint), "req-one")
        .await
        .unwrap()[0]
    else {
        panic!("stored")
    };
    assert_eq!(
        store.intake(&[hint], "req-again").await.unwrap(),
        vec![Intake::Duplicate]
    );
    let rows = store.outbox_next(10).await.unwrap();
    assert_eq!(rows.len(), 1, "one record for the delivery");
    assert_eq!(
        (rows[0].topic.as_str(), rows[0].key.as_str()),
        ("crm.incoming", "c-7")
    );
    let payload: serde_json::Value = serde_json::from_str(&rows[0].payload).unwrap();
    assert_eq!(payload["webhook_id"], serde_json::json!(id));
    assert_eq!(payload["request_id"], "req-one");
    assert!(rows[0]
        .headers
        .iter()
        .any(|(k, v)| k == "x-request-id" && v == "req-one"));
    let stored: (String, String) =
        sqlx::query_as("SELECT delivery_id, request_id FROM crm_webhook WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        stored,
        ("5f0c6e1d-9a7b-4c2e-8f3a-1b0c9d8e7f6a".into(), "req-one".into())
    );
}

#[sqlx::test(migrator = "backbone_postgres::sync::MIGRATOR")]
async fn a_second_session_waits_for_the_first_and_the_api_does_not(pool: PgPool) {
    let store = store(&pool).await;
    store.change_card(&put("c-1", "Ada"), None).await.unwrap();
    let first = store.session(&client("c-1")).await.unwrap();
    let waiting = tokio::time::timeout(Duration::from_millis(300), store.session(&client("c-1"))).await;
    assert!(waiting.is_err(), "the second session waits for the lock");
    tokio::time::timeout(
        Duration::from_secs(5),
        store.change_card(&put("c-1", "Grace"), None),
    )
    .await
    .expect("the API is not held up by a session")
    .unwrap();
    let second = tokio::spawn({
        let store = store.clone();
        async move { store.session(&client("c-1")).await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!second.is_finished());
    drop(first);
    tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the lock is let go with the session")
        .unwrap()
        .unwrap();
}

#[sqlx::test(migrator = "backbone_postgres::sync::MIGRATOR")]
async fn idempotency_answers_are_kept_with_the_change(pool: PgPool) {
    let store = store(&pool).await;
    let claim = IdempotencyClaim {
        key: "k-1".into(),
        scope: "svc PUT /v1/clients/c-1".into(),
        request_digest: "d".into(),
    };
    store.change_card(&put("c-1", "Ada"), Some(&claim)).await.unwrap();
    let (digest, answer): (String, serde_json::Value) =
        sqlx::query_as("SELECT request_digest, answer FROM api_idempotency WHERE scope = $1 AND key = $2")
            .bind(&claim.scope)
            .bind(&claim.key)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(digest, "d");
    assert_eq!(answer["card"]["card"]["first_name"], "Ada");
    assert_eq!(answer["created"], true);
}

#[sqlx::test(migrator = "backbone_postgres::sync::MIGRATOR")]
async fn parcel_rows_keep_their_flow(pool: PgPool) {
    use backbone_postgres::PgLedger;
    use backbone_sync::ports::{AttemptRecord, LedgerBatch, Outcome, SyncLedger};
    let ledger = PgLedger::connect(&common::url_of(&pool), 2).await.unwrap();
    let row = AttemptRecord {
        event_id: None,
        shipment_id: None,
        client_id: None,
        correlation_id: Some("corr-1".into()),
        payload: None,
        http_status: Some(200),
        response_excerpt: None,
        outcome: Outcome::Success,
        attempt: 1,
        error: None,
        event_time: None,
        sent_at: time::OffsetDateTime::now_utc(),
        latency_ms: None,
        source: None,
    };
    ledger
        .commit(&LedgerBatch {
            attempts: vec![row],
            ..LedgerBatch::default()
        })
        .await
        .unwrap();
    let flow: String =
        sqlx::query_scalar("SELECT flow FROM integrations_log WHERE correlation_id = 'corr-1'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(flow, "parcel_status");
}

#[sqlx::test(migrator = "backbone_postgres::sync::MIGRATOR")]
async fn the_two_way_migration_is_reversible(pool: PgPool) {
    let tables = "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('client_card',
        'client_sync_base', 'crm_task', 'crm_interaction', 'crm_outbox', 'api_idempotency', 'crm_webhook',
        'operator_task', 'crm_conflict_log')";
    let flow = "SELECT count(*) FROM information_schema.columns
        WHERE table_name = 'integrations_log' AND column_name = 'flow'";
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await.unwrap() }
    };
    assert_eq!((count(tables).await, count(flow).await), (9, 1));
    backbone_postgres::sync::MIGRATOR
        .undo(&pool, 20261202000001)
        .await
        .unwrap();
    assert_eq!((count(tables).await, count(flow).await), (0, 0));
    let parcel: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'integrations_log'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(parcel, 1, "the parcel flow's tables stay");
    backbone_postgres::sync::MIGRATOR.run(&pool).await.unwrap();
    assert_eq!((count(tables).await, count(flow).await), (9, 1));
}

#[sqlx::test(migrator = "backbone_postgres::sync::MIGRATOR")]
async fn an_outbox_row_carries_the_writers_trace_context(pool: PgPool) {
    use tracing::Instrument;
    let _guard = backbone_telemetry::propagation_test_guard();
    let store = store(&pool).await;
    let span = tracing::info_span!("api_call");
    let caller: BTreeMap<String, String> = span
        .in_scope(backbone_telemetry::current_trace_headers)
        .into_iter()
        .collect();
    let trace_id = |h: &BTreeMap<String, String>| {
        h.get("traceparent")
            .and_then(|t| t.split('-').nth(1))
            .map(str::to_owned)
    };
    assert!(trace_id(&caller).is_some(), "{caller:?}");
    store
        .change_card(&put("c-1", "Ada"), None)
        .instrument(span)
        .await
        .unwrap();
    let rows = store.outbox_next(10).await.unwrap();
    assert_eq!(rows.len(), 1);
    let headers: BTreeMap<String, String> = rows[0].headers.iter().cloned().collect();
    assert_eq!(trace_id(&headers), trace_id(&caller), "{headers:?}");
    assert_eq!(headers.get("x-request-id").map(String::as_str), Some("req-1"));
}
