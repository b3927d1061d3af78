//! The service's Prometheus metrics. The gauges that count rows (outbox, parked events, SMS
//! queue) are set by a background task every [`REFRESH_INTERVAL`] ([`run_refresh`]), never by a
//! scrape: `/metrics` renders what is in memory and touches no database.

use crate::state::AppState;
use backbone_certificates::store::{Outbox, SmsQueue, StoreError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry,
};

pub struct Metrics {
    pub registry: Registry,
    pub operations: IntCounterVec,
    pub operation_seconds: HistogramVec,
    /// Operations per group commit.
    pub group_size: Histogram,
    pub failed_lookups: IntCounter,
    pub blocked: IntCounter,
    pub cache: IntCounterVec,
    pub issued: IntCounter,
    pub outbox_published: IntCounter,
    pub outbox_pending: IntGauge,
    pub outbox_leader: IntGauge,
    pub outbox_parked: IntCounterVec,
    pub outbox_parked_rows: IntGauge,
    pub sms_pending: IntGauge,
    pub sms_failed: IntGauge,
    pub sms: IntCounterVec,
    pub sales: IntCounterVec,
    pub dead_letters: IntCounterVec,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are static; a failure here is a programming error caught by any test.
    r.unwrap_or_else(|e| panic!("metric definition: {e}"))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| must(IntCounter::new(name, help));
        let counter_vec =
            |name: &str, help: &str, labels: &[&str]| must(IntCounterVec::new(Opts::new(name, help), labels));
        let gauge = |name: &str, help: &str| must(IntGauge::new(name, help));
        let m = Self {
            operations: counter_vec(
                "gift_certificates_operations_total",
                "Certificate operations by route and outcome (applied, replayed or a problem code)",
                &["route", "outcome"],
            ),
            operation_seconds: must(HistogramVec::new(
                HistogramOpts::new(
                    "gift_certificates_operation_seconds",
                    "Storage time of one operation",
                )
                .buckets(must(exponential_buckets(0.0005, 2.0, 14))),
                &["route"],
            )),
            group_size: must(Histogram::with_opts(
                HistogramOpts::new(
                    "gift_certificates_operation_group_size",
                    "Operations committed together in one group (one transaction)",
                )
                .buckets(vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                ]),
            )),
            failed_lookups: counter(
                "gift_certificates_failed_lookups_total",
                "Unknown codes and wrong CVCs (brute-force signal)",
            ),
            blocked: counter(
                "gift_certificates_blocked_total",
                "Requests refused by the attempt limits",
            ),
            cache: counter_vec(
                "gift_certificates_balance_cache_total",
                "Balance cache lookups",
                &["result"],
            ),
            issued: counter(
                "gift_certificates_issued_total",
                "Certificates issued from uploads",
            ),
            outbox_published: counter(
                "gift_certificates_outbox_published_total",
                "Events relayed to Kafka",
            ),
            outbox_pending: gauge(
                "gift_certificates_outbox_pending",
                "Events waiting in the outbox (refreshed in the background)",
            ),
            outbox_leader: gauge(
                "gift_certificates_outbox_leader",
                "1 while this instance is the outbox relay (one instance at a time), else 0",
            ),
            outbox_parked: counter_vec(
                "gift_certificates_outbox_parked_total",
                "Outbox events parked because the broker refuses them for good, by reason",
                &["reason"],
            ),
            outbox_parked_rows: gauge(
                "gift_certificates_outbox_parked",
                "Events parked in outbox_parked (refreshed in the background)",
            ),
            sms_pending: gauge(
                "gift_certificates_sms_pending",
                "CVC SMS deliveries waiting (refreshed in the background)",
            ),
            sms_failed: gauge(
                "gift_certificates_sms_failed",
                "CVC SMS deliveries failed for good (refreshed in the background)",
            ),
            sms: counter_vec(
                "gift_certificates_sms_total",
                "CVC SMS attempts by outcome",
                &["outcome"],
            ),
            sales: counter_vec(
                "gift_certificates_sales_events_total",
                "Order and payment events by outcome",
                &["outcome"],
            ),
            dead_letters: counter_vec(
                "gift_certificates_dead_letters_total",
                "Records dead-lettered",
                &["reason"],
            ),
            registry,
        };
        for c in [&m.failed_lookups, &m.blocked, &m.issued, &m.outbox_published] {
            must(m.registry.register(Box::new(c.clone())));
        }
        for c in [
            &m.operations,
            &m.cache,
            &m.sms,
            &m.sales,
            &m.dead_letters,
            &m.outbox_parked,
        ] {
            must(m.registry.register(Box::new(c.clone())));
        }
        must(m.registry.register(Box::new(m.operation_seconds.clone())));
        must(m.registry.register(Box::new(m.group_size.clone())));
        for g in [
            &m.outbox_pending,
            &m.outbox_leader,
            &m.outbox_parked_rows,
            &m.sms_pending,
            &m.sms_failed,
        ] {
            must(m.registry.register(Box::new(g.clone())));
        }
        m
    }
}

/// How often the row-counting gauges are refreshed.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// Counts the outbox, the parked events and the SMS queue once and sets the gauges.
pub async fn refresh_gauges(state: &AppState) -> Result<(), StoreError> {
    let store = state.store();
    let pending = store.pending().await?;
    let parked = store.parked().await?;
    let sms = store.sms_backlog().await?;
    state.metrics.outbox_pending.set(pending);
    state.metrics.outbox_parked_rows.set(parked);
    state.metrics.sms_pending.set(sms.pending);
    state.metrics.sms_failed.set(sms.failed);
    Ok(())
}

/// Refreshes the gauges every `interval` until `stop`. A failed refresh keeps the last values.
pub async fn run_refresh(state: std::sync::Arc<AppState>, interval: Duration, stop: CancellationToken) {
    while !stop.is_cancelled() {
        if let Err(e) = refresh_gauges(&state).await {
            tracing::warn!(error = %e, "metrics gauges not refreshed");
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stop.cancelled() => {}
        }
    }
}
