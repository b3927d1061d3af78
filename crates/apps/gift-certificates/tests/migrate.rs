//! `gift-certificates migrate`: the real binary, twice at once against a fresh database (what a migration
//! job racing a starting instance looks like), then again on the migrated one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sqlx::Connection;

fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

/// `admin_url` with another database name.
fn url_of(db: &str) -> String {
    let admin = admin_url();
    let (base, _) = admin.rsplit_once('/').expect("a database URL ends with /<name>");
    format!("{base}/{db}")
}

fn migrate(url: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_gift-certificates"))
        .arg("migrate")
        .env_remove("GIFT_CERTIFICATES_CONFIG")
        .env("GIFT_CERTIFICATES_POSTGRES__URL", url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("gift-certificates starts")
}

#[tokio::test]
async fn migrate_creates_and_migrates_the_database_once_even_when_two_run_at_once() {
    let db = format!("gift_certificates_migrate_{}", uuid::Uuid::new_v4().simple());
    let url = url_of(&db);
    let runs = [migrate(&url), migrate(&url)].map(|c| c.wait_with_output().unwrap());
    for out in &runs {
        assert!(
            out.status.success(),
            "migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("schema up to date"));
    }
    let again = migrate(&url).wait_with_output().unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let expected = backbone_postgres::certificates::MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .count();
    assert_eq!(applied, i64::try_from(expected).unwrap());
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(outbox, 0);
    conn.close().await.unwrap();

    let mut admin = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
    sqlx::query(&format!("DROP DATABASE \"{db}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
}
