//! PostgreSQL adapters. No sqlx type leaves this crate: errors become port errors here.

#[cfg(feature = "certificates")]
pub mod certificates;
mod config;
#[cfg(feature = "sync")]
pub mod sync;

#[cfg(feature = "certificates")]
pub use certificates::PgCertificates;
pub use config::{DatabaseDefaults, PostgresConfig};
#[cfg(feature = "sync")]
pub use sync::{PgClients, PgLedger};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid database URL: {0}")]
    Url(String),
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(String),
    #[error("migrations failed: {0}")]
    Migrate(String),
}

/// Creates the database if it does not exist, opens a pool and applies `migrator`'s pending
/// migrations (each service owns its schema: [`sync::MIGRATOR`], [`certificates::MIGRATOR`]).
pub(crate) async fn connect(
    url: &str,
    max_connections: u32,
    migrator: &sqlx::migrate::Migrator,
) -> Result<PgPool, ConnectError> {
    use sqlx::migrate::MigrateDatabase;
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| ConnectError::Url(e.to_string()))?
        // A transaction abandoned half-way (its task cancelled) must not hold locks for long.
        .options([("idle_in_transaction_session_timeout", "30s")]);
    let exists = sqlx::Postgres::database_exists(url)
        .await
        .map_err(|e| ConnectError::Connect(e.to_string()))?;
    if !exists {
        if let Err(e) = sqlx::Postgres::create_database(url).await {
            // Another instance may have created it in the meantime.
            if !sqlx::Postgres::database_exists(url).await.unwrap_or(false) {
                return Err(ConnectError::Connect(e.to_string()));
            }
        }
    }
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .map_err(|e| ConnectError::Connect(e.to_string()))?;
    migrator
        .run(&pool)
        .await
        .map_err(|e| ConnectError::Migrate(e.to_string()))?;
    Ok(pool)
}
