//! gift-certificates benchmark. Starts the release service with its own database, Redis key
//! prefix, topics and master key, preloads certificates over the upload API, activates the ones it
//! needs, and measures in the same run:
//! - authorize + capture pairs/s over HTTP, every client on its own certificates (`throughput`);
//! - p50/p99 latency of single requests at a steady (open-loop) request rate (`latency`);
//! - cached balance checks/s (a small set of certificates, served from Redis), and the same
//!   clients against a bare axum endpoint of the route (`balance`);
//! - PostgreSQL CPU and WAL bytes per pair;
//! - peak and current RSS of the service;
//! - baselines: pgbench running exactly the statements the service runs for an authorize and a
//!   capture (as `backbone_postgres::certificates::pgbench` writes them out), same database,
//!   same number of clients, same duration (`pgbench`, `script`); and pgbench's built-in
//!   TPC-B with the same clients, the ceiling of small committed transactions here.
//!
//! `--scale-only` runs instead two instances behind one address, and the outbox relay's
//! handover when its leader is killed (`instances`).

mod api;
mod balance;
mod instances;
mod latency;
mod pgbench;
mod report;
mod script;
mod throughput;

use crate::gift::{random_codes, transactions_topic, Service, ServiceSpec};
use crate::harness::{drop_database, run_id, scratch_dir};
use crate::procfs::{memory_mib, Stack};
use crate::report::round;
use anyhow::Context;
use api::Api;
use clap::Parser;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Parser)]
pub struct Args {
    #[arg(long, default_value = "127.0.0.1:9094")]
    brokers: String,
    /// PostgreSQL server, without a database (each run creates its own).
    #[arg(long, default_value = "postgres://postgres:postgres@127.0.0.1:5432")]
    pg: String,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Certificates preloaded through the upload API.
    #[arg(long, default_value_t = 20_000)]
    certificates: usize,
    /// Concurrent HTTP clients of the throughput phase (and pgbench clients).
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Certificates each client cycles through (no two clients share one); a few operations per
    /// certificate, as in a shop, rather than hundreds on one.
    #[arg(long, default_value_t = 64)]
    certificates_per_client: usize,
    /// Measured seconds of the throughput, balance and pgbench phases.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 3)]
    warmup_seconds: u64,
    /// Requests/s of the latency phase (authorize + capture pairs at half this rate).
    #[arg(long, default_value_t = 500)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    latency_seconds: u64,
    #[arg(long, default_value_t = 64)]
    balance_clients: usize,
    #[arg(long, default_value_t = 16)]
    balance_certificates: usize,
    /// Authorize + capture pairs per pgbench script run (one parameter query per run).
    #[arg(long, default_value_t = 8)]
    pgbench_pairs_per_script: usize,
    /// pgbench executable; found on PATH or under /usr/lib/postgresql/*/bin when absent.
    #[arg(long, env = "PGBENCH")]
    pgbench: Option<PathBuf>,
    /// The service's `postgres.max_connections` (its default when absent).
    #[arg(long)]
    max_connections: Option<u32>,
    /// Only the scale-out phase: pairs/s with one and two instances behind one address, and the
    /// outbox relay's handover when its leader is killed (report in `--out`).
    #[arg(long)]
    scale_only: bool,
    /// Keep the benchmark database afterwards.
    #[arg(long)]
    keep_db: bool,
    #[arg(long, default_value = "target/bench/certificates.json")]
    out: PathBuf,
}

/// Amount of every authorize and capture (1.00 RUB of a 5,000.00 certificate).
const AMOUNT_MINOR: i64 = 100;
/// The upload contract's largest job.
const UPLOAD_JOB_ROWS: usize = 5_000;
const INITIATOR: &str = "bench-client";

/// What the phases measure with.
struct Bench<'a> {
    args: &'a Args,
    api: &'a Api,
    service: &'a Service,
    http: &'a reqwest::Client,
    stack: &'a Stack,
}

/// The preloaded certificates, split: the clients' (throughput and latency phases), pgbench's,
/// the balance set.
struct Sets<'a> {
    service: &'a [(String, String)],
    pgbench: &'a [(String, String)],
    balance: &'a [(String, String)],
}

impl<'a> Sets<'a> {
    fn split(args: &Args, codes: &'a [(String, String)]) -> Self {
        let n_clients = args.clients * args.certificates_per_client;
        Sets {
            service: &codes[..n_clients],
            pgbench: &codes[n_clients..2 * n_clients],
            balance: &codes[2 * n_clients..2 * n_clients + args.balance_certificates],
        }
    }
}

fn cpu_report(used: &BTreeMap<String, f64>, per: f64) -> Value {
    let mut out = serde_json::Map::new();
    for (group, secs) in used {
        out.insert(group.clone(), json!(round(secs / per, 3)));
    }
    Value::Object(out)
}

pub async fn main(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.clients * args.certificates_per_client * 2 + args.balance_certificates <= args.certificates,
        "--certificates too small for the clients' certificates"
    );
    let id = run_id();
    let database = format!("bench_certificates_{id}");
    let dir = scratch_dir("bench-certificates", &id)?;
    let result = run(&args, &id, &database, &dir).await;
    if !args.keep_db {
        drop_database(&args.pg, &database).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run(args: &Args, id: &str, database: &str, dir: &Path) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?;
    let spec = ServiceSpec {
        pg: &args.pg,
        database: database.to_owned(),
        redis: &args.redis,
        brokers: &args.brokers,
        id,
        dir,
        max_connections: args.max_connections,
    };
    let mut service = Service::start(&spec)?;
    service.wait_ready(&http, Duration::from_secs(120)).await?;
    let stack = Stack {
        service_pid: Some(service.pid),
        service_name: None,
        databases: vec![database.to_owned()],
        broker: Some(args.brokers.clone()),
    };
    let api = Api {
        http: http.clone(),
        base: service.base_url.clone(),
    };
    let (codes, upload_secs) = preload(args, &api, id).await?;
    let sets = Sets::split(args, &codes);
    let (pgbench_ids, activate_rate) = activate(args, &api, &sets).await?;
    if args.scale_only {
        let report = instances::measure(args, &spec, service, sets.service, &transactions_topic(id)).await?;
        return crate::report::write_report(&args.out.with_extension("scale.json"), &report);
    }
    let bench = Bench {
        args,
        api: &api,
        service: &service,
        http: &http,
        stack: &stack,
    };
    let pairs = throughput::measure(&bench, sets.service).await?;
    let latency = latency::measure(&bench, sets.service).await?;
    let balance = balance::measure(&bench, sets.balance).await?;

    let (hwm, rss) = memory_mib(service.pid).context("service memory")?;
    let pool = args.max_connections.unwrap_or(24);
    service.stop();
    let pgbench = pgbench::baseline_or_skip(args, &service.db_url, dir, &pgbench_ids, &stack).await?;
    report::finish(
        args,
        &report::Runs {
            upload_secs,
            activate_rate,
            pool,
            pairs,
            latency,
            balance,
            hwm,
            rss,
            pgbench,
        },
    )
}

/// Uploads `--certificates` random codes; returns them and the seconds the upload took.
async fn preload(args: &Args, api: &Api, id: &str) -> anyhow::Result<(Vec<(String, String)>, f64)> {
    println!(
        "preloading {} certificates (upload API, jobs of {UPLOAD_JOB_ROWS})",
        args.certificates
    );
    let codes = random_codes(args.certificates);
    let batch_id = format!("bench-{id}");
    let started = Instant::now();
    let mut issued = 0;
    for (job, rows) in codes.chunks(UPLOAD_JOB_ROWS).enumerate() {
        issued += api.upload(&batch_id, job as u32, rows).await?;
    }
    let upload_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        issued == args.certificates as u64,
        "issued {issued} of {}",
        args.certificates
    );
    Ok((codes, upload_secs))
}

/// Activates every set; returns the ids of pgbench's certificates and activations/s.
async fn activate(args: &Args, api: &Api, sets: &Sets<'_>) -> anyhow::Result<(Vec<String>, f64)> {
    let n_clients = args.clients * args.certificates_per_client;
    println!(
        "activating {} certificates",
        2 * n_clients + args.balance_certificates
    );
    let started = Instant::now();
    api.activate_all(sets.service, 0).await?;
    let pgbench_ids = api.activate_all(sets.pgbench, n_clients).await?;
    api.activate_all(sets.balance, 2 * n_clients).await?;
    let activate_rate = (2 * n_clients + args.balance_certificates) as f64 / started.elapsed().as_secs_f64();
    Ok((pgbench_ids, activate_rate))
}
