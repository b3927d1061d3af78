//! The crm-sync benchmark's baselines: a bare consumer reading the same topic, the broker's own
//! produce-to-consume latency, and PostgreSQL alone taking the rows crm-sync writes.

use crate::paced;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;
use sqlx::{Connection, PgConnection};
use std::time::{Duration, Instant};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Reads `count` messages from `topic` with a bare consumer; returns messages/s and the payloads
/// if `keep` is set.
pub(super) fn bare_consume(
    brokers: &str,
    topic: &str,
    count: usize,
    keep: bool,
) -> anyhow::Result<(f64, Vec<Vec<u8>>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-bare-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut seen = 0;
    let mut kept = Vec::new();
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen < count {
        anyhow::ensure!(
            Instant::now() < deadline,
            "bare consumer stalled at {seen}/{count}"
        );
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m?;
            started.get_or_insert_with(Instant::now);
            seen += 1;
            if keep {
                kept.push(m.payload().unwrap_or_default().to_vec());
            }
        }
    }
    let secs = started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(f64::NAN);
    Ok((count as f64 / secs, kept))
}

/// Produce-to-consume latency of the broker alone at the steady rate: a bare consumer reads
/// records stamped at send time. Returns the sorted latencies in milliseconds.
pub(crate) async fn broker_latency(
    brokers: &str,
    topic: &str,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let total = (rate * seconds) as usize;
    let (b, t) = (brokers.to_owned(), topic.to_owned());
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<f64>> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &b)
            .set("group.id", format!("bench-latency-{}", uuid::Uuid::new_v4()))
            .set("auto.offset.reset", "latest")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "5")
            .set("fetch.error.backoff.ms", "10")
            .create()?;
        consumer.subscribe(&[t.as_str()])?;
        // Join the group before the first record is sent.
        let ready = Instant::now();
        while consumer.assignment().map(|a| a.count()).unwrap_or(0) == 0
            && ready.elapsed() < Duration::from_secs(20)
        {
            consumer.poll(Duration::from_millis(50));
        }
        let mut lags = Vec::with_capacity(total);
        let deadline = Instant::now() + Duration::from_secs(seconds + 60);
        while lags.len() < total && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                let sent: i128 = std::str::from_utf8(m.payload().unwrap_or_default())?.parse()?;
                let now = OffsetDateTime::now_utc().unix_timestamp_nanos();
                lags.push((now - sent) as f64 / 1e6);
            }
        }
        Ok(lags)
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let acks = paced(brokers, topic, rate, total, |i| {
        (
            format!("k{}", i % 64),
            OffsetDateTime::now_utc().unix_timestamp_nanos().to_string(),
        )
    })
    .await?;
    let mut lags = reader.await??;
    lags.sort_by(f64::total_cmp);
    let mut acks = acks;
    acks.sort_by(f64::total_cmp);
    Ok((lags, acks))
}

/// COPYs the rows one run writes per event (a log row and a processed row) into scratch copies.
pub(super) async fn copy_baseline(db_url: &str, events: usize) -> anyhow::Result<f64> {
    let mut conn = PgConnection::connect(db_url).await?;
    for (scratch, table) in [
        ("scratch_log", "integrations_log"),
        ("scratch_processed", "processed_events"),
    ] {
        sqlx::query(&format!("DROP TABLE IF EXISTS {scratch}"))
            .execute(&mut conn)
            .await?;
        sqlx::query(&format!("CREATE TABLE {scratch} (LIKE {table} INCLUDING ALL)"))
            .execute(&mut conn)
            .await?;
    }
    let now = OffsetDateTime::now_utc().format(&Rfc3339)?;
    let mut log = String::with_capacity(events * 400);
    let mut processed = String::with_capacity(events * 40);
    for i in 0..events {
        let payload = format!(
            r#"{{"clientId":"client-ship-{i}","shipmentId":"ship-{i}","status":"in_transit","timestamp":"{now}","eventId":"ev-{i}"}}"#
        );
        log.push_str(&format!(
            "ev-{i}\tship-{i}\tclient-ship-{i}\tev-{i}\t{payload}\t200\t{{}}\tsuccess\t1\t\\N\t{now}\t{now}\t1.5\ttracking.events\t{}\t{i}\n",
            i % 6
        ));
        processed.push_str(&format!("ev-{i}\tsuccess\t0\t{now}\n"));
    }
    let started = Instant::now();
    let mut tx = conn.begin().await?;
    let mut copy = tx
        .copy_in_raw(
            "COPY scratch_log (event_id, shipment_id, client_id, correlation_id, payload, http_status, response_excerpt,
             outcome, attempt, error, event_time, sent_at, latency_ms, source_topic, source_partition, source_offset)
             FROM STDIN",
        )
        .await?;
    copy.send(log.as_bytes()).await?;
    copy.finish().await?;
    let mut copy = tx
        .copy_in_raw("COPY scratch_processed (event_id, outcome, replay_count, updated_at) FROM STDIN")
        .await?;
    copy.send(processed.as_bytes()).await?;
    copy.finish().await?;
    tx.commit().await?;
    Ok(events as f64 / started.elapsed().as_secs_f64())
}
