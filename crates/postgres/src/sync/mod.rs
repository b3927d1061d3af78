//! crm-sync's schema: `integrations_log`, `processed_events` and `sync_retry`
//! (`migrations/crm-sync/`).

mod ledger;

pub use ledger::PgLedger;

/// crm-sync's migrations, embedded at build time. Databases made before the schemas were split
/// have the gift-certificates migrations recorded too: they are ignored, never undone.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("../../migrations/crm-sync")
};
