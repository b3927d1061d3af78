//! batch-loader benchmark. Generates a batch file with the release `batch-loader`, starts the
//! release gift-certificates service with a fresh database, loads the file with
//! `batch-loader load --via http` (and/or `--via kafka`) and measures in the same run:
//! - wall time from starting the loader to every row issued, rows/s;
//! - the loader's peak RSS and CPU time (`/usr/bin/time -v`, or `/proc` polling without it);
//! - CPU seconds of the loader, the service, PostgreSQL and the broker during the load;
//! - baseline: PostgreSQL alone taking the same number of rows of the same width with `COPY`
//!   into a scratch copy of `gift_certificate` (same columns, types, constraints and indexes)
//!   (`copy`).

mod copy;
mod load;

use crate::gift::{CURRENCY, NOMINAL_MINOR};
use crate::harness::{run_id, scratch_dir, sibling_bin};
use crate::report::{mark, round, write_report};
use clap::Parser;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(Parser)]
pub struct Args {
    /// Certificates in the batch file.
    #[arg(long, env = "BENCH_LOADER_COUNT", default_value_t = 1_000_000)]
    count: u64,
    /// Transports to measure, in order: `http`, `kafka` or `http,kafka`.
    #[arg(long, env = "BENCH_LOADER_VIA", value_delimiter = ',', default_value = "http")]
    via: Vec<String>,
    /// `batch-loader load --job-size` (its default when absent).
    #[arg(long)]
    job_size: Option<usize>,
    /// `batch-loader load --concurrency` (its default when absent).
    #[arg(long)]
    concurrency: Option<usize>,
    #[arg(long, default_value = "127.0.0.1:9094")]
    brokers: String,
    /// PostgreSQL server, without a database (each load gets its own).
    #[arg(long, default_value = "postgres://postgres:postgres@127.0.0.1:5432")]
    pg: String,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// The service's `postgres.max_connections` (its default when absent).
    #[arg(long)]
    max_connections: Option<u32>,
    /// Longest wait for the outbox to be relayed after a load (0: do not wait).
    #[arg(long, default_value_t = 300)]
    outbox_wait_seconds: u64,
    #[arg(long)]
    keep_db: bool,
    #[arg(long, default_value = "target/bench/batch-loader.json")]
    out: PathBuf,
}

pub async fn main(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.count > 0, "--count must be at least 1");
    let id = run_id();
    let dir = scratch_dir("bench-loader", &id)?;
    let result = run(&args, &id, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The batch file the loads read.
struct Batch {
    file: PathBuf,
    generate_secs: f64,
    file_mib: f64,
}

async fn run(args: &Args, id: &str, dir: &Path) -> anyhow::Result<()> {
    let batch = generate(args, dir)?;
    let mut loads = Vec::new();
    for via in &args.via {
        loads.push(load::load_once(args, via, &batch.file, dir, id).await?);
    }
    let (copy_rate, copy_detail) = copy::baseline(args, id, dir).await?;
    report(args, &batch, &loads, copy_rate, &copy_detail)
}

fn generate(args: &Args, dir: &Path) -> anyhow::Result<Batch> {
    let loader = sibling_bin("batch-loader", "batch-loader")?;
    let file = dir.join("batch.csv");
    println!("generating {} certificates", args.count);
    let started = Instant::now();
    let out = Command::new(&loader)
        .args(["generate", "--count", &args.count.to_string()])
        .args(["--nominal", &NOMINAL_MINOR.to_string(), "--currency", CURRENCY])
        .arg("--out")
        .arg(&file)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "batch-loader generate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generate_secs = started.elapsed().as_secs_f64();
    let file_mib = std::fs::metadata(&file)?.len() as f64 / (1024.0 * 1024.0);
    Ok(Batch {
        file,
        generate_secs,
        file_mib,
    })
}

/// The report: the targets, judged on the first load; every load; the baseline.
fn report(
    args: &Args,
    batch: &Batch,
    loads: &[Value],
    copy_rate: f64,
    copy_detail: &Value,
) -> anyhow::Result<()> {
    let first = loads.first().cloned().unwrap_or(Value::Null);
    let rate = first["rows_per_s"].as_f64().unwrap_or(0.0);
    let wall = first["wall_seconds"].as_f64().unwrap_or(f64::INFINITY);
    let rss = first["loader_peak_rss_mib"].as_f64().unwrap_or(f64::INFINITY);
    let ratio = rate / copy_rate;
    // The wall-time target is for 1,000,000 codes; smaller runs are scaled to it.
    let wall_per_million = wall * 1_000_000.0 / args.count as f64;
    let checks = [
        ("wall time <= 60 s per 1,000,000 codes", wall_per_million <= 60.0),
        ("ratio to COPY >= 0.25", ratio >= 0.25),
        ("loader peak RSS < 100 MB", rss < 100.0),
    ];
    let report = json!({
        "date": OffsetDateTime::now_utc().format(&Rfc3339)?,
        "rows": args.count,
        "file_mib": round(batch.file_mib, 1),
        "generate_seconds": round(batch.generate_secs, 2),
        "loads": loads,
        "wall_seconds": first["wall_seconds"],
        "wall_seconds_per_million": round(wall_per_million, 1),
        "rows_per_s": first["rows_per_s"],
        "loader_peak_rss_mib": first["loader_peak_rss_mib"],
        "baseline_pg_copy_rows_per_s": round(copy_rate, 0),
        "baseline_pg_copy_with_outbox_rows_per_s": copy_detail["with_outbox_rows_per_s"],
        "ratio_loader_to_copy_with_outbox": copy_detail["with_outbox_rows_per_s"].as_f64().map(|r| round(rate / r, 3)),
        "baseline_pg_copy": copy_detail,
        "ratio_loader_to_copy": round(ratio, 3),
        "targets": {"wall_seconds_per_million": 60, "ratio_loader_to_copy": 0.25, "loader_peak_rss_mib": 100},
        "pass": checks.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
    });

    println!();
    println!("batch-loader, {} rows", args.count);
    for load in loads {
        println!(
            "  via {:<5} wall {:>7.2} s  {:>8.0} rows/s  loader peak RSS {:>6.1} MiB",
            load["via"].as_str().unwrap_or("?"),
            load["wall_seconds"].as_f64().unwrap_or(f64::NAN),
            load["rows_per_s"].as_f64().unwrap_or(f64::NAN),
            load["loader_peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
        );
    }
    println!(
        "  wall time per 1,000,000     {:>8.1} s      {} (target <= 60 s)",
        wall_per_million,
        mark(checks[0].1)
    );
    println!("  PostgreSQL COPY baseline    {copy_rate:>8.0} rows/s");
    println!(
        "  COPY with the outbox rows   {:>8.0} rows/s (the service also writes one per certificate)",
        copy_detail["with_outbox_rows_per_s"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "  ratio loader / COPY         {:>8.3}        {} (target >= 0.25)",
        ratio,
        mark(checks[1].1)
    );
    println!(
        "  loader peak RSS             {:>8.1} MiB    {} (target < 100 MB)",
        rss,
        mark(checks[2].1)
    );
    println!();
    write_report(&args.out, &report)
}
