//! Fault injection with librdkafka's in-process mock cluster: broker outages, request errors,
//! redelivery, and the consumer runner's commit-after-effect.

#![allow(clippy::unwrap_used)]

use async_trait::async_trait;
use backbone_kafka::{
    ConsumedRecord, ConsumerRunner, DeadLetter, DeadLetterPublisher, Disposition, KafkaConsumer,
    KafkaPublisher, KafkaSettings, OutgoingRecord, RecordHandler, RecordPosition, Rejected, RetryBackoff,
    HEADER_REASON_CODE, HEADER_SOURCE_OFFSET, HEADER_VALUE_WITHHELD, MAX_REASON_BYTES,
};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn settings(cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>) -> KafkaSettings {
    KafkaSettings {
        brokers: cluster.bootstrap_servers(),
        ..KafkaSettings::default()
    }
}

fn letter(i: i64) -> DeadLetter {
    DeadLetter {
        source: Some(RecordPosition {
            topic: "in".into(),
            partition: 0,
            offset: i,
        }),
        key: Some(b"k".to_vec()),
        payload: Some(format!("payload-{i}").into_bytes()),
        withheld_bytes: None,
        reason_code: "malformed_json".into(),
        reason: "bad".into(),
        attempts: 1,
        replay_count: Some(0),
        event_id: None,
    }
}

#[tokio::test]
async fn dead_letters_wait_out_a_broker_outage_and_are_delivered() {
    let cluster = MockCluster::new(1).unwrap();
    let s = settings(&cluster);
    cluster.create_topic("dlq-outage", 1, 1).unwrap();
    let publisher = DeadLetterPublisher::new(KafkaPublisher::new(&s).unwrap(), "dlq-outage");
    publisher.publish(&[letter(0)]).await.unwrap();

    cluster.broker_down(1).unwrap();
    let started = Instant::now();
    let send = tokio::spawn({
        let p = publisher.clone();
        async move { p.publish(&[letter(1), letter(2)]).await }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!send.is_finished(), "no acknowledgement while the broker is down");
    cluster.broker_up(1).unwrap();
    send.await.unwrap().expect("delivered once the broker is back");
    assert!(started.elapsed() >= Duration::from_millis(800));
}

/// Takes up to `n` batches, waiting at most 20 s in all.
async fn take(c: &KafkaConsumer, n: usize, max_records: usize) -> Vec<backbone_kafka::ConsumedBatch> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < n && Instant::now() < deadline {
        if let Ok(Ok(b)) = tokio::time::timeout(Duration::from_secs(5), c.next_batch(max_records)).await {
            got.push(b);
        }
    }
    got
}

async fn produce(brokers: &str, topic: &str, values: &[&str]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for v in values {
        producer
            .send(
                FutureRecord::to(topic).key("k").payload(*v),
                Timeout::After(Duration::from_secs(5)),
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn an_uncommitted_batch_is_redelivered_to_the_next_member() {
    let cluster = MockCluster::new(1).unwrap();
    let s = settings(&cluster);
    cluster.create_topic("in-redeliver", 1, 1).unwrap();
    let values: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    produce(&s.brokers, "in-redeliver", &values).await;

    // First member: takes two batches, handles (and commits) only the first, then dies.
    let first = KafkaConsumer::new(&s, "g-redeliver", &["in-redeliver"], None).unwrap();
    let batches = take(&first, 2, 3).await;
    assert_eq!(batches.len(), 2);
    let committed = &batches[0];
    assert!(committed.records.len() <= 3);
    let last_committed = committed.records.last().unwrap().position.offset;
    assert!(batches[1].records[0].position.offset > last_committed);
    first.commit(committed).unwrap();
    first.commit_processed().unwrap();
    // The member dies: its batches are gone with it (a live batch would hold the revocation).
    drop(batches);
    drop(first);

    // Second member of the same group starts right after the committed records: the second
    // batch, received but never committed, is delivered again.
    let second = KafkaConsumer::new(&s, "g-redeliver", &["in-redeliver"], None).unwrap();
    let next = take(&second, 1, 100).await;
    assert_eq!(next[0].records[0].position.offset, last_committed + 1);
    assert_eq!(
        next[0].records[0].value(),
        format!("m{}", last_committed + 1).as_bytes()
    );
}

#[tokio::test]
async fn publish_errors_surface_instead_of_being_swallowed() {
    let cluster = MockCluster::new(1).unwrap();
    let mut s = settings(&cluster);
    cluster.create_topic("out-errors", 1, 1).unwrap();
    s.properties.insert("message.timeout.ms".into(), "1000".into());
    let publisher = KafkaPublisher::new(&s).unwrap();
    cluster.broker_down(1).unwrap();
    let err = publisher
        .send_all(vec![OutgoingRecord {
            topic: "out-errors",
            key: None,
            payload: Some(b"x"),
            headers: vec![],
        }])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("delivery failed"), "{err}");
}

/// Fails the first `transient` attempts at every record, dead-letters records whose value is
/// `bad`, stops the runner after `stop_after` handled records.
struct Script {
    transient: usize,
    attempts: AtomicUsize,
    handled: Mutex<Vec<String>>,
    stop_after: usize,
    stop: CancellationToken,
}

#[async_trait]
impl RecordHandler for Script {
    type Transient = String;

    async fn handle(&self, record: &ConsumedRecord) -> Result<Disposition, String> {
        if self.attempts.fetch_add(1, Ordering::SeqCst) % (self.transient + 1) < self.transient {
            return Err("store away".into());
        }
        let value = String::from_utf8_lossy(record.value()).into_owned();
        let mut handled = self.handled.lock().unwrap();
        handled.push(value.clone());
        if handled.len() >= self.stop_after {
            self.stop.cancel();
        }
        Ok(if value == "bad" {
            Disposition::DeadLetter(Rejected {
                reason_code: "malformed_json".into(),
                reason: "not JSON".into(),
                payload: Some(b"withheld".to_vec()),
            })
        } else {
            Disposition::Done
        })
    }
}

#[tokio::test]
async fn the_runner_retries_transient_errors_dead_letters_the_rest_and_commits_after_the_effects() {
    let cluster = MockCluster::new(1).unwrap();
    let s = settings(&cluster);
    cluster.create_topic("in-runner", 1, 1).unwrap();
    cluster.create_topic("dlq-runner", 1, 1).unwrap();
    produce(&s.brokers, "in-runner", &["a", "bad", "c"]).await;
    let publisher = KafkaPublisher::new(&s).unwrap();
    let stop = CancellationToken::new();
    let script = Script {
        transient: 2,
        attempts: AtomicUsize::new(0),
        handled: Mutex::default(),
        stop_after: 3,
        stop: stop.clone(),
    };
    let runner = ConsumerRunner::new(
        KafkaConsumer::new(&s, "g-runner", &["in-runner"], None).unwrap(),
        DeadLetterPublisher::new(publisher, "dlq-runner"),
        10,
    )
    .with_backoff(RetryBackoff {
        min: Duration::from_millis(5),
        max: Duration::from_millis(20),
    });
    tokio::time::timeout(Duration::from_secs(30), runner.run(&script, &stop))
        .await
        .expect("the runner stops");
    assert_eq!(*script.handled.lock().unwrap(), ["a", "bad", "c"]);
    assert_eq!(
        script.attempts.load(Ordering::SeqCst),
        9,
        "two transient failures per record"
    );

    // The dead letter carries the handler's payload and the standard headers.
    let dlq = KafkaConsumer::new(&s, "g-dlq-reader", &["dlq-runner"], None).unwrap();
    let letters = take(&dlq, 1, 10).await;
    let letter = &letters[0].records[0];
    assert_eq!(letter.value(), b"withheld");
    assert_eq!(letter.header(HEADER_REASON_CODE), Some("malformed_json"));
    assert_eq!(letter.header(HEADER_SOURCE_OFFSET), Some("1"));

    // Everything was committed: a new member of the group gets nothing old.
    produce(&s.brokers, "in-runner", &["d"]).await;
    let next = KafkaConsumer::new(&s, "g-runner", &["in-runner"], None).unwrap();
    let batch = take(&next, 1, 10).await;
    assert_eq!(batch[0].records[0].value(), b"d");
}

/// A record larger than `max_record_bytes` is set aside at intake without its value, and a
/// tombstone keeps its null value in its dead letter; the records after them are handled and
/// everything is committed (before, an oversized record's dead letter was refused by the
/// producer and the batch was retried for ever).
#[tokio::test]
async fn an_oversized_record_and_a_tombstone_are_set_aside_and_the_runner_goes_on() {
    let cluster = MockCluster::new(1).unwrap();
    let s = KafkaSettings {
        max_record_bytes: 4096,
        ..settings(&cluster)
    };
    cluster.create_topic("in-big", 1, 1).unwrap();
    cluster.create_topic("dlq-big", 1, 1).unwrap();
    let big = "x".repeat(20_000);
    produce(&s.brokers, "in-big", &["a", &big]).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &s.brokers)
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::<str, [u8]>::to("in-big").key("k"),
            Timeout::After(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    produce(&s.brokers, "in-big", &["c"]).await;

    let stop = CancellationToken::new();
    let script = Script {
        transient: 0,
        attempts: AtomicUsize::new(0),
        handled: Mutex::default(),
        stop_after: 3,
        stop: stop.clone(),
    };
    let runner = ConsumerRunner::new(
        KafkaConsumer::new(&s, "g-big", &["in-big"], None).unwrap(),
        DeadLetterPublisher::new(KafkaPublisher::new(&s).unwrap(), "dlq-big"),
        10,
    );
    tokio::time::timeout(Duration::from_secs(30), runner.run(&script, &stop))
        .await
        .expect("the runner stops");
    // The handler never saw the oversized record; it saw the tombstone (as an empty value).
    assert_eq!(*script.handled.lock().unwrap(), ["a", "", "c"]);

    let dlq = KafkaConsumer::new(&s, "g-big-reader", &["dlq-big"], None).unwrap();
    let letters = take(&dlq, 1, 10).await;
    let letter = &letters[0].records[0];
    assert_eq!(letter.payload, None, "the value is withheld");
    assert_eq!(letter.header(HEADER_REASON_CODE), Some("record_too_large"));
    assert_eq!(letter.header(HEADER_VALUE_WITHHELD), Some("20001"));
    assert_eq!(letter.header(HEADER_SOURCE_OFFSET), Some("1"));
    assert!(letter.header("x-dlq-reason").is_some_and(|r| !r.contains("xxx")));

    produce(&s.brokers, "in-big", &["d"]).await;
    let next = KafkaConsumer::new(&s, "g-big", &["in-big"], None).unwrap();
    assert_eq!(take(&next, 1, 10).await[0].records[0].value(), b"d");
}

/// A letter whose value is larger than consumers accept goes out without it, and its reason is
/// bounded and free of control characters.
#[tokio::test]
async fn a_dead_letter_too_large_to_carry_goes_out_without_its_value() {
    let cluster = MockCluster::new(1).unwrap();
    let s = KafkaSettings {
        max_record_bytes: 4096,
        ..settings(&cluster)
    };
    cluster.create_topic("dlq-fit", 1, 1).unwrap();
    let publisher = DeadLetterPublisher::new(KafkaPublisher::new(&s).unwrap(), "dlq-fit");
    let mut big = letter(0);
    big.payload = Some(vec![b'y'; 10_000]);
    big.reason = format!("line one\nline\0two {}", "r".repeat(2000));
    publisher.publish(&[big, letter(1)]).await.expect("published");
    let reader = KafkaConsumer::new(&s, "g-fit", &["dlq-fit"], None).unwrap();
    let mut records = Vec::new();
    for b in take(&reader, 2, 10).await {
        records.extend(b.records);
        if records.len() >= 2 {
            break;
        }
    }
    assert_eq!(records[0].payload, None);
    assert_eq!(records[0].header(HEADER_VALUE_WITHHELD), Some("10001"));
    let reason = records[0].header("x-dlq-reason").unwrap();
    assert!(
        reason.len() <= MAX_REASON_BYTES && !reason.contains(['\n', '\0']),
        "{reason}"
    );
    assert_eq!(
        records[1].value(),
        b"payload-1",
        "a letter that fits keeps its value"
    );
}

/// A revocation waits until the old owner's in-flight batches of the revoked partitions are done:
/// the partitions stay with the old owner, and the new one gets nothing, until then (before, they
/// went at once, while the old owner's batch was still being written). The commit made during
/// the revocation is what real brokers accept; the mock cluster refuses commits while a rebalance
/// is in progress, so redelivery is not asserted here.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_revocation_waits_for_the_in_flight_batch_of_the_revoked_partitions() {
    let cluster = MockCluster::new(1).unwrap();
    let s = settings(&cluster);
    cluster.create_topic("in-drain", 4, 1).unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &s.brokers)
        .create()
        .unwrap();
    for i in 0..40 {
        producer
            .send(
                FutureRecord::to("in-drain")
                    .key(&format!("k{i}"))
                    .payload(&format!("m{i}"))
                    .partition(i % 4),
                Timeout::After(Duration::from_secs(5)),
            )
            .await
            .unwrap();
    }
    let first = std::sync::Arc::new(KafkaConsumer::new(&s, "g-drain", &["in-drain"], None).unwrap());
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while held
        .iter()
        .map(|b: &backbone_kafka::ConsumedBatch| b.records.len())
        .sum::<usize>()
        < 40
    {
        assert!(Instant::now() < deadline, "the first member got its records");
        if let Ok(Ok(b)) = tokio::time::timeout(Duration::from_secs(2), first.next_batch(100)).await {
            held.push(b);
        }
    }
    // The first member keeps polling, as its pipeline would, while its batches are in flight.
    let poller = {
        let first = first.clone();
        tokio::spawn(async move {
            loop {
                let _ = tokio::time::timeout(Duration::from_millis(100), first.next_batch(10)).await;
            }
        })
    };
    let second = std::sync::Arc::new(KafkaConsumer::new(&s, "g-drain", &["in-drain"], None).unwrap());
    let second_poller = {
        let second = second.clone();
        tokio::spawn(async move {
            loop {
                let _ = tokio::time::timeout(Duration::from_millis(100), second.next_batch(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        first.assigned_partitions().len(),
        4,
        "kept while its batches are in flight"
    );
    assert!(second.assigned_partitions().is_empty(), "nothing handed over yet");
    for b in &held {
        let _ = first.commit(b);
    }
    drop(held);
    let until = Instant::now() + Duration::from_secs(20);
    while second.assigned_partitions().is_empty() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    poller.abort();
    second_poller.abort();
    assert!(
        !second.assigned_partitions().is_empty(),
        "handed over once the batches were done"
    );
    assert!(first.assigned_partitions().len() < 4);
}

/// A member whose assignment stays empty while the group's partitions hold records nobody has
/// consumed rejoins the group (the local broker can leave a replacement with an empty
/// assignment after a `kill -9` and never rebalance).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_left_idle_while_records_wait_rejoins_the_group() {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let cluster = MockCluster::new(1).unwrap();
    let s = KafkaSettings {
        rejoin_after_ms: 1500,
        ..settings(&cluster)
    };
    cluster.create_topic("in-idle", 1, 1).unwrap();
    produce(&s.brokers, "in-idle", &["a", "b"]).await;
    // A member that holds the only partition and consumes nothing.
    let holder: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &s.brokers)
        .set("group.id", "g-idle")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    holder.subscribe(&["in-idle"]).unwrap();
    let hold = tokio::spawn(async move {
        loop {
            let _ = tokio::time::timeout(Duration::from_millis(100), holder.recv()).await;
        }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = KafkaConsumer::new(&s, "g-idle", &["in-idle"], None).unwrap();
    // Waits are dropped every 200 ms and started again, as crm-sync's loop does on every retry
    // tick: the watchdog counts the wait across them.
    let until = Instant::now() + Duration::from_secs(10);
    while idle.rejoins() == 0 && Instant::now() < until {
        let _ = tokio::time::timeout(Duration::from_millis(200), idle.next_batch(10)).await;
    }
    assert!(idle.rejoins() >= 1, "rejoined while records waited unconsumed");
    hold.abort();
}

/// An outbox in memory: rows in id order, what was deleted and what was set aside; `lost` ends
/// the holder's lock session and keeps the lock taken elsewhere until it is cleared.
#[derive(Default)]
struct Rows {
    rows: Mutex<Vec<(i64, String, String)>>,
    set_aside: Mutex<Vec<(i64, &'static str)>>,
    lost: Arc<AtomicBool>,
}

struct Held(Arc<AtomicBool>);

#[async_trait]
impl backbone_kafka::Lease for Held {
    async fn is_alive(&self) -> bool {
        !self.0.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl backbone_kafka::Outbox for Rows {
    type Row = (i64, String, String);

    async fn try_lead(&self) -> Result<Option<Box<dyn backbone_kafka::Lease>>, String> {
        if self.lost.load(Ordering::SeqCst) {
            return Ok(None);
        }
        Ok(Some(Box::new(Held(self.lost.clone()))))
    }

    async fn next(&self, limit: i64) -> Result<Vec<Self::Row>, String> {
        let rows = self.rows.lock().unwrap();
        Ok(rows.iter().take(limit as usize).cloned().collect())
    }

    fn id(row: &Self::Row) -> i64 {
        row.0
    }

    fn record<'a>(&'a self, row: &'a Self::Row) -> OutgoingRecord<'a> {
        OutgoingRecord {
            topic: "out-relay",
            key: Some(row.1.as_bytes()),
            payload: Some(row.2.as_bytes()),
            headers: vec![],
        }
    }

    async fn delete(&self, ids: &[i64]) -> Result<(), String> {
        self.rows.lock().unwrap().retain(|r| !ids.contains(&r.0));
        Ok(())
    }

    async fn set_aside(
        &self,
        row: &Self::Row,
        reason_code: &'static str,
        _reason: &str,
    ) -> Result<(), String> {
        self.set_aside.lock().unwrap().push((row.0, reason_code));
        Ok(())
    }
}

/// The shared relay publishes rows in id order and deletes them only once acknowledged; a row
/// the broker refuses for good is set aside and the rows after it (of the same key too) still go
/// out; while the broker is down nothing is deleted, and the same rows go once it is back.
#[tokio::test]
async fn the_outbox_relay_publishes_in_order_sets_refusals_aside_and_keeps_rows_while_the_broker_is_down() {
    let cluster = MockCluster::new(1).unwrap();
    let s = KafkaSettings {
        max_record_bytes: 4096,
        ..settings(&cluster)
    };
    cluster.create_topic("out-relay", 1, 1).unwrap();
    let outbox = Rows::default();
    *outbox.rows.lock().unwrap() = vec![
        (1, "k".into(), "one".into()),
        (2, "k".into(), "x".repeat(100_000)),
        (3, "k".into(), "three".into()),
    ];
    let mut relay = backbone_kafka::OutboxRelay::new(KafkaPublisher::new(&s).unwrap());
    relay.batch = 10;
    let drained = relay.drain_once(&outbox).await.unwrap();
    assert_eq!(drained.published, 2);
    assert_eq!(drained.set_aside, ["record_too_large"]);
    assert!(drained.failed.is_none());
    assert!(
        outbox.rows.lock().unwrap().is_empty(),
        "every row handled is deleted"
    );
    assert_eq!(*outbox.set_aside.lock().unwrap(), [(2, "record_too_large")]);

    // The broker away: the pass fails and the row stays for the next one.
    cluster.broker_down(1).unwrap();
    outbox.rows.lock().unwrap().push((4, "k".into(), "four".into()));
    let mut impatient = s.clone();
    impatient
        .properties
        .insert("message.timeout.ms".into(), "1000".into());
    let mut short = backbone_kafka::OutboxRelay::new(KafkaPublisher::new(&impatient).unwrap());
    short.batch = 10;
    let drained = short.drain_once(&outbox).await.unwrap();
    assert!(drained.failed.is_some(), "{drained:?}");
    assert_eq!(outbox.rows.lock().unwrap().len(), 1, "nothing deleted");
    cluster.broker_up(1).unwrap();
    let drained = relay.drain_once(&outbox).await.unwrap();
    assert_eq!(drained.published, 1);
    assert!(outbox.rows.lock().unwrap().is_empty());

    let reader = KafkaConsumer::new(&s, "g-relay", &["out-relay"], None).unwrap();
    let mut values = Vec::new();
    for b in take(&reader, 3, 10).await {
        values.extend(
            b.records
                .iter()
                .map(|r| String::from_utf8_lossy(r.value()).into_owned()),
        );
        if values.len() >= 3 {
            break;
        }
    }
    assert_eq!(
        values,
        ["one", "three", "four"],
        "in id order, the refused row left out"
    );
}

/// What a relay told its observer about leading.
#[derive(Default)]
struct Leading(Mutex<Vec<bool>>);

impl backbone_kafka::RelayObserver for Leading {
    fn pass(&self, _outcome: Result<&backbone_kafka::Drained, &str>) {}

    fn leading(&self, leading: bool) {
        self.0.lock().unwrap().push(leading);
    }
}

impl Leading {
    async fn until(&self, seen: &[bool]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.0.lock().unwrap().as_slice() != seen {
            assert!(
                Instant::now() < deadline,
                "told {:?}, waiting for {seen:?}",
                self.0.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The relay tells its observer when it leads and when it stops: it notices a lost lock session
/// while idle, does not lead while another holds the lock, leads again once the lock is free, and
/// says it no longer leads when it stops. Operators read this as `*_outbox_leader`.
#[tokio::test]
async fn the_relay_says_when_it_leads_and_when_it_stops_leading() {
    let cluster = MockCluster::new(1).unwrap();
    let s = settings(&cluster);
    cluster.create_topic("out-relay", 1, 1).unwrap();
    let outbox = Rows::default();
    *outbox.rows.lock().unwrap() = vec![(1, "k".into(), "one".into())];
    let mut relay = backbone_kafka::OutboxRelay::new(KafkaPublisher::new(&s).unwrap());
    relay.idle_poll = Duration::from_millis(1);
    let observer = Leading::default();
    let stop = CancellationToken::new();
    let steps = async {
        observer.until(&[true]).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !outbox.rows.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "the leader publishes");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The lock's session ends and another process takes the lock.
        outbox.lost.store(true, Ordering::SeqCst);
        observer.until(&[true, false]).await;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(
            *observer.0.lock().unwrap(),
            [true, false],
            "no second leader while the lock is held elsewhere"
        );
        outbox.lost.store(false, Ordering::SeqCst);
        observer.until(&[true, false, true]).await;
        stop.cancel();
    };
    tokio::join!(relay.run(&outbox, &observer, "test", &stop), steps);
    assert_eq!(*observer.0.lock().unwrap(), [true, false, true, false]);
}
