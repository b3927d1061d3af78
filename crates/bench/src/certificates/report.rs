//! The benchmark's report: targets, the JSON file, the summary printed.

use super::balance::Balance;
use super::latency::Latency;
use super::throughput::Throughput;
use super::Args;
use crate::report::{mark, mean, percentile, round, write_report};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// What the run measured.
pub(super) struct Runs {
    pub(super) upload_secs: f64,
    pub(super) activate_rate: f64,
    pub(super) pool: u32,
    pub(super) pairs: Throughput,
    pub(super) latency: Latency,
    pub(super) balance: Balance,
    /// Peak and current RSS of the service, MiB.
    pub(super) hwm: f64,
    pub(super) rss: f64,
    pub(super) pgbench: Value,
}

/// Each target and whether it was met, in the order the summary prints them.
type Checks = [(&'static str, bool); 6];

pub(super) fn finish(args: &Args, r: &Runs) -> anyhow::Result<()> {
    let ratio = r.pgbench["pairs_per_s"].as_f64().map(|g| r.pairs.pairs_per_s / g);
    let tpcb = r.pgbench["tpcb"]["pairs_per_s"].as_f64();
    let tpcb_ratio = tpcb.map(|t| r.pairs.pairs_per_s / t);
    let pg_ms = r.pairs.postgres_cpu_ms_per_pair();
    let checks = [
        ("pairs/s >= 2,000", r.pairs.pairs_per_s >= 2000.0),
        (
            "pairs/s >= 1.0 x TPC-B pairs/s",
            tpcb_ratio.is_some_and(|q| q >= 1.0),
        ),
        ("PostgreSQL CPU per pair <= 0.5 ms", pg_ms <= 0.5),
        ("p99 at 500 rps <= 10 ms", r.latency.p99() <= 10.0),
        (
            "cached balance checks/s >= 50,000",
            r.balance.checks_per_s >= 50_000.0,
        ),
        ("service RSS <= 200 MB", r.hwm <= 200.0),
    ];
    let report = json!({
        "date": OffsetDateTime::now_utc().format(&Rfc3339)?,
        "certificates_preloaded": args.certificates,
        "upload_rows_per_s": round(args.certificates as f64 / r.upload_secs, 0),
        "activations_per_s": round(r.activate_rate, 0),
        "service_pool_connections": r.pool,
        "pairs": r.pairs.json(args),
        "latency": r.latency.json(args),
        "balance": r.balance.json(args),
        "service_peak_rss_mib": round(r.hwm, 1),
        "service_rss_mib": round(r.rss, 1),
        "pgbench": r.pgbench,
        "ratio_service_to_pgbench": ratio.map(|q| round(q, 3)),
        "ratio_service_to_tpcb_pairs": tpcb_ratio.map(|q| round(q, 3)),
        "targets": {
            "pairs_per_s": 2000,
            "ratio_service_to_tpcb_pairs": 1.0,
            "postgresql_cpu_ms_per_pair": 0.5,
            "latency_p99_ms_at_500_rps": 10,
            "balance_checks_per_s": 50000,
            "service_rss_mib": 200,
        },
        "pass": checks.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
    });
    println!();
    print_targets(args, r, &checks, ratio, tpcb_ratio);
    print_breakdown(args, r);
    println!();
    write_report(&args.out, &report)
}

fn print_targets(args: &Args, r: &Runs, checks: &Checks, ratio: Option<f64>, tpcb_ratio: Option<f64>) {
    println!(
        "gift-certificates, {} clients, {} s per phase",
        args.clients, args.seconds
    );
    println!(
        "  authorize+capture pairs/s   {:>10.0}   {} (target >= 2,000)",
        r.pairs.pairs_per_s,
        mark(checks[0].1)
    );
    println!("  operations per group commit {:>10.2}", r.pairs.group_size);
    match (r.pgbench["tpcb"]["pairs_per_s"].as_f64(), tpcb_ratio) {
        (Some(t), Some(q)) => {
            println!("  pgbench TPC-B, pairs/s      {t:>10.0}   (two of its transactions a pair)");
            println!(
                "  ratio service / TPC-B       {:>10.3}   {} (target >= 1.0)",
                q,
                mark(checks[1].1)
            );
        }
        _ => println!("  pgbench TPC-B baseline      skipped    FAIL (no ratio)"),
    }
    match (r.pgbench["pairs_per_s"].as_f64(), ratio) {
        (Some(g), Some(q)) => {
            println!("  pgbench, same statements    {g:>10.0}   pairs/s, one operation a transaction; ratio {q:.3}");
        }
        _ => println!("  pgbench, same statements    skipped"),
    }
    println!(
        "  PostgreSQL CPU per pair     {:>10.3}   ms {} (target <= 0.5 ms); machine {:.3} ms, TPC-B machine {} ms",
        r.pairs.postgres_cpu_ms_per_pair(),
        mark(checks[2].1),
        r.pairs.cpu_ms_per_pair("machine"),
        r.pgbench["tpcb"]["machine_cpu_ms_per_pair"],
    );
    println!(
        "  WAL per pair                {:>10.0}   bytes; TPC-B {} bytes",
        r.pairs.wal_bytes / r.pairs.pairs.max(1.0),
        r.pgbench["tpcb"]["wal_bytes_per_pair"],
    );
    println!(
        "  latency at {} rps p50 / p99  {:>6.2} / {:.2} ms   {} (target p99 <= 10 ms)",
        args.rate,
        percentile(&r.latency.all, 0.5),
        r.latency.p99(),
        mark(checks[3].1)
    );
    println!(
        "  cached balance checks/s     {:>10.0}   {} (target >= 50,000)",
        r.balance.checks_per_s,
        mark(checks[4].1)
    );
    println!(
        "  bare axum, same clients     {:>10.0}   checks/s; ratio {:.3}",
        r.balance.bare_checks_per_s,
        r.balance.checks_per_s / r.balance.bare_checks_per_s.max(1.0)
    );
    println!(
        "  service peak RSS            {:>10.1}   MiB {} (target <= 200 MB); now {:.1} MiB",
        r.hwm,
        mark(checks[5].1),
        r.rss
    );
}

/// Where the time of a pair goes: HTTP against pgbench, storage against HTTP, CPU per component.
fn print_breakdown(args: &Args, r: &Runs) {
    let (pairs, latency) = (&r.pairs, &r.latency);
    println!(
        "  pair latency p50 / p99: service {:.2} / {:.2} ms; pgbench, same SQL, same pair rate {} / {} ms",
        percentile(&latency.pair, 0.5),
        percentile(&latency.pair, 0.99),
        r.pgbench["latency"]["pair_p50_ms"],
        r.pgbench["latency"]["pair_p99_ms"],
    );
    println!(
        "  storage (PostgreSQL transaction) of authorize / capture, mean: {:.2} / {:.2} ms of {:.2} / {:.2} ms \
         over HTTP at {} rps; {:.2} / {:.2} ms of {:.2} / {:.2} ms at full load",
        latency.authorize_storage_ms,
        latency.capture_storage_ms,
        mean(&latency.authorize),
        mean(&latency.capture),
        args.rate,
        pairs.authorize_storage_ms,
        pairs.capture_storage_ms,
        pairs.authorize_http_ms,
        pairs.capture_http_ms,
    );
    let per_pair = |g: &str| pairs.cpu_ms_per_pair(g);
    println!(
        "  CPU ms per pair: PostgreSQL {:.2}, service {:.2}, broker {:.2}, bench client {:.2}, Redis {:.2}; not this system {:.2}",
        per_pair("postgresql_backends") + per_pair("postgresql_background"),
        per_pair("gift_certificates"),
        per_pair("broker"),
        per_pair("bench_client"),
        per_pair("redis"),
        per_pair("other"),
    );
}
