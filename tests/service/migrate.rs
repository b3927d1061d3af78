//! `crm-sync migrate` and `gift-certificates migrate`: the real binaries, each twice at once
//! against a fresh database (what a migration job racing a starting instance looks like), then
//! again on the migrated one. Every run succeeds and the schema is there once.

use backbone_tests::{pg_base, workspace_binary};
use sqlx::migrate::Migrator;
use sqlx::Connection;
use std::process::{Command, Output, Stdio};

/// One service's migrate command: its binary, its environment prefix, its migrations, and a
/// table its schema has.
struct Service {
    binary: &'static str,
    env_prefix: &'static str,
    migrator: &'static Migrator,
    table: &'static str,
}

fn migrate(s: &Service, url: &str) -> std::process::Child {
    Command::new(workspace_binary(s.binary))
        .arg("migrate")
        .env_remove(format!("{}CONFIG", s.env_prefix))
        .env(format!("{}POSTGRES__URL", s.env_prefix), url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts")
}

fn succeeded(out: &Output) {
    assert!(
        out.status.success(),
        "migrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("schema up to date"));
}

async fn migrates_once_even_when_two_run_at_once(s: Service) {
    let db = format!(
        "{}_migrate_{}",
        s.binary.replace('-', "_"),
        uuid::Uuid::new_v4().simple()
    );
    let url = format!("{}/{db}", pg_base());
    for out in [migrate(&s, &url), migrate(&s, &url)].map(|c| c.wait_with_output().unwrap()) {
        succeeded(&out);
    }
    succeeded(&migrate(&s, &url).wait_with_output().unwrap());

    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let expected = s
        .migrator
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .count();
    assert_eq!(applied, i64::try_from(expected).unwrap(), "each migration once");
    let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", s.table))
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows, 0, "{} exists and is empty", s.table);
    conn.close().await.unwrap();

    let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", pg_base()))
        .await
        .unwrap();
    sqlx::query(&format!("DROP DATABASE \"{db}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn crm_sync_migrate_runs_once_even_when_two_run_at_once() {
    migrates_once_even_when_two_run_at_once(Service {
        binary: "crm-sync",
        env_prefix: "CRM_SYNC_",
        migrator: &backbone_postgres::sync::MIGRATOR,
        table: "integrations_log",
    })
    .await;
}

#[tokio::test]
async fn gift_certificates_migrate_runs_once_even_when_two_run_at_once() {
    migrates_once_even_when_two_run_at_once(Service {
        binary: "gift-certificates",
        env_prefix: "GIFT_CERTIFICATES_",
        migrator: &backbone_postgres::certificates::MIGRATOR,
        table: "outbox",
    })
    .await;
}
