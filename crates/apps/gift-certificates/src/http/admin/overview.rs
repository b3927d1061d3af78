//! `GET /admin/v1/overview`: the certificates by state, the outbox, the SMS queue and the upload
//! batches right now, and the last six hours of operations in five-minute buckets for the
//! console's chart. Each figure is one set-based statement; they run concurrently.

use super::{unavailable, utc};
use crate::http::ApiResult;
use crate::problem::Problem;
use crate::state::AppState;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::Json;
use backbone_certificates::store::SmsQueue;
use backbone_certificates::State as CertificateState;
use backbone_postgres::certificates::admin::ActivityBucket;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use time::OffsetDateTime;
use utoipa::ToSchema;

/// Width of one bucket of the series.
pub const BUCKET_SECONDS: i64 = 300;
/// Buckets in the series: six hours.
pub const BUCKETS: i32 = 72;

#[derive(Debug, Serialize, ToSchema)]
pub struct OverviewResponse {
    /// When the figures were read (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub generated_at: OffsetDateTime,
    /// Every state (`Issued`, `Active`, `PartiallyRedeemed`, `Redeemed`, `Refunded`,
    /// `Cancelled`), with 0 for a state no certificate is in.
    pub certificates_by_state: BTreeMap<String, i64>,
    pub outbox: OutboxFigures,
    pub sms: SmsFigures,
    pub uploads: UploadFigures,
    pub series: OverviewSeries,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OutboxFigures {
    /// Events waiting for the broker.
    pub pending: i64,
    /// Events the broker refused for good (`outbox requeue` puts them back).
    pub parked: i64,
    /// How long the oldest waiting event has waited; `null` when none waits.
    pub oldest_pending_age_seconds: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SmsFigures {
    /// CVC deliveries waiting to be sent.
    pub pending: i64,
    /// CVC deliveries that failed for good.
    pub failed: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UploadFigures {
    /// Upload batches opened over the API (a batch stays open).
    pub open: i64,
    /// Batches opened, or with a job received, in the last 24 hours.
    pub recent: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OverviewSeries {
    /// 300: five-minute buckets.
    pub bucket_seconds: i64,
    /// 72 buckets, oldest first, the last one holding now; empty buckets have zeros.
    pub buckets: Vec<OverviewBucket>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OverviewBucket {
    /// The bucket's start (RFC 3339), a whole multiple of `bucket_seconds` since the epoch.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub start: OffsetDateTime,
    /// Operations recorded: activate, authorize, capture, void, refund, cancel, and the
    /// expiry of holds.
    pub operations: i64,
    /// Operations refused by the certificate's rules (a `409` or `422` stored under the
    /// request's Idempotency-Key). Refusals before the certificate is reached (`400`, `401`,
    /// `403`, `404`, `429`) are not stored and not counted.
    pub refused: i64,
}

/// The first bucket's start: buckets sit on whole multiples of their width, and the last one
/// holds `now`, so two calls a moment apart draw the same bars.
pub fn series_start(now: OffsetDateTime) -> OffsetDateTime {
    let end = now.unix_timestamp().div_euclid(BUCKET_SECONDS) * BUCKET_SECONDS + BUCKET_SECONDS;
    let start = end - BUCKET_SECONDS * i64::from(BUCKETS);
    OffsetDateTime::from_unix_timestamp(start).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Every state with its count; states without certificates count 0.
fn by_state(counted: &[(CertificateState, i64)]) -> BTreeMap<String, i64> {
    CertificateState::ALL
        .iter()
        .map(|state| {
            let n = counted.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
            (state.as_str().to_owned(), n)
        })
        .collect()
}

fn bucket(b: &ActivityBucket) -> OverviewBucket {
    OverviewBucket {
        start: utc(b.start),
        operations: b.operations,
        refused: b.refused,
    }
}

#[utoipa::path(get, path = "/admin/v1/overview", tag = "admin",
    responses((status = 200, body = OverviewResponse),
              (status = 401, body = Problem, content_type = "application/problem+json", description = "No admin token, a wrong one, or none configured (`unauthenticated`)"),
              (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("admin_bearer" = [])))]
pub async fn overview(State(state): State<Arc<AppState>>) -> ApiResult {
    let store = state.store();
    let now = OffsetDateTime::now_utc();
    let since = series_start(now);
    let (states, outbox, sms, uploads, activity) = tokio::try_join!(
        store.certificates_by_state(),
        store.outbox_summary(),
        store.sms_backlog(),
        store.upload_summary(),
        store.activity(since, BUCKET_SECONDS, BUCKETS),
    )
    .map_err(unavailable)?;
    Ok(Json(OverviewResponse {
        generated_at: now,
        certificates_by_state: by_state(&states),
        outbox: OutboxFigures {
            pending: outbox.pending,
            parked: outbox.parked,
            oldest_pending_age_seconds: outbox.oldest_pending_age_seconds,
        },
        sms: SmsFigures {
            pending: sms.pending,
            failed: sms.failed,
        },
        uploads: UploadFigures {
            open: uploads.open,
            recent: uploads.recent,
        },
        series: OverviewSeries {
            bucket_seconds: BUCKET_SECONDS,
            buckets: activity.iter().map(bucket).collect(),
        },
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_series_ends_with_the_bucket_holding_now() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_123).expect("time");
        let since = series_start(now);
        assert_eq!(since.unix_timestamp() % BUCKET_SECONDS, 0);
        let last = since + time::Duration::seconds(BUCKET_SECONDS * i64::from(BUCKETS - 1));
        assert!(last <= now && now < last + time::Duration::seconds(BUCKET_SECONDS));
        let on_the_edge = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time");
        assert_eq!(
            series_start(on_the_edge).unix_timestamp(),
            1_800_000_000 - BUCKET_SECONDS * i64::from(BUCKETS - 1)
        );
    }

    #[test]
    fn every_state_is_counted_with_zeros() {
        let counted = by_state(&[(CertificateState::Active, 3), (CertificateState::Issued, 2)]);
        assert_eq!(counted.len(), CertificateState::ALL.len());
        assert_eq!(counted["Active"], 3);
        assert_eq!(counted["Issued"], 2);
        assert_eq!(counted["Cancelled"], 0);
    }
}
