//! Uploads of pre-generated codes over HTTP (`POST /certificates/upload/batch`) and their
//! batch totals.

use super::{apply_error, authenticate_for, required_idempotency_key, REPLAYED_HEADER};
use crate::auth::Scope;
use crate::problem::{Problem, ProblemCode};
use crate::state::AppState;
use crate::upload::{prepare, JobError, RejectedRow, UploadJob};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use backbone_certificates::store::CertificateViews;
use backbone_certificates::IdempotencyClaim;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct UploadResponse {
    pub batch_id: String,
    pub job: u32,
    pub issued: u64,
    /// Issued by an earlier delivery of this same batch.
    pub already_issued: u64,
    /// Codes that exist in another batch (or twice here): never overwritten.
    pub duplicates: u64,
    pub rejected: u64,
    pub rejected_rows: Vec<RejectedRow>,
}

#[utoipa::path(post, path = "/certificates/upload/batch", tag = "uploads",
    params(("Idempotency-Key" = String, Header, description = "`<batch_id>:<job>` by convention")),
    request_body = UploadJob,
    responses((status = 200, body = UploadResponse, description = "Valid rows issued; invalid rows listed with reasons"),
              (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn upload_batch(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let channel = authenticate_for(&state, &headers, Scope::Upload)?;
    let key = required_idempotency_key(&headers)?;
    let request_hash: [u8; 32] = Sha256::new()
        .chain_update(b"upload\0")
        .chain_update(&body)
        .finalize()
        .into();
    let job: UploadJob = serde_json::from_slice(&body)
        .map_err(|e| Problem::new(ProblemCode::BadRequest, Some(format!("invalid JSON body: {e}"))))?;
    let job_no = job.job;
    let (batch, rejected) =
        prepare(state.keys.as_ref(), job, channel, Some(format!("http:{key}"))).map_err(|e| match e {
            JobError::Keys(cause) => {
                tracing::error!(error = %cause, "key service failed");
                Problem::new(ProblemCode::Unavailable, None)
            }
            other => Problem::new(ProblemCode::BadRequest, Some(other.to_string())),
        })?;
    let claim = IdempotencyClaim {
        key,
        request_hash,
        retention: time::Duration::hours(i64::from(state.idempotency_retention_hours)),
    };
    // Detached, like every write: a client that hangs up does not cancel the transaction.
    let certificates = state.certificates.clone();
    let (outcome, batch) = tokio::spawn(async move {
        let outcome = certificates.issue(&batch, Some(&claim)).await;
        (outcome, batch)
    })
    .await
    .map_err(|e| apply_error(backbone_certificates::ApplyError::Unavailable(e.to_string())))?;
    let outcome = outcome.map_err(apply_error)?;
    if !outcome.replayed {
        state.metrics.issued.inc_by(outcome.issued);
        state.outbox_wakeup.notify_one();
    }
    let mut response = Json(UploadResponse {
        batch_id: batch.batch_id,
        job: job_no,
        issued: outcome.issued,
        already_issued: outcome.already_issued,
        duplicates: outcome.duplicates,
        rejected: rejected.len() as u64,
        rejected_rows: rejected,
    })
    .into_response();
    if outcome.replayed {
        response
            .headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    Ok(response)
}

#[utoipa::path(get, path = "/certificates/upload/batches/{id}", tag = "uploads",
    params(("id" = String, Path, description = "Batch id")),
    responses((status = 200, description = "Jobs received and issued, duplicate and rejected counts"),
              (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn batch_status(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    authenticate_for(&state, &headers, Scope::Upload)?;
    let view = state
        .store()
        .batch(&id)
        .await
        .map_err(|e| apply_error(e.into()))?
        .ok_or_else(|| {
            Problem::new(
                ProblemCode::CertificateNotFound,
                Some("no job of this batch was received".into()),
            )
        })?;
    Ok((StatusCode::OK, Json(view)).into_response())
}
