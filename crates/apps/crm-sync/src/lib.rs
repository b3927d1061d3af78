//! crm-sync: wires the Kafka, PostgreSQL and CRM adapters into the sync engine, serves metrics
//! and health, and drains cleanly on shutdown.

pub mod admin;
pub mod api;
pub mod config;
pub mod crm;
pub mod kafka;
pub mod metrics;
pub mod replay;
mod service;
pub mod trace;
pub mod two_way;

pub use config::Config;
pub use replay::{replay_dead_letters, replay_dead_letters_by, ReplaySummary};
pub use service::run;

/// Creates the database when missing and applies crm-sync's pending migrations, as the service
/// does at start-up; returns how many migrations crm-sync has. Needs only `[postgres]`: a
/// migration job runs it without the CRM's secrets. sqlx holds an advisory lock while it
/// migrates, so concurrent runs (a job and a starting instance) wait for each other.
pub async fn migrate(cfg: &Config) -> anyhow::Result<usize> {
    use anyhow::Context;
    use secrecy::ExposeSecret;
    cfg.postgres
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    backbone_postgres::PgLedger::connect(cfg.postgres.url.expose_secret(), 2)
        .await
        .context("PostgreSQL")?;
    Ok(backbone_postgres::sync::MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .count())
}
