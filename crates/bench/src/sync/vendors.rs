//! Per CRM vendor dialect: crm-sync configured from `crm-sync.<vendor>.local.toml` against
//! crm-sim's dialect, end-to-end events/s next to the ceiling the adapter's client-side rate limit
//! implies, with the generic API as the same-run baseline.

use super::{spawn_crm_sim, successes, sync_usage, Args, SECRET, TOKEN};
use crate::crm_vendors;
use crate::harness::{drop_database, free_port, run_id, sibling_bin, Children};
use crate::report::round;
use crate::{event_json, producer, send_all, STATUSES};
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// What the vendor dialects of crm-sim accept (webhook code, client secret, token): letters and
/// digits, as a Bitrix24 webhook code is.
const VENDOR_SECRET: &str = "benchVendorSecret0123456789";

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

/// Every vendor of `--vendors` against one crm-sim, then each figure next to the generic one.
pub(super) async fn measure_all(args: &Args) -> anyhow::Result<serde_json::Value> {
    let sim_port = free_port()?;
    let _sim = Children(vec![spawn_crm_sim(sim_port, Some(VENDOR_SECRET))?]);
    let client = reqwest::Client::new();
    let up = Instant::now();
    while sim_counts(&client, sim_port, "generic").await.is_err() {
        anyhow::ensure!(up.elapsed() < Duration::from_secs(20), "crm-sim did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut out = serde_json::Map::new();
    for vendor in args.vendors.iter().filter(|v| !v.is_empty()) {
        let figures = measure(args, vendor, sim_port).await?;
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

/// One vendor's topics and database.
struct Run<'a> {
    vendor: &'a str,
    id: String,
    input: String,
    outcomes: String,
    dlq: String,
    db_url: String,
}

/// The window over committed successes: when it opened and closed, the successes, crm-sim's
/// counts and crm-sync's CPU seconds at both ends, crm-sync's peak RSS.
struct Window {
    t0: Instant,
    o0: f64,
    t1: Instant,
    o1: f64,
    c0: SimCounts,
    c1: SimCounts,
    cpu0: f64,
    cpu1: f64,
    peak_rss: f64,
}

/// One vendor: a fresh topic and database, crm-sync against crm-sim's dialect, a backlog of
/// events for shipments the CRM has not seen, and a window over committed successes.
///
/// Outcomes are committed per batch, so the window runs from one commit to a later one: it
/// opens at the first commit after the warm-up and closes at the first commit at least
/// `vendor_seconds` later (or when the backlog is drained).
async fn measure(args: &Args, vendor: &str, sim_port: u16) -> anyhow::Result<serde_json::Value> {
    let run = backlog(args, vendor).await?;
    let max_batch = args
        .vendor_max_batch
        .or_else(|| crm_vendors::default_max_batch(vendor));
    let chunk = max_batch.unwrap_or(2000).min(crm_vendors::CRM_BATCH_LIMIT);
    let metrics_port = free_port()?;
    let sync = spawn_sync(args, &run, sim_port, metrics_port, max_batch)?;
    let sync_pid = sync.id();
    let children = Children(vec![sync]);

    let client = reqwest::Client::new();
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
    let w = window(args, vendor, &client, metrics_port, sim_port, sync_pid).await?;
    drop(children);

    let out = figures(vendor, &w, max_batch, chunk, args.vendor_events as f64)?;
    drop_database(&args.pg, &format!("bench_{}", run.id)).await;
    Ok(out)
}

/// A fresh topic and database for `vendor`, and `--vendor-events` events in the topic.
async fn backlog<'a>(args: &Args, vendor: &'a str) -> anyhow::Result<Run<'a>> {
    let id = run_id();
    let run = Run {
        vendor,
        input: format!("bench.vendor.tracking.{id}"),
        outcomes: format!("bench.vendor.crm.sync.{id}"),
        dlq: format!("bench.vendor.dead.letters.{id}"),
        db_url: format!("{}/bench_{id}", args.pg),
        id,
    };
    let kafka = backbone_kafka::KafkaSettings {
        brokers: args.brokers.clone(),
        ..Default::default()
    };
    backbone_kafka::ensure_topics(&kafka, &[&run.input, &run.outcomes, &run.dlq], args.partitions).await?;
    let p = producer(&args.brokers, 20)?;
    let at = OffsetDateTime::now_utc().format(&Rfc3339)?;
    let id = &run.id;
    let records = (0..args.vendor_events).map(|i| {
        let shipment = format!("{vendor}-{id}-{i}");
        (
            shipment.clone(),
            event_json(&format!("ev-{id}-{i}"), &shipment, STATUSES[i % 4], &at),
        )
    });
    send_all(&p, &run.input, records, 50_000).await?;
    Ok(run)
}

/// crm-sync configured from `crm-sync.<vendor>.local.toml`, pointed at crm-sim's dialect.
fn spawn_sync(
    args: &Args,
    run: &Run<'_>,
    sim_port: u16,
    metrics_port: u16,
    max_batch: Option<usize>,
) -> anyhow::Result<Child> {
    let config = match run.vendor {
        "generic" => args.config_dir.join("crm-sync.local.toml"),
        v => args.config_dir.join(format!("crm-sync.{v}.local.toml")),
    };
    let sim = format!("http://127.0.0.1:{sim_port}");
    let mut env = vec![
        ("CRM_SYNC_KAFKA__BROKERS", args.brokers.clone()),
        ("CRM_SYNC_KAFKA__GROUP_ID", format!("bench-{}", run.id)),
        ("CRM_SYNC_KAFKA__INPUT_TOPIC", run.input.clone()),
        ("CRM_SYNC_KAFKA__OUTCOME_TOPIC", run.outcomes.clone()),
        ("CRM_SYNC_KAFKA__DEAD_LETTER_TOPIC", run.dlq.clone()),
        ("CRM_SYNC_POSTGRES__URL", run.db_url.clone()),
        ("CRM_SYNC_HTTP__LISTEN", format!("127.0.0.1:{metrics_port}")),
        ("RUST_LOG", "warn".into()),
        // The local files turn the two-way sync on for `make run`; this measures the parcel flow.
        ("CRM_SYNC_TWO_WAY__ENABLED", "false".into()),
    ];
    if let Some(b) = max_batch {
        env.push(("CRM_SYNC_PIPELINE__MAX_BATCH", b.to_string()));
    }
    match run.vendor {
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
    Ok(Command::new(sibling_bin("crm-sync", "crm-sync")?)
        .arg("--config")
        .arg(&config)
        .envs(env)
        .stdout(Stdio::null())
        .spawn()?)
}

/// Opens the window at a commit and closes it at the first commit at least a window later.
async fn window(
    args: &Args,
    vendor: &str,
    client: &reqwest::Client,
    metrics_port: u16,
    sim_port: u16,
    sync_pid: u32,
) -> anyhow::Result<Window> {
    let total = args.vendor_events as f64;
    let window = Duration::from_secs(args.vendor_seconds);
    let give_up = Instant::now() + window * 6 + Duration::from_secs(120);
    let poll = Duration::from_millis(50);
    let base = successes(client, metrics_port).await?;
    let (t0, o0) = loop {
        let o = successes(client, metrics_port).await?;
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
    let c0 = sim_counts(client, sim_port, vendor).await?;
    let (cpu0, _) = sync_usage(sync_pid)?;
    let (mut t1, mut o1) = (t0, o0);
    while o1 < total {
        let o = successes(client, metrics_port).await?;
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
    let c1 = sim_counts(client, sim_port, vendor).await?;
    let (cpu1, peak_rss) = sync_usage(sync_pid)?;
    Ok(Window {
        t0,
        o0,
        t1,
        o1,
        c0,
        c1,
        cpu0,
        cpu1,
        peak_rss,
    })
}

/// The vendor's report section.
fn figures(
    vendor: &str,
    w: &Window,
    max_batch: Option<usize>,
    chunk: usize,
    total: f64,
) -> anyhow::Result<serde_json::Value> {
    let secs = (w.t1 - w.t0).as_secs_f64();
    anyhow::ensure!(w.o1 > w.o0 && secs > 0.0, "{vendor}: no commit inside the window");
    let rate = (w.o1 - w.o0) / secs;
    let sim_secs = (w.c1.at - w.c0.at).as_secs_f64();
    let writes_per_s = (w.c1.writes - w.c0.writes) / sim_secs;
    let requests_per_s = (w.c1.requests - w.c0.requests) / sim_secs;
    let per_request = (w.c1.writes - w.c0.writes) / (w.c1.requests - w.c0.requests);
    let mut out = json!({
        "events_per_s": round(rate, 2),
        "window_s": round(secs, 2),
        "window_events": w.o1 - w.o0,
        "drained": w.o1 >= total,
        "max_batch": max_batch,
        "crm_sim_writes_per_s": round(writes_per_s, 1),
        "crm_sim_requests_per_s": round(requests_per_s, 2),
        "observed_records_per_request": round(per_request, 3),
        "cpu_seconds_per_1000_events": round((w.cpu1 - w.cpu0) / ((w.o1 - w.o0) / 1000.0), 3),
        "crm_sync_peak_rss_mib": round(w.peak_rss, 1),
        "limit": crm_vendors::limit_json(vendor, chunk),
    });
    if let Some((_, ceiling)) = crm_vendors::ceiling(vendor, chunk) {
        out["ceiling_events_per_s"] = json!(round(ceiling, 2));
        out["ratio_to_ceiling"] = json!(round(rate / ceiling, 3));
        out["limited_by"] = json!("the vendor's documented rate limit, enforced client-side by the adapter");
    } else {
        out["limited_by"] = json!("crm-sync and the machine (no client-side limit)");
    }
    Ok(out)
}
