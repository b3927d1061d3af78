//! Webhook intake: `POST /webhooks/generic` with a correctly signed body (`X-Signature` v2 over
//! the request with the webhook secret, a fresh nonce, the current timestamp) and a distinct
//! `deliveryId` each, from `--connections` concurrent keep-alive connections, as fast as they are
//! answered. Each is verified, stored in `crm_webhook` with its `crm.incoming` outbox row (one
//! transaction) and acknowledged (`202`) by the crm-sync process running only the `api` stage.
//! Baseline: a bare axum endpoint in this process answering `200` to the same requests from the
//! same load generator. Afterwards the stored rows are counted against the acknowledged requests.

use super::{Bench, SyncProcess, HOOK_SECRET};
use crate::procfs::{CpuSnapshot, Stack};
use crate::report::round;
use backbone_crm::signing::{self, SignedParts};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const TARGET: &str = "/webhooks/generic";

/// One signed webhook of the generic CRM: (body, timestamp, nonce, signature).
fn signed_webhook(n: u64) -> (Vec<u8>, String, String, String) {
    let body = serde_json::to_vec(&json!({
        "deliveryId": uuid::Uuid::new_v4().to_string(),
        "event": "contact.updated",
        "entity": "contact",
        "id": format!("ct-{n}"),
        "externalId": format!("hook-{n}"),
        "occurredAt": OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default(),
    }))
    .unwrap_or_default();
    let timestamp = OffsetDateTime::now_utc().unix_timestamp().to_string();
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let signature = signing::sign(
        HOOK_SECRET.as_bytes(),
        &SignedParts {
            method: "POST",
            target: TARGET,
            timestamp: &timestamp,
            nonce: &nonce,
            body: &body,
        },
    );
    (body, timestamp, nonce, signature)
}

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    errors: AtomicU64,
    sent: AtomicU64,
}

/// What one load run measured.
struct Load {
    requests_per_s: f64,
    /// Acknowledged with the expected status over the whole run (warm-up included).
    acknowledged: u64,
    errors: u64,
    first_error: Option<String>,
    cpu: BTreeMap<String, f64>,
    in_window: f64,
}

async fn worker(
    http: reqwest::Client,
    url: String,
    expect: StatusCode,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    first_error: Arc<std::sync::Mutex<Option<String>>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let n = counters.sent.fetch_add(1, Ordering::Relaxed);
        let (body, timestamp, nonce, signature) = signed_webhook(n);
        let result = http
            .post(&url)
            .header("content-type", "application/json")
            .header(signing::TIMESTAMP_HEADER, timestamp)
            .header(signing::NONCE_HEADER, nonce)
            .header(signing::SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await;
        let failure = match result {
            Ok(r) if r.status() == expect => {
                // The whole answer is read, as a CRM's client would.
                match r.bytes().await {
                    Ok(_) => None,
                    Err(e) => Some(e.to_string()),
                }
            }
            Ok(r) => Some(format!("status {}", r.status())),
            Err(e) => Some(e.to_string()),
        };
        match failure {
            None => {
                counters.ok.fetch_add(1, Ordering::Relaxed);
            }
            Some(e) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                first_error
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get_or_insert(e);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// `connections` workers against `url` for the warm-up and the measured window.
async fn load(b: &Bench<'_>, url: &str, expect: StatusCode, stack: &Stack) -> anyhow::Result<Load> {
    let args = b.args;
    let http = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(args.connections)
        .timeout(Duration::from_secs(30))
        .build()?;
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let first_error = Arc::new(std::sync::Mutex::new(None));
    let workers: Vec<_> = (0..args.connections)
        .map(|_| {
            tokio::spawn(worker(
                http.clone(),
                url.to_owned(),
                expect,
                counters.clone(),
                stop.clone(),
                first_error.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(args.intake_warmup_seconds)).await;
    let (ok0, cpu0, t0) = (
        counters.ok.load(Ordering::Relaxed),
        CpuSnapshot::take(),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(args.intake_seconds)).await;
    let (ok1, cpu1, secs) = (
        counters.ok.load(Ordering::Relaxed),
        CpuSnapshot::take(),
        t0.elapsed().as_secs_f64(),
    );
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await?;
    }
    let in_window = (ok1 - ok0) as f64;
    let first_error = first_error
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    Ok(Load {
        requests_per_s: in_window / secs,
        acknowledged: counters.ok.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
        first_error,
        cpu: cpu0.used_until(&cpu1, stack),
        in_window,
    })
}

/// CPU microseconds per request by component.
fn cpu_per_request(l: &Load) -> Value {
    l.cpu
        .iter()
        .map(|(g, s)| (g.clone(), json!(round(s / l.in_window.max(1.0) * 1e6, 1))))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// A bare axum endpoint answering `200` to any `POST /webhooks/generic`, body read.
async fn bare_endpoint() -> anyhow::Result<String> {
    use axum::routing::post;
    let app = axum::Router::new().route(
        TARGET,
        post(|body: axum::body::Bytes| async move {
            drop(body);
            axum::http::StatusCode::OK
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}{TARGET}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

pub(super) async fn measure(b: &Bench<'_>, api: &SyncProcess) -> anyhow::Result<Value> {
    let args = b.args;
    let mut conn = PgConnection::connect(&b.run.db_url).await?;
    let webhooks0: i64 = sqlx::query_scalar("SELECT count(*) FROM crm_webhook")
        .fetch_one(&mut conn)
        .await?;
    let outbox0: i64 = sqlx::query_scalar("SELECT count(*) FROM crm_outbox WHERE topic = 'crm.incoming'")
        .fetch_one(&mut conn)
        .await?;

    println!(
        "intake baseline: bare axum endpoint in this process, {} connections, {} s warm-up + {} s",
        args.connections, args.intake_warmup_seconds, args.intake_seconds
    );
    let bare_url = bare_endpoint().await?;
    let bench_only = Stack {
        databases: vec![b.run.database.clone()],
        broker: Some(args.brokers.clone()),
        ..Stack::default()
    };
    let bare = load(b, &bare_url, StatusCode::OK, &bench_only).await?;

    println!(
        "intake: crm-sync with only the api stage, signed generic webhooks, {} connections, {} s warm-up + {} s",
        args.connections, args.intake_warmup_seconds, args.intake_seconds
    );
    let stack = Stack {
        service_pid: Some(api.pid),
        service_name: Some("crm_sync_api"),
        databases: vec![b.run.database.clone()],
        broker: Some(args.brokers.clone()),
    };
    let ours = load(b, &format!("{}{TARGET}", b.api), StatusCode::ACCEPTED, &stack).await?;
    if let Some(e) = &ours.first_error {
        println!("intake: {} requests failed, the first: {e}", ours.errors);
    }

    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM crm_webhook")
        .fetch_one(&mut conn)
        .await?;
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM crm_outbox WHERE topic = 'crm.incoming'")
        .fetch_one(&mut conn)
        .await?;
    let (stored, outbox) = (stored - webhooks0, outbox - outbox0);
    let verified = stored == ours.acknowledged as i64 && outbox == stored;
    if !verified {
        println!(
            "intake: NOT VERIFIED: {} acknowledged, {stored} webhooks stored, {outbox} outbox rows",
            ours.acknowledged
        );
    }
    let (hwm, _) = crate::procfs::memory_mib(api.pid).unwrap_or((f64::NAN, f64::NAN));
    Ok(json!({
        "connections": args.connections,
        "seconds": args.intake_seconds,
        "requests_per_s": ours.requests_per_s.round(),
        "acknowledged": ours.acknowledged,
        "errors": ours.errors,
        "first_error": ours.first_error,
        "stored_webhooks": stored,
        "stored_outbox_rows": outbox,
        "verified": verified,
        "cpu_us_per_request": cpu_per_request(&ours),
        "api_peak_rss_mib": round(hwm, 1),
        "baseline_bare_axum_requests_per_s": bare.requests_per_s.round(),
        "baseline_errors": bare.errors,
        "baseline_cpu_us_per_request": cpu_per_request(&bare),
        "ratio_intake_to_bare_axum": round(ours.requests_per_s / bare.requests_per_s, 3),
    }))
}
