//! batch-loader benchmark. Generates a batch file with the release `batch-loader`, starts the
//! release gift-certificates service with a fresh database, loads the file with
//! `batch-loader load --via http` (and/or `--via kafka`) and measures in the same run:
//! - wall time from starting the loader to every row issued, rows/s;
//! - the loader's peak RSS and CPU time (`/usr/bin/time -v`, or `/proc` polling without it);
//! - CPU seconds of the loader, the service, PostgreSQL and the broker during the load;
//! - baseline: PostgreSQL alone taking the same number of rows of the same width with `COPY`
//!   into a scratch copy of `gift_certificate` (same columns, types, constraints and indexes).

use anyhow::Context;
use backbone_bench::gift::{
    drop_database, mark, metric_sum, round, run_id, scratch_dir, sibling_bin, Service, ServiceSpec, CURRENCY,
    LOADER_TOKEN, NOMINAL_MINOR,
};
use backbone_bench::procfs::{cpu_seconds, memory_mib, CpuSnapshot, Stack};
use clap::Parser;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(Parser)]
struct Args {
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

/// Peak RSS and CPU of the loader process.
#[derive(Default)]
struct LoaderUsage {
    peak_rss_mib: f64,
    cpu_seconds: f64,
    measured_by: &'static str,
}

/// `/usr/bin/time -v` output: maximum resident set size and user + system time.
fn parse_time_v(text: &str) -> Option<LoaderUsage> {
    let field = |name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some(LoaderUsage {
        peak_rss_mib: field("Maximum resident set size (kbytes):")? / 1024.0,
        cpu_seconds: field("User time (seconds):")? + field("System time (seconds):")?,
        measured_by: "/usr/bin/time -v",
    })
}

async fn count_issued(conn: &mut PgConnection, batch_id: &str) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM gift_certificate WHERE batch_id = $1")
            .bind(batch_id)
            .fetch_one(conn)
            .await?,
    )
}

/// One load: a fresh database and service, the loader run to completion, every row checked.
async fn load_once(args: &Args, via: &str, file: &Path, dir: &Path, id: &str) -> anyhow::Result<Value> {
    let http = reqwest::Client::new();
    let database = format!("bench_loader_{id}_{via}");
    let run_id = format!("{id}{via}");
    let mut service = Service::start(&ServiceSpec {
        pg: &args.pg,
        database: database.clone(),
        redis: &args.redis,
        brokers: &args.brokers,
        id: &run_id,
        dir,
        max_connections: args.max_connections,
    })?;
    let target = Target {
        via,
        file,
        dir,
        run_id: &run_id,
        database: &database,
    };
    let result = load_with(args, &target, &mut service, &http).await;
    service.stop();
    if !args.keep_db {
        drop_database(&args.pg, &database).await;
    }
    result
}

/// What one load runs against.
struct Target<'a> {
    via: &'a str,
    file: &'a Path,
    dir: &'a Path,
    run_id: &'a str,
    database: &'a str,
}

async fn load_with(
    args: &Args,
    target: &Target<'_>,
    service: &mut Service,
    http: &reqwest::Client,
) -> anyhow::Result<Value> {
    let Target {
        via,
        file,
        dir,
        run_id,
        database,
    } = *target;
    service.wait_ready(http, Duration::from_secs(120)).await?;
    let mut conn = PgConnection::connect(&service.db_url).await?;
    let batch_id = format!("bench-{run_id}");
    let loader = sibling_bin("batch-loader", "batch-loader")?;
    let mut load_args: Vec<String> = vec![
        "load".into(),
        file.display().to_string(),
        "--batch-id".into(),
        batch_id.clone(),
        "--via".into(),
        via.into(),
        "--rejects".into(),
        dir.join(format!("rejects-{via}.csv")).display().to_string(),
        "--progress".into(),
        "plain".into(),
        "--progress-every".into(),
        "10".into(),
    ];
    match via {
        "http" => load_args.extend(["--url".into(), service.base_url.clone()]),
        "kafka" => load_args.extend([
            "--brokers".into(),
            args.brokers.clone(),
            "--topic".into(),
            format!("bench.uploads.{run_id}"),
        ]),
        other => anyhow::bail!("--via {other}: http or kafka"),
    }
    if let Some(n) = args.job_size {
        load_args.extend(["--job-size".into(), n.to_string()]);
    }
    if let Some(n) = args.concurrency {
        load_args.extend(["--concurrency".into(), n.to_string()]);
    }
    let time_v = Path::new("/usr/bin/time");
    let time_out = dir.join(format!("loader-{via}.time"));
    let mut command = if time_v.exists() {
        let mut c = Command::new(time_v);
        c.arg("-v").arg("-o").arg(&time_out).arg(&loader);
        c
    } else {
        Command::new(&loader)
    };
    let log = dir.join(format!("loader-{via}.log"));
    command
        .args(&load_args)
        .env("BATCH_LOADER_TOKEN", LOADER_TOKEN)
        .stdout(std::fs::File::create(&log)?)
        .stderr(Stdio::from(std::fs::File::options().append(true).open(&log)?));

    println!("load via {via}: batch-loader load ({} rows)", args.count);
    let cpu0 = CpuSnapshot::take();
    let started = Instant::now();
    let mut child = command.spawn().context("starting batch-loader")?;
    // Without /usr/bin/time, follow the loader itself (the child is the loader).
    let mut polled = LoaderUsage {
        measured_by: "/proc polling every 20 ms",
        ..LoaderUsage::default()
    };
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if !time_v.exists() {
            if let Some((hwm, _)) = memory_mib(child.id()) {
                polled.peak_rss_mib = polled.peak_rss_mib.max(hwm);
            }
            if let Some(cpu) = cpu_seconds(child.id()) {
                polled.cpu_seconds = cpu;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let loader_exit = started.elapsed();
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    anyhow::ensure!(
        status.success(),
        "batch-loader failed ({status}):\n{output}\nservice log:\n{}",
        service.log_tail()
    );
    // Over HTTP every acknowledged job is committed; over Kafka the service consumes after the
    // broker acknowledged, so wait for the rows.
    let mut issued = count_issued(&mut conn, &batch_id).await?;
    let deadline = Instant::now() + Duration::from_secs(1800);
    while issued < args.count as i64 && via == "kafka" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        issued = count_issued(&mut conn, &batch_id).await?;
    }
    let all_issued = started.elapsed();
    let cpu1 = CpuSnapshot::take();
    anyhow::ensure!(
        issued == args.count as i64,
        "{issued} of {} rows issued via {via}\n{output}",
        args.count
    );
    let usage = if time_v.exists() {
        parse_time_v(&std::fs::read_to_string(&time_out).unwrap_or_default())
            .context("reading /usr/bin/time -v output")?
    } else {
        polled
    };
    let status_answer: Value = http
        .get(format!(
            "{}/certificates/upload/batches/{batch_id}",
            service.base_url
        ))
        .bearer_auth(LOADER_TOKEN)
        .send()
        .await?
        .json()
        .await
        .unwrap_or(Value::Null);
    let (service_hwm, _) = memory_mib(service.pid).unwrap_or((f64::NAN, f64::NAN));
    let stack = Stack {
        service_pid: Some(service.pid),
        databases: vec![database.to_owned()],
        broker: Some(args.brokers.clone()),
    };
    let cpu = cpu0.used_until(&cpu1, &stack);
    let mut cpu_json = serde_json::Map::new();
    for (group, secs) in &cpu {
        cpu_json.insert(group.clone(), json!(round(*secs, 2)));
    }
    // The loader's own figure, when /usr/bin/time measured it (its process is gone by now).
    if usage.cpu_seconds > 0.0 {
        cpu_json.insert("batch_loader".into(), json!(round(usage.cpu_seconds, 2)));
    }

    // The outbox: one state event per certificate, relayed to the broker after the load.
    let mut outbox_drained_s = Value::Null;
    if args.outbox_wait_seconds > 0 {
        let waited = Instant::now();
        loop {
            let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
                .fetch_one(&mut conn)
                .await?;
            if pending == 0 {
                outbox_drained_s = json!(round(started.elapsed().as_secs_f64(), 1));
                break;
            }
            if waited.elapsed() > Duration::from_secs(args.outbox_wait_seconds) {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let published = metric_sum(
        &service.metrics(http).await.unwrap_or_default(),
        "gift_certificates_outbox_published_total",
        "",
    );
    let summary = output
        .lines()
        .rev()
        .find(|l| l.starts_with("batch "))
        .unwrap_or_default()
        .to_owned();
    let secs = all_issued.as_secs_f64();
    println!("  {summary}");
    println!(
        "  all {} rows issued after {secs:.2} s ({:.0} rows/s); loader peak RSS {:.1} MiB",
        args.count,
        args.count as f64 / secs,
        usage.peak_rss_mib
    );
    Ok(json!({
        "via": via,
        "rows": args.count,
        "wall_seconds": round(secs, 2),
        "loader_exit_seconds": round(loader_exit.as_secs_f64(), 2),
        "rows_per_s": round(args.count as f64 / secs, 0),
        "loader_peak_rss_mib": round(usage.peak_rss_mib, 1),
        "loader_cpu_seconds": round(usage.cpu_seconds, 2),
        "loader_measured_by": usage.measured_by,
        "service_peak_rss_mib": round(service_hwm, 1),
        "cpu_seconds_during_load": Value::Object(cpu_json),
        "batch_status": status_answer,
        "outbox_drained_after_s": outbox_drained_s,
        "events_published": published,
        "loader_summary": summary,
    }))
}

const COPY_CERTIFICATES: &str = "COPY scratch_gift_certificate (id, code_digest, code_last4, currency, nominal,
    balance, state, expires_at, batch_id, cvc_verifier, cvc_key_id, cvc_wrapped_key, cvc_ciphertext) FROM STDIN";
const COPY_OUTBOX: &str = "COPY scratch_outbox (topic, key, payload) FROM STDIN";

/// Creates empty scratch copies (same columns, types, constraints and indexes).
async fn scratch_tables(conn: &mut PgConnection) -> anyhow::Result<()> {
    for (scratch, table) in [
        ("scratch_gift_certificate", "gift_certificate"),
        ("scratch_outbox", "outbox"),
    ] {
        sqlx::query(&format!("DROP TABLE IF EXISTS {scratch}"))
            .execute(&mut *conn)
            .await?;
        sqlx::query(&format!("CREATE TABLE {scratch} (LIKE {table} INCLUDING ALL)"))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Sends prepared `COPY` data in one transaction; returns the seconds it took.
async fn timed_copy(conn: &mut PgConnection, parts: &[(&str, &[String])]) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut tx = conn.begin().await?;
    for (statement, chunks) in parts {
        let mut copy = tx.copy_in_raw(statement).await?;
        for c in chunks.iter() {
            copy.send(c.as_bytes()).await?;
        }
        copy.finish().await?;
    }
    tx.commit().await?;
    Ok(started.elapsed().as_secs_f64())
}

/// `COPY` of `rows` rows of `gift_certificate`'s width into a scratch copy of it (same columns,
/// types, constraints and indexes), in one transaction: the baseline of the ratio. Then the same
/// rows again with the outbox row the service writes for each (its `issued` state event): what
/// PostgreSQL alone needs for what the service stores per certificate. Widths of the sealed CVC
/// columns are taken from rows the service stored. Returns the first rate (rows/s) and details.
async fn copy_baseline(db_url: &str, rows: u64) -> anyhow::Result<(f64, Value)> {
    use backbone_certificates::{Amount, Certificate, Currency};
    let mut conn = PgConnection::connect(db_url).await?;
    let sample: Option<(String, i32, i32)> = sqlx::query_as(
        "SELECT cvc_key_id, length(cvc_wrapped_key), length(cvc_ciphertext) FROM gift_certificate LIMIT 1",
    )
    .fetch_optional(&mut conn)
    .await?;
    let (key_id, wrapped_len, cipher_len) = sample.unwrap_or(("bench-key".into(), 60, 32));
    let random_hex = |n: usize| -> String {
        let mut s = String::with_capacity(2 * n);
        while s.len() < 2 * n {
            s.push_str(&uuid::Uuid::new_v4().simple().to_string());
        }
        s.truncate(2 * n);
        s
    };
    // The rows are built before the clock starts.
    let issued = Certificate::issue(Amount::new(NOMINAL_MINOR, Currency::parse(CURRENCY)?)?, None);
    let now = OffsetDateTime::now_utc();
    let batch_id = "bench-copy-baseline";
    let (mut certificates, mut outbox) = (Vec::new(), Vec::new());
    let (mut chunk, mut events) = (String::new(), String::new());
    for i in 0..rows {
        let id = uuid::Uuid::now_v7();
        let last4 = format!("{:04}", i % 10_000);
        chunk.push_str(&format!(
            "{id}\t\\\\x{}\t{last4}\t{CURRENCY}\t{NOMINAL_MINOR}\t{NOMINAL_MINOR}\tIssued\t\\N\t{batch_id}\t\\\\x{}\t{key_id}\t\\\\x{}\t\\\\x{}\n",
            random_hex(32),
            random_hex(32),
            random_hex(wrapped_len as usize),
            random_hex(cipher_len as usize),
        ));
        let event = backbone_certificates::events::issued(id, &last4, &issued, now);
        events.push_str(&format!("{}\t{id}\t{}\n", event.topic, event.payload));
        if chunk.len() > 1 << 20 {
            certificates.push(std::mem::take(&mut chunk));
            outbox.push(std::mem::take(&mut events));
        }
    }
    certificates.push(chunk);
    outbox.push(events);

    scratch_tables(&mut conn).await?;
    let secs = timed_copy(&mut conn, &[(COPY_CERTIFICATES, &certificates)]).await?;
    scratch_tables(&mut conn).await?;
    let with_outbox = timed_copy(
        &mut conn,
        &[(COPY_CERTIFICATES, &certificates), (COPY_OUTBOX, &outbox)],
    )
    .await?;
    for scratch in ["scratch_gift_certificate", "scratch_outbox"] {
        sqlx::query(&format!("DROP TABLE {scratch}"))
            .execute(&mut conn)
            .await?;
    }
    Ok((
        rows as f64 / secs,
        json!({
            "rows": rows,
            "seconds": round(secs, 2),
            "with_outbox_rows_per_s": round(rows as f64 / with_outbox, 0),
            "with_outbox_seconds": round(with_outbox, 2),
            "cvc_wrapped_key_bytes": wrapped_len,
            "cvc_ciphertext_bytes": cipher_len,
        }),
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.count > 0, "--count must be at least 1");
    let id = run_id();
    let dir = scratch_dir("bench-loader", &id)?;
    let result = run(&args, &id, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run(args: &Args, id: &str, dir: &Path) -> anyhow::Result<()> {
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

    let mut loads = Vec::new();
    for via in &args.via {
        loads.push(load_once(args, via, &file, dir, id).await?);
    }

    // The baseline, in a database of its own with the service's schema (the service migrates it).
    println!("baseline: PostgreSQL COPY of {} rows", args.count);
    let database = format!("bench_loader_{id}_copy");
    let http = reqwest::Client::new();
    let mut service = Service::start(&ServiceSpec {
        pg: &args.pg,
        database: database.clone(),
        redis: &args.redis,
        brokers: &args.brokers,
        id: &format!("{id}copy"),
        dir,
        max_connections: args.max_connections,
    })?;
    let ready = service.wait_ready(&http, Duration::from_secs(120)).await;
    // A few real rows give the widths of the sealed CVC columns.
    let sample = async {
        ready?;
        let body = json!({"version": 1, "batch_id": "bench-width-sample", "job": 0, "certificates":
            backbone_bench::gift::random_codes(10).into_iter().map(|(code, cvc)|
                json!({"code": code, "cvc": cvc, "nominal_minor": NOMINAL_MINOR, "currency": CURRENCY}))
            .collect::<Vec<_>>()});
        let resp = http
            .post(format!("{}/certificates/upload/batch", service.base_url))
            .bearer_auth(LOADER_TOKEN)
            .header("idempotency-key", "bench-width-sample:0")
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "sample upload: HTTP {}",
            resp.status()
        );
        Ok(())
    }
    .await;
    let db_url = service.db_url.clone();
    service.stop();
    let copy = match sample {
        Ok(()) => copy_baseline(&db_url, args.count).await,
        Err(e) => Err(e),
    };
    if !args.keep_db {
        drop_database(&args.pg, &database).await;
    }
    let (copy_rate, copy_detail) = copy?;

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
        "file_mib": round(file_mib, 1),
        "generate_seconds": round(generate_secs, 2),
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
    for load in &loads {
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
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, text)?;
    println!("written to {}", args.out.display());
    Ok(())
}
