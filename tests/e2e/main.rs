//! End-to-end: real broker, real PostgreSQL and Redis; crm-sim and a wiremock SMS provider over
//! HTTP; crm-sync, gift-certificates and batch-loader.

#![allow(clippy::unwrap_used)]

mod admin;
mod certificates;
mod certificates_crash;
mod console;
mod crash;
mod gift_dead_letters;
mod hardening;
mod loader;
mod operations;
mod pipeline;
mod replay;
mod tls;
mod tls_certificates;
mod two_way;
mod two_way_crash;
mod two_way_faults;
mod vendors;
