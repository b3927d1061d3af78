//! The service's Prometheus metrics (names are part of the alerting contract in `deploy/`).

use backbone_sync::engine::BatchReport;
use backbone_sync::ports::Outcome;
use prometheus::{
    exponential_buckets, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry,
};

pub struct Metrics {
    pub registry: Registry,
    outcomes: IntCounterVec,
    success_ratio: Gauge,
    lag: Histogram,
    pub retry_depth: IntGauge,
    dead_letters: IntCounterVec,
    consumer_lag: IntGaugeVec,
    pub breaker_state: IntGauge,
    /// 1 while the CRM vendor has told us to stop calling (quota spent, account blocked).
    pub crm_paused: IntGauge,
    batch_size: Histogram,
    batch_duration: Histogram,
    pub pipeline_errors: IntCounter,
    two_way_dispatched: IntCounterVec,
    two_way_processed: IntCounterVec,
    two_way_failed: IntCounterVec,
    two_way_clients: IntCounterVec,
    /// Rows of `crm_outbox` published by this instance's relay (served only where the relay runs).
    pub outbox_published: IntCounter,
    /// Rows waiting in `crm_outbox` (served only where the relay runs).
    pub outbox_depth: IntGauge,
    /// 1 per two-way stage this process runs and that is making progress, 0 while it retries a
    /// failure; stages it does not run have no series.
    pub two_way_stage_up: IntGaugeVec,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are static; a failure here is a programming error caught by any test.
    r.unwrap_or_else(|e| panic!("metric definition: {e}"))
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let outcomes = must(IntCounterVec::new(
            Opts::new("crm_sync_outcomes_total", "Events handled, by outcome"),
            &["outcome"],
        ));
        let success_ratio = must(Gauge::new(
            "crm_sync_success_ratio",
            "success / (success + retry_scheduled + dead_lettered) since start",
        ));
        let lag = must(Histogram::with_opts(
            HistogramOpts::new(
                "crm_sync_event_to_crm_lag_seconds",
                "From the event's occurred_at to the CRM's acknowledgement",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                300.0,
            ]),
        ));
        let retry_depth = must(IntGauge::new(
            "crm_sync_retry_queue_depth",
            "Events parked in the retry queue",
        ));
        let dead_letters = must(IntCounterVec::new(
            Opts::new(
                "crm_sync_dead_letters_total",
                "Records sent to dead.letters, by reason",
            ),
            &["reason"],
        ));
        let consumer_lag = must(IntGaugeVec::new(
            Opts::new("crm_sync_consumer_lag", "Messages behind the high watermark"),
            &["topic", "partition"],
        ));
        let breaker_state = must(IntGauge::new(
            "crm_sync_breaker_state",
            "CRM circuit breaker: 0 closed, 1 half-open, 2 open",
        ));
        let crm_paused = must(IntGauge::new(
            "crm_sync_crm_paused",
            "1 while the CRM vendor refuses calls (quota spent, account blocked) and intake is held",
        ));
        let batch_size = must(Histogram::with_opts(
            HistogramOpts::new("crm_sync_batch_size", "Records per batch")
                .buckets(must(exponential_buckets(1.0, 2.0, 13))),
        ));
        let batch_duration = must(Histogram::with_opts(
            HistogramOpts::new(
                "crm_sync_batch_duration_seconds",
                "Time to bring a batch to durable outcomes",
            )
            .buckets(must(exponential_buckets(0.0005, 2.0, 14))),
        ));
        let pipeline_errors = must(IntCounter::new(
            "crm_sync_pipeline_errors_total",
            "Batches that failed on the database or the broker and were retried",
        ));
        let two_way_dispatched = must(IntCounterVec::new(
            Opts::new(
                "crm_sync_two_way_dispatched_total",
                "crm.outgoing changes handled by the dispatcher, by outcome (written, unchanged, coalesced, dead_lettered)",
            ),
            &["outcome"],
        ));
        let two_way_processed = must(IntCounterVec::new(
            Opts::new(
                "crm_sync_two_way_processed_total",
                "CRM webhooks applied to our copy, by outcome (applied, echo, unchanged, conflict, gone)",
            ),
            &["outcome"],
        ));
        let two_way_failed = must(IntCounterVec::new(
            Opts::new(
                "crm_sync_two_way_failed_total",
                "CRM webhooks that ended on crm.failed, by reason",
            ),
            &["reason"],
        ));
        let two_way_clients = must(IntCounterVec::new(
            Opts::new(
                "crm_sync_two_way_all_clients_total",
                "All_Clients records, by outcome (applied, unchanged, duplicate, or the dead-letter reason)",
            ),
            &["outcome"],
        ));
        let outbox_published = must(IntCounter::new(
            "crm_sync_outbox_published_total",
            "crm_outbox rows the relay published",
        ));
        let outbox_depth = must(IntGauge::new(
            "crm_sync_outbox_depth",
            "crm_outbox rows waiting to be published",
        ));
        let two_way_stage_up = must(IntGaugeVec::new(
            Opts::new(
                "crm_sync_two_way_stage_up",
                "1 per two-way stage this process runs while it makes progress, 0 while it retries",
            ),
            &["stage"],
        ));
        for c in [
            Box::new(two_way_dispatched.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(two_way_processed.clone()),
            Box::new(two_way_failed.clone()),
            Box::new(two_way_clients.clone()),
            Box::new(two_way_stage_up.clone()),
            Box::new(outcomes.clone()),
            Box::new(success_ratio.clone()),
            Box::new(lag.clone()),
            Box::new(retry_depth.clone()),
            Box::new(dead_letters.clone()),
            Box::new(consumer_lag.clone()),
            Box::new(breaker_state.clone()),
            Box::new(crm_paused.clone()),
            Box::new(batch_size.clone()),
            Box::new(batch_duration.clone()),
            Box::new(pipeline_errors.clone()),
        ] {
            must(registry.register(c));
        }
        for o in Outcome::ALL {
            outcomes.with_label_values(&[o.as_str()]);
        }
        Self {
            registry,
            outcomes,
            success_ratio,
            lag,
            retry_depth,
            dead_letters,
            consumer_lag,
            breaker_state,
            crm_paused,
            batch_size,
            batch_duration,
            pipeline_errors,
            two_way_dispatched,
            two_way_processed,
            two_way_failed,
            two_way_clients,
            outbox_published,
            outbox_depth,
            two_way_stage_up,
        }
    }

    /// Serves the relay's metrics: only a process that runs the relay reports the outbox.
    pub fn register_relay(&self) -> prometheus::Result<()> {
        self.registry.register(Box::new(self.outbox_published.clone()))?;
        self.registry.register(Box::new(self.outbox_depth.clone()))
    }

    pub fn two_way_dispatched(&self, outcome: &str) {
        self.two_way_dispatched.with_label_values(&[outcome]).inc();
    }

    pub fn two_way_processed(&self, outcome: &str) {
        self.two_way_processed.with_label_values(&[outcome]).inc();
    }

    pub fn two_way_failed(&self, reason: &str) {
        self.two_way_failed.with_label_values(&[reason]).inc();
    }

    pub fn two_way_clients(&self, outcome: &str) {
        self.two_way_clients.with_label_values(&[outcome]).inc();
    }

    pub fn observe(&self, report: &BatchReport, records: usize, seconds: f64) {
        if records > 0 {
            self.batch_size.observe(records as f64);
            self.batch_duration.observe(seconds);
        }
        for (outcome, n) in &report.counts {
            self.outcomes.with_label_values(&[outcome.as_str()]).inc_by(*n);
        }
        for lag in &report.success_lag_ms {
            self.lag.observe(lag / 1000.0);
        }
        for reason in &report.dead_letter_reasons {
            self.dead_letters.with_label_values(&[reason.as_str()]).inc();
        }
        let get = |o: Outcome| self.outcomes.with_label_values(&[o.as_str()]).get() as f64;
        let ok = get(Outcome::Success);
        let total = ok + get(Outcome::RetryScheduled) + get(Outcome::DeadLettered);
        if total > 0.0 {
            self.success_ratio.set(ok / total);
        }
    }

    pub fn set_consumer_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.consumer_lag
            .with_label_values(&[topic, &partition.to_string()])
            .set(lag);
    }

    pub fn render(&self) -> String {
        backbone_telemetry::render_metrics(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_moves_counters_ratio_and_histograms() {
        let m = Metrics::new();
        let mut r = BatchReport::default();
        r.counts.insert(Outcome::Success, 3);
        r.counts.insert(Outcome::DeadLettered, 1);
        r.success_lag_ms = vec![2.0, 4.0, 8.0];
        r.dead_letter_reasons = vec![backbone_sync::ports::DeadLetterReason::MalformedJson];
        m.observe(&r, 4, 0.01);
        m.set_consumer_lag("tracking.events", 2, 17);
        let text = m.render();
        assert!(
            text.contains("crm_sync_outcomes_total{outcome=\"success\"} 3"),
            "{text}"
        );
        assert!(text.contains("crm_sync_outcomes_total{outcome=\"stale\"} 0"));
        assert!(text.contains("crm_sync_success_ratio 0.75"));
        assert!(text.contains("crm_sync_event_to_crm_lag_seconds_count 3"));
        assert!(text.contains("crm_sync_dead_letters_total{reason=\"malformed_json\"} 1"));
        assert!(text.contains("crm_sync_consumer_lag{partition=\"2\",topic=\"tracking.events\"} 17"));
    }
}
