//! crm-sync's schema: `integrations_log`, `processed_events` and `sync_retry` (the parcel-status
//! flow), and the company's copy of client cards with its outbox, webhooks and operator tasks
//! (the two-way sync) (`migrations/crm-sync/`).

mod clients;
mod ledger;

pub use clients::PgClients;
pub use ledger::PgLedger;

/// crm-sync's migrations, embedded at build time. Databases made before the schemas were split
/// have the gift-certificates migrations recorded too: they are ignored, never undone.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("../../migrations/crm-sync")
};
