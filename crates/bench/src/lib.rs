//! Shared pieces of the benchmarks and the demo feeder.

pub mod certificates;
pub mod crm_vendors;
pub mod front;
pub mod gift;
pub mod harness;
pub mod loader;
pub mod procfs;
pub mod report;
pub mod sync;
pub mod two_way;

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;
use std::time::{Duration, Instant};

/// The statuses of the `tracking.events` documents the benchmarks and the feeder send.
pub const STATUSES: [&str; 4] = ["CREATED", "IN_TRANSIT", "OUT_FOR_DELIVERY", "DELIVERED"];

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

/// Sends `count` records at a steady `rate`, each built at its send time by `record(i)` (so a
/// timestamp inside is the send time), and waits for every ack. Returns each record's send-to-ack
/// latency in milliseconds, in send order.
pub async fn paced(
    brokers: &str,
    topic: &str,
    rate: u64,
    count: usize,
    record: impl Fn(usize) -> (String, String),
) -> anyhow::Result<Vec<f64>> {
    let p = producer(brokers, 0)?;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let mut sends = Vec::with_capacity(count);
    for i in 0..count {
        tokio::time::sleep_until((start + interval * i as u32).into()).await;
        let (key, payload) = record(i);
        let (p, topic) = (p.clone(), topic.to_owned());
        sends.push(tokio::spawn(async move {
            let sent = Instant::now();
            let record = FutureRecord::to(&topic).key(&key).payload(&payload);
            p.send(record, Timeout::After(Duration::from_secs(30)))
                .await
                .map(|_| sent.elapsed().as_secs_f64() * 1000.0)
                .map_err(|(e, _)| anyhow::anyhow!("produce failed: {e}"))
        }));
    }
    let mut acks = Vec::with_capacity(count);
    for s in sends {
        acks.push(s.await??);
    }
    Ok(acks)
}
