//! Gift certificates in PostgreSQL: every storage port of the certificate service
//! (`backbone_certificates::store`) over one pool. A unit of work is one transaction
//! ([`unit`]); the statements of an operation are in [`sql`], and [`pgbench`] writes them out as
//! a pgbench script.

use async_trait::async_trait;
use backbone_certificates::store::{CertificateStore, StoreError, UnitOfWork};
use sqlx::PgPool;

pub mod admin;
mod batches;
mod group;
mod outbox;
pub mod pgbench;
mod phones;
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

/// Every certificate port over one pool. Phone numbers are sealed with the key service given to
/// [`PgCertificates::with_keys`]; without one, storing a number is refused.
#[derive(Clone)]
pub struct PgCertificates {
    pool: PgPool,
    keys: phones::Keys,
}

impl PgCertificates {
    /// Creates the database if needed, connects and applies gift-certificates' pending
    /// migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, crate::ConnectError> {
        Ok(Self {
            pool: crate::connect(url, max_connections, &MIGRATOR).await?,
            keys: None,
        })
    }

    /// Seals (and opens) phone numbers at rest with `keys`, the key service of the CVCs.
    pub fn with_keys(mut self, keys: std::sync::Arc<dyn backbone_certificates::CodeKeys>) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Seals the phone numbers that rows written before numbers were sealed still hold in clear;
    /// returns how many (run at start-up).
    pub async fn seal_clear_phones(&self) -> Result<u64, StoreError> {
        phones::seal_clear_phones(&self.pool, &self.keys).await
    }

    /// The pool every port uses (the API's connections).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

#[async_trait]
impl CertificateStore for PgCertificates {
    async fn begin(&self) -> Result<Box<dyn UnitOfWork>, StoreError> {
        let tx = self.pool.begin().await.map_err(rows::unavailable)?;
        Ok(Box::new(unit::PgUnit {
            tx,
            keys: self.keys.clone(),
        }))
    }
}
