//! The outbox relay: `crm_outbox` pre-filled with `--relay-rows` rows of the shape the API
//! writes (one real row, taken from a card change through the API, repeated for distinct
//! clients) while no relay runs; then a crm-sync process with only the `relay` stage drains it.
//! Rows/s from its first published row to its last (`crm_sync_outbox_published_total`), checked
//! against the table (empty) and the topic (one record per row). Baseline: `COPY` of the same rows
//! into a scratch `LIKE crm_outbox INCLUDING ALL`.

use super::Bench;
use crate::procfs::{CpuSnapshot, Stack};
use crate::report::round;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use std::time::{Duration, Instant};

/// A value in `COPY ... FROM STDIN` text format.
fn copy_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 8);
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// `COPY` of `rows` (topic, key, payload, headers) into `table`; rows/s.
async fn copy_rows(conn: &mut PgConnection, table: &str, rows: &str, count: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut tx = conn.begin().await?;
    let mut copy = tx
        .copy_in_raw(&format!("COPY {table} (topic, key, payload, headers) FROM STDIN"))
        .await?;
    copy.send(rows.as_bytes()).await?;
    copy.finish().await?;
    tx.commit().await?;
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// Records in `topic`, read from the start with a bare consumer until `expected` were read or
/// none came for 5 s (the local broker's high watermarks are not exact enough to count with).
fn records_in(brokers: &str, topic: &str, expected: usize) -> anyhow::Result<usize> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-count-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut seen = 0;
    let mut last = Instant::now();
    while seen < expected && last.elapsed() < Duration::from_secs(5) {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            m?;
            seen += 1;
            last = Instant::now();
        }
    }
    Ok(seen)
}

pub(super) async fn measure(b: &Bench<'_>) -> anyhow::Result<Value> {
    let n = b.args.relay_rows;
    let mut conn = PgConnection::connect(&b.run.db_url).await?;
    // One row as the API writes it: a card change.
    let seed = format!("seed-{}", b.run.id);
    b.put_card(&seed, "Seed").await?;
    let (topic, payload, headers): (String, String, String) = sqlx::query_as(
        "SELECT topic, payload::text, headers::text FROM crm_outbox WHERE key = $1 ORDER BY id LIMIT 1",
    )
    .bind(&seed)
    .fetch_one(&mut conn)
    .await?;
    sqlx::query("DELETE FROM crm_outbox").execute(&mut conn).await?;
    let mut rows = String::with_capacity(n * (payload.len() + headers.len() + 64));
    for i in 0..n {
        let key = format!("relay-{i:07}");
        rows.push_str(&copy_escape(&topic));
        rows.push('\t');
        rows.push_str(&key);
        rows.push('\t');
        rows.push_str(&copy_escape(&payload.replace(&seed, &key)));
        rows.push('\t');
        rows.push_str(&copy_escape(&headers));
        rows.push('\n');
    }
    println!(
        "relay: pre-filling crm_outbox with {n} rows ({} bytes of payload each), no relay running",
        payload.len()
    );
    let prefill_rate = copy_rows(&mut conn, "crm_outbox", &rows, n).await?;
    sqlx::query("ANALYZE crm_outbox").execute(&mut conn).await?;

    println!("relay: crm-sync with only the relay stage, draining");
    let mut relay = b
        .spawn_sync(
            "relay",
            &[("CRM_SYNC_TWO_WAY__OUTGOING_TOPIC", b.run.relay_outgoing.clone())],
        )
        .await?;
    let published = "crm_sync_outbox_published_total";
    let started = Instant::now();
    let (first_at, first_count, cpu0, relay_cpu0) = loop {
        let count = relay.metric(&b.http, published).await.unwrap_or(0.0);
        if count > 0.0 {
            break (
                Instant::now(),
                count,
                CpuSnapshot::take(),
                crate::procfs::cpu_seconds(relay.pid).unwrap_or(f64::NAN),
            );
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the relay published nothing in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let end_at = loop {
        let count = relay.metric(&b.http, published).await.unwrap_or(0.0);
        if count >= n as f64 {
            break Instant::now();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the relay published {count} of {n} rows in 600 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let cpu1 = CpuSnapshot::take();
    let relay_cpu1 = crate::procfs::cpu_seconds(relay.pid).unwrap_or(f64::NAN);
    let relay_rss = crate::procfs::memory_mib(relay.pid).map(|(hwm, _)| hwm);
    let secs = (end_at - first_at).as_secs_f64();
    let rate = (n as f64 - first_count) / secs;
    relay.stop();

    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM crm_outbox")
        .fetch_one(&mut conn)
        .await?;
    let (brokers, t) = (b.args.brokers.clone(), b.run.relay_outgoing.clone());
    let in_topic = tokio::task::spawn_blocking(move || records_in(&brokers, &t, n)).await??;
    let verified = left == 0 && in_topic == n;
    if !verified {
        println!("relay: NOT VERIFIED: {left} rows left in crm_outbox, {in_topic} records in the topic for {n} rows");
    }

    println!("relay baseline: COPY of the same {n} rows into a scratch copy of crm_outbox");
    sqlx::query("DROP TABLE IF EXISTS bench_outbox_copy")
        .execute(&mut conn)
        .await?;
    sqlx::query("CREATE TABLE bench_outbox_copy (LIKE crm_outbox INCLUDING ALL)")
        .execute(&mut conn)
        .await?;
    let copy_rate = copy_rows(&mut conn, "bench_outbox_copy", &rows, n).await?;
    sqlx::query("DROP TABLE bench_outbox_copy")
        .execute(&mut conn)
        .await?;

    let stack = Stack {
        service_pid: Some(relay.pid),
        service_name: Some("crm_sync_relay"),
        databases: vec![b.run.database.clone()],
        broker: Some(b.args.brokers.clone()),
    };
    let drained = n as f64 - first_count;
    let cpu: serde_json::Map<String, Value> = cpu0
        .used_until(&cpu1, &stack)
        .into_iter()
        .map(|(group, s)| (group, json!(round(s / drained * 1_000_000.0, 1))))
        .collect();
    Ok(json!({
        "rows": n,
        "payload_bytes": payload.len(),
        "rows_per_s": rate.round(),
        "drain_seconds": round(secs, 2),
        "verified": verified,
        "rows_left": left,
        "records_in_topic": in_topic,
        "baseline_pg_copy_rows_per_s": copy_rate.round(),
        "ratio_relay_to_copy": round(rate / copy_rate, 3),
        "prefill_copy_into_crm_outbox_rows_per_s": prefill_rate.round(),
        "relay_cpu_ms_per_1000_rows": round((relay_cpu1 - relay_cpu0) / drained * 1_000_000.0, 1),
        "cpu_us_per_row": cpu,
        "relay_peak_rss_mib": relay_rss.map(|m| round(m, 1)),
    }))
}

#[cfg(test)]
mod tests {
    use super::copy_escape;

    #[test]
    fn copy_text_escapes_backslashes_and_separators() {
        assert_eq!(
            copy_escape(r#"{"a":"x\"y","b":"1\t2"}"#),
            r#"{"a":"x\\"y","b":"1\\t2"}"#
        );
        assert_eq!(copy_escape("a\tb\nc\\d"), "a\\tb\\nc\\\\d");
    }
}
