//! Throughput: authorize + capture pairs as fast as they complete, every client on its own
//! certificates.

use super::api::{Api, Errors};
use super::{cpu_report, Args, Bench};
use crate::procfs::CpuSnapshot;
use crate::report::{mean, metric_sum, round};
use serde_json::{json, Value};
use sqlx::Connection;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One completed pair: when it completed, authorize and capture latency (ms).
type PairSample = (Instant, f64, f64);

pub(super) struct Throughput {
    pub(super) pairs: f64,
    pub(super) pairs_per_s: f64,
    pub(super) authorize_http_ms: f64,
    pub(super) capture_http_ms: f64,
    pub(super) authorize_storage_ms: f64,
    pub(super) capture_storage_ms: f64,
    pub(super) cpu: BTreeMap<String, f64>,
    /// WAL PostgreSQL wrote in the window (the whole server), bytes.
    pub(super) wal_bytes: f64,
    /// Operations per group commit in the window, mean.
    pub(super) group_size: f64,
    events_published: f64,
    errors: Value,
}

/// Pairs until `stop`, one client on its certificates.
pub(super) async fn pair_client(
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

/// Mean operation storage time (the repository's transaction, pool wait included) of a route in
/// ms, from the service's histogram between two scrapes.
pub(super) fn storage_mean_ms(before: &str, after: &str, route: &str) -> f64 {
    let label = format!("route=\"{route}\"");
    let sum = "gift_certificates_operation_seconds_sum";
    let count = "gift_certificates_operation_seconds_count";
    let (s0, c0) = (metric_sum(before, sum, &label), metric_sum(before, count, &label));
    let (s1, c1) = (metric_sum(after, sum, &label), metric_sum(after, count, &label));
    (s1 - s0) / (c1 - c0).max(1.0) * 1000.0
}

/// The server's WAL insert position, in bytes from the start.
pub(super) async fn wal_position(db: &mut sqlx::PgConnection) -> anyhow::Result<f64> {
    Ok(
        sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::float8")
            .fetch_one(db)
            .await?,
    )
}

pub(super) async fn measure(b: &Bench<'_>, certificates: &[(String, String)]) -> anyhow::Result<Throughput> {
    let args = b.args;
    println!(
        "throughput: {} clients, authorize + capture pairs, {} s warm-up + {} s",
        args.clients, args.warmup_seconds, args.seconds
    );
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Errors::default());
    let workers: Vec<_> = certificates
        .chunks(args.certificates_per_client)
        .map(|certs| {
            tokio::spawn(pair_client(
                b.api.clone(),
                certs.to_vec(),
                stop.clone(),
                errors.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(args.warmup_seconds)).await;
    let mut db = sqlx::PgConnection::connect(&b.service.db_url).await?;
    let m0 = b.service.metrics(b.http).await?;
    let wal0 = wal_position(&mut db).await?;
    let cpu0 = CpuSnapshot::take();
    let w0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let w1 = Instant::now();
    let cpu1 = CpuSnapshot::take();
    let wal1 = wal_position(&mut db).await?;
    let m1 = b.service.metrics(b.http).await?;
    stop.store(true, Ordering::Relaxed);
    let mut window = Vec::new();
    for w in workers {
        window.extend(w.await?.into_iter().filter(|(at, _, _)| *at >= w0 && *at < w1));
    }
    let pairs = window.len() as f64;
    let published = "gift_certificates_outbox_published_total";
    Ok(Throughput {
        pairs,
        pairs_per_s: pairs / (w1 - w0).as_secs_f64(),
        authorize_http_ms: mean(&window.iter().map(|s| s.1).collect::<Vec<_>>()),
        capture_http_ms: mean(&window.iter().map(|s| s.2).collect::<Vec<_>>()),
        authorize_storage_ms: storage_mean_ms(&m0, &m1, "authorize"),
        capture_storage_ms: storage_mean_ms(&m0, &m1, "capture"),
        cpu: cpu0.used_until(&cpu1, b.stack),
        wal_bytes: wal1 - wal0,
        group_size: {
            let (sum, count) = (
                "gift_certificates_operation_group_size_sum",
                "gift_certificates_operation_group_size_count",
            );
            (metric_sum(&m1, sum, "") - metric_sum(&m0, sum, ""))
                / (metric_sum(&m1, count, "") - metric_sum(&m0, count, "")).max(1.0)
        },
        // Relayed from the outbox to the broker in the window, per pair completed in it.
        events_published: (metric_sum(&m1, published, "") - metric_sum(&m0, published, "")) / pairs.max(1.0),
        errors: errors.report(),
    })
}

impl Throughput {
    pub(super) fn json(&self, args: &Args) -> Value {
        json!({
            "clients": args.clients,
            "certificates_per_client": args.certificates_per_client,
            "seconds": args.seconds,
            "pairs_per_s": round(self.pairs_per_s, 0),
            "requests_per_s": round(2.0 * self.pairs_per_s, 0),
            "errors": self.errors,
            "authorize_http_mean_ms": round(self.authorize_http_ms, 2),
            "capture_http_mean_ms": round(self.capture_http_ms, 2),
            "authorize_storage_mean_ms": round(self.authorize_storage_ms, 2),
            "capture_storage_mean_ms": round(self.capture_storage_ms, 2),
            "cpu_seconds_per_1000_pairs": cpu_report(&self.cpu, self.pairs / 1000.0),
            "postgresql_cpu_ms_per_pair": round(self.postgres_cpu_ms_per_pair(), 3),
            "wal_bytes_per_pair": round(self.wal_bytes / self.pairs.max(1.0), 0),
            "operations_per_group_commit": round(self.group_size, 2),
            "events_published_per_pair": round(self.events_published, 2),
        })
    }

    /// CPU ms per pair of PostgreSQL, its backends and background processes.
    pub(super) fn postgres_cpu_ms_per_pair(&self) -> f64 {
        self.cpu_ms_per_pair("postgresql_backends") + self.cpu_ms_per_pair("postgresql_background")
    }

    /// CPU ms per pair of a process group.
    pub(super) fn cpu_ms_per_pair(&self, group: &str) -> f64 {
        self.cpu.get(group).copied().unwrap_or(0.0) / self.pairs * 1000.0
    }
}
