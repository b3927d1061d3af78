//! The crm-sync domain: parcel-status events, their mapping to the CRM, the rules that keep the
//! CRM at the newest status exactly once, and the ports the adapters implement.
//!
//! Nothing here does I/O; the engine drives the ports it is given.

pub mod breaker;
pub mod clients;
pub mod contract;
pub mod engine;
pub mod event;
pub mod mapping;
pub mod memory;
pub mod ports;
pub mod retry;
pub mod rules;

#[cfg(test)]
mod engine_tests;
