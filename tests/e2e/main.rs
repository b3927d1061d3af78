//! End-to-end: real broker, real PostgreSQL, crm-sim over HTTP.

mod crash;
mod pipeline;
mod replay;
