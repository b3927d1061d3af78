//! `GET /admin/v1/overview`: how the sync is doing now (from this process's own gauges) and
//! over the last hours (from `integrations_log`, in buckets for the charts), so the console
//! works without a Prometheus.

use super::{unavailable, AdminState};
use crate::api::problem::Problem;
use axum::extract::{Query, State};
use axum::Json;
use backbone_sync::ports::{ActivityBucket, Outcome};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

/// The charts' resolution: this many buckets over the window.
const BUCKETS: i64 = 72;
/// At most this many hours back.
pub const MAX_HOURS: u32 = 48;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Window {
    /// 1 to 48; 6 when absent.
    #[param(minimum = 1, maximum = 48)]
    hours: Option<u32>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Overview {
    pub service: &'static str,
    pub vendor: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub generated_at: OffsetDateTime,
    pub now: Now,
    pub window: Totals,
    pub series: Series,
}

/// This process's gauges at the time of the call.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Now {
    /// `closed`, `half_open` or `open`.
    #[schema(value_type = String)]
    pub breaker: &'static str,
    /// The vendor told us to stop calling (quota spent, account blocked).
    pub crm_paused: bool,
    pub retry_queue_depth: i64,
    /// Messages behind the high watermark, over the partitions this process consumes.
    pub consumer_lag: i64,
    pub consumer_lag_by_partition: Vec<PartitionLag>,
    /// Rows waiting in the two-way outbox; `null` where this process does not relay it.
    pub outbox_depth: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub lag: i64,
}

/// The whole window at once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Totals {
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub since: OffsetDateTime,
    pub hours: u32,
    /// Attempts by outcome (`success`, `duplicate`, `stale`, `unchanged`, `retry_scheduled`,
    /// `dead_lettered`); outcomes without one are absent.
    #[schema(value_type = BTreeMap<String, u64>)]
    pub attempts: BTreeMap<Outcome, u64>,
    /// success / (success + retry_scheduled + dead_lettered); `null` without any.
    pub success_ratio: Option<f64>,
    pub lag_p50_ms: Option<f64>,
    pub lag_p99_ms: Option<f64>,
    pub dead_letters_by_reason: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Series {
    pub bucket_seconds: i64,
    /// Every bucket of the window, oldest first, empty ones with zeros.
    pub buckets: Vec<Point>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Point {
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub start: OffsetDateTime,
    pub success: u64,
    pub retry_scheduled: u64,
    pub dead_lettered: u64,
    /// duplicate + stale + unchanged: handled without a write.
    pub skipped: u64,
    pub lag_p50_ms: Option<f64>,
    pub lag_p99_ms: Option<f64>,
}

fn count(b: &BTreeMap<Outcome, u64>, o: Outcome) -> u64 {
    b.get(&o).copied().unwrap_or(0)
}

impl Point {
    fn empty(start: OffsetDateTime) -> Self {
        Self {
            start,
            success: 0,
            retry_scheduled: 0,
            dead_lettered: 0,
            skipped: 0,
            lag_p50_ms: None,
            lag_p99_ms: None,
        }
    }

    fn of(b: &ActivityBucket) -> Self {
        Self {
            start: b.start,
            success: count(&b.outcomes, Outcome::Success),
            retry_scheduled: count(&b.outcomes, Outcome::RetryScheduled),
            dead_lettered: count(&b.outcomes, Outcome::DeadLettered),
            skipped: count(&b.outcomes, Outcome::Duplicate)
                + count(&b.outcomes, Outcome::Stale)
                + count(&b.outcomes, Outcome::Unchanged),
            lag_p50_ms: b.lag_p50_ms,
            lag_p99_ms: b.lag_p99_ms,
        }
    }
}

/// `success / (success + retry_scheduled + dead_lettered)`, `None` without any of them.
pub fn success_ratio(attempts: &BTreeMap<Outcome, u64>) -> Option<f64> {
    let ok = count(attempts, Outcome::Success);
    let decided = ok + count(attempts, Outcome::RetryScheduled) + count(attempts, Outcome::DeadLettered);
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    (decided > 0).then(|| ok as f64 / decided as f64)
}

/// Every bucket from `since` on, `width` wide, `n` of them: those with attempts from
/// `found`, the rest with zeros.
pub fn fill(since: OffsetDateTime, width: Duration, n: i64, found: &[ActivityBucket]) -> Vec<Point> {
    let by_start: BTreeMap<OffsetDateTime, &ActivityBucket> = found.iter().map(|b| (b.start, b)).collect();
    (0..n)
        .map(|i| {
            let start = since + width * i32::try_from(i).unwrap_or(i32::MAX);
            by_start
                .get(&start)
                .map_or_else(|| Point::empty(start), |b| Point::of(b))
        })
        .collect()
}

fn breaker(state: f64) -> &'static str {
    match state {
        s if s >= 2.0 => "open",
        s if s >= 1.0 => "half_open",
        _ => "closed",
    }
}

/// The gauges of this process, read from its registry like a scrape would.
fn now(state: &AdminState) -> Now {
    let families = state.metrics.registry.gather();
    let family = |name: &str| families.iter().find(|f| f.name() == name);
    let gauge = |name: &str| {
        family(name)
            .and_then(|f| f.get_metric().first())
            .map(|m| m.get_gauge().get_value())
    };
    // Gauges hold whole numbers here.
    #[allow(clippy::cast_possible_truncation)]
    let whole = |v: f64| v as i64;
    let mut by_partition: Vec<PartitionLag> = family("crm_sync_consumer_lag")
        .map(|f| {
            f.get_metric()
                .iter()
                .map(|m| {
                    let label = |n: &str| {
                        m.get_label()
                            .iter()
                            .find(|l| l.name() == n)
                            .map(|l| l.value().to_owned())
                            .unwrap_or_default()
                    };
                    PartitionLag {
                        topic: label("topic"),
                        partition: label("partition").parse().unwrap_or(-1),
                        lag: whole(m.get_gauge().get_value()),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    by_partition.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Now {
        breaker: breaker(gauge("crm_sync_breaker_state").unwrap_or(0.0)),
        crm_paused: gauge("crm_sync_crm_paused").unwrap_or(0.0) > 0.0,
        retry_queue_depth: whole(gauge("crm_sync_retry_queue_depth").unwrap_or(0.0)),
        consumer_lag: by_partition.iter().map(|p| p.lag.max(0)).sum(),
        consumer_lag_by_partition: by_partition,
        outbox_depth: gauge("crm_sync_outbox_depth").map(whole),
    }
}

/// How the sync is doing now and over the last hours.
#[utoipa::path(get, path = "/admin/v1/overview", tag = "admin", params(Window),
    security(("admin_bearer" = [])),
    responses((status = 200, body = Overview), (status = 401, body = Problem, description = "no or a wrong admin token"),
              (status = 422, body = Problem, description = "`hours` out of range"), (status = 503, body = Problem)))]
pub async fn overview(
    State(state): State<Arc<AdminState>>,
    Query(w): Query<Window>,
) -> Result<Json<Overview>, Problem> {
    let hours = w.hours.unwrap_or(6);
    if !(1..=MAX_HOURS).contains(&hours) {
        return Err(Problem::invalid("hours", "must be 1 to 48"));
    }
    let generated_at = OffsetDateTime::now_utc();
    let span = Duration::hours(i64::from(hours));
    let width = Duration::seconds(span.whole_seconds() / BUCKETS);
    // Buckets on whole multiples of their width, so two calls draw the same bars.
    let end = generated_at.unix_timestamp().div_euclid(width.whole_seconds()) * width.whole_seconds()
        + width.whole_seconds();
    let since = OffsetDateTime::from_unix_timestamp(end - span.whole_seconds())
        .map_err(|e| unavailable("the clock")(e.into()))?;
    let buckets = state
        .ledger
        .activity(since, width)
        .await
        .map_err(|e| unavailable("PostgreSQL")(e.into()))?;
    let whole = state
        .ledger
        .activity(since, span)
        .await
        .map_err(|e| unavailable("PostgreSQL")(e.into()))?;
    let window = whole.into_iter().next();
    let attempts = window.as_ref().map(|b| b.outcomes.clone()).unwrap_or_default();
    Ok(Json(Overview {
        service: "crm-sync",
        vendor: state.vendor.clone(),
        generated_at,
        now: now(&state),
        window: Totals {
            since,
            hours,
            success_ratio: success_ratio(&attempts),
            attempts,
            lag_p50_ms: window.as_ref().and_then(|b| b.lag_p50_ms),
            lag_p99_ms: window.as_ref().and_then(|b| b.lag_p99_ms),
            dead_letters_by_reason: window.map(|b| b.dead_letter_reasons).unwrap_or_default(),
        },
        series: Series {
            bucket_seconds: width.whole_seconds(),
            buckets: fill(since, width, BUCKETS, &buckets),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_counts_decided_attempts_only() {
        let attempts: BTreeMap<Outcome, u64> = [
            (Outcome::Success, 3),
            (Outcome::RetryScheduled, 1),
            (Outcome::Duplicate, 10),
        ]
        .into_iter()
        .collect();
        assert_eq!(success_ratio(&attempts), Some(0.75));
        assert_eq!(success_ratio(&BTreeMap::new()), None);
    }

    #[test]
    fn every_bucket_is_drawn_and_the_found_ones_keep_their_counts() {
        let since = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time");
        let width = Duration::minutes(5);
        let found = ActivityBucket {
            start: since + width * 2,
            outcomes: [
                (Outcome::Success, 4),
                (Outcome::Stale, 1),
                (Outcome::Unchanged, 2),
            ]
            .into_iter()
            .collect(),
            dead_letter_reasons: BTreeMap::new(),
            lag_p50_ms: Some(12.0),
            lag_p99_ms: Some(80.0),
        };
        let points = fill(since, width, 4, &[found]);
        assert_eq!(points.len(), 4);
        assert_eq!(points[3].start, since + width * 3);
        assert_eq!((points[0].success, points[0].lag_p99_ms), (0, None));
        assert_eq!(
            (points[2].success, points[2].skipped, points[2].lag_p99_ms),
            (4, 3, Some(80.0))
        );
    }
}
