//! The PostgreSQL certificate store against a real server: the storage contract the in-memory
//! store meets too, on a fresh database.

#![allow(clippy::unwrap_used)]

mod common;

use backbone_certificates::contract::store_contract;
use backbone_postgres::PgCertificates;
use sqlx::PgPool;

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn pg_certificates_meet_the_storage_contract(pool: PgPool) {
    let store = PgCertificates::connect(&common::url_of(&pool), 4).await.unwrap();
    store_contract(&store).await;
    // What the contract cannot see from outside: one audit row per effect and per issue.
    let audit: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(audit >= 7, "{audit}");
}
