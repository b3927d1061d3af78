//! Cached balance checks: many clients over a small set of certificates, served from Redis.

use super::api::{Api, Errors};
use super::{cpu_report, Args, Bench};
use crate::procfs::CpuSnapshot;
use crate::report::{metric_sum, round};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) struct Balance {
    checks: f64,
    pub(super) checks_per_s: f64,
    /// The same clients against a bare axum endpoint of the route in this process.
    pub(super) bare_checks_per_s: f64,
    hits: f64,
    misses: f64,
    cpu: BTreeMap<String, f64>,
    errors: Value,
}

/// Checks until `stop`, starting at the `first` certificate of `set`.
async fn checker(
    api: Api,
    set: Arc<Vec<(String, String)>>,
    first: usize,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    errors: Arc<Errors>,
) {
    let mut i = first;
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
}

fn spawn_checkers(
    api: &Api,
    set: &Arc<Vec<(String, String)>>,
    clients: usize,
    stop: &Arc<AtomicBool>,
    done: &Arc<AtomicU64>,
    errors: &Arc<Errors>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            tokio::spawn(checker(
                api.clone(),
                set.clone(),
                c,
                stop.clone(),
                done.clone(),
                errors.clone(),
            ))
        })
        .collect()
}

/// The baseline: the same clients, warm-up and time against an axum endpoint of the same route
/// in this process that answers a fixed body of the same size at once (no auth, no Redis): what
/// one HTTP round trip per check costs on this machine.
async fn bare_axum(b: &Bench<'_>, set: &Arc<Vec<(String, String)>>) -> anyhow::Result<f64> {
    let args = b.args;
    const BODY: &str = r#"{"certificate_id":"0193f7a2-6c1e-7cc0-9a43-2b1f0c9d8e7f","code_last4":"K7QZ","state":"Active","currency":"RUB","balance_minor":500000,"available_minor":500000}"#;
    let app = axum::Router::new().route(
        "/certificates/{code}/balance",
        axum::routing::get(|| async { ([(axum::http::header::CONTENT_TYPE, "application/json")], BODY) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    println!(
        "baseline: bare axum balance endpoint, {} clients, {} s warm-up + {} s",
        args.balance_clients, args.warmup_seconds, args.seconds
    );
    let api = Api {
        http: b.http.clone(),
        base,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Errors::default());
    let checkers = spawn_checkers(&api, set, args.balance_clients, &stop, &done, &errors);
    tokio::time::sleep(Duration::from_secs(args.warmup_seconds)).await;
    let (n0, t0) = (done.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let (n1, t1) = (done.load(Ordering::Relaxed), Instant::now());
    stop.store(true, Ordering::Relaxed);
    for c in checkers {
        c.await?;
    }
    server.abort();
    Ok((n1 - n0) as f64 / (t1 - t0).as_secs_f64())
}

fn cache_results(metrics: &str, result: &str) -> f64 {
    metric_sum(
        metrics,
        "gift_certificates_balance_cache_total",
        &format!("result=\"{result}\""),
    )
}

pub(super) async fn measure(b: &Bench<'_>, certificates: &[(String, String)]) -> anyhow::Result<Balance> {
    let args = b.args;
    println!(
        "balance: {} clients over {} certificates, {} s warm-up + {} s",
        args.balance_clients, args.balance_certificates, args.warmup_seconds, args.seconds
    );
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Errors::default());
    let set = Arc::new(certificates.to_vec());
    let checkers = spawn_checkers(b.api, &set, args.balance_clients, &stop, &done, &errors);
    tokio::time::sleep(Duration::from_secs(args.warmup_seconds)).await;
    let m0 = b.service.metrics(b.http).await?;
    let cpu0 = CpuSnapshot::take();
    let (n0, t0) = (done.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let (n1, t1) = (done.load(Ordering::Relaxed), Instant::now());
    let cpu1 = CpuSnapshot::take();
    let m1 = b.service.metrics(b.http).await?;
    stop.store(true, Ordering::Relaxed);
    for c in checkers {
        c.await?;
    }
    let checks = (n1 - n0) as f64;
    let bare_checks_per_s = bare_axum(b, &set).await?;
    Ok(Balance {
        checks,
        checks_per_s: checks / (t1 - t0).as_secs_f64(),
        bare_checks_per_s,
        hits: cache_results(&m1, "hit") - cache_results(&m0, "hit"),
        misses: cache_results(&m1, "miss") - cache_results(&m0, "miss"),
        cpu: cpu0.used_until(&cpu1, b.stack),
        errors: errors.report(),
    })
}

impl Balance {
    pub(super) fn json(&self, args: &Args) -> Value {
        json!({
            "clients": args.balance_clients,
            "certificates": args.balance_certificates,
            "checks_per_s": round(self.checks_per_s, 0),
            "bare_axum_checks_per_s": round(self.bare_checks_per_s, 0),
            "ratio_to_bare_axum": round(self.checks_per_s / self.bare_checks_per_s.max(1.0), 3),
            "errors": self.errors,
            "cache_hits": self.hits,
            "cache_misses": self.misses,
            "cpu_seconds_per_1000_checks": cpu_report(&self.cpu, self.checks / 1000.0),
        })
    }
}
