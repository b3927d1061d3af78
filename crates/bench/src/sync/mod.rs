//! crm-sync benchmark. Produces events to a fresh topic, runs the release crm-sync against the
//! release crm-sim, and measures in the same run:
//! - end-to-end events/s with every guarantee on (idempotency, log row, CRM write, outcome
//!   published, offsets committed), CPU seconds per 1,000 events and peak RSS of crm-sync;
//! - p50/p99 event-to-CRM lag at a steady rate;
//! - baselines: a bare rdkafka consumer reading the same topic, and PostgreSQL alone taking the
//!   same rows (COPY into scratch copies of `integrations_log` and `processed_events`);
//! - per CRM vendor dialect (`--vendors`), end-to-end events/s against crm-sim's dialect next to
//!   the ceiling the adapter's client-side rate limit implies, with the generic API as the
//!   same-run baseline (`vendors`).

pub(crate) mod baselines;
mod end_to_end;
mod scale;
mod vendors;

use crate::crm_vendors;
use crate::harness::sibling_bin;
use crate::procfs::{cpu_seconds, memory_mib};
use crate::report::{metric_sum, write_report};
use anyhow::Context;
use clap::Parser;
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
pub struct Args {
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
    /// Run against librdkafka's mock cluster (in this process, over TCP) instead of `--brokers`:
    /// the pipeline's own cost and latency apart from the local broker's.
    #[arg(long)]
    mock_broker: bool,
    /// Only the scale-out and failover phase (`scale`), on this broker and on librdkafka's
    /// mock cluster.
    #[arg(long)]
    scale_only: bool,
    /// Where the scale-out and failover phase runs: `local` (`--brokers`), `mock` (librdkafka's
    /// mock cluster), or both.
    #[arg(long, value_delimiter = ',', default_value = "local,mock")]
    scale_on: Vec<String>,
    /// Events each scale-out run drains.
    #[arg(long, default_value_t = 60_000)]
    scale_events: usize,
    /// Events/s of the failover runs' stream.
    #[arg(long, default_value_t = 300)]
    failover_rate: u64,
    /// Seconds of the failover runs' stream.
    #[arg(long, default_value_t = 30)]
    failover_seconds: u64,
    /// Directory of the `crm-sync.<vendor>.local.toml` files.
    #[arg(long, default_value = "config")]
    config_dir: PathBuf,
}

pub(super) type Mock = rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

/// Creates `topics` on the broker (through the admin API) or in the mock cluster (which has no
/// CreateTopics of its own).
pub(super) async fn create_topics(
    brokers: &str,
    mock: Option<&Mock>,
    topics: &[&str],
    partitions: i32,
) -> anyhow::Result<()> {
    if let Some(cluster) = mock {
        for t in topics {
            cluster.create_topic(t, partitions, 1)?;
        }
        return Ok(());
    }
    let kafka = backbone_kafka::KafkaSettings {
        brokers: brokers.to_owned(),
        ..Default::default()
    };
    backbone_kafka::ensure_topics(&kafka, topics, partitions).await?;
    Ok(())
}

const TOKEN: &str = "bench-token-0123456789";
const SECRET: &str = "bench-signing-secret-0123456789";

pub async fn main(mut args: Args) -> anyhow::Result<()> {
    // Lives to the end of the run: crm-sync and the benchmark's clients connect to it.
    let mock = if args.mock_broker {
        let cluster = rdkafka::mocking::MockCluster::new(1)?;
        args.brokers = cluster.bootstrap_servers();
        println!("broker: librdkafka mock cluster at {}", args.brokers);
        Some(cluster)
    } else {
        None
    };
    for v in args.vendors.iter().filter(|v| !v.is_empty()) {
        anyhow::ensure!(
            crm_vendors::VENDORS.contains(&v.as_str()),
            "unknown vendor {v}: one of {:?}",
            crm_vendors::VENDORS
        );
    }
    if args.scale_only {
        let report = scale::measure(&args).await?;
        return write_report(&args.out, &report);
    }
    let mut report = if args.vendors_only {
        json!({})
    } else {
        end_to_end::measure(&args, mock.as_ref()).await?
    };
    if args.vendors.iter().any(|v| !v.is_empty()) {
        report["vendors"] = vendors::measure_all(&args).await?;
    }
    write_report(&args.out, &report)
}

/// crm-sim on `port`; with `vendor_secret`, its vendor dialects accept that secret.
fn spawn_crm_sim(port: u16, vendor_secret: Option<&str>) -> anyhow::Result<Child> {
    let mut sim = Command::new(sibling_bin("crm-sim", "crm-sim")?);
    sim.args(["--listen", &format!("127.0.0.1:{port}")])
        .env("CRM_SIM_TOKEN", TOKEN)
        .env("CRM_SIM_SIGNING_SECRET", SECRET);
    if let Some(secret) = vendor_secret {
        sim.env("CRM_SIM_VENDOR_SECRET", secret);
    }
    Ok(sim.env("RUST_LOG", "warn").stdout(Stdio::null()).spawn()?)
}

/// CPU seconds (user + system) and peak RSS in MiB of crm-sync.
fn sync_usage(pid: u32) -> anyhow::Result<(f64, f64)> {
    let cpu = cpu_seconds(pid).context("crm-sync CPU time")?;
    let (peak_rss, _) = memory_mib(pid).context("crm-sync memory")?;
    Ok((cpu, peak_rss))
}

/// `crm_sync_outcomes_total` of the series whose labels contain `label` (all when empty).
async fn outcomes(client: &reqwest::Client, port: u16, label: &str) -> anyhow::Result<f64> {
    let text = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(metric_sum(&text, "crm_sync_outcomes_total", label))
}

async fn all_outcomes(client: &reqwest::Client, port: u16) -> anyhow::Result<f64> {
    outcomes(client, port, "").await
}

async fn successes(client: &reqwest::Client, port: u16) -> anyhow::Result<f64> {
    outcomes(client, port, "outcome=\"success\"").await
}

async fn wait_for_outcomes(
    client: &reqwest::Client,
    port: u16,
    target: f64,
    limit: Duration,
) -> anyhow::Result<Instant> {
    let start = Instant::now();
    loop {
        if all_outcomes(client, port).await.unwrap_or(0.0) >= target {
            return Ok(Instant::now());
        }
        anyhow::ensure!(
            start.elapsed() < limit,
            "crm-sync did not reach {target} outcomes in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
