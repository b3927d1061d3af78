//! crm-sync: wires the Kafka, PostgreSQL and CRM adapters into the sync engine, serves metrics
//! and health, and drains cleanly on shutdown.

pub mod api;
pub mod config;
pub mod crm;
pub mod kafka;
pub mod metrics;
mod replay;
mod service;
pub mod trace;
pub mod two_way;

pub use config::Config;
pub use replay::{replay_dead_letters, ReplaySummary};
pub use service::run;
