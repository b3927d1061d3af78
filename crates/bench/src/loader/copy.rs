//! The baseline: PostgreSQL alone taking the same number of rows of the same width with `COPY`,
//! in a database of its own with the service's schema.

use super::Args;
use crate::gift::{random_codes, Service, ServiceSpec, CURRENCY, LOADER_TOKEN, NOMINAL_MINOR};
use crate::harness::drop_database;
use crate::report::round;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use std::path::Path;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// The service migrates the baseline's database and stores a few real rows, which give the widths
/// of the sealed CVC columns; then it is stopped and `COPY` runs alone. Returns the rate (rows/s)
/// and the report section.
pub(super) async fn baseline(args: &Args, id: &str, dir: &Path) -> anyhow::Result<(f64, Value)> {
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
    let sample = match service.wait_ready(&http, Duration::from_secs(120)).await {
        Ok(()) => upload_sample(&http, &service).await,
        Err(e) => Err(e),
    };
    let db_url = service.db_url.clone();
    service.stop();
    let copy = match sample {
        Ok(()) => copy_baseline(&db_url, args.count).await,
        Err(e) => Err(e),
    };
    if !args.keep_db {
        drop_database(&args.pg, &database).await;
    }
    copy
}

/// A few real rows, for the widths of the sealed CVC columns.
async fn upload_sample(http: &reqwest::Client, service: &Service) -> anyhow::Result<()> {
    let body = json!({"version": 1, "batch_id": "bench-width-sample", "job": 0, "certificates":
        random_codes(10).into_iter().map(|(code, cvc)|
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
