//! One load: a fresh database and service, `batch-loader load` run to completion, every row
//! checked, and what the loader, the service, PostgreSQL and the broker spent on it.

use super::Args;
use crate::gift::{Service, ServiceSpec, LOADER_TOKEN};
use crate::harness::{drop_database, sibling_bin};
use crate::procfs::{cpu_seconds, memory_mib, CpuSnapshot, Stack};
use crate::report::{metric_sum, round};
use anyhow::Context;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const TIME_V: &str = "/usr/bin/time";

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

pub(super) async fn load_once(
    args: &Args,
    via: &str,
    file: &Path,
    dir: &Path,
    id: &str,
) -> anyhow::Result<Value> {
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

/// `batch-loader load`, under `/usr/bin/time -v` when there is one, its output in a log.
struct Loader {
    command: Command,
    log: PathBuf,
    time_out: PathBuf,
}

impl Loader {
    fn new(args: &Args, target: &Target<'_>, service: &Service, batch_id: &str) -> anyhow::Result<Self> {
        let Target {
            via,
            file,
            dir,
            run_id,
            ..
        } = *target;
        let loader = sibling_bin("batch-loader", "batch-loader")?;
        let mut load_args: Vec<String> = vec![
            "load".into(),
            file.display().to_string(),
            "--batch-id".into(),
            batch_id.to_owned(),
            "--via".into(),
            via.into(),
            "--rejects".into(),
            dir.join(format!("rejects-{via}.csv")).display().to_string(),
            "--progress".into(),
            "plain".into(),
            "--progress-every".into(),
            "10".into(),
        ];
        // Over Kafka too: the loader opens the batch over the service's API first.
        load_args.extend(["--url".into(), service.base_url.clone()]);
        match via {
            "http" => {}
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
        let time_out = dir.join(format!("loader-{via}.time"));
        let mut command = if Self::timed() {
            let mut c = Command::new(TIME_V);
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
        Ok(Self {
            command,
            log,
            time_out,
        })
    }

    fn timed() -> bool {
        Path::new(TIME_V).exists()
    }

    /// Runs the loader to its exit. Without /usr/bin/time, follows the loader itself (the child
    /// is the loader) for its usage.
    async fn run(&mut self) -> anyhow::Result<(ExitStatus, LoaderUsage)> {
        let mut child = self.command.spawn().context("starting batch-loader")?;
        let mut polled = LoaderUsage {
            measured_by: "/proc polling every 20 ms",
            ..LoaderUsage::default()
        };
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if !Self::timed() {
                if let Some((hwm, _)) = memory_mib(child.id()) {
                    polled.peak_rss_mib = polled.peak_rss_mib.max(hwm);
                }
                if let Some(cpu) = cpu_seconds(child.id()) {
                    polled.cpu_seconds = cpu;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Ok((status, polled))
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn usage(&self, polled: LoaderUsage) -> anyhow::Result<LoaderUsage> {
        if Self::timed() {
            parse_time_v(&std::fs::read_to_string(&self.time_out).unwrap_or_default())
                .context("reading /usr/bin/time -v output")
        } else {
            Ok(polled)
        }
    }
}

async fn load_with(
    args: &Args,
    target: &Target<'_>,
    service: &mut Service,
    http: &reqwest::Client,
) -> anyhow::Result<Value> {
    let via = target.via;
    service.wait_ready(http, Duration::from_secs(120)).await?;
    let mut conn = PgConnection::connect(&service.db_url).await?;
    let batch_id = format!("bench-{}", target.run_id);
    let mut loader = Loader::new(args, target, service, &batch_id)?;

    println!("load via {via}: batch-loader load ({} rows)", args.count);
    let cpu0 = CpuSnapshot::take();
    let started = Instant::now();
    let (status, polled) = loader.run().await?;
    let loader_exit = started.elapsed();
    let output = loader.output();
    anyhow::ensure!(
        status.success(),
        "batch-loader failed ({status}):\n{output}\nservice log:\n{}",
        service.log_tail()
    );
    let issued = wait_issued(args, via, &mut conn, &batch_id).await?;
    let all_issued = started.elapsed();
    let cpu1 = CpuSnapshot::take();
    anyhow::ensure!(
        issued == args.count as i64,
        "{issued} of {} rows issued via {via}\n{output}",
        args.count
    );
    let usage = loader.usage(polled)?;
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
    let cpu_json = cpu_during_load(args, target, service, &cpu0, &cpu1, &usage);
    let outbox_drained_s = wait_outbox(args, &mut conn, started).await?;
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
        "cpu_seconds_during_load": cpu_json,
        "batch_status": status_answer,
        "outbox_drained_after_s": outbox_drained_s,
        "events_published": published,
        "loader_summary": summary,
    }))
}

/// Rows issued under `batch_id`. Over HTTP every acknowledged job is committed; over Kafka the
/// service consumes after the broker acknowledged, so this waits for the rows.
async fn wait_issued(args: &Args, via: &str, conn: &mut PgConnection, batch_id: &str) -> anyhow::Result<i64> {
    let mut issued = count_issued(conn, batch_id).await?;
    let deadline = Instant::now() + Duration::from_secs(1800);
    while issued < args.count as i64 && via == "kafka" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        issued = count_issued(conn, batch_id).await?;
    }
    Ok(issued)
}

/// CPU seconds per component during the load.
fn cpu_during_load(
    args: &Args,
    target: &Target<'_>,
    service: &Service,
    cpu0: &CpuSnapshot,
    cpu1: &CpuSnapshot,
    usage: &LoaderUsage,
) -> Value {
    let stack = Stack {
        service_pid: Some(service.pid),
        service_name: None,
        databases: vec![target.database.to_owned()],
        broker: Some(args.brokers.clone()),
    };
    let cpu = cpu0.used_until(cpu1, &stack);
    let mut cpu_json = serde_json::Map::new();
    for (group, secs) in &cpu {
        cpu_json.insert(group.clone(), json!(round(*secs, 2)));
    }
    // The loader's own figure, when /usr/bin/time measured it (its process is gone by now).
    if usage.cpu_seconds > 0.0 {
        cpu_json.insert("batch_loader".into(), json!(round(usage.cpu_seconds, 2)));
    }
    Value::Object(cpu_json)
}

/// Seconds from the start of the load until the outbox (one state event per certificate) was
/// relayed to the broker, `null` if it was not within `--outbox-wait-seconds`.
async fn wait_outbox(args: &Args, conn: &mut PgConnection, started: Instant) -> anyhow::Result<Value> {
    if args.outbox_wait_seconds == 0 {
        return Ok(Value::Null);
    }
    let waited = Instant::now();
    loop {
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&mut *conn)
            .await?;
        if pending == 0 {
            return Ok(json!(round(started.elapsed().as_secs_f64(), 1)));
        }
        if waited.elapsed() > Duration::from_secs(args.outbox_wait_seconds) {
            return Ok(Value::Null);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
