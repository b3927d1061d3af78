//! The batch loader: generates batch files of pre-generated certificates and loads them into the
//! gift-certificates service over HTTP or Kafka, in resumable jobs.

pub mod checkpoint;
pub mod contract;
mod dedup;
pub mod format;
pub mod generate;
pub mod load;
pub mod progress;
pub mod reader;
pub mod sink;
