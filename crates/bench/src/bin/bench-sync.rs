//! crm-sync benchmark. Produces events to a fresh topic, runs the release crm-sync against the
//! release crm-sim, and measures in the same run:
//! - end-to-end events/s with every guarantee on (idempotency, log row, CRM write, outcome
//!   published, offsets committed), CPU seconds per 1,000 events and peak RSS of crm-sync;
//! - p50/p99 event-to-CRM lag at a steady rate;
//! - baselines: a bare rdkafka consumer reading the same topic, and PostgreSQL alone taking the
//!   same rows (COPY into scratch copies of `integrations_log` and `processed_events`).

use anyhow::Context;
use backbone_bench::{event_json, producer, send_all};
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;
use serde_json::json;
use sqlx::{Connection, PgConnection};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9094")]
    brokers: String,
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Steady rate of the latency phase.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    latency_seconds: u64,
    #[arg(long, default_value = "postgres://postgres:postgres@127.0.0.1:5432")]
    pg: String,
    #[arg(long, default_value = "target/bench/crm-sync.json")]
    out: PathBuf,
}

const TOKEN: &str = "bench-token-0123456789";
const SECRET: &str = "bench-signing-secret-0123456789";
const STATUSES: [&str; 4] = ["CREATED", "IN_TRANSIT", "OUT_FOR_DELIVERY", "DELIVERED"];

struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn release_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.parent().context("binary directory")?.join(name);
    anyhow::ensure!(
        bin.exists(),
        "{} missing: `cargo build --release -p {name}`",
        bin.display()
    );
    Ok(bin)
}

/// (utime + stime) in seconds, and peak RSS in MiB, of a process.
fn cpu_and_peak_rss(pid: u32) -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are at 11 and 12 after the name.
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmHWM")?;
    Ok((ticks / 100.0, hwm_kib / 1024.0))
}

async fn outcomes_total(client: &reqwest::Client, port: u16) -> anyhow::Result<f64> {
    let text = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("crm_sync_outcomes_total{"))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum())
}

async fn wait_for_outcomes(
    client: &reqwest::Client,
    port: u16,
    target: f64,
    limit: Duration,
) -> anyhow::Result<Instant> {
    let start = Instant::now();
    loop {
        if outcomes_total(client, port).await.unwrap_or(0.0) >= target {
            return Ok(Instant::now());
        }
        anyhow::ensure!(
            start.elapsed() < limit,
            "crm-sync did not reach {target} outcomes in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Reads `count` messages from `topic` with a bare consumer; returns messages/s and the payloads
/// if `keep` is set.
fn bare_consume(brokers: &str, topic: &str, count: usize, keep: bool) -> anyhow::Result<(f64, Vec<Vec<u8>>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-bare-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut seen = 0;
    let mut kept = Vec::new();
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen < count {
        anyhow::ensure!(
            Instant::now() < deadline,
            "bare consumer stalled at {seen}/{count}"
        );
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m?;
            started.get_or_insert_with(Instant::now);
            seen += 1;
            if keep {
                kept.push(m.payload().unwrap_or_default().to_vec());
            }
        }
    }
    let secs = started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(f64::NAN);
    Ok((count as f64 / secs, kept))
}

/// Produce-to-consume latency of the broker alone at the steady rate: a bare consumer reads
/// records stamped at send time. Returns the sorted latencies in milliseconds.
async fn broker_latency(
    brokers: &str,
    topic: &str,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let total = (rate * seconds) as usize;
    let (b, t) = (brokers.to_owned(), topic.to_owned());
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<f64>> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &b)
            .set("group.id", format!("bench-latency-{}", uuid::Uuid::new_v4()))
            .set("auto.offset.reset", "latest")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "5")
            .set("fetch.error.backoff.ms", "10")
            .create()?;
        consumer.subscribe(&[t.as_str()])?;
        // Join the group before the first record is sent.
        let ready = Instant::now();
        while consumer.assignment().map(|a| a.count()).unwrap_or(0) == 0
            && ready.elapsed() < Duration::from_secs(20)
        {
            consumer.poll(Duration::from_millis(50));
        }
        let mut lags = Vec::with_capacity(total);
        let deadline = Instant::now() + Duration::from_secs(seconds + 60);
        while lags.len() < total && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                let sent: i128 = std::str::from_utf8(m.payload().unwrap_or_default())?.parse()?;
                let now = OffsetDateTime::now_utc().unix_timestamp_nanos();
                lags.push((now - sent) as f64 / 1e6);
            }
        }
        Ok(lags)
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let acks = paced(brokers, topic, rate, total, |i| {
        (
            format!("k{}", i % 64),
            OffsetDateTime::now_utc().unix_timestamp_nanos().to_string(),
        )
    })
    .await?;
    let mut lags = reader.await??;
    lags.sort_by(f64::total_cmp);
    let mut acks = acks;
    acks.sort_by(f64::total_cmp);
    Ok((lags, acks))
}

/// Sends `count` records at a steady `rate`, each built at its send time by `record(i)` (so a
/// timestamp inside is the send time), and waits for every ack. Returns each record's send-to-ack
/// latency in milliseconds, in send order.
async fn paced(
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
            let record = rdkafka::producer::FutureRecord::to(&topic)
                .key(&key)
                .payload(&payload);
            p.send(record, rdkafka::util::Timeout::After(Duration::from_secs(30)))
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

/// COPYs the rows one run writes per event (a log row and a processed row) into scratch copies.
async fn copy_baseline(db_url: &str, events: usize) -> anyhow::Result<f64> {
    let mut conn = PgConnection::connect(db_url).await?;
    for (scratch, table) in [
        ("scratch_log", "integrations_log"),
        ("scratch_processed", "processed_events"),
    ] {
        sqlx::query(&format!("DROP TABLE IF EXISTS {scratch}"))
            .execute(&mut conn)
            .await?;
        sqlx::query(&format!("CREATE TABLE {scratch} (LIKE {table} INCLUDING ALL)"))
            .execute(&mut conn)
            .await?;
    }
    let now = OffsetDateTime::now_utc().format(&Rfc3339)?;
    let mut log = String::with_capacity(events * 400);
    let mut processed = String::with_capacity(events * 40);
    for i in 0..events {
        let payload = format!(
            r#"{{"clientId":"client-ship-{i}","shipmentId":"ship-{i}","status":"in_transit","timestamp":"{now}","eventId":"ev-{i}"}}"#
        );
        log.push_str(&format!(
            "ev-{i}\tship-{i}\tclient-ship-{i}\tev-{i}\t{payload}\t200\t{{}}\tsuccess\t1\t\\N\t{now}\t{now}\t1.5\ttracking.events\t{}\t{i}\n",
            i % 6
        ));
        processed.push_str(&format!("ev-{i}\tsuccess\t0\t{now}\n"));
    }
    let started = Instant::now();
    let mut tx = conn.begin().await?;
    let mut copy = tx
        .copy_in_raw(
            "COPY scratch_log (event_id, shipment_id, client_id, correlation_id, payload, http_status, response_excerpt,
             outcome, attempt, error, event_time, sent_at, latency_ms, source_topic, source_partition, source_offset)
             FROM STDIN",
        )
        .await?;
    copy.send(log.as_bytes()).await?;
    copy.finish().await?;
    let mut copy = tx
        .copy_in_raw("COPY scratch_processed (event_id, outcome, replay_count, updated_at) FROM STDIN")
        .await?;
    copy.send(processed.as_bytes()).await?;
    copy.finish().await?;
    tx.commit().await?;
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let input = format!("bench.tracking.{id}");
    let outcomes = format!("bench.crm.sync.{id}");
    let latency_topic = format!("bench.latency.{id}");
    let dlq = format!("bench.dead.letters.{id}");
    let db_url = format!("{}/bench_{id}", args.pg);
    let kafka = backbone_kafka::KafkaSettings {
        brokers: args.brokers.clone(),
        ..Default::default()
    };
    backbone_kafka::ensure_topics(
        &kafka,
        &[&input, &outcomes, &dlq, &latency_topic],
        args.partitions,
    )
    .await?;

    println!(
        "baseline: broker produce-to-consume latency at {} events/s",
        args.rate
    );
    let (broker_lags, broker_acks) =
        broker_latency(&args.brokers, &latency_topic, args.rate, args.latency_seconds).await?;

    println!(
        "producing {} events to {input} ({} partitions)",
        args.events, args.partitions
    );
    let p = producer(&args.brokers, 20)?;
    let at = OffsetDateTime::now_utc().format(&Rfc3339)?;
    let records = (0..args.events).map(|i| {
        let shipment = format!("ship-{i}");
        (
            shipment.clone(),
            event_json(&format!("ev-{i}"), &shipment, STATUSES[i % 4], &at),
        )
    });
    send_all(&p, &input, records, 50_000).await?;

    println!("baseline: bare consumer");
    let (bare_rate, _) = {
        let (b, t) = (args.brokers.clone(), input.clone());
        let n = args.events;
        tokio::task::spawn_blocking(move || bare_consume(&b, &t, n, false)).await??
    };

    let sim_port = free_port()?;
    let metrics_port = free_port()?;
    let mut children = Children(Vec::new());
    children.0.push(
        Command::new(release_bin("crm-sim")?)
            .args(["--listen", &format!("127.0.0.1:{sim_port}")])
            .env("CRM_SIM_TOKEN", TOKEN)
            .env("CRM_SIM_SIGNING_SECRET", SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    let env = [
        ("CRM_SYNC_KAFKA__BROKERS", args.brokers.clone()),
        ("CRM_SYNC_KAFKA__GROUP_ID", format!("bench-{id}")),
        ("CRM_SYNC_KAFKA__INPUT_TOPIC", input.clone()),
        ("CRM_SYNC_KAFKA__OUTCOME_TOPIC", outcomes.clone()),
        ("CRM_SYNC_KAFKA__DEAD_LETTER_TOPIC", dlq.clone()),
        ("CRM_SYNC_POSTGRES__URL", db_url.clone()),
        (
            "CRM_SYNC_CRM__GENERIC__BASE_URL",
            format!("http://127.0.0.1:{sim_port}"),
        ),
        ("CRM_SYNC_CRM__GENERIC__TOKEN", TOKEN.into()),
        ("CRM_SYNC_CRM__GENERIC__SIGNING_SECRET", SECRET.into()),
        ("CRM_SYNC_HTTP__LISTEN", format!("127.0.0.1:{metrics_port}")),
        ("RUST_LOG", "warn".into()),
    ];
    let sync = Command::new(release_bin("crm-sync")?)
        .envs(env)
        .stdout(Stdio::null())
        .spawn()?;
    let sync_pid = sync.id();
    children.0.push(sync);

    println!("end to end: crm-sync draining {} events", args.events);
    let client = reqwest::Client::new();
    let target = args.events as f64;
    let first = wait_for_outcomes(&client, metrics_port, 1.0, Duration::from_secs(120)).await?;
    let first_count = outcomes_total(&client, metrics_port).await?;
    let (cpu0, _) = cpu_and_peak_rss(sync_pid)?;
    let end = wait_for_outcomes(&client, metrics_port, target, Duration::from_secs(900)).await?;
    let (cpu1, _) = cpu_and_peak_rss(sync_pid)?;
    let secs = (end - first).as_secs_f64();
    let e2e_rate = (target - first_count) / secs;
    let cpu_per_1000 = (cpu1 - cpu0) / ((target - first_count) / 1000.0);

    println!("latency: {} events/s for {} s", args.rate, args.latency_seconds);
    let lat_events = (args.rate * args.latency_seconds) as usize;
    let event_acks = paced(&args.brokers, &input, args.rate, lat_events, |i| {
        let shipment = format!("lat-ship-{i}");
        let at = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
        let doc = event_json(&format!("lat-{i}"), &shipment, "IN_TRANSIT", &at);
        (shipment, doc)
    })
    .await?;
    wait_for_outcomes(
        &client,
        metrics_port,
        target + lat_events as f64,
        Duration::from_secs(120),
    )
    .await?;
    let (_, peak_rss) = cpu_and_peak_rss(sync_pid)?;

    let (_, payloads) = {
        let (b, t) = (args.brokers.clone(), outcomes.clone());
        let n = args.events + lat_events;
        tokio::task::spawn_blocking(move || bare_consume(&b, &t, n, true)).await??
    };
    // Per latency event: event time to CRM ack, and the same minus the broker's produce ack
    // (what the pipeline adds once the record is in the log).
    let (mut lags, mut after_ack): (Vec<f64>, Vec<f64>) = payloads
        .iter()
        .filter_map(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
        .filter(|v| v["outcome"] == "success")
        .filter_map(|v| {
            let i: usize = v["event_id"].as_str()?.strip_prefix("lat-")?.parse().ok()?;
            let lag = v["latency_ms"].as_f64()?;
            Some((lag, (lag - event_acks.get(i)?).max(0.0)))
        })
        .unzip();
    after_ack.sort_by(f64::total_cmp);
    lags.sort_by(f64::total_cmp);
    drop(children);

    println!("baseline: PostgreSQL COPY of the same rows");
    let copy_rate = copy_baseline(&db_url, args.events).await?;
    let lower = bare_rate.min(copy_rate);
    let report = json!({
        "events": args.events,
        "partitions": args.partitions,
        "end_to_end_events_per_s": e2e_rate.round(),
        "baseline_bare_consumer_msgs_per_s": bare_rate.round(),
        "baseline_pg_copy_events_per_s": copy_rate.round(),
        "ratio_end_to_end_to_lower_baseline": (e2e_rate / lower * 1000.0).round() / 1000.0,
        "cpu_seconds_per_1000_events": (cpu_per_1000 * 1000.0).round() / 1000.0,
        "crm_sync_peak_rss_mib": (peak_rss * 10.0).round() / 10.0,
        "latency_rate_events_per_s": args.rate,
        "latency_samples": lags.len(),
        "lag_p50_ms": (percentile(&lags, 0.50) * 100.0).round() / 100.0,
        "lag_p99_ms": (percentile(&lags, 0.99) * 100.0).round() / 100.0,
        "lag_after_broker_ack_p50_ms": (percentile(&after_ack, 0.50) * 100.0).round() / 100.0,
        "lag_after_broker_ack_p99_ms": (percentile(&after_ack, 0.99) * 100.0).round() / 100.0,
        "baseline_broker_p50_ms": (percentile(&broker_lags, 0.50) * 100.0).round() / 100.0,
        "baseline_broker_p99_ms": (percentile(&broker_lags, 0.99) * 100.0).round() / 100.0,
        "baseline_broker_produce_ack_p50_ms": (percentile(&broker_acks, 0.50) * 100.0).round() / 100.0,
        "baseline_broker_produce_ack_p99_ms": (percentile(&broker_acks, 0.99) * 100.0).round() / 100.0,
        "targets": {"end_to_end_events_per_s": 50_000, "ratio": 0.2, "lag_p99_ms": 10, "peak_rss_mib": 256},
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)?)?;
    println!("written to {}", args.out.display());
    if let Ok(mut admin) = PgConnection::connect(&format!("{}/postgres", args.pg)).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS bench_{id} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
    }
    Ok(())
}
