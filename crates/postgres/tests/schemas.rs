//! Each service owns its schema. A database migrated before the split (one migrator over every
//! migration) keeps working with the per-service migrators; a fresh one gets only its own tables.

#![allow(clippy::unwrap_used)]

use backbone_postgres::{certificates, sync};
use sqlx::migrate::Migrator;
use sqlx::PgPool;
use std::borrow::Cow;

async fn tables(pool: &PgPool, names: &[&str]) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' AND table_name = ANY($1)",
    )
    .bind(names)
    .fetch_one(pool)
    .await
    .unwrap()
}

const SYNC_TABLES: &[&str] = &["integrations_log", "processed_events", "sync_retry"];
const CERTIFICATE_TABLES: &[&str] = &["gift_certificate", "outbox", "sms_delivery", "certificate_sale"];

#[sqlx::test(migrations = false)]
async fn a_database_migrated_before_the_split_keeps_working(pool: PgPool) {
    // What the single migrator over one folder did: every migration, in version order.
    let mut all: Vec<_> = sync::MIGRATOR
        .iter()
        .chain(certificates::MIGRATOR.iter())
        .cloned()
        .collect();
    all.sort_by_key(|m| m.version);
    let before = Migrator {
        migrations: Cow::Owned(all),
        ..Migrator::DEFAULT
    };
    before.run(&pool).await.unwrap();
    sync::MIGRATOR.run(&pool).await.unwrap();
    certificates::MIGRATOR.run(&pool).await.unwrap();
    assert_eq!(tables(&pool, SYNC_TABLES).await, 3);
    assert_eq!(tables(&pool, CERTIFICATE_TABLES).await, 4);
}

#[sqlx::test(migrator = "backbone_postgres::sync::MIGRATOR")]
async fn crm_sync_gets_only_its_own_tables(pool: PgPool) {
    assert_eq!(tables(&pool, SYNC_TABLES).await, 3);
    assert_eq!(tables(&pool, CERTIFICATE_TABLES).await, 0);
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn gift_certificates_gets_only_its_own_tables_and_they_undo(pool: PgPool) {
    assert_eq!(tables(&pool, SYNC_TABLES).await, 0);
    assert_eq!(tables(&pool, CERTIFICATE_TABLES).await, 4);
    certificates::MIGRATOR.undo(&pool, 0).await.unwrap();
    assert_eq!(tables(&pool, CERTIFICATE_TABLES).await, 0);
    certificates::MIGRATOR.run(&pool).await.unwrap();
    assert_eq!(tables(&pool, CERTIFICATE_TABLES).await, 4);
}
