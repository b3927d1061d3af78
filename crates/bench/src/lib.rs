//! Shared pieces of the benchmarks and the demo feeder.

pub mod crm_vendors;
pub mod gift;
pub mod procfs;

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;
use std::time::Duration;

pub fn producer(brokers: &str, linger_ms: u32) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", linger_ms.to_string())
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("compression.type", "lz4")
        .create()?)
}

/// A `tracking.events` document (version 1).
pub fn event_json(event_id: &str, shipment: &str, status: &str, occurred_at: &str) -> String {
    format!(
        r#"{{"event_id":"{event_id}","client_id":"client-{shipment}","shipment_id":"{shipment}","status":"{status}","occurred_at":"{occurred_at}","version":1}}"#
    )
}

/// Sends `(key, payload)` pairs, keeping at most `window` in flight, and waits for every ack.
pub async fn send_all(
    producer: &FutureProducer,
    topic: &str,
    records: impl IntoIterator<Item = (String, String)>,
    window: usize,
) -> anyhow::Result<()> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    stream::iter(records)
        .map(|(key, payload)| async move {
            producer
                .send(
                    FutureRecord::to(topic).key(&key).payload(&payload),
                    Timeout::After(Duration::from_secs(60)),
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| anyhow::anyhow!("produce failed: {e}"))
        })
        .buffer_unordered(window)
        .try_collect::<()>()
        .await
}
