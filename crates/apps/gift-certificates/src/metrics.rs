//! The service's Prometheus metrics.

use prometheus::{
    exponential_buckets, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

pub struct Metrics {
    pub registry: Registry,
    pub operations: IntCounterVec,
    pub operation_seconds: HistogramVec,
    pub failed_lookups: IntCounter,
    pub blocked: IntCounter,
    pub cache: IntCounterVec,
    pub issued: IntCounter,
    pub outbox_published: IntCounter,
    pub outbox_pending: IntGauge,
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
            outbox_pending: must(IntGauge::new(
                "gift_certificates_outbox_pending",
                "Events waiting in the outbox",
            )),
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
        for c in [&m.operations, &m.cache, &m.sms, &m.sales, &m.dead_letters] {
            must(m.registry.register(Box::new(c.clone())));
        }
        must(m.registry.register(Box::new(m.operation_seconds.clone())));
        must(m.registry.register(Box::new(m.outbox_pending.clone())));
        m
    }
}
