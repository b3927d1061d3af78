//! Two instances behind one address (`--scale-only`): both on one database, Redis prefix and
//! broker, reached through one TCP front ([`crate::front`]) that deals connections out in turn.
//! 1. Pairs/s through the front with one instance (the same-run baseline), then with two.
//! 2. Handover: clients go on through the front while the instance leading the outbox relay
//!    (`gift_certificates_outbox_leader`) is killed with SIGKILL. Measured: the time until the
//!    other instance leads and until it publishes. Requests cut off by the kill are retried
//!    with their `Idempotency-Key` until answered.
//! 3. Checked: once the outbox is empty, every certificate's `GiftCertificateTransaction` events
//!    (first copy of each `event_id`) are exactly its `gift_certificate_operation` rows in
//!    commit order: nothing lost, nothing reordered, nothing that did not commit.

use super::api::{key, Api, Errors};
use super::throughput::pair_client;
use super::{Args, AMOUNT_MINOR, INITIATOR};
use crate::front::Front;
use crate::gift::{Service, ServiceSpec, CURRENCY, POS_TOKEN};
use crate::report::{metric_sum, round};
use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Seconds of client traffic before and after the kill.
const BEFORE_KILL: Duration = Duration::from_secs(4);
const AFTER_KILL: Duration = Duration::from_secs(6);

fn client(instances: usize) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10))
        .build()
        .with_context(|| format!("HTTP client for {instances} instances"))
}

fn addr(s: &Service) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], s.port))
}

/// Pairs/s through `front`, `args.clients` clients on their own certificates.
async fn pairs_per_s(
    args: &Args,
    front: &Front,
    instances: usize,
    certs: &[(String, String)],
) -> anyhow::Result<Value> {
    let api = Api {
        http: client(instances)?,
        base: front.base_url.clone(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Errors::default());
    let workers: Vec<_> = certs
        .chunks(args.certificates_per_client)
        .map(|c| tokio::spawn(pair_client(api.clone(), c.to_vec(), stop.clone(), errors.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(args.warmup_seconds)).await;
    let w0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let w1 = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let mut pairs = 0usize;
    for w in workers {
        pairs += w.await?.iter().filter(|(at, _, _)| *at >= w0 && *at < w1).count();
    }
    let rate = pairs as f64 / (w1 - w0).as_secs_f64();
    println!("  {instances} instance(s) behind the front: {rate:.0} pairs/s");
    Ok(json!({"instances": instances, "pairs_per_s": round(rate, 0), "errors": errors.report()}))
}

/// A POST retried with its key until it is answered: transport errors, 5xx and
/// `idempotency-in-flight` are what a kill leaves behind. Returns the answer's `operation_id`.
async fn keyed(
    api: &Api,
    path: &str,
    body: &Value,
    expect: u16,
    retries: &mut u64,
) -> anyhow::Result<String> {
    let key = key();
    for _ in 0..600 {
        let sent = api
            .http
            .post(format!("{}{path}", api.base))
            .bearer_auth(POS_TOKEN)
            .header("idempotency-key", &key)
            .header("x-initiator", INITIATOR)
            .json(body)
            .send()
            .await;
        if let Ok(resp) = sent {
            let status = resp.status().as_u16();
            let answer: Value = resp.json().await.unwrap_or(Value::Null);
            if status == expect {
                return answer["operation_id"]
                    .as_str()
                    .map(str::to_owned)
                    .context("no operation_id");
            }
            anyhow::ensure!(status >= 500 || status == 409, "{path}: HTTP {status} {answer}");
        }
        *retries += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("{path}: not answered after 600 tries")
}

/// Pairs until `stop`, each request retried with its key until answered; returns the retries.
async fn keyed_client(api: Api, certs: Vec<(String, String)>, stop: Arc<AtomicBool>) -> anyhow::Result<u64> {
    let mut retries = 0;
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let (code, cvc) = &certs[i % certs.len()];
        i += 1;
        let body = json!({"amount_minor": AMOUNT_MINOR, "currency": CURRENCY, "cvc": cvc});
        let hold = keyed(
            &api,
            &format!("/certificates/{code}/authorize"),
            &body,
            201,
            &mut retries,
        )
        .await?;
        let body = json!({"hold_id": hold, "amount_minor": AMOUNT_MINOR, "currency": CURRENCY});
        keyed(
            &api,
            &format!("/certificates/{code}/capture"),
            &body,
            200,
            &mut retries,
        )
        .await?;
    }
    Ok(retries)
}

/// Whether an instance leads the outbox relay now (its gauge), `None` when it does not answer.
async fn leads(http: &reqwest::Client, s: &Service) -> Option<bool> {
    let text = s.metrics(http).await.ok()?;
    Some(metric_sum(&text, "gift_certificates_outbox_leader", "") >= 1.0)
}

pub(super) async fn measure(
    args: &Args,
    spec: &ServiceSpec<'_>,
    first: Service,
    certs: &[(String, String)],
    transactions_topic: &str,
) -> anyhow::Result<Value> {
    println!("scale-out: two instances behind one address");
    let front = Front::start(vec![addr(&first)]).await?;
    let one = pairs_per_s(args, &front, 1, certs).await?;
    let mut second = Service::start(spec)?;
    let http = client(0)?;
    second.wait_ready(&http, Duration::from_secs(120)).await?;
    front.set_backends(vec![addr(&first), addr(&second)]);
    let two = pairs_per_s(args, &front, 2, certs).await?;
    let mut both = [first, second];
    let handover = handover(args, &front, &mut both, certs, &http).await?;
    let db_url = both[0].db_url.clone();
    drop(both);
    let check = check_events(&db_url, &args.brokers, transactions_topic).await?;
    let ratio =
        two["pairs_per_s"].as_f64().unwrap_or(0.0) / one["pairs_per_s"].as_f64().unwrap_or(1.0).max(1.0);
    Ok(
        json!({"one_instance": one, "two_instances": two, "ratio_two_to_one": round(ratio, 3),
              "handover": handover, "events": check}),
    )
}

async fn handover(
    args: &Args,
    front: &Front,
    both: &mut [Service; 2],
    certs: &[(String, String)],
    http: &reqwest::Client,
) -> anyhow::Result<Value> {
    let api = Api {
        http: client(2)?,
        base: front.base_url.clone(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = certs
        .chunks(args.certificates_per_client)
        .map(|c| tokio::spawn(keyed_client(api.clone(), c.to_vec(), stop.clone())))
        .collect();
    tokio::time::sleep(BEFORE_KILL).await;
    let mut leader = None;
    for (i, s) in both.iter().enumerate() {
        if leads(http, s).await == Some(true) {
            anyhow::ensure!(leader.is_none(), "two instances say they lead the outbox relay");
            leader = Some(i);
        }
    }
    let leader = leader.context("no instance leads the outbox relay")?;
    let survivor = 1 - leader;
    let published = "gift_certificates_outbox_published_total";
    let before = metric_sum(&both[survivor].metrics(http).await?, published, "");
    let pid = both[leader].pid;
    // The front is not told: like a load balancer before its health check notices, it still
    // deals connections to the killed instance and falls over to the other when refused.
    let killed = Instant::now();
    both[leader].kill();
    println!("  killed the relay leader (pid {pid}); clients go on through the front");
    let (mut leads_after, mut publishes_after) = (None, None);
    while killed.elapsed() < AFTER_KILL {
        let text = both[survivor].metrics(http).await.unwrap_or_default();
        if leads_after.is_none() && metric_sum(&text, "gift_certificates_outbox_leader", "") >= 1.0 {
            leads_after = Some(killed.elapsed());
        }
        if publishes_after.is_none() && metric_sum(&text, published, "") > before {
            publishes_after = Some(killed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut retries = 0;
    for w in workers {
        retries += w.await??;
    }
    let ms = |d: Option<Duration>| d.map(|d| round(d.as_secs_f64() * 1000.0, 0));
    println!(
        "  the other instance leads {:?} ms and publishes {:?} ms after the kill; {retries} requests retried",
        ms(leads_after),
        ms(publishes_after)
    );
    wait_outbox_empty(&both[survivor].db_url).await?;
    Ok(
        json!({"kill_to_new_leader_ms": ms(leads_after), "kill_to_first_publish_ms": ms(publishes_after),
              "requests_retried": retries}),
    )
}

async fn wait_outbox_empty(db_url: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(db_url).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&mut db)
            .await?;
        if left == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{left} outbox rows not relayed after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each certificate's operation ids in commit order, from the database and from the topic.
type Sequences = BTreeMap<String, Vec<String>>;

async fn check_events(db_url: &str, brokers: &str, topic: &str) -> anyhow::Result<Value> {
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(db_url).await?;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT certificate_id::text, operation_id FROM gift_certificate_operation ORDER BY id",
    )
    .fetch_all(&mut db)
    .await?;
    let mut committed = Sequences::new();
    for (certificate, operation) in rows {
        committed.entry(certificate).or_default().push(operation);
    }
    let (published, records, duplicates) = read_topic(brokers, topic)?;
    let differing = committed
        .iter()
        .filter(|(c, ops)| published.get(*c) != Some(*ops))
        .count()
        + published.keys().filter(|c| !committed.contains_key(*c)).count();
    let operations: usize = committed.values().map(Vec::len).sum();
    println!(
        "  events: {operations} operations committed, {records} records read ({duplicates} duplicates); {differing} certificates differ"
    );
    anyhow::ensure!(
        differing == 0,
        "{differing} certificates' events are not their committed operations in order"
    );
    Ok(
        json!({"operations": operations, "records": records, "duplicates": duplicates,
              "certificates": committed.len(), "certificates_differing": differing}),
    )
}

/// The topic from the start to its end: each certificate's operation ids in the order read,
/// the first copy of each `event_id` only; with the records read and the duplicates skipped.
fn read_topic(brokers: &str, topic: &str) -> anyhow::Result<(Sequences, usize, usize)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-check-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .context("topic metadata")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p as i32, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let (mut seen, mut sequences) = (HashSet::new(), Sequences::new());
    let (mut records, mut duplicates, mut ended) = (0, 0, HashSet::new());
    let deadline = Instant::now() + Duration::from_secs(120);
    while ended.len() < partitions {
        anyhow::ensure!(Instant::now() < deadline, "{topic} not read to its end in 120 s");
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                records += 1;
                let event: Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
                let id = event["event_id"].as_str().unwrap_or_default().to_owned();
                if !seen.insert(id) {
                    duplicates += 1;
                    continue;
                }
                let certificate = event["certificate_id"].as_str().unwrap_or_default().to_owned();
                let operation = event["operation_id"].as_str().unwrap_or_default().to_owned();
                sequences.entry(certificate).or_default().push(operation);
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                ended.insert(p);
            }
            Some(Err(e)) => anyhow::bail!("reading {topic}: {e}"),
            None => {}
        }
    }
    Ok((sequences, records, duplicates))
}
