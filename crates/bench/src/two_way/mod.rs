//! Two-way sync benchmark. Runs the release crm-sync (its two-way stages in processes of their
//! own, by `two_way.stages`) against the release crm-sim, with a fresh database and topics, and
//! measures in the same run:
//! - the outbox relay: rows/s draining a pre-filled `crm_outbox` with only the `relay` stage
//!   running, against a `COPY` of the same rows into a scratch copy of the table (`relay`);
//! - the p50/p99 from a card change in our API to the CRM write at a steady rate, with the bare
//!   broker's produce-to-consume latency at the same rate (`latency`);
//! - webhook intake requests/s (verified, stored with its outbox row, acknowledged) with many
//!   connections, against a bare axum endpoint in this process answering the same requests from
//!   the same load generator (`intake`).

mod intake;
mod latency;
mod relay;

use crate::harness::{drop_database, free_port, run_id, scratch_dir, sibling_bin, Children};
use crate::report::{mark, metric_sum, round, write_report};
use clap::Parser;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(Parser)]
pub struct Args {
    #[arg(long, default_value = "127.0.0.1:9094")]
    brokers: String,
    /// PostgreSQL server, without a database (each run creates its own).
    #[arg(long, default_value = "postgres://postgres:postgres@127.0.0.1:5432")]
    pg: String,
    #[arg(long, default_value = "target/bench/two-way.json")]
    out: PathBuf,
    /// Partitions of every topic of the run.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Outbox rows the relay drains (and the COPY baseline copies).
    #[arg(long, default_value_t = 100_000)]
    relay_rows: usize,
    /// Card changes per second of the latency phase.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    #[arg(long, default_value_t = 20)]
    latency_seconds: u64,
    /// Concurrent connections of the webhook load generator.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Measured seconds of each intake run (ours, then the bare endpoint). Every webhook takes a
    /// nonce the API remembers (at most 100,000 in ten minutes): keep warm-up + measured seconds
    /// times the rate below that.
    #[arg(long, default_value_t = 8)]
    intake_seconds: u64,
    #[arg(long, default_value_t = 2)]
    intake_warmup_seconds: u64,
    /// Keep the benchmark database afterwards.
    #[arg(long)]
    keep_db: bool,
}

const TOKEN: &str = "bench-token-0123456789";
const SECRET: &str = "bench-signing-secret-0123456789";
/// The API's service token for the benchmark's caller.
const API_TOKEN: &str = "bench-api-token-0123456789abcdef";
/// `two_way.webhooks.generic.secret`.
const HOOK_SECRET: &str = "bench-webhook-secret-0123456789";

const RELAY_TARGET: f64 = 20_000.0;
const INTAKE_TARGET: f64 = 5_000.0;
const P99_TARGET_MS: f64 = 50.0;

/// One run's names: database, topics, consumer groups.
pub(crate) struct Run {
    pub(crate) id: String,
    pub(crate) database: String,
    pub(crate) db_url: String,
    pub(crate) outgoing: String,
    pub(crate) incoming: String,
    /// Where the relay phase's process publishes `crm.outgoing` rows (no dispatcher reads it).
    pub(crate) relay_outgoing: String,
    pub(crate) latency_topic: String,
    dir: PathBuf,
    config: PathBuf,
}

impl Run {
    fn topics(&self) -> Vec<String> {
        let id = &self.id;
        [
            self.outgoing.clone(),
            self.incoming.clone(),
            self.relay_outgoing.clone(),
            self.latency_topic.clone(),
            format!("bench.tw.processed.{id}"),
            format!("bench.tw.failed.{id}"),
            format!("bench.tw.clients.{id}"),
            format!("bench.tw.tracking.{id}"),
            format!("bench.tw.sync.{id}"),
            format!("bench.tw.dead.letters.{id}"),
        ]
        .into()
    }
}

/// A running crm-sync process and the ports it serves.
pub(crate) struct SyncProcess {
    pub(crate) pid: u32,
    pub(crate) metrics_port: u16,
    child: Option<Child>,
}

impl SyncProcess {
    pub(crate) async fn metrics(&self, http: &reqwest::Client) -> anyhow::Result<String> {
        Ok(http
            .get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .send()
            .await?
            .text()
            .await?)
    }

    pub(crate) async fn metric(&self, http: &reqwest::Client, name: &str) -> anyhow::Result<f64> {
        Ok(metric_sum(&self.metrics(http).await?, name, ""))
    }

    /// SIGTERM, and waits for the exit.
    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }
}

impl Drop for SyncProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the phases share.
pub(crate) struct Bench<'a> {
    pub(crate) args: &'a Args,
    pub(crate) run: Run,
    pub(crate) http: reqwest::Client,
    pub(crate) sim_url: String,
    /// `http://127.0.0.1:<two_way.api.listen port>`.
    pub(crate) api: String,
}

impl Bench<'_> {
    /// crm-sync running `stages`; `env` adds to (and overrides) the run's environment.
    pub(crate) async fn spawn_sync(
        &self,
        stages: &str,
        env: &[(&str, String)],
    ) -> anyhow::Result<SyncProcess> {
        let metrics_port = free_port()?;
        let log = std::fs::File::create(
            self.run
                .dir
                .join(format!("crm-sync-{}.log", stages.replace(',', "+"))),
        )?;
        let run = &self.run;
        let base = [
            ("CRM_SYNC_CONFIG", run.config.display().to_string()),
            ("CRM_SYNC_TWO_WAY__STAGES", stages.to_owned()),
            ("CRM_SYNC_HTTP__LISTEN", format!("127.0.0.1:{metrics_port}")),
            ("CRM_SYNC_KAFKA__BROKERS", self.args.brokers.clone()),
            ("CRM_SYNC_KAFKA__GROUP_ID", format!("bench-tw-{}", run.id)),
            (
                "CRM_SYNC_KAFKA__INPUT_TOPIC",
                format!("bench.tw.tracking.{}", run.id),
            ),
            (
                "CRM_SYNC_KAFKA__OUTCOME_TOPIC",
                format!("bench.tw.sync.{}", run.id),
            ),
            (
                "CRM_SYNC_KAFKA__DEAD_LETTER_TOPIC",
                format!("bench.tw.dead.letters.{}", run.id),
            ),
            ("CRM_SYNC_POSTGRES__URL", run.db_url.clone()),
            ("CRM_SYNC_CRM__GENERIC__BASE_URL", self.sim_url.clone()),
            ("CRM_SYNC_CRM__GENERIC__TOKEN", TOKEN.into()),
            ("CRM_SYNC_CRM__GENERIC__SIGNING_SECRET", SECRET.into()),
            ("RUST_LOG", "warn".into()),
        ];
        let child = Command::new(sibling_bin("crm-sync", "crm-sync")?)
            .envs(base)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()?;
        let sync = SyncProcess {
            pid: child.id(),
            metrics_port,
            child: Some(child),
        };
        let ready = format!("http://127.0.0.1:{metrics_port}/health/ready");
        let started = Instant::now();
        loop {
            if self
                .http
                .get(&ready)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(sync);
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(120),
                "crm-sync ({stages}) not ready in 120 s; see {}",
                self.run.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A `PUT /v1/clients/{client}` of a whole card, with a fresh `Idempotency-Key`.
    pub(crate) async fn put_card(&self, client: &str, first_name: &str) -> anyhow::Result<()> {
        put_card(&self.http, &self.api, client, first_name).await
    }
}

/// A `PUT /v1/clients/{client}` of a whole card to the API at `api`, with a fresh
/// `Idempotency-Key`.
pub(crate) async fn put_card(
    http: &reqwest::Client,
    api: &str,
    client: &str,
    first_name: &str,
) -> anyhow::Result<()> {
    let card = json!({"fields": {"first_name": first_name, "last_name": "Bench",
        "phone": "+79991234567", "email": "bench@example.com", "segment": "regular",
        "consent_sms": true, "consent_email": false}});
    let r = http
        .put(format!("{api}/v1/clients/{client}"))
        .bearer_auth(API_TOKEN)
        .header("idempotency-key", uuid::Uuid::new_v4().to_string())
        .json(&card)
        .send()
        .await?;
    let status = r.status();
    anyhow::ensure!(
        status.is_success(),
        "PUT /v1/clients/{client}: {status} {}",
        r.text().await.unwrap_or_default()
    );
    Ok(())
}

/// The two-way part of the configuration (the rest comes by environment).
fn write_config(path: &Path, run: &Run, api_port: u16) -> anyhow::Result<()> {
    let id = &run.id;
    let toml = format!(
        r#"[two_way]
enabled = true
outgoing_topic = "{outgoing}"
incoming_topic = "{incoming}"
processed_topic = "bench.tw.processed.{id}"
failed_topic = "bench.tw.failed.{id}"
clients_topic = "bench.tw.clients.{id}"
dispatcher_group = "bench-tw-dispatcher-{id}"
processor_group = "bench-tw-processor-{id}"
clients_group = "bench-tw-clients-{id}"

[two_way.api]
listen = "127.0.0.1:{api_port}"

[two_way.api.tokens]
bench = "{API_TOKEN}"

[two_way.webhooks.generic]
secret = "{HOOK_SECRET}"
"#,
        outgoing = run.outgoing,
        incoming = run.incoming,
    );
    std::fs::write(path, toml)?;
    Ok(())
}

pub async fn main(args: Args) -> anyhow::Result<()> {
    let id = run_id();
    let dir = scratch_dir("bench-two-way", &id)?;
    let database = format!("bench_tw_{id}");
    let run = Run {
        db_url: format!("{}/{database}", args.pg),
        database: database.clone(),
        outgoing: format!("bench.tw.outgoing.{id}"),
        incoming: format!("bench.tw.incoming.{id}"),
        relay_outgoing: format!("bench.tw.relay.outgoing.{id}"),
        latency_topic: format!("bench.tw.latency.{id}"),
        config: dir.join("crm-sync.toml"),
        dir,
        id,
    };
    let result = measure(&args, run).await;
    if !args.keep_db {
        drop_database(&args.pg, &database).await;
    }
    let report = result?;
    write_report(&args.out, &report)
}

async fn measure(args: &Args, run: Run) -> anyhow::Result<serde_json::Value> {
    let kafka = backbone_kafka::KafkaSettings {
        brokers: args.brokers.clone(),
        ..Default::default()
    };
    let topics = run.topics();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    backbone_kafka::ensure_topics(&kafka, &names, args.partitions).await?;

    let sim_port = free_port()?;
    let api_port = free_port()?;
    write_config(&run.config, &run, api_port)?;
    let mut children = Children(Vec::new());
    children.0.push(
        Command::new(sibling_bin("crm-sim", "crm-sim")?)
            .args(["--listen", &format!("127.0.0.1:{sim_port}")])
            .env("CRM_SIM_TOKEN", TOKEN)
            .env("CRM_SIM_SIGNING_SECRET", SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    let b = Bench {
        args,
        run,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        sim_url: format!("http://127.0.0.1:{sim_port}"),
        api: format!("http://127.0.0.1:{api_port}"),
    };
    println!(
        "two-way benchmark {}: database {}, scratch {}",
        b.run.id,
        b.run.database,
        b.run.dir.display()
    );
    // The API alone first: it creates and migrates the database; the relay is not running.
    let api = b.spawn_sync("api", &[]).await?;

    let relay = relay::measure(&b).await?;
    let latency = latency::measure(&b).await?;
    let intake = intake::measure(&b, &api).await?;
    drop(api);
    drop(children);

    let relay_rate = relay["rows_per_s"].as_f64().unwrap_or(f64::NAN);
    let intake_rate = intake["requests_per_s"].as_f64().unwrap_or(f64::NAN);
    let p99 = latency["api_to_crm_p99_ms"].as_f64().unwrap_or(f64::NAN);
    let pass = json!({
        "relay_rows_per_s": relay_rate >= RELAY_TARGET,
        "intake_requests_per_s": intake_rate >= INTAKE_TARGET,
        "api_to_crm_p99_ms": p99 <= P99_TARGET_MS,
    });
    println!();
    println!("two-way sync, {} partitions", args.partitions);
    println!(
        "  outbox relay                 {relay_rate:>10.0} rows/s      {} (target >= 20,000)",
        mark(relay_rate >= RELAY_TARGET)
    );
    println!(
        "    COPY of the same rows      {:>10.0} rows/s      ratio {:.3}",
        relay["baseline_pg_copy_rows_per_s"].as_f64().unwrap_or(f64::NAN),
        relay["ratio_relay_to_copy"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "  webhook intake               {intake_rate:>10.0} requests/s  {} (target >= 5,000)",
        mark(intake_rate >= INTAKE_TARGET)
    );
    println!(
        "    bare axum endpoint         {:>10.0} requests/s  ratio {:.3}",
        intake["baseline_bare_axum_requests_per_s"]
            .as_f64()
            .unwrap_or(f64::NAN),
        intake["ratio_intake_to_bare_axum"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "  API change to CRM write at {} changes/s: p50 {:.2} ms, p99 {p99:.2} ms  {} (target p99 <= 50 ms)",
        args.rate,
        latency["api_to_crm_p50_ms"].as_f64().unwrap_or(f64::NAN),
        mark(p99 <= P99_TARGET_MS)
    );
    println!(
        "    bare broker produce to consume at {}/s: p50 {:.2} ms, p99 {:.2} ms",
        args.rate,
        latency["baseline_broker_p50_ms"].as_f64().unwrap_or(f64::NAN),
        latency["baseline_broker_p99_ms"].as_f64().unwrap_or(f64::NAN)
    );
    println!();
    Ok(json!({
        "date": OffsetDateTime::now_utc().format(&Rfc3339)?,
        "partitions": args.partitions,
        "relay": relay,
        "latency": latency,
        "intake": intake,
        "targets": {
            "relay_rows_per_s": RELAY_TARGET,
            "intake_requests_per_s": INTAKE_TARGET,
            "api_to_crm_p99_ms": P99_TARGET_MS,
        },
        "pass": pass,
    }))
}

/// Milliseconds, two decimals.
pub(crate) fn ms(v: f64) -> f64 {
    round(v, 2)
}
