//! Gift certificates in PostgreSQL: every storage port of the certificate service
//! (`backbone_certificates::store`) over one pool. A unit of work is one transaction
//! ([`unit`]); the statements of an operation are in [`sql`], and [`pgbench`] writes them out as
//! a pgbench script.

use async_trait::async_trait;
use backbone_certificates::store::{CertificateStore, StoreError, UnitOfWork};
use sqlx::PgPool;

mod batches;
mod outbox;
pub mod pgbench;
mod rows;
mod sms;
mod sql;
mod unit;
mod views;

/// gift-certificates' migrations (`migrations/gift-certificates/`), embedded at build time.
/// Databases made before the schemas were split have crm-sync's migration recorded too: it is
/// ignored, never undone.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("../../migrations/gift-certificates")
};

/// Every certificate port over one pool.
#[derive(Clone)]
pub struct PgCertificates {
    pool: PgPool,
}

impl PgCertificates {
    /// Creates the database if needed, connects and applies gift-certificates' pending
    /// migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, crate::ConnectError> {
        Ok(Self {
            pool: crate::connect(url, max_connections, &MIGRATOR).await?,
        })
    }
}

#[async_trait]
impl CertificateStore for PgCertificates {
    async fn begin(&self) -> Result<Box<dyn UnitOfWork>, StoreError> {
        let tx = self.pool.begin().await.map_err(rows::unavailable)?;
        Ok(Box::new(unit::PgUnit { tx }))
    }
}
