//! crm-sync benchmark. Produces events to a fresh topic, runs the release crm-sync against the
//! release crm-sim, and measures in the same run:
//! - end-to-end events/s with every guarantee on (idempotency, log row, CRM write, outcome
//!   published, offsets committed), CPU seconds per 1,000 events and peak RSS of crm-sync;
//! - p50/p99 event-to-CRM lag at a steady rate;
//! - baselines: a bare rdkafka consumer reading the same topic, and PostgreSQL alone taking the
//!   same rows (COPY into scratch copies of `integrations_log` and `processed_events`);
//! - per CRM vendor dialect (`--vendors`), end-to-end events/s against crm-sim's dialect next to
//!   the ceiling the adapter's client-side rate limit implies, with the generic API as the
//!   same-run baseline (see `vendor_phase`).

use anyhow::Context;
use backbone_bench::crm_vendors::{self, round};
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
    /// Vendor dialects measured one after the other (empty: none).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "generic,bitrix24,salesforce,kommo"
    )]
    vendors: Vec<String>,
    /// Only the per-vendor phase.
    #[arg(long)]
    vendors_only: bool,
    /// Measurement window per vendor; extended until at least two commits fall inside it.
    #[arg(long, default_value_t = 10)]
    vendor_seconds: u64,
    /// Time after a vendor's first committed outcome before its window opens (spends bursts).
    #[arg(long, default_value_t = 5)]
    vendor_warmup_seconds: u64,
    /// Events produced per vendor (the window closes early if crm-sync drains them).
    #[arg(long, default_value_t = 100_000)]
    vendor_events: usize,
    /// crm-sync `pipeline.max_batch` of the vendor runs; default: the vendor's records per
    /// write request (generic: crm-sync's default).
    #[arg(long)]
    vendor_max_batch: Option<usize>,
    /// Directory of the `crm-sync.<vendor>.local.toml` files.
    #[arg(long, default_value = "config")]
    config_dir: PathBuf,
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

/// The generic end-to-end run with its baselines and the latency phase.
async fn main_phase(args: &Args) -> anyhow::Result<serde_json::Value> {
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
    if let Ok(mut admin) = PgConnection::connect(&format!("{}/postgres", args.pg)).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS bench_{id} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
    }
    Ok(report)
}

/// What the vendor dialects of crm-sim accept (webhook code, client secret, token): letters and
/// digits, as a Bitrix24 webhook code is.
const VENDOR_SECRET: &str = "benchVendorSecret0123456789";

/// `crm_sync_outcomes_total{outcome="success"}`.
async fn successes(client: &reqwest::Client, port: u16) -> anyhow::Result<f64> {
    let text = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("crm_sync_outcomes_total{outcome=\"success\"}"))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum())
}

/// Records written and requests served by one crm-sim dialect, and when that was read.
struct SimCounts {
    at: Instant,
    writes: f64,
    requests: f64,
}

async fn sim_counts(client: &reqwest::Client, port: u16, vendor: &str) -> anyhow::Result<SimCounts> {
    let v: serde_json::Value = client
        .get(format!("http://127.0.0.1:{port}/sim/vendors/{vendor}/stats"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(SimCounts {
        at: Instant::now(),
        writes: v["total_writes"].as_f64().unwrap_or(0.0),
        requests: v["requests"].as_f64().unwrap_or(0.0),
    })
}

/// One vendor: a fresh topic and database, crm-sync configured from
/// `crm-sync.<vendor>.local.toml` against crm-sim's dialect, a backlog of events for shipments
/// the CRM has not seen, and a window over committed successes.
///
/// Outcomes are committed per batch, so the window runs from one commit to a later one: it
/// opens at the first commit after the warm-up and closes at the first commit at least
/// `vendor_seconds` later (or when the backlog is drained).
async fn measure_vendor(args: &Args, vendor: &str, sim_port: u16) -> anyhow::Result<serde_json::Value> {
    let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let input = format!("bench.vendor.tracking.{id}");
    let outcomes = format!("bench.vendor.crm.sync.{id}");
    let dlq = format!("bench.vendor.dead.letters.{id}");
    let db_url = format!("{}/bench_{id}", args.pg);
    let kafka = backbone_kafka::KafkaSettings {
        brokers: args.brokers.clone(),
        ..Default::default()
    };
    backbone_kafka::ensure_topics(&kafka, &[&input, &outcomes, &dlq], args.partitions).await?;
    let p = producer(&args.brokers, 20)?;
    let at = OffsetDateTime::now_utc().format(&Rfc3339)?;
    let records = (0..args.vendor_events).map(|i| {
        let shipment = format!("{vendor}-{id}-{i}");
        (
            shipment.clone(),
            event_json(&format!("ev-{id}-{i}"), &shipment, STATUSES[i % 4], &at),
        )
    });
    send_all(&p, &input, records, 50_000).await?;

    let max_batch = args
        .vendor_max_batch
        .or_else(|| crm_vendors::default_max_batch(vendor));
    let chunk = max_batch.unwrap_or(2000).min(crm_vendors::CRM_BATCH_LIMIT);
    let config = match vendor {
        "generic" => args.config_dir.join("crm-sync.local.toml"),
        v => args.config_dir.join(format!("crm-sync.{v}.local.toml")),
    };
    let sim = format!("http://127.0.0.1:{sim_port}");
    let metrics_port = free_port()?;
    let mut env = vec![
        ("CRM_SYNC_KAFKA__BROKERS", args.brokers.clone()),
        ("CRM_SYNC_KAFKA__GROUP_ID", format!("bench-{id}")),
        ("CRM_SYNC_KAFKA__INPUT_TOPIC", input.clone()),
        ("CRM_SYNC_KAFKA__OUTCOME_TOPIC", outcomes.clone()),
        ("CRM_SYNC_KAFKA__DEAD_LETTER_TOPIC", dlq.clone()),
        ("CRM_SYNC_POSTGRES__URL", db_url.clone()),
        ("CRM_SYNC_HTTP__LISTEN", format!("127.0.0.1:{metrics_port}")),
        ("RUST_LOG", "warn".into()),
    ];
    if let Some(b) = max_batch {
        env.push(("CRM_SYNC_PIPELINE__MAX_BATCH", b.to_string()));
    }
    match vendor {
        "bitrix24" => {
            env.push(("CRM_SYNC_CRM__BITRIX24__PORTAL_URL", sim));
            env.push(("CRM_SYNC_CRM__BITRIX24__WEBHOOK_TOKEN", VENDOR_SECRET.into()));
        }
        "salesforce" => {
            env.push(("CRM_SYNC_CRM__SALESFORCE__LOGIN_URL", sim));
            env.push(("CRM_SYNC_CRM__SALESFORCE__CLIENT_SECRET", VENDOR_SECRET.into()));
        }
        "kommo" => {
            env.push(("CRM_SYNC_CRM__KOMMO__BASE_URL", sim));
            env.push(("CRM_SYNC_CRM__KOMMO__ACCESS_TOKEN", VENDOR_SECRET.into()));
        }
        _ => {
            env.push(("CRM_SYNC_CRM__GENERIC__BASE_URL", sim));
            env.push(("CRM_SYNC_CRM__GENERIC__TOKEN", TOKEN.into()));
            env.push(("CRM_SYNC_CRM__GENERIC__SIGNING_SECRET", SECRET.into()));
        }
    }
    let sync = Command::new(release_bin("crm-sync")?)
        .arg("--config")
        .arg(&config)
        .envs(env)
        .stdout(Stdio::null())
        .spawn()?;
    let sync_pid = sync.id();
    let children = Children(vec![sync]);

    let client = reqwest::Client::new();
    let total = args.vendor_events as f64;
    println!(
        "{vendor}: crm-sync (max_batch {}) on a backlog of {} new shipments",
        max_batch.map_or("default".into(), |b| b.to_string()),
        args.vendor_events
    );
    let started = Instant::now();
    while successes(&client, metrics_port).await.unwrap_or(0.0) < 1.0 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(180),
            "{vendor}: no event committed in 180 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Bursts are spent in the warm-up; the generic API has none and drains a backlog fast.
    let warmup = match crm_vendors::limit(vendor) {
        Some(_) => args.vendor_warmup_seconds,
        None => args.vendor_warmup_seconds.min(1),
    };
    tokio::time::sleep(Duration::from_secs(warmup)).await;

    let window = Duration::from_secs(args.vendor_seconds);
    let give_up = Instant::now() + window * 6 + Duration::from_secs(120);
    let poll = Duration::from_millis(50);
    // The window opens at a commit...
    let base = successes(&client, metrics_port).await?;
    let (t0, o0) = loop {
        let o = successes(&client, metrics_port).await?;
        anyhow::ensure!(
            o < total,
            "{vendor}: the backlog was drained in the warm-up: raise --vendor-events"
        );
        if o > base {
            break (Instant::now(), o);
        }
        anyhow::ensure!(Instant::now() < give_up, "{vendor}: no commit after the warm-up");
        tokio::time::sleep(poll).await;
    };
    let c0 = sim_counts(&client, sim_port, vendor).await?;
    let (cpu0, _) = cpu_and_peak_rss(sync_pid)?;
    // ...and closes at the first commit at least a window later.
    let (mut t1, mut o1) = (t0, o0);
    while o1 < total {
        let o = successes(&client, metrics_port).await?;
        if o > o1 {
            (t1, o1) = (Instant::now(), o);
            if t1 - t0 >= window {
                break;
            }
        }
        if Instant::now() > give_up {
            break;
        }
        tokio::time::sleep(poll).await;
    }
    let c1 = sim_counts(&client, sim_port, vendor).await?;
    let (cpu1, peak_rss) = cpu_and_peak_rss(sync_pid)?;
    drop(children);

    let secs = (t1 - t0).as_secs_f64();
    anyhow::ensure!(o1 > o0 && secs > 0.0, "{vendor}: no commit inside the window");
    let rate = (o1 - o0) / secs;
    let sim_secs = (c1.at - c0.at).as_secs_f64();
    let writes_per_s = (c1.writes - c0.writes) / sim_secs;
    let requests_per_s = (c1.requests - c0.requests) / sim_secs;
    let per_request = (c1.writes - c0.writes) / (c1.requests - c0.requests);
    let mut out = json!({
        "events_per_s": round(rate, 2),
        "window_s": round(secs, 2),
        "window_events": o1 - o0,
        "drained": o1 >= total,
        "max_batch": max_batch,
        "crm_sim_writes_per_s": round(writes_per_s, 1),
        "crm_sim_requests_per_s": round(requests_per_s, 2),
        "observed_records_per_request": round(per_request, 3),
        "cpu_seconds_per_1000_events": round((cpu1 - cpu0) / ((o1 - o0) / 1000.0), 3),
        "crm_sync_peak_rss_mib": round(peak_rss, 1),
        "limit": crm_vendors::limit_json(vendor, chunk),
    });
    if let Some((_, ceiling)) = crm_vendors::ceiling(vendor, chunk) {
        out["ceiling_events_per_s"] = json!(round(ceiling, 2));
        out["ratio_to_ceiling"] = json!(round(rate / ceiling, 3));
        out["limited_by"] = json!("the vendor's documented rate limit, enforced client-side by the adapter");
    } else {
        out["limited_by"] = json!("crm-sync and the machine (no client-side limit)");
    }
    if let Ok(mut admin) = PgConnection::connect(&format!("{}/postgres", args.pg)).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS bench_{id} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
    }
    Ok(out)
}

/// Every vendor of `--vendors` against one crm-sim, then each figure next to the generic one.
async fn vendor_phase(args: &Args) -> anyhow::Result<serde_json::Value> {
    let sim_port = free_port()?;
    let _sim = Children(vec![Command::new(release_bin("crm-sim")?)
        .args(["--listen", &format!("127.0.0.1:{sim_port}")])
        .env("CRM_SIM_TOKEN", TOKEN)
        .env("CRM_SIM_SIGNING_SECRET", SECRET)
        .env("CRM_SIM_VENDOR_SECRET", VENDOR_SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?]);
    let client = reqwest::Client::new();
    let up = Instant::now();
    while sim_counts(&client, sim_port, "generic").await.is_err() {
        anyhow::ensure!(up.elapsed() < Duration::from_secs(20), "crm-sim did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut out = serde_json::Map::new();
    for vendor in args.vendors.iter().filter(|v| !v.is_empty()) {
        let figures = measure_vendor(args, vendor, sim_port).await?;
        println!(
            "{vendor}: {} events/s (ceiling {}, ratio {})",
            figures["events_per_s"], figures["ceiling_events_per_s"], figures["ratio_to_ceiling"]
        );
        out.insert(vendor.clone(), figures);
    }
    if let Some(generic) = out.get("generic").and_then(|g| g["events_per_s"].as_f64()) {
        for (_, figures) in out.iter_mut().filter(|(v, _)| v.as_str() != "generic") {
            if let Some(rate) = figures["events_per_s"].as_f64() {
                figures["ratio_to_generic_baseline"] = json!(round(rate / generic, 5));
            }
        }
    }
    out.insert(
        "workload".into(),
        json!(
            "each event a shipment the CRM has not seen (first-sight path: read, look up, create); \
               crm-sim adds no latency and no limit of its own; ceiling = requests/s of the \
               adapter's client-side limit x records per request of that path"
        ),
    );
    Ok(serde_json::Value::Object(out))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for v in args.vendors.iter().filter(|v| !v.is_empty()) {
        anyhow::ensure!(
            crm_vendors::VENDORS.contains(&v.as_str()),
            "unknown vendor {v}: one of {:?}",
            crm_vendors::VENDORS
        );
    }
    let mut report = if args.vendors_only {
        json!({})
    } else {
        main_phase(&args).await?
    };
    if args.vendors.iter().any(|v| !v.is_empty()) {
        report["vendors"] = vendor_phase(&args).await?;
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)?)?;
    println!("written to {}", args.out.display());
    Ok(())
}
