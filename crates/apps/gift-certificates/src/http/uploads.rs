//! Uploads of pre-generated codes over HTTP (`POST /certificates/upload/batch`), opening a
//! batch for uploads over Kafka (`PUT /certificates/upload/batches/{id}`), and batch totals.

use super::{apply_error, authenticate_for, required_idempotency_key, REPLAYED_HEADER};
use crate::auth::Scope;
use crate::problem::{Problem, ProblemCode};
use crate::state::AppState;
use crate::upload::{prepare, valid_batch_id, JobError, RejectedRow, UploadJob};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use backbone_certificates::store::{CertificateViews, IssueBatch, IssueOutcome, UploadBatches};
use backbone_certificates::{ApplyError, IdempotencyClaim};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct UploadResponse {
    /// Echo of the job's batch id.
    pub batch_id: String,
    /// Echo of the job's number.
    pub job: u32,
    /// Certificates this job created.
    pub issued: u64,
    /// Codes of this job issued by an earlier delivery of the same batch (a re-sent job
    /// under another key); left untouched.
    pub already_issued: u64,
    /// Codes that exist in another batch: left untouched, never overwritten.
    pub duplicates: u64,
    /// Rows refused before storage: `rejected_rows.len()`. `issued + already_issued +
    /// duplicates + rejected` is the job's certificate count.
    pub rejected: u64,
    /// Each refused row: its position in `certificates` (from 0) and why, in words that never
    /// quote the row.
    pub rejected_rows: Vec<RejectedRow>,
}

/// An upload batch as opened.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenedBatchResponse {
    pub batch_id: String,
    /// The channel whose token opened it first.
    pub opened_by: String,
    /// When it was opened (RFC 3339).
    pub opened_at: String,
}

/// A job that cannot be taken as a whole: the problem names the field, never its value.
fn job_problem(e: JobError) -> Problem {
    match e {
        JobError::Keys(cause) => {
            tracing::error!(error = %cause, "key service failed");
            Problem::new(ProblemCode::Unavailable, None)
        }
        other => Problem::new(ProblemCode::BadRequest, Some(other.to_string())),
    }
}

#[utoipa::path(post, path = "/certificates/upload/batch", tag = "uploads",
    params(("Idempotency-Key" = String, Header, description = "`<batch_id>:<job>` by convention")),
    request_body = UploadJob,
    responses((status = 200, body = UploadResponse, description = "Valid rows issued; invalid rows listed with reasons. The job's batch is opened if it was not."),
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
    // serde's message may quote a value, which could be a code: keep only its position.
    let job: UploadJob = serde_json::from_slice(&body).map_err(|e| {
        Problem::new(
            ProblemCode::BadRequest,
            Some(format!(
                "the body is not an upload job (JSON error at line {} column {})",
                e.line(),
                e.column()
            )),
        )
    })?;
    let job_no = job.job;
    let (batch, rejected) = prepare(
        state.keys.as_ref(),
        job,
        channel,
        Some(crate::desk::source_event(channel, &key)),
    )
    .map_err(job_problem)?;
    let claim = IdempotencyClaim {
        key,
        request_hash,
        retention: time::Duration::hours(i64::from(state.idempotency_retention_hours)),
    };
    // Detached, like every write: a client that hangs up cancels neither the transaction nor
    // what follows its commit (the metric, the relay's wake-up).
    let writer = state.clone();
    let (outcome, batch) = tokio::spawn(async move {
        let outcome = write_job(&writer, &batch, &claim).await;
        (outcome, batch)
    })
    .await
    .map_err(|e| apply_error(ApplyError::Unavailable(e.to_string())))?;
    let outcome = outcome.map_err(apply_error)?;
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

/// Opens the job's batch (an upload over HTTP opens it implicitly), issues the job, and counts
/// what it issued.
async fn write_job(
    state: &AppState,
    batch: &IssueBatch,
    claim: &IdempotencyClaim,
) -> Result<IssueOutcome, ApplyError> {
    state.store().open_batch(&batch.batch_id, batch.channel).await?;
    let outcome = state.certificates.issue(batch, Some(claim)).await?;
    if !outcome.replayed {
        state.metrics.issued.inc_by(outcome.issued);
        state.outbox_wakeup.notify_one();
    }
    Ok(outcome)
}

#[utoipa::path(put, path = "/certificates/upload/batches/{id}", tag = "uploads",
    params(("id" = String, Path, description = "Batch id: 1-64 characters from `A-Z a-z 0-9 . _ -`")),
    responses((status = 201, body = OpenedBatchResponse, description = "The batch is now open: jobs of it are taken from the upload topic"),
              (status = 200, body = OpenedBatchResponse, description = "The batch was open already (its first opener and time)"),
              (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn open_batch(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let channel = authenticate_for(&state, &headers, Scope::Upload)?;
    if !valid_batch_id(&id) {
        return Err(job_problem(JobError::BatchId));
    }
    let (opened, new) = state
        .store()
        .open_batch(&id, channel)
        .await
        .map_err(|e| apply_error(e.into()))?;
    let status = if new { StatusCode::CREATED } else { StatusCode::OK };
    let body = OpenedBatchResponse {
        batch_id: opened.batch_id,
        opened_by: opened.opened_by.as_str().to_owned(),
        opened_at: opened
            .opened_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    };
    Ok((status, Json(body)).into_response())
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
