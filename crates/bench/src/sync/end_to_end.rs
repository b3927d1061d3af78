//! The generic end-to-end run: crm-sync draining a backlog against crm-sim's generic API, then
//! the lag at a steady rate, with the broker and PostgreSQL baselines of the same run.

use super::baselines::{bare_consume, broker_latency, copy_baseline};
use super::{all_outcomes, spawn_crm_sim, sync_usage, wait_for_outcomes, Args, SECRET, TOKEN};
use crate::harness::{drop_database, free_port, run_id, sibling_bin, Children};
use crate::report::percentile;
use crate::{event_json, paced, producer, send_all, STATUSES};
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Names of one run's topics and database.
struct Run {
    id: String,
    input: String,
    outcomes: String,
    latency_topic: String,
    dlq: String,
    db_url: String,
}

/// crm-sync and the crm-sim it writes to, running.
struct Stack {
    children: Children,
    client: reqwest::Client,
    sync_pid: u32,
    metrics_port: u16,
}

/// Event-to-CRM lags of the latency phase in ms, sorted, and crm-sync's peak RSS after it.
struct Lags {
    lags: Vec<f64>,
    after_ack: Vec<f64>,
    peak_rss: f64,
}

pub(super) async fn measure(args: &Args, mock: Option<&super::Mock>) -> anyhow::Result<serde_json::Value> {
    let id = run_id();
    let run = Run {
        input: format!("bench.tracking.{id}"),
        outcomes: format!("bench.crm.sync.{id}"),
        latency_topic: format!("bench.latency.{id}"),
        dlq: format!("bench.dead.letters.{id}"),
        db_url: format!("{}/bench_{id}", args.pg),
        id,
    };
    super::create_topics(
        &args.brokers,
        mock,
        &[&run.input, &run.outcomes, &run.dlq, &run.latency_topic],
        args.partitions,
    )
    .await?;

    println!(
        "baseline: broker produce-to-consume latency at {} events/s",
        args.rate
    );
    let (broker_lags, broker_acks) =
        broker_latency(&args.brokers, &run.latency_topic, args.rate, args.latency_seconds).await?;
    produce(args, &run.input).await?;
    println!("baseline: bare consumer");
    let (bare_rate, _) = {
        let (b, t) = (args.brokers.clone(), run.input.clone());
        let n = args.events;
        tokio::task::spawn_blocking(move || bare_consume(&b, &t, n, false)).await??
    };
    let stack = start(args, &run)?;
    let (e2e_rate, cpu_per_1000) = drain(args, &stack).await?;
    let lags = latency(args, &run, &stack).await?;
    drop(stack.children);

    println!("baseline: PostgreSQL COPY of the same rows");
    let copy_rate = copy_baseline(&run.db_url, args.events).await?;
    let lower = bare_rate.min(copy_rate);
    let ms = |sorted: &[f64], p: f64| (percentile(sorted, p) * 100.0).round() / 100.0;
    let report = json!({
        "events": args.events,
        "partitions": args.partitions,
        "end_to_end_events_per_s": e2e_rate.round(),
        "baseline_bare_consumer_msgs_per_s": bare_rate.round(),
        "baseline_pg_copy_events_per_s": copy_rate.round(),
        "ratio_end_to_end_to_lower_baseline": (e2e_rate / lower * 1000.0).round() / 1000.0,
        "cpu_seconds_per_1000_events": (cpu_per_1000 * 1000.0).round() / 1000.0,
        "crm_sync_peak_rss_mib": (lags.peak_rss * 10.0).round() / 10.0,
        "latency_rate_events_per_s": args.rate,
        "latency_samples": lags.lags.len(),
        "lag_p50_ms": ms(&lags.lags, 0.50),
        "lag_p99_ms": ms(&lags.lags, 0.99),
        "lag_after_broker_ack_p50_ms": ms(&lags.after_ack, 0.50),
        "lag_after_broker_ack_p99_ms": ms(&lags.after_ack, 0.99),
        "baseline_broker_p50_ms": ms(&broker_lags, 0.50),
        "baseline_broker_p99_ms": ms(&broker_lags, 0.99),
        "baseline_broker_produce_ack_p50_ms": ms(&broker_acks, 0.50),
        "baseline_broker_produce_ack_p99_ms": ms(&broker_acks, 0.99),
        "targets": {"end_to_end_events_per_s": 50_000, "ratio": 0.2, "lag_p99_ms": 10, "peak_rss_mib": 256},
    });
    drop_database(&args.pg, &format!("bench_{}", run.id)).await;
    Ok(report)
}

/// The backlog crm-sync drains: `--events` events, one shipment each.
async fn produce(args: &Args, input: &str) -> anyhow::Result<()> {
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
    send_all(&p, input, records, 50_000).await
}

/// crm-sim, and crm-sync configured by environment against its generic API.
fn start(args: &Args, run: &Run) -> anyhow::Result<Stack> {
    let sim_port = free_port()?;
    let metrics_port = free_port()?;
    let mut children = Children(Vec::new());
    children.0.push(spawn_crm_sim(sim_port, None)?);
    let env = [
        ("CRM_SYNC_KAFKA__BROKERS", args.brokers.clone()),
        ("CRM_SYNC_KAFKA__GROUP_ID", format!("bench-{}", run.id)),
        ("CRM_SYNC_KAFKA__INPUT_TOPIC", run.input.clone()),
        ("CRM_SYNC_KAFKA__OUTCOME_TOPIC", run.outcomes.clone()),
        ("CRM_SYNC_KAFKA__DEAD_LETTER_TOPIC", run.dlq.clone()),
        ("CRM_SYNC_POSTGRES__URL", run.db_url.clone()),
        (
            "CRM_SYNC_CRM__GENERIC__BASE_URL",
            format!("http://127.0.0.1:{sim_port}"),
        ),
        ("CRM_SYNC_CRM__GENERIC__TOKEN", TOKEN.into()),
        ("CRM_SYNC_CRM__GENERIC__SIGNING_SECRET", SECRET.into()),
        ("CRM_SYNC_HTTP__LISTEN", format!("127.0.0.1:{metrics_port}")),
        ("RUST_LOG", "warn".into()),
    ];
    let sync = Command::new(sibling_bin("crm-sync", "crm-sync")?)
        .envs(env)
        .stdout(Stdio::null())
        .spawn()?;
    let sync_pid = sync.id();
    children.0.push(sync);
    Ok(Stack {
        children,
        client: reqwest::Client::new(),
        sync_pid,
        metrics_port,
    })
}

/// End-to-end events/s from the first outcome to the last, and CPU seconds per event.
async fn drain(args: &Args, stack: &Stack) -> anyhow::Result<(f64, f64)> {
    println!("end to end: crm-sync draining {} events", args.events);
    let client = &stack.client;
    let port = stack.metrics_port;
    let target = args.events as f64;
    let first = wait_for_outcomes(client, port, 1.0, Duration::from_secs(120)).await?;
    let first_count = all_outcomes(client, port).await?;
    let (cpu0, _) = sync_usage(stack.sync_pid)?;
    let end = wait_for_outcomes(client, port, target, Duration::from_secs(900)).await?;
    let (cpu1, _) = sync_usage(stack.sync_pid)?;
    let secs = (end - first).as_secs_f64();
    let e2e_rate = (target - first_count) / secs;
    let cpu_per_1000 = (cpu1 - cpu0) / ((target - first_count) / 1000.0);
    Ok((e2e_rate, cpu_per_1000))
}

/// Events at a steady rate after the backlog; their lags from the outcomes crm-sync published.
async fn latency(args: &Args, run: &Run, stack: &Stack) -> anyhow::Result<Lags> {
    println!("latency: {} events/s for {} s", args.rate, args.latency_seconds);
    let lat_events = (args.rate * args.latency_seconds) as usize;
    let event_acks = paced(&args.brokers, &run.input, args.rate, lat_events, |i| {
        let shipment = format!("lat-ship-{i}");
        let at = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
        let doc = event_json(&format!("lat-{i}"), &shipment, "IN_TRANSIT", &at);
        (shipment, doc)
    })
    .await?;
    wait_for_outcomes(
        &stack.client,
        stack.metrics_port,
        args.events as f64 + lat_events as f64,
        Duration::from_secs(120),
    )
    .await?;
    let (_, peak_rss) = sync_usage(stack.sync_pid)?;

    let (_, payloads) = {
        let (b, t) = (args.brokers.clone(), run.outcomes.clone());
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
    Ok(Lags {
        lags,
        after_ack,
        peak_rss,
    })
}
