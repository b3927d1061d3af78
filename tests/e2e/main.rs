//! End-to-end: real broker, real PostgreSQL, crm-sim over HTTP.

#![allow(clippy::unwrap_used)]

mod crash;
mod pipeline;
mod replay;
