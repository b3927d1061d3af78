//! Fault injection with librdkafka's in-process mock cluster: broker outages and request errors.

#![allow(clippy::unwrap_used)]

use backbone_kafka::{KafkaPublisher, KafkaSettings, TrackingConsumer};
use backbone_sync::event::ShipmentId;
use backbone_sync::ports::{DeadLetter, DeadLetterSink, OutcomeSink, SourcePosition};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;
use std::time::{Duration, Instant};

fn settings(cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>, id: &str) -> KafkaSettings {
    KafkaSettings {
        brokers: cluster.bootstrap_servers(),
        group_id: format!("g-{id}"),
        input_topic: format!("in-{id}"),
        outcome_topic: format!("out-{id}"),
        dead_letter_topic: format!("dlq-{id}"),
        ..KafkaSettings::default()
    }
}

fn letter(i: i64) -> DeadLetter {
    DeadLetter {
        key: Some(b"k".to_vec()),
        payload: format!("payload-{i}").into_bytes(),
        reason_code: "malformed_json",
        reason: "bad".into(),
        source: SourcePosition {
            topic: "in".into(),
            partition: 0,
            offset: i,
        },
        attempts: 1,
        replay_count: 0,
        event_id: None,
    }
}

#[tokio::test]
async fn dead_letters_wait_out_a_broker_outage_and_are_delivered() {
    let cluster = MockCluster::new(1).unwrap();
    let s = settings(&cluster, "outage");
    cluster.create_topic(&s.dead_letter_topic, 1, 1).unwrap();
    let publisher = KafkaPublisher::new(&s).unwrap();
    publisher.dead_letter(&[letter(0)]).await.unwrap();

    cluster.broker_down(1).unwrap();
    let started = Instant::now();
    let send = tokio::spawn({
        let p = publisher.clone();
        async move { p.dead_letter(&[letter(1), letter(2)]).await }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!send.is_finished(), "no acknowledgement while the broker is down");
    cluster.broker_up(1).unwrap();
    send.await.unwrap().expect("delivered once the broker is back");
    assert!(started.elapsed() >= Duration::from_millis(800));
}

/// Takes up to `n` batches, waiting at most 20 s in all.
async fn take(c: &TrackingConsumer, n: usize, max_records: usize) -> Vec<backbone_kafka::ConsumedBatch> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < n && Instant::now() < deadline {
        if let Ok(Ok(b)) = tokio::time::timeout(Duration::from_secs(5), c.next_batch(max_records)).await {
            got.push(b);
        }
    }
    got
}

#[tokio::test]
async fn an_uncommitted_batch_is_redelivered_to_the_next_member() {
    let cluster = MockCluster::new(1).unwrap();
    let s = settings(&cluster, "redeliver");
    cluster.create_topic(&s.input_topic, 1, 1).unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &s.brokers)
        .create()
        .unwrap();
    for i in 0..10 {
        producer
            .send(
                FutureRecord::to(&s.input_topic)
                    .key("k")
                    .payload(&format!("m{i}")),
                Timeout::After(Duration::from_secs(5)),
            )
            .await
            .unwrap();
    }

    // First member: takes two batches, handles (and commits) only the first, then dies.
    let first = TrackingConsumer::new(&s, None).unwrap();
    let batches = take(&first, 2, 3).await;
    assert_eq!(batches.len(), 2);
    let committed = &batches[0];
    assert!(committed.records.len() <= 3);
    let last_committed = committed.records.last().unwrap().source.offset;
    assert!(batches[1].records[0].source.offset > last_committed);
    first.commit(committed).unwrap();
    first.commit_processed().unwrap();
    drop(first);

    // Second member of the same group starts right after the committed records: the second
    // batch, received but never committed, is delivered again.
    let second = TrackingConsumer::new(&s, None).unwrap();
    let next = take(&second, 1, 100).await;
    assert_eq!(next[0].records[0].source.offset, last_committed + 1);
}

#[tokio::test]
async fn publish_errors_surface_instead_of_being_swallowed() {
    let cluster = MockCluster::new(1).unwrap();
    let mut s = settings(&cluster, "errors");
    cluster.create_topic(&s.outcome_topic, 1, 1).unwrap();
    s.properties.insert("message.timeout.ms".into(), "1000".into());
    let publisher = KafkaPublisher::new(&s).unwrap();
    cluster.broker_down(1).unwrap();
    let outcome = backbone_sync::ports::OutcomeRecord {
        version: 1,
        event_id: backbone_sync::event::EventId::parse("e").unwrap(),
        shipment_id: ShipmentId::parse("s").unwrap(),
        outcome: backbone_sync::ports::Outcome::Success,
        first_outcome: None,
        attempt: 1,
        crm_status: None,
        occurred_at: time::OffsetDateTime::now_utc(),
        processed_at: time::OffsetDateTime::now_utc(),
        latency_ms: 1.0,
        error: None,
        correlation_id: "c".into(),
    };
    let err = publisher.publish(&[outcome]).await.unwrap_err();
    assert!(err.to_string().contains("delivery failed"), "{err}");
}
