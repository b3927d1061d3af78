//! The baseline: pgbench running the statements the service runs for an authorize and a capture,
//! on the same database, with the same number of clients, for the same time; the service is
//! stopped by then.

use super::script::{pgbench_script, write_templates};
use super::{cpu_report, Args};
use crate::procfs::{CpuSnapshot, Stack};
use crate::report::{percentile, round};
use anyhow::Context;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use std::path::{Path, PathBuf};

/// The baseline's report section, or `null` (and why, printed) when pgbench is not installed.
pub(super) async fn baseline_or_skip(
    args: &Args,
    db_url: &str,
    dir: &Path,
    certificate_ids: &[String],
    stack: &Stack,
) -> anyhow::Result<Value> {
    let Some(bin) = find_pgbench(args.pgbench.as_deref()) else {
        println!(
            "pgbench not found (PATH, /usr/lib/postgresql/*/bin): install it with \
             `apt-get install postgresql-client` or pass --pgbench / PGBENCH=/path/to/pgbench; \
             the baseline is skipped"
        );
        return Ok(json!(null));
    };
    let pgbench = Pgbench {
        args,
        bin: &bin,
        db_url,
        dir,
    };
    pgbench.baseline(certificate_ids, stack).await
}

fn find_pgbench(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return p.exists().then(|| p.to_owned());
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("pgbench");
            if candidate.exists() {
                return Some(candidate);
            }
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin/pgbench"))
        .filter(|p| p.exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(Path::parent)
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop()
}

struct PgbenchRun {
    transactions: u64,
    tps: f64,
}

/// pgbench against the benchmark database, its scripts in `dir`.
struct Pgbench<'a> {
    args: &'a Args,
    bin: &'a Path,
    db_url: &'a str,
    dir: &'a Path,
}

async fn operations_on(conn: &mut PgConnection, ids: &[uuid::Uuid]) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM gift_certificate_operation WHERE certificate_id = ANY($1)")
            .bind(ids)
            .fetch_one(conn)
            .await?,
    )
}

/// The tables the script's parameter query reads: each client's certificates (by slot) and the
/// JSON parameter templates.
async fn prepare_tables(
    conn: &mut PgConnection,
    ids: &[uuid::Uuid],
    per_client: usize,
) -> anyhow::Result<()> {
    sqlx::query("DROP TABLE IF EXISTS bench_pgbench_cert, bench_pgbench_template")
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "CREATE TABLE bench_pgbench_cert (client int, slot int, digest text, PRIMARY KEY (client, slot))",
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO bench_pgbench_cert
         SELECT (n - 1) / $2, (n - 1) % $2, '\\x' || encode(g.code_digest, 'hex')
           FROM unnest($1::uuid[]) WITH ORDINALITY AS u(id, n) JOIN gift_certificate g USING (id)",
    )
    .bind(ids)
    .bind(per_client as i32)
    .execute(&mut *conn)
    .await?;
    let templates = write_templates()?;
    sqlx::query(
        "CREATE TABLE bench_pgbench_template AS SELECT $1::text AS ah, $2::text AS ao, $3::text AS ae, $4::text AS aa,
                $5::text AS ch, $6::text AS co, $7::text AS ce, $8::text AS ca,
                '\\x' || encode(sha256(gen_random_uuid()::text::bytea), 'hex') AS request_hash",
    )
    .bind(&templates.auth.holds)
    .bind(&templates.auth.operations)
    .bind(&templates.auth.events)
    .bind(&templates.auth.result)
    .bind(&templates.capture.holds)
    .bind(&templates.capture.operations)
    .bind(&templates.capture.events)
    .bind(&templates.capture.result)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Latencies of a `--log` run in ms, sorted: (transaction latency, schedule lag). The first
/// second is dropped: pgbench schedules transactions from its start, before every client has
/// connected.
fn logged_latencies(dir: &Path, prefix: &str) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    // client_id transaction_no time script_no time_epoch time_us schedule_lag: (ended at, latency
    // ms, schedule lag ms).
    let mut samples: Vec<(f64, f64, f64)> = Vec::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        for line in std::fs::read_to_string(entry.path())?.lines() {
            let f: Vec<f64> = line
                .split_whitespace()
                .map(|v| v.parse::<f64>().unwrap_or(f64::NAN))
                .collect();
            if f.len() >= 7 {
                samples.push((f[4] + f[5] / 1e6, f[2] / 1000.0, f[6] / 1000.0));
            }
        }
    }
    let first = samples.iter().map(|s| s.0).fold(f64::INFINITY, f64::min);
    let (mut lat, mut lag): (Vec<f64>, Vec<f64>) = samples
        .iter()
        .filter(|s| s.0 >= first + 1.0)
        .map(|s| (s.1, s.2))
        .unzip();
    lat.sort_by(f64::total_cmp);
    lag.sort_by(f64::total_cmp);
    Ok((lat, lag))
}

impl Pgbench<'_> {
    fn run(&self, script: &Path, clients: usize, limit: &[&str]) -> anyhow::Result<PgbenchRun> {
        self.run_on(Some(script), self.db_url, clients, limit)
    }

    /// pgbench with `script`, or its built-in TPC-B-like transaction without one.
    fn run_on(
        &self,
        script: Option<&Path>,
        db_url: &str,
        clients: usize,
        limit: &[&str],
    ) -> anyhow::Result<PgbenchRun> {
        let mut command = std::process::Command::new(self.bin);
        command
            .args(["-n", "-M", "prepared", "-j", "2", "-c"])
            .arg(clients.to_string())
            .args(limit);
        if let Some(script) = script {
            command.arg("-f").arg(script);
        }
        let out = command.arg(db_url).output().context("running pgbench")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        anyhow::ensure!(
            out.status.success() && !stderr.contains("aborted"),
            "pgbench failed ({}):\n{}\n{}",
            out.status,
            stdout,
            stderr.lines().take(20).collect::<Vec<_>>().join("\n")
        );
        let field = |prefix: &str| -> Option<f64> {
            stdout
                .lines()
                .find_map(|l| l.trim().strip_prefix(prefix))
                .and_then(|v| v.split_whitespace().next())
                // `-t` runs print `done/planned`.
                .and_then(|v| v.split('/').next())
                .and_then(|v| v.parse::<f64>().ok())
        };
        Ok(PgbenchRun {
            transactions: field("number of transactions actually processed:").context("pgbench output")?
                as u64,
            tps: field("tps =").context("pgbench output: tps")?,
        })
    }

    /// Prepares the pgbench tables, checks one script run writes what the service writes, then
    /// runs a warm-up, the measured run and the latency run. Returns the report section.
    async fn baseline(&self, certificate_ids: &[String], stack: &Stack) -> anyhow::Result<Value> {
        let args = self.args;
        let pairs = args.pgbench_pairs_per_script;
        let mut conn = PgConnection::connect(self.db_url).await?;
        let ids: Vec<uuid::Uuid> = certificate_ids
            .iter()
            .map(|s| uuid::Uuid::parse_str(s))
            .collect::<Result<_, _>>()?;
        prepare_tables(&mut conn, &ids, args.certificates_per_client).await?;
        let script = self.write_script()?;
        self.verify(&mut conn, &ids, &script).await?;

        println!(
            "baseline: pgbench, {} clients, {} s warm-up + {} s",
            args.clients, args.warmup_seconds, args.seconds
        );
        let warmup = args.warmup_seconds.max(1).to_string();
        self.run(&script, args.clients, &["-T", &warmup])?;
        let before = operations_on(&mut conn, &ids).await?;
        let cpu0 = CpuSnapshot::take();
        let run = self.run(&script, args.clients, &["-T", &args.seconds.to_string()])?;
        let cpu1 = CpuSnapshot::take();
        let after = operations_on(&mut conn, &ids).await?;
        let written = after - before;
        let expected = 2 * pairs as i64 * run.transactions as i64;
        let cpu = cpu0.used_until(&cpu1, stack);
        let total_pairs = run.transactions as f64 * pairs as f64;
        let tpcb = self.tpcb(stack).await?;
        Ok(json!({
            "tpcb": tpcb,
            "pairs_per_s": round(run.tps * pairs as f64, 0),
            "clients": args.clients,
            "pairs_per_script_run": pairs,
            "pairs": total_pairs,
            "operation_rows_written": written,
            "operation_rows_expected": expected,
            "verified": written == expected,
            // pgbench and its backends have exited when this is read: their time is in `machine`.
            "cpu_seconds_per_1000_pairs": cpu_report(&cpu, total_pairs / 1000.0),
            "latency": self.latency()?,
        }))
    }

    /// pgbench's built-in TPC-B-like transaction (five statements: three updates, a select, an
    /// insert) with the same clients for the same time, on a database of its own at scale =
    /// clients (no two clients share a branch row): the ceiling of small transactions that
    /// each commit on this server. A "pair" is two of its transactions.
    async fn tpcb(&self, stack: &Stack) -> anyhow::Result<Value> {
        let args = self.args;
        let (server, database) = self
            .db_url
            .rsplit_once('/')
            .context("database URL without a database")?;
        let tpcb_db = format!("{database}_tpcb");
        let tpcb_url = format!("{server}/{tpcb_db}");
        let mut admin = PgConnection::connect(self.db_url).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{tpcb_db}\""))
            .execute(&mut admin)
            .await?;
        sqlx::query(&format!("CREATE DATABASE \"{tpcb_db}\""))
            .execute(&mut admin)
            .await?;
        println!(
            "baseline: pgbench built-in TPC-B, scale {}, {} clients, {} s warm-up + {} s",
            args.clients, args.clients, args.warmup_seconds, args.seconds
        );
        let init = std::process::Command::new(self.bin)
            .args(["-i", "-q", "-I", "dtGvp", "-s"])
            .arg(args.clients.to_string())
            .arg(&tpcb_url)
            .output()
            .context("pgbench -i")?;
        anyhow::ensure!(
            init.status.success(),
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let result = async {
            let warmup = args.warmup_seconds.max(1).to_string();
            self.run_on(None, &tpcb_url, args.clients, &["-T", &warmup])?;
            let mut db = PgConnection::connect(&tpcb_url).await?;
            let wal0 = super::throughput::wal_position(&mut db).await?;
            let cpu0 = CpuSnapshot::take();
            let run = self.run_on(None, &tpcb_url, args.clients, &["-T", &args.seconds.to_string()])?;
            let cpu1 = CpuSnapshot::take();
            let wal1 = super::throughput::wal_position(&mut db).await?;
            db.close().await?;
            let cpu = cpu0.used_until(&cpu1, stack);
            let pairs = run.transactions as f64 / 2.0;
            // pgbench's backends have exited when the CPU is read: their time is only in the
            // machine's, which is what this reports.
            let machine_ms = cpu.get("machine").copied().unwrap_or(0.0) / pairs.max(1.0) * 1000.0;
            anyhow::Ok(json!({
                "scale": args.clients,
                "clients": args.clients,
                "tps": round(run.tps, 0),
                "pairs_per_s": round(run.tps / 2.0, 0),
                "machine_cpu_ms_per_pair": round(machine_ms, 3),
                "wal_bytes_per_pair": round((wal1 - wal0) / pairs.max(1.0), 0),
                "cpu_seconds_per_1000_pairs": cpu_report(&cpu, pairs / 1000.0),
            }))
        }
        .await;
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{tpcb_db}\" WITH (FORCE)"))
            .execute(&mut admin)
            .await;
        result
    }

    /// The script of the measured runs, in `dir` and, for reading (it needs this run's tables to
    /// execute), next to the report.
    fn write_script(&self) -> anyhow::Result<PathBuf> {
        let args = self.args;
        let script = self.dir.join("authorize-capture.pgbench");
        let text = pgbench_script(args.pgbench_pairs_per_script, args.certificates_per_client)?;
        std::fs::write(&script, &text)?;
        if let Some(parent) = args.out.parent() {
            std::fs::create_dir_all(parent)?;
            std::fs::write(args.out.with_extension("pgbench"), &text)?;
        }
        Ok(script)
    }

    /// One run of the script must write one operation row per authorize and per capture (the
    /// version guard holds, every CTE writes).
    async fn verify(&self, conn: &mut PgConnection, ids: &[uuid::Uuid], script: &Path) -> anyhow::Result<()> {
        let pairs = self.args.pgbench_pairs_per_script;
        let before = operations_on(conn, ids).await?;
        self.run(script, 1, &["-t", "1"])?;
        let after = operations_on(conn, ids).await?;
        anyhow::ensure!(
            after - before == 2 * pairs as i64,
            "the pgbench script wrote {} operation rows, expected {}",
            after - before,
            2 * pairs
        );
        Ok(())
    }

    /// Latency of the same statements at the latency phase's pair rate: one pair per script run,
    /// Poisson arrivals (pgbench --rate), every transaction's latency in a log.
    fn latency(&self) -> anyhow::Result<Value> {
        let args = self.args;
        let pair_rate = args.rate as f64 / 2.0;
        println!(
            "baseline: pgbench latency at {pair_rate} pairs/s for {} s",
            args.latency_seconds
        );
        let single = self.dir.join("pair.pgbench");
        std::fs::write(&single, pgbench_script(1, args.certificates_per_client)?)?;
        let prefix = self.dir.join("pgbench-latency");
        self.run(
            &single,
            args.clients,
            &[
                "-R",
                &pair_rate.to_string(),
                "-T",
                &(args.latency_seconds + 1).to_string(),
                "--log",
                &format!("--log-prefix={}", prefix.display()),
            ],
        )?;
        let (lat, lag) = logged_latencies(self.dir, "pgbench-latency")?;
        Ok(json!({
            "pairs_per_s": pair_rate,
            "pairs": lat.len(),
            "pair_p50_ms": round(percentile(&lat, 0.5), 2),
            "pair_p99_ms": round(percentile(&lat, 0.99), 2),
            "schedule_lag_p99_ms": round(percentile(&lag, 0.99), 2),
        }))
    }
}
