//! gift-certificates against the real PostgreSQL (a fresh database per test), Redis and, for
//! the event tests, the local Kafka-protocol broker; the SMS provider is a wiremock server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod api;
mod concurrency;
mod consumer;
mod hardening;
mod harness;
mod migrate;
mod ops;
mod sales;
mod upload;
mod upload_rules;
