//! The PostgreSQL ledger against a real server: a fresh database per test (`#[sqlx::test]`).

use backbone_postgres::PgLedger;
use backbone_sync::contract::ledger_contract;
use sqlx::PgPool;

#[sqlx::test(migrator = "backbone_postgres::MIGRATOR")]
async fn pg_ledger_meets_the_ledger_contract(pool: PgPool) {
    ledger_contract(&PgLedger::new(pool.clone())).await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM integrations_log")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 2);
    let payload: serde_json::Value =
        sqlx::query_scalar("SELECT payload FROM integrations_log WHERE event_id = 'a'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(payload["status"], "in_transit");
}

#[sqlx::test(migrator = "backbone_postgres::MIGRATOR")]
async fn migrations_are_reversible(pool: PgPool) {
    backbone_postgres::MIGRATOR.undo(&pool, 0).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('integrations_log', 'processed_events', 'sync_retry')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 0);
    backbone_postgres::MIGRATOR.run(&pool).await.unwrap();
}
