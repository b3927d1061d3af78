//! gift-certificates benchmark. Starts the release service with its own database, Redis key
//! prefix, topics and master key, preloads certificates over the upload API, activates the ones it
//! needs, and measures in the same run:
//! - authorize + capture pairs/s over HTTP, every client on its own certificates;
//! - p50/p99 latency of single requests at a steady (open-loop) request rate;
//! - cached balance checks/s (a small set of certificates, served from Redis);
//! - peak and current RSS of the service;
//! - baseline: pgbench running exactly the statements the service runs for an authorize and a
//!   capture (`LOCK_SQL`, `LOCK_BY_CODE_SQL`, `LOAD_SQL`, `WRITE_SQL` of
//!   `backbone_postgres::certificates`), same database, same number of clients, same duration.

use anyhow::Context;
use backbone_bench::gift::{
    drop_database, mark, metric_sum, percentile, random_codes, round, run_id, scratch_dir, Service,
    ServiceSpec, CURRENCY, LOADER_TOKEN, NOMINAL_MINOR, PAYMENTS_TOKEN, POS_TOKEN,
};
use backbone_bench::procfs::{memory_mib, CpuSnapshot, Stack};
use backbone_certificates::events::{self, Origin};
use backbone_certificates::{
    execute, Amount, Applied, Certificate, Command, Currency, OperationId, SaleLinks,
};
use backbone_postgres::certificates::{LOAD_SQL, LOCK_BY_CODE_SQL, LOCK_SQL, WRITE_SQL};
use clap::Parser;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(Parser)]
struct Args {
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
    /// Keep the benchmark database afterwards.
    #[arg(long)]
    keep_db: bool,
    #[arg(long, default_value = "target/bench/certificates.json")]
    out: PathBuf,
}

/// Amount of every authorize and capture (1.00 RUB of a 5,000.00 certificate).
const AMOUNT_MINOR: i64 = 100;
const UPLOAD_JOB_ROWS: usize = 10_000;
const INITIATOR: &str = "bench-client";

#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
}

fn key() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Api {
    async fn post(&self, path: &str, token: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("idempotency-key", key())
            .header("x-initiator", INITIATOR)
            .json(body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    async fn upload(&self, batch_id: &str, job: u32, rows: &[(String, String)]) -> anyhow::Result<u64> {
        let certificates: Vec<Value> = rows
            .iter()
            .map(|(code, cvc)| json!({"code": code, "cvc": cvc, "nominal_minor": NOMINAL_MINOR, "currency": CURRENCY}))
            .collect();
        let body = json!({"version": 1, "batch_id": batch_id, "job": job, "certificates": certificates});
        let (status, answer) = self
            .post("/certificates/upload/batch", LOADER_TOKEN, &body)
            .await?;
        anyhow::ensure!(status == 200, "upload job {job}: HTTP {status} {answer}");
        Ok(answer["issued"].as_u64().unwrap_or(0))
    }

    /// Activates a certificate; returns its id.
    async fn activate(&self, code: &str, n: usize) -> anyhow::Result<String> {
        let body = json!({"client_id": format!("bench-client-{n}"), "order_id": format!("bench-order-{n}"),
                          "payment_id": format!("bench-payment-{n}")});
        let (status, answer) = self
            .post(&format!("/certificates/{code}/activate"), PAYMENTS_TOKEN, &body)
            .await?;
        anyhow::ensure!(status == 200, "activate: HTTP {status} {answer}");
        answer["certificate_id"]
            .as_str()
            .map(str::to_owned)
            .context("activate: no certificate_id")
    }

    /// Authorizes `AMOUNT_MINOR`; returns the hold id.
    async fn authorize(&self, code: &str, cvc: &str) -> anyhow::Result<String> {
        let body = json!({"amount_minor": AMOUNT_MINOR, "currency": CURRENCY, "cvc": cvc});
        let (status, answer) = self
            .post(&format!("/certificates/{code}/authorize"), POS_TOKEN, &body)
            .await?;
        anyhow::ensure!(status == 201, "authorize: HTTP {status} {answer}");
        answer["operation_id"]
            .as_str()
            .map(str::to_owned)
            .context("authorize: no operation_id")
    }

    async fn capture(&self, code: &str, hold: &str) -> anyhow::Result<()> {
        let body = json!({"hold_id": hold, "amount_minor": AMOUNT_MINOR, "currency": CURRENCY});
        let (status, answer) = self
            .post(&format!("/certificates/{code}/capture"), POS_TOKEN, &body)
            .await?;
        anyhow::ensure!(status == 200, "capture: HTTP {status} {answer}");
        Ok(())
    }

    async fn balance(&self, code: &str, cvc: &str) -> anyhow::Result<()> {
        let resp = self
            .http
            .get(format!("{}/certificates/{code}/balance", self.base))
            .bearer_auth(POS_TOKEN)
            .header("x-certificate-cvc", cvc)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let _ = resp.bytes().await?;
        anyhow::ensure!(status == 200, "balance: HTTP {status}");
        Ok(())
    }
}

/// Errors of a phase: how many, and the first message.
#[derive(Default)]
struct Errors {
    count: AtomicU64,
    first: Mutex<Option<String>>,
}

impl Errors {
    fn record(&self, e: &anyhow::Error) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first.lock() {
            first.get_or_insert_with(|| format!("{e:#}"));
        }
    }

    fn report(&self) -> Value {
        let first = self.first.lock().ok().and_then(|f| f.clone());
        json!({"count": self.count.load(Ordering::Relaxed), "first": first})
    }
}

/// Activates `codes` with up to 16 requests in flight; returns their certificate ids in order.
async fn activate_all(api: &Api, codes: &[(String, String)], offset: usize) -> anyhow::Result<Vec<String>> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    stream::iter(codes.iter().enumerate())
        .map(|(i, (code, _))| {
            let api = api.clone();
            async move { api.activate(code, offset + i).await }
        })
        .buffered(16)
        .try_collect()
        .await
}

/// One completed pair: when it completed, authorize and capture latency (ms).
type PairSample = (Instant, f64, f64);

/// Authorize + capture pairs as fast as they complete, `clients` at once, each on its own
/// certificates, until `stop`.
async fn pair_client(
    api: Api,
    certificates: Vec<(String, String)>,
    stop: Arc<AtomicBool>,
    errors: Arc<Errors>,
) -> Vec<PairSample> {
    let mut samples = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let (code, cvc) = &certificates[i % certificates.len()];
        i += 1;
        let t0 = Instant::now();
        let hold = match api.authorize(code, cvc).await {
            Ok(h) => h,
            Err(e) => {
                errors.record(&e);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let t1 = Instant::now();
        match api.capture(code, &hold).await {
            Ok(()) => {
                let t2 = Instant::now();
                samples.push((
                    t2,
                    (t1 - t0).as_secs_f64() * 1000.0,
                    (t2 - t1).as_secs_f64() * 1000.0,
                ));
            }
            Err(e) => errors.record(&e),
        }
    }
    samples
}

/// Operation storage time (the repository's transaction, pool wait included) from the service's
/// histogram: (sum seconds, count) for a route.
fn storage_time(metrics: &str, route: &str) -> (f64, f64) {
    let label = format!("route=\"{route}\"");
    (
        metric_sum(metrics, "gift_certificates_operation_seconds_sum", &label),
        metric_sum(metrics, "gift_certificates_operation_seconds_count", &label),
    )
}

fn cpu_report(used: &BTreeMap<String, f64>, per: f64) -> Value {
    let mut out = serde_json::Map::new();
    for (group, secs) in used {
        out.insert(group.clone(), json!(round(secs / per, 3)));
    }
    Value::Object(out)
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

// ---------------------------------------------------------------------------------------------
// The pgbench baseline

/// Operation ids and idempotency keys in the parameter templates, replaced per execution.
const AUTH_ID: &str = "aaaaaaaa-aaaa-7aaa-8aaa-aaaaaaaaaaaa";
const CAPTURE_ID: &str = "cccccccc-cccc-7ccc-8ccc-cccccccccccc";
const AUTH_KEY: &str = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb";
const CAPTURE_KEY: &str = "dddddddd-dddd-4ddd-8ddd-dddddddddddd";

/// The JSON parameters of `WRITE_SQL` for one authorize and its capture, built by the domain
/// code the service runs and serialised like the repository does (holds changed, operation rows,
/// outgoing events, the stored result).
struct WriteTemplates {
    auth: [String; 4],
    capture: [String; 4],
}

fn hold_row(hold: &str, expires_at: OffsetDateTime, captured: Option<&str>) -> anyhow::Result<Value> {
    Ok(json!({
        "hold_id": hold,
        "amount": AMOUNT_MINOR,
        "expires_at": expires_at.format(&Rfc3339)?,
        "status": if captured.is_some() { "captured" } else { "active" },
        "captured_amount": captured.map(|_| AMOUNT_MINOR),
        "capture_id": captured,
        "capture_reversed": false,
        "channel": "POS",
    }))
}

fn write_params(
    id: uuid::Uuid,
    after: &Certificate,
    effects: Vec<backbone_certificates::Effect>,
    key: &str,
    holds: Value,
    now: OffsetDateTime,
) -> anyhow::Result<[String; 4]> {
    let ops: Vec<Value> = effects
        .iter()
        .map(|e| -> anyhow::Result<Value> {
            Ok(json!({
                "operation_id": e.operation.as_str(),
                "action": e.action.name(),
                "detail": serde_json::to_value(e)?,
                "amount": e.amount,
                "target_id": events::target_of(&e.action),
                "balance_before": e.balance_before,
                "balance_after": e.balance_after,
                "state_before": e.state_before.as_str(),
                "state_after": e.state_after.as_str(),
                "at": e.at.format(&Rfc3339)?,
            }))
        })
        .collect::<anyhow::Result<_>>()?;
    let origin = Origin {
        channel: backbone_certificates::Channel::Pos,
        initiator: Some(INITIATOR.into()),
        source_event: Some(format!("http:{key}")),
    };
    let events: Vec<Value> = events::outgoing(id, "ABCD", after, &effects, &origin)
        .into_iter()
        .map(|o| json!({"topic": o.topic, "key": o.key, "payload": o.payload}))
        .collect();
    let applied = Applied {
        certificate_id: id,
        code_last4: "ABCD".into(),
        effects,
        state: after.state(),
        currency: after.currency().to_string(),
        balance: after.balance(),
        available: after.available(now),
        replayed: false,
        code_digest: None,
    };
    Ok([
        holds.to_string(),
        Value::Array(ops).to_string(),
        Value::Array(events).to_string(),
        serde_json::to_string(&applied)?,
    ])
}

fn write_templates() -> anyhow::Result<WriteTemplates> {
    let now = OffsetDateTime::now_utc();
    let currency = Currency::parse(CURRENCY)?;
    let amount = Amount::new(AMOUNT_MINOR, currency)?;
    let id = uuid::Uuid::now_v7();
    let mut c = Certificate::issue(Amount::new(NOMINAL_MINOR, currency)?, None);
    let links = SaleLinks {
        client_id: Some("bench-client-0".into()),
        order_id: Some("bench-order-0".into()),
        payment_id: Some("bench-payment-0".into()),
    };
    execute(
        &mut c,
        OperationId::parse(key())?,
        &Command::Activate { links },
        now,
    )?;
    let hold = OperationId::parse(AUTH_ID)?;
    let ttl = 15 * 60;
    let effects = execute(
        &mut c,
        hold.clone(),
        &Command::Authorize {
            amount,
            ttl_seconds: ttl,
        },
        now,
    )?;
    let expires_at = now + time::Duration::seconds(ttl);
    let auth = write_params(
        id,
        &c,
        effects,
        AUTH_KEY,
        json!([hold_row(AUTH_ID, expires_at, None)?]),
        now,
    )?;
    let effects = execute(
        &mut c,
        OperationId::parse(CAPTURE_ID)?,
        &Command::Capture { hold, amount },
        now,
    )?;
    let capture = write_params(
        id,
        &c,
        effects,
        CAPTURE_KEY,
        json!([hold_row(AUTH_ID, expires_at, Some(CAPTURE_ID))?]),
        now,
    )?;
    Ok(WriteTemplates { auth, capture })
}

/// Replaces `$n` parameters of `sql` by `args[n - 1]` (pgbench variables with the type sqlx binds).
fn bind(sql: &str, args: &[String]) -> anyhow::Result<String> {
    let mut out = String::with_capacity(sql.len() + 256);
    let mut chars = sql.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        let mut digits = String::new();
        while let Some((_, d)) = chars.peek().filter(|(_, d)| d.is_ascii_digit()) {
            digits.push(*d);
            chars.next();
        }
        let n: usize = digits.parse().context("a `$` without a parameter number")?;
        let arg = n
            .checked_sub(1)
            .and_then(|i| args.get(i))
            .with_context(|| format!("parameter ${n} has no value"))?;
        out.push_str(arg);
    }
    Ok(out)
}

const TEMPLATE_COLUMNS: [&str; 8] = ["ah", "ao", "ae", "aa", "ch", "co", "ce", "ca"];

/// The pgbench script: one parameter query (the client's certificate, fresh operation ids and
/// keys, the JSON parameters with those ids), then `pairs` authorize + capture transactions, each
/// exactly the service's (`PgCertificates::apply`): BEGIN, LOCK_SQL (the idempotency key),
/// LOCK_BY_CODE_SQL (the row), LOAD_SQL, WRITE_SQL, COMMIT.
fn pgbench_script(pairs: usize, per_client: usize) -> anyhow::Result<String> {
    let mut s = String::new();
    s.push_str(&format!("\\set slot random(0, {})\n", per_client - 1));
    s.push_str(&format!("\\set amount {AMOUNT_MINOR}\n\\set zero 0\n"));
    for p in 1..=pairs {
        s.push_str(&format!(
            "\\set lka{p} random(1, 9000000000000000000)\n\\set lkc{p} random(1, 9000000000000000000)\n"
        ));
    }
    let mut cols = vec![
        "c.digest AS d".to_owned(),
        "'POS' AS chan".into(),
        format!("'{INITIATOR}' AS ini"),
        "'' AS nil".into(),
        "t.request_hash AS rh".into(),
        "'PartiallyRedeemed' AS stc".into(),
        format!("{} AS ret", 24 * 7 * 3600),
    ];
    let mut ids = Vec::new();
    for p in 1..=pairs {
        for v in ["a", "c", "ka", "kc"] {
            ids.push(format!("gen_random_uuid()::text AS {v}{p}"));
        }
        cols.push(format!("'http:' || x.ka{p} AS sa{p}"));
        cols.push(format!("'http:' || x.kc{p} AS sc{p}"));
        for t in TEMPLATE_COLUMNS {
            cols.push(format!(
                "replace(replace(replace(replace(t.{t}, '{AUTH_ID}', x.a{p}), '{CAPTURE_ID}', x.c{p}), \
                 '{AUTH_KEY}', x.ka{p}), '{CAPTURE_KEY}', x.kc{p}) AS {t}{p}"
            ));
        }
        for v in ["a", "c", "ka", "kc"] {
            cols.push(format!("x.{v}{p}"));
        }
    }
    s.push_str(&format!(
        "SELECT {}\n  FROM bench_pgbench_cert c, bench_pgbench_template t,\n       LATERAL (SELECT {}) x\n WHERE c.client = :client_id AND c.slot = :slot\n\\gset\n",
        cols.join(",\n       "),
        ids.join(", ")
    ));
    for p in 1..=pairs {
        // Authorize: no target ($2 of LOAD_SQL), a new hold.
        transaction(
            &mut s,
            &format!(":lka{p}"),
            [":nil".into(), format!(":a{p}"), format!(":ka{p}")],
            "",
            &write_args(p, "a", ":l_balance", ":amount", ":l_state"),
        )?;
        // Capture of that hold.
        transaction(
            &mut s,
            &format!(":lkc{p}"),
            [format!(":a{p}"), format!(":c{p}"), format!(":kc{p}")],
            "\\set nb :l_balance - :amount\n",
            &write_args(p, "c", ":nb", ":zero", ":stc"),
        )?;
    }
    Ok(s)
}

/// One operation as `PgCertificates::apply` runs it. `load` holds LOAD_SQL's target, operation
/// id and idempotency key; `between` runs after the load (pgbench arithmetic for the write).
fn transaction(
    s: &mut String,
    lock_key: &str,
    load: [String; 3],
    between: &str,
    write: &[String],
) -> anyhow::Result<()> {
    let [target, operation, key] = load;
    s.push_str("BEGIN;\n");
    s.push_str(&bind(LOCK_SQL, &[format!("{lock_key}::int8")])?);
    s.push_str(";\n");
    s.push_str(&bind(LOCK_BY_CODE_SQL, &[":d::bytea".into()])?);
    s.push_str("\n\\gset k_\n");
    s.push_str(&bind(
        LOAD_SQL,
        &[
            ":k_id::uuid".into(),
            format!("{target}::text"),
            format!("{operation}::text"),
            ":chan::text".into(),
            format!("{key}::text"),
        ],
    )?);
    s.push_str("\n\\gset l_\n");
    s.push_str(between);
    s.push_str(&bind(WRITE_SQL, write)?);
    s.push_str(";\nCOMMIT;\n");
    Ok(())
}

/// `WRITE_SQL`'s 18 parameters, with the types sqlx binds them as.
fn write_args(p: usize, op: &str, balance: &str, held: &str, state: &str) -> Vec<String> {
    let source = if op == "a" { "sa" } else { "sc" };
    vec![
        ":l_id::uuid".into(),
        format!("{balance}::int8"),
        format!("{held}::int8"),
        format!("{state}::text"),
        ":l_client_id::text".into(),
        ":l_order_id::text".into(),
        ":l_payment_id::text".into(),
        ":l_version::int8".into(),
        format!(":{op}h{p}::jsonb"),
        format!(":{op}o{p}::jsonb"),
        ":chan::text".into(),
        ":ini::text".into(),
        format!(":{source}{p}::text"),
        format!(":{op}e{p}::jsonb"),
        format!(":k{op}{p}::text"),
        ":rh::bytea".into(),
        format!(":{op}a{p}::jsonb"),
        ":ret::float8".into(),
    ]
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

fn run_pgbench(
    bin: &Path,
    db_url: &str,
    script: &Path,
    clients: usize,
    limit: &[&str],
) -> anyhow::Result<PgbenchRun> {
    let out = std::process::Command::new(bin)
        .args(["-n", "-M", "prepared", "-j", "2", "-c"])
        .arg(clients.to_string())
        .args(limit)
        .arg("-f")
        .arg(script)
        .arg(db_url)
        .output()
        .context("running pgbench")?;
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
        transactions: field("number of transactions actually processed:").context("pgbench output")? as u64,
        tps: field("tps =").context("pgbench output: tps")?,
    })
}

async fn operations_on(conn: &mut PgConnection, ids: &[uuid::Uuid]) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM gift_certificate_operation WHERE certificate_id = ANY($1)")
            .bind(ids)
            .fetch_one(conn)
            .await?,
    )
}

/// Prepares the pgbench tables, checks one script run writes what the service writes, then runs
/// a warm-up and the measured run. Returns the report section.
async fn pgbench_baseline(
    args: &Args,
    bin: &Path,
    db_url: &str,
    dir: &Path,
    certificate_ids: &[String],
    stack: &Stack,
) -> anyhow::Result<Value> {
    let per_client = args.certificates_per_client;
    let pairs = args.pgbench_pairs_per_script;
    let mut conn = PgConnection::connect(db_url).await?;
    let ids: Vec<uuid::Uuid> = certificate_ids
        .iter()
        .map(|s| uuid::Uuid::parse_str(s))
        .collect::<Result<_, _>>()?;
    sqlx::query("DROP TABLE IF EXISTS bench_pgbench_cert, bench_pgbench_template")
        .execute(&mut conn)
        .await?;
    sqlx::query(
        "CREATE TABLE bench_pgbench_cert (client int, slot int, digest text, PRIMARY KEY (client, slot))",
    )
    .execute(&mut conn)
    .await?;
    sqlx::query(
        "INSERT INTO bench_pgbench_cert
         SELECT (n - 1) / $2, (n - 1) % $2, '\\x' || encode(g.code_digest, 'hex')
           FROM unnest($1::uuid[]) WITH ORDINALITY AS u(id, n) JOIN gift_certificate g USING (id)",
    )
    .bind(&ids)
    .bind(per_client as i32)
    .execute(&mut conn)
    .await?;
    let templates = write_templates()?;
    sqlx::query(
        "CREATE TABLE bench_pgbench_template AS SELECT $1::text AS ah, $2::text AS ao, $3::text AS ae, $4::text AS aa,
                $5::text AS ch, $6::text AS co, $7::text AS ce, $8::text AS ca,
                '\\x' || encode(sha256(gen_random_uuid()::text::bytea), 'hex') AS request_hash",
    )
    .bind(&templates.auth[0])
    .bind(&templates.auth[1])
    .bind(&templates.auth[2])
    .bind(&templates.auth[3])
    .bind(&templates.capture[0])
    .bind(&templates.capture[1])
    .bind(&templates.capture[2])
    .bind(&templates.capture[3])
    .execute(&mut conn)
    .await?;
    let script = dir.join("authorize-capture.pgbench");
    let text = pgbench_script(pairs, per_client)?;
    std::fs::write(&script, &text)?;
    // Next to the report, for reading (it needs this run's tables to execute).
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
        std::fs::write(args.out.with_extension("pgbench"), &text)?;
    }

    // One run of the script must write one operation row per authorize and per capture (the
    // version guard holds, every CTE writes).
    let before = operations_on(&mut conn, &ids).await?;
    run_pgbench(bin, db_url, &script, 1, &["-t", "1"])?;
    let after = operations_on(&mut conn, &ids).await?;
    anyhow::ensure!(
        after - before == 2 * pairs as i64,
        "the pgbench script wrote {} operation rows, expected {}",
        after - before,
        2 * pairs
    );

    println!(
        "baseline: pgbench, {} clients, {} s warm-up + {} s",
        args.clients, args.warmup_seconds, args.seconds
    );
    run_pgbench(
        bin,
        db_url,
        &script,
        args.clients,
        &["-T", &args.warmup_seconds.max(1).to_string()],
    )?;
    let before = operations_on(&mut conn, &ids).await?;
    let cpu0 = CpuSnapshot::take();
    let run = run_pgbench(
        bin,
        db_url,
        &script,
        args.clients,
        &["-T", &args.seconds.to_string()],
    )?;
    let cpu1 = CpuSnapshot::take();
    let after = operations_on(&mut conn, &ids).await?;
    let written = after - before;
    let expected = 2 * pairs as i64 * run.transactions as i64;
    let pairs_per_s = run.tps * pairs as f64;
    let cpu = cpu0.used_until(&cpu1, stack);
    let total_pairs = run.transactions as f64 * pairs as f64;

    // Latency of the same statements at the latency phase's pair rate: one pair per script run,
    // Poisson arrivals (pgbench --rate), every transaction's latency in a log.
    let pair_rate = args.rate as f64 / 2.0;
    println!(
        "baseline: pgbench latency at {pair_rate} pairs/s for {} s",
        args.latency_seconds
    );
    let single = dir.join("pair.pgbench");
    std::fs::write(&single, pgbench_script(1, per_client)?)?;
    let prefix = dir.join("pgbench-latency");
    run_pgbench(
        bin,
        db_url,
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
    // client_id transaction_no time script_no time_epoch time_us schedule_lag: (ended at, latency
    // ms, schedule lag ms). The first second is dropped: pgbench schedules transactions from its
    // start, before every client has connected.
    let mut samples: Vec<(f64, f64, f64)> = Vec::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
        if !entry.file_name().to_string_lossy().starts_with("pgbench-latency") {
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
    Ok(json!({
        "pairs_per_s": round(pairs_per_s, 0),
        "clients": args.clients,
        "pairs_per_script_run": pairs,
        "pairs": total_pairs,
        "operation_rows_written": written,
        "operation_rows_expected": expected,
        "verified": written == expected,
        // pgbench and its backends have exited when this is read: their time is in `machine`.
        "cpu_seconds_per_1000_pairs": cpu_report(&cpu, total_pairs / 1000.0),
        "latency": {
            "pairs_per_s": pair_rate,
            "pairs": lat.len(),
            "pair_p50_ms": round(percentile(&lat, 0.5), 2),
            "pair_p99_ms": round(percentile(&lat, 0.99), 2),
            "schedule_lag_p99_ms": round(percentile(&lag, 0.99), 2),
        },
    }))
}

// ---------------------------------------------------------------------------------------------

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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
    let mut service = Service::start(&ServiceSpec {
        pg: &args.pg,
        database: database.to_owned(),
        redis: &args.redis,
        brokers: &args.brokers,
        id,
        dir,
        max_connections: args.max_connections,
    })?;
    service.wait_ready(&http, Duration::from_secs(120)).await?;
    let stack = Stack {
        service_pid: Some(service.pid),
        databases: vec![database.to_owned()],
        broker: Some(args.brokers.clone()),
    };
    let api = Api {
        http: http.clone(),
        base: service.base_url.clone(),
    };

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

    // Certificates: the clients' (throughput and latency phases), pgbench's, the balance set.
    let n_clients = args.clients * args.certificates_per_client;
    let service_set = &codes[..n_clients];
    let pgbench_set = &codes[n_clients..2 * n_clients];
    let balance_set = &codes[2 * n_clients..2 * n_clients + args.balance_certificates];
    println!(
        "activating {} certificates",
        2 * n_clients + args.balance_certificates
    );
    let started = Instant::now();
    activate_all(&api, service_set, 0).await?;
    let pgbench_ids = activate_all(&api, pgbench_set, n_clients).await?;
    activate_all(&api, balance_set, 2 * n_clients).await?;
    let activate_rate = (2 * n_clients + args.balance_certificates) as f64 / started.elapsed().as_secs_f64();

    // a. Throughput: authorize + capture pairs.
    println!(
        "throughput: {} clients, authorize + capture pairs, {} s warm-up + {} s",
        args.clients, args.warmup_seconds, args.seconds
    );
    let stop = Arc::new(AtomicBool::new(false));
    let pair_errors = Arc::new(Errors::default());
    let workers: Vec<_> = service_set
        .chunks(args.certificates_per_client)
        .map(|certs| {
            tokio::spawn(pair_client(
                api.clone(),
                certs.to_vec(),
                stop.clone(),
                pair_errors.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(args.warmup_seconds)).await;
    let m0 = service.metrics(&http).await?;
    let cpu0 = CpuSnapshot::take();
    let w0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let w1 = Instant::now();
    let cpu1 = CpuSnapshot::take();
    let m1 = service.metrics(&http).await?;
    stop.store(true, Ordering::Relaxed);
    let mut window = Vec::new();
    for w in workers {
        window.extend(w.await?.into_iter().filter(|(at, _, _)| *at >= w0 && *at < w1));
    }
    let pairs = window.len() as f64;
    let pair_rate = pairs / (w1 - w0).as_secs_f64();
    let auth_http_ms = mean(&window.iter().map(|s| s.1).collect::<Vec<_>>());
    let capture_http_ms = mean(&window.iter().map(|s| s.2).collect::<Vec<_>>());
    let storage = |route: &str| {
        let (s0, c0) = storage_time(&m0, route);
        let (s1, c1) = storage_time(&m1, route);
        (s1 - s0) / (c1 - c0).max(1.0) * 1000.0
    };
    let (auth_storage_ms, capture_storage_ms) = (storage("authorize"), storage("capture"));
    let pair_cpu = cpu0.used_until(&cpu1, &stack);

    // b. Latency at a steady request rate: pairs at rate / 2, the capture sent when its
    // authorize answers.
    println!(
        "latency: {} requests/s for {} s (authorize + capture pairs at {}/s)",
        args.rate,
        args.latency_seconds,
        args.rate as f64 / 2.0
    );
    let pair_interval = Duration::from_secs_f64(2.0 / args.rate as f64);
    let n_pairs = (args.rate * args.latency_seconds / 2) as usize;
    let latency_errors = Arc::new(Errors::default());
    let lm0 = service.metrics(&http).await?;
    let start = Instant::now();
    let mut sends = Vec::with_capacity(n_pairs);
    for i in 0..n_pairs {
        tokio::time::sleep_until((start + pair_interval * i as u32).into()).await;
        let (code, cvc) = service_set[i % service_set.len()].clone();
        let (api, errors) = (api.clone(), latency_errors.clone());
        sends.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let hold = match api.authorize(&code, &cvc).await {
                Ok(h) => h,
                Err(e) => {
                    errors.record(&e);
                    return None;
                }
            };
            let t1 = Instant::now();
            match api.capture(&code, &hold).await {
                Ok(()) => Some((
                    (t1 - t0).as_secs_f64() * 1000.0,
                    t1.elapsed().as_secs_f64() * 1000.0,
                )),
                Err(e) => {
                    errors.record(&e);
                    None
                }
            }
        }));
    }
    let mut auth_lat = Vec::new();
    let mut cap_lat = Vec::new();
    let mut pair_lat = Vec::new();
    for s in sends {
        if let Some((a, c)) = s.await? {
            auth_lat.push(a);
            cap_lat.push(c);
            pair_lat.push(a + c);
        }
    }
    pair_lat.sort_by(f64::total_cmp);
    let lm1 = service.metrics(&http).await?;
    let latency_storage = |route: &str| {
        let (s0, c0) = storage_time(&lm0, route);
        let (s1, c1) = storage_time(&lm1, route);
        (s1 - s0) / (c1 - c0).max(1.0) * 1000.0
    };
    let achieved_rps = 2.0 * auth_lat.len() as f64 / start.elapsed().as_secs_f64();
    let mut all_lat: Vec<f64> = auth_lat.iter().chain(cap_lat.iter()).copied().collect();
    all_lat.sort_by(f64::total_cmp);
    auth_lat.sort_by(f64::total_cmp);
    cap_lat.sort_by(f64::total_cmp);

    // c. Cached balance checks.
    println!(
        "balance: {} clients over {} certificates, {} s warm-up + {} s",
        args.balance_clients, args.balance_certificates, args.warmup_seconds, args.seconds
    );
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let balance_errors = Arc::new(Errors::default());
    let balance_set = Arc::new(balance_set.to_vec());
    let checkers: Vec<_> = (0..args.balance_clients)
        .map(|c| {
            let (api, stop, done, errors, set) = (
                api.clone(),
                stop.clone(),
                done.clone(),
                balance_errors.clone(),
                balance_set.clone(),
            );
            tokio::spawn(async move {
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    let (code, cvc) = &set[i % set.len()];
                    i += 1;
                    match api.balance(code, cvc).await {
                        Ok(()) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => errors.record(&e),
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(args.warmup_seconds)).await;
    let b_m0 = service.metrics(&http).await?;
    let b_cpu0 = CpuSnapshot::take();
    let (b0, bt0) = (done.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let (b1, bt1) = (done.load(Ordering::Relaxed), Instant::now());
    let b_cpu1 = CpuSnapshot::take();
    let b_m1 = service.metrics(&http).await?;
    stop.store(true, Ordering::Relaxed);
    for c in checkers {
        c.await?;
    }
    let balance_checks = (b1 - b0) as f64;
    let balance_rate = balance_checks / (bt1 - bt0).as_secs_f64();
    let cache = |m: &str, r: &str| {
        metric_sum(
            m,
            "gift_certificates_balance_cache_total",
            &format!("result=\"{r}\""),
        )
    };
    let (hits, misses) = (
        cache(&b_m1, "hit") - cache(&b_m0, "hit"),
        cache(&b_m1, "miss") - cache(&b_m0, "miss"),
    );
    let balance_cpu = b_cpu0.used_until(&b_cpu1, &stack);

    // e. Memory of the service after all of it.
    let (hwm, rss) = memory_mib(service.pid).context("service memory")?;
    let pool = args.max_connections.unwrap_or(24);
    service.stop();

    // d. Baseline: pgbench, the service stopped.
    let pgbench = match find_pgbench(args.pgbench.as_deref()) {
        Some(bin) => pgbench_baseline(args, &bin, &service.db_url, dir, &pgbench_ids, &stack).await?,
        None => {
            println!(
                "pgbench not found (PATH, /usr/lib/postgresql/*/bin): install it with \
                 `apt-get install postgresql-client` or pass --pgbench / PGBENCH=/path/to/pgbench; \
                 the baseline is skipped"
            );
            json!(null)
        }
    };
    let pg_rate = pgbench["pairs_per_s"].as_f64();
    let ratio = pg_rate.map(|r| pair_rate / r);

    let p99 = percentile(&all_lat, 0.99);
    let checks = [
        ("ratio to pgbench >= 0.50", ratio.is_some_and(|r| r >= 0.5)),
        ("pairs/s >= 2,000", pair_rate >= 2000.0),
        ("p99 at 500 rps <= 10 ms", p99 <= 10.0),
        ("cached balance checks/s >= 20,000", balance_rate >= 20_000.0),
        ("service RSS <= 200 MB", hwm <= 200.0),
    ];
    let report = json!({
        "date": OffsetDateTime::now_utc().format(&Rfc3339)?,
        "certificates_preloaded": args.certificates,
        "upload_rows_per_s": round(args.certificates as f64 / upload_secs, 0),
        "activations_per_s": round(activate_rate, 0),
        "service_pool_connections": pool,
        "pairs": {
            "clients": args.clients,
            "certificates_per_client": args.certificates_per_client,
            "seconds": args.seconds,
            "pairs_per_s": round(pair_rate, 0),
            "requests_per_s": round(2.0 * pair_rate, 0),
            "errors": pair_errors.report(),
            "authorize_http_mean_ms": round(auth_http_ms, 2),
            "capture_http_mean_ms": round(capture_http_ms, 2),
            "authorize_storage_mean_ms": round(auth_storage_ms, 2),
            "capture_storage_mean_ms": round(capture_storage_ms, 2),
            "cpu_seconds_per_1000_pairs": cpu_report(&pair_cpu, pairs / 1000.0),
            // Relayed from the outbox to the broker in the window, per pair completed in it.
            "events_published_per_pair": round(
                (metric_sum(&m1, "gift_certificates_outbox_published_total", "")
                    - metric_sum(&m0, "gift_certificates_outbox_published_total", ""))
                    / pairs.max(1.0),
                2
            ),
        },
        "latency": {
            "target_requests_per_s": args.rate,
            "achieved_requests_per_s": round(achieved_rps, 0),
            "requests": all_lat.len(),
            "errors": latency_errors.report(),
            "p50_ms": round(percentile(&all_lat, 0.5), 2),
            "p99_ms": round(p99, 2),
            "max_ms": round(all_lat.last().copied().unwrap_or(f64::NAN), 2),
            "authorize_p50_ms": round(percentile(&auth_lat, 0.5), 2),
            "authorize_p99_ms": round(percentile(&auth_lat, 0.99), 2),
            "capture_p50_ms": round(percentile(&cap_lat, 0.5), 2),
            "capture_p99_ms": round(percentile(&cap_lat, 0.99), 2),
            "pair_p50_ms": round(percentile(&pair_lat, 0.5), 2),
            "pair_p99_ms": round(percentile(&pair_lat, 0.99), 2),
            "authorize_http_mean_ms": round(mean(&auth_lat), 2),
            "capture_http_mean_ms": round(mean(&cap_lat), 2),
            "authorize_storage_mean_ms": round(latency_storage("authorize"), 2),
            "capture_storage_mean_ms": round(latency_storage("capture"), 2),
        },
        "balance": {
            "clients": args.balance_clients,
            "certificates": args.balance_certificates,
            "checks_per_s": round(balance_rate, 0),
            "errors": balance_errors.report(),
            "cache_hits": hits,
            "cache_misses": misses,
            "cpu_seconds_per_1000_checks": cpu_report(&balance_cpu, balance_checks / 1000.0),
        },
        "service_peak_rss_mib": round(hwm, 1),
        "service_rss_mib": round(rss, 1),
        "pgbench": pgbench,
        "ratio_service_to_pgbench": ratio.map(|r| round(r, 3)),
        "targets": {
            "ratio_service_to_pgbench": 0.5,
            "pairs_per_s": 2000,
            "latency_p99_ms_at_500_rps": 10,
            "balance_checks_per_s": 20000,
            "service_rss_mib": 200,
        },
        "pass": checks.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
    });

    println!();
    println!(
        "gift-certificates, {} clients, {} s per phase",
        args.clients, args.seconds
    );
    println!(
        "  authorize+capture pairs/s   {:>10.0}   {} (target >= 2,000)",
        pair_rate,
        mark(checks[1].1)
    );
    match (pg_rate, ratio) {
        (Some(r), Some(q)) => {
            println!("  pgbench, same statements    {r:>10.0}   pairs/s");
            println!(
                "  ratio service / pgbench     {:>10.3}   {} (target >= 0.50)",
                q,
                mark(checks[0].1)
            );
        }
        _ => println!("  pgbench baseline            skipped    FAIL (no ratio)"),
    }
    println!(
        "  latency at {} rps p50 / p99  {:>6.2} / {:.2} ms   {} (target p99 <= 10 ms)",
        args.rate,
        percentile(&all_lat, 0.5),
        p99,
        mark(checks[2].1)
    );
    println!(
        "  cached balance checks/s     {:>10.0}   {} (target >= 20,000)",
        balance_rate,
        mark(checks[3].1)
    );
    println!(
        "  service peak RSS            {:>10.1}   MiB {} (target <= 200 MB); now {:.1} MiB",
        hwm,
        mark(checks[4].1),
        rss
    );
    println!(
        "  pair latency p50 / p99: service {:.2} / {:.2} ms; pgbench, same SQL, same pair rate {} / {} ms",
        percentile(&pair_lat, 0.5),
        percentile(&pair_lat, 0.99),
        pgbench["latency"]["pair_p50_ms"],
        pgbench["latency"]["pair_p99_ms"],
    );
    println!(
        "  storage (PostgreSQL transaction) of authorize / capture, mean: {:.2} / {:.2} ms of {:.2} / {:.2} ms \
         over HTTP at {} rps; {auth_storage_ms:.2} / {capture_storage_ms:.2} ms of {auth_http_ms:.2} / \
         {capture_http_ms:.2} ms at full load",
        latency_storage("authorize"),
        latency_storage("capture"),
        mean(&auth_lat),
        mean(&cap_lat),
        args.rate,
    );
    let per_pair = |g: &str| pair_cpu.get(g).copied().unwrap_or(0.0) / pairs * 1000.0;
    println!(
        "  CPU ms per pair: PostgreSQL {:.2}, service {:.2}, broker {:.2}, bench client {:.2}, Redis {:.2}; not this system {:.2}",
        per_pair("postgresql_backends") + per_pair("postgresql_background"),
        per_pair("gift_certificates"),
        per_pair("broker"),
        per_pair("bench_client"),
        per_pair("redis"),
        per_pair("other"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_replaced_longest_number_first() -> anyhow::Result<()> {
        let args: Vec<String> = (1..=12).map(|n| format!(":p{n}")).collect();
        assert_eq!(bind("f($1, $12, $2)", &args)?, "f(:p1, :p12, :p2)");
        assert!(bind("f($13)", &args).is_err());
        Ok(())
    }

    #[test]
    fn the_script_binds_every_parameter() -> anyhow::Result<()> {
        let script = pgbench_script(2, 8)?;
        assert!(!script.contains('$'));
        assert_eq!(script.matches("BEGIN;").count(), 4);
        assert_eq!(script.matches("FOR UPDATE").count(), 4);
        Ok(())
    }

    #[test]
    fn templates_hold_the_placeholders() -> anyhow::Result<()> {
        let t = write_templates()?;
        assert!(t.auth[0].contains(AUTH_ID) && t.auth[1].contains(AUTH_ID));
        assert!(t.capture[0].contains(CAPTURE_ID) && t.capture[3].contains(CAPTURE_ID));
        Ok(())
    }
}
