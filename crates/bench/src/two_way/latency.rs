//! From a change in our API to the CRM write, at a steady rate: `PUT /v1/clients/{id}` of a new
//! card, one client per change, sent open loop on a fixed schedule, with crm-sync running the
//! `relay` and `dispatcher` stages (the API in its own process). The CRM-write time is crm-sim's
//! record of the contact (`updated_at`, in milliseconds, of a contact written once); the lag is
//! from just before the request was sent. Baseline: the bare broker's produce-to-consume latency
//! at the same rate, measured first.

use super::{ms, Bench};
use crate::report::percentile;
use crate::sync::baselines::broker_latency;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// crm-sim's contacts whose external id starts with `prefix`: external id → (write time in
/// Unix nanoseconds, writes).
async fn contacts(b: &Bench<'_>, prefix: &str) -> anyhow::Result<HashMap<String, (i128, u64)>> {
    let list: Vec<Value> = b
        .http
        .get(format!("{}/sim/generic/contacts", b.sim_url))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(list
        .iter()
        .filter_map(|c| {
            let ext = c["external_id"].as_str()?;
            if !ext.starts_with(prefix) {
                return None;
            }
            let at = OffsetDateTime::parse(c["updated_at"].as_str()?, &Rfc3339).ok()?;
            Some((ext.to_owned(), (at.unix_timestamp_nanos(), c["writes"].as_u64()?)))
        })
        .collect())
}

async fn wait_contacts(
    b: &Bench<'_>,
    prefix: &str,
    count: usize,
    limit: Duration,
) -> anyhow::Result<HashMap<String, (i128, u64)>> {
    let started = Instant::now();
    loop {
        let seen = contacts(b, prefix).await?;
        if seen.len() >= count {
            return Ok(seen);
        }
        anyhow::ensure!(
            started.elapsed() < limit,
            "{} of {count} {prefix}* contacts reached crm-sim in {limit:?}",
            seen.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(super) async fn measure(b: &Bench<'_>) -> anyhow::Result<Value> {
    let (rate, seconds) = (b.args.rate, b.args.latency_seconds);
    println!("latency baseline: bare broker produce-to-consume at {rate} records/s for {seconds} s");
    let (broker_lags, broker_acks) =
        broker_latency(&b.args.brokers, &b.run.latency_topic, rate, seconds).await?;

    println!("latency: crm-sync with the relay and dispatcher stages; {rate} card changes/s for {seconds} s");
    let sync = b.spawn_sync("relay,dispatcher", &[]).await?;
    // The dispatcher has joined its group and written to the CRM before the measured changes.
    for i in 0..10 {
        b.put_card(&format!("warm-{i}"), "Warm").await?;
    }
    wait_contacts(b, "warm-", 10, Duration::from_secs(60)).await?;

    let count = (rate * seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let mut sends = Vec::with_capacity(count);
    for i in 0..count {
        tokio::time::sleep_until((start + interval * i as u32).into()).await;
        let (http, api) = (b.http.clone(), b.api.clone());
        sends.push(tokio::spawn(async move {
            let sent = OffsetDateTime::now_utc().unix_timestamp_nanos();
            let t0 = Instant::now();
            let client = format!("lat-{i:06}");
            super::put_card(&http, &api, &client, "Lat")
                .await
                .map(|()| (client, sent, t0.elapsed().as_secs_f64() * 1000.0))
        }));
    }
    let mut sent = Vec::with_capacity(count);
    let mut errors = 0usize;
    for s in sends {
        match s.await? {
            Ok(x) => sent.push(x),
            Err(e) => {
                errors += 1;
                if errors <= 3 {
                    println!("latency: a change failed: {e:#}");
                }
            }
        }
    }
    let written = wait_contacts(b, "lat-", sent.len(), Duration::from_secs(120)).await?;
    let rss = crate::procfs::memory_mib(sync.pid).map(|(hwm, _)| hwm);
    drop(sync);

    let mut lags = Vec::with_capacity(sent.len());
    let mut answers = Vec::with_capacity(sent.len());
    let mut rewritten = 0usize;
    for (client, at, answer) in &sent {
        answers.push(*answer);
        if let Some((written_at, writes)) = written.get(client) {
            if *writes > 1 {
                rewritten += 1;
            }
            lags.push((written_at - at) as f64 / 1e6);
        }
    }
    lags.sort_by(f64::total_cmp);
    answers.sort_by(f64::total_cmp);
    Ok(json!({
        "rate_changes_per_s": rate,
        "seconds": seconds,
        "changes": count,
        "errors": errors,
        "samples": lags.len(),
        "contacts_written_more_than_once": rewritten,
        "api_to_crm_p50_ms": ms(percentile(&lags, 0.50)),
        "api_to_crm_p99_ms": ms(percentile(&lags, 0.99)),
        "api_to_crm_max_ms": ms(lags.last().copied().unwrap_or(f64::NAN)),
        "api_answer_p50_ms": ms(percentile(&answers, 0.50)),
        "api_answer_p99_ms": ms(percentile(&answers, 0.99)),
        "baseline_broker_p50_ms": ms(percentile(&broker_lags, 0.50)),
        "baseline_broker_p99_ms": ms(percentile(&broker_lags, 0.99)),
        "baseline_broker_produce_ack_p50_ms": ms(percentile(&broker_acks, 0.50)),
        "baseline_broker_produce_ack_p99_ms": ms(percentile(&broker_acks, 0.99)),
        "relay_dispatcher_peak_rss_mib": rss.map(|m| crate::report::round(m, 1)),
    }))
}
