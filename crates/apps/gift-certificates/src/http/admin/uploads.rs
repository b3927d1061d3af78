//! `GET /admin/v1/uploads`: the upload batches, most recently active first, each with the totals
//! `GET /certificates/upload/batches/{batch_id}` answers for it, and who opened it when.

use super::{limit, unavailable, utc};
use crate::http::ApiResult;
use crate::problem::Problem;
use crate::state::AppState;
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use axum::Json;
use backbone_postgres::certificates::admin::UploadBatch;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use time::OffsetDateTime;
use utoipa::ToSchema;

/// Batches listed when no `limit` is given.
pub const DEFAULT_LIMIT: i64 = 20;
/// The most batches one call lists.
pub const MAX_LIMIT: i64 = 100;

#[derive(Debug, Deserialize)]
pub struct UploadsQuery {
    limit: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UploadsResponse {
    /// Most recently active (opened, or a job received) first.
    pub uploads: Vec<AdminUpload>,
}

/// The fields of `GET /certificates/upload/batches/{batch_id}` (a batch opened without a job yet
/// has zeros there, where that endpoint answers `404`), then `opened_by` and `opened_at`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminUpload {
    pub batch_id: String,
    /// Jobs received.
    pub jobs: i64,
    /// Rows the jobs carried.
    pub submitted: i64,
    pub issued: i64,
    pub duplicates: i64,
    pub rejected: i64,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_job_at: Option<OffsetDateTime>,
    /// The channel that opened the batch; `null` for a batch loaded before batches were opened.
    pub opened_by: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub opened_at: Option<OffsetDateTime>,
}

fn upload(b: &UploadBatch) -> AdminUpload {
    let t = &b.totals;
    AdminUpload {
        batch_id: t.batch_id.clone(),
        jobs: t.jobs,
        submitted: t.submitted,
        issued: t.issued,
        duplicates: t.duplicates,
        rejected: t.rejected,
        last_job_at: t.last_job_at.map(utc),
        opened_by: b.opened_by.clone(),
        opened_at: b.opened_at.map(utc),
    }
}

#[utoipa::path(get, path = "/admin/v1/uploads", tag = "admin",
    params(("limit" = Option<i64>, Query, description = "1 to 100; 20 when absent", minimum = 1, maximum = 100)),
    responses((status = 200, body = UploadsResponse),
              (status = 400, body = Problem, content_type = "application/problem+json", description = "`bad-request`: limit"),
              (status = 401, body = Problem, content_type = "application/problem+json", description = "`unauthenticated`"),
              (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("admin_bearer" = [])))]
pub async fn uploads(State(state): State<Arc<AppState>>, Query(q): Query<UploadsQuery>) -> ApiResult {
    let limit = limit(q.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let batches = state.store().upload_batches(limit).await.map_err(unavailable)?;
    Ok(Json(UploadsResponse {
        uploads: batches.iter().map(upload).collect(),
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use backbone_certificates::store::BatchView;

    /// Each listed batch carries the batch endpoint's JSON unchanged, plus the opening.
    #[test]
    fn an_upload_is_the_batch_endpoint_json_and_its_opening() {
        let at = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time");
        let totals = BatchView {
            batch_id: "spring".into(),
            jobs: 2,
            submitted: 2_000,
            issued: 1_990,
            duplicates: 6,
            rejected: 4,
            last_job_at: Some(at),
        };
        let listed = serde_json::to_value(upload(&UploadBatch {
            totals: totals.clone(),
            opened_by: Some("BatchLoader".into()),
            opened_at: Some(at),
        }))
        .expect("JSON");
        let mut fields = listed.as_object().cloned().expect("an object");
        assert_eq!(fields.remove("opened_by"), Some("BatchLoader".into()));
        assert!(fields.remove("opened_at").is_some());
        assert_eq!(
            serde_json::Value::Object(fields),
            serde_json::to_value(&totals).expect("JSON")
        );
    }
}
