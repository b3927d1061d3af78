//! PostgreSQL adapters. No sqlx type leaves this crate: errors become port errors here.

mod ledger;

pub use ledger::PgLedger;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;
use std::time::Duration;

/// The workspace's migrations, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid database URL: {0}")]
    Url(String),
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(String),
    #[error("migrations failed: {0}")]
    Migrate(String),
}

/// Opens a pool and applies pending migrations.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, ConnectError> {
    let options = PgConnectOptions::from_str(url).map_err(|e| ConnectError::Url(e.to_string()))?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .map_err(|e| ConnectError::Connect(e.to_string()))?;
    MIGRATOR.run(&pool).await.map_err(|e| ConnectError::Migrate(e.to_string()))?;
    Ok(pool)
}
