//! Uploads of pre-generated codes (`POST /certificates/upload/batch` and the
//! `GiftCertificateUpload` topic share this): validate every row, seal the CVCs, issue the valid
//! rows in one statement, report the rest with their reasons. Neither codes nor CVCs appear in
//! a reason.

use crate::api::apply_error;
use crate::auth::Scope;
use crate::problem::{Problem, ProblemCode};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use backbone_certificates::store::{CertificateViews, IssueBatch, NewCertificate};
use backbone_certificates::{Amount, CodeKeys, Currency, Cvc, GiftCode, IdempotencyClaim};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::Arc;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

/// Most rows one job may carry.
pub const MAX_ROWS: usize = 10_000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadJob {
    pub version: u16,
    pub batch_id: String,
    pub job: u32,
    pub certificates: Vec<UploadRow>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadRow {
    pub code: String,
    pub cvc: String,
    pub nominal_minor: i64,
    pub currency: String,
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>)]
    pub expires_at: Option<OffsetDateTime>,
}

impl std::fmt::Debug for UploadRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadRow")
            .field("code", &"***")
            .field("cvc", &"***")
            .field("nominal_minor", &self.nominal_minor)
            .field("currency", &self.currency)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RejectedRow {
    /// Position in `certificates`, from 0.
    pub index: usize,
    pub reason: String,
}

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

/// Why a job as a whole cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("unsupported version {0}; this service reads version 1")]
    Version(u16),
    #[error("batch_id must be 1..=128 printable characters")]
    BatchId,
    #[error("a job carries 1..={MAX_ROWS} certificates")]
    Size,
    #[error("sealing a CVC failed: {0}")]
    Keys(String),
}

/// Validates and seals a job's rows.
pub fn prepare(
    keys: &dyn CodeKeys,
    job: UploadJob,
    channel: &str,
    source_event: Option<String>,
) -> Result<(IssueBatch, Vec<RejectedRow>), JobError> {
    if job.version != 1 {
        return Err(JobError::Version(job.version));
    }
    if job.batch_id.is_empty() || job.batch_id.len() > 128 || job.batch_id.chars().any(char::is_control) {
        return Err(JobError::BatchId);
    }
    if job.certificates.is_empty() || job.certificates.len() > MAX_ROWS {
        return Err(JobError::Size);
    }
    let mut rejected = Vec::new();
    let mut certificates = Vec::with_capacity(job.certificates.len());
    let mut seen = HashSet::with_capacity(job.certificates.len());
    for (index, row) in job.certificates.into_iter().enumerate() {
        let reject = |reason: &str| RejectedRow {
            index,
            reason: reason.to_owned(),
        };
        let code = match GiftCode::parse(&row.code) {
            Ok(c) => c,
            Err(e) => {
                rejected.push(reject(&e.to_string()));
                continue;
            }
        };
        let Ok(cvc) = Cvc::parse(&row.cvc) else {
            rejected.push(reject("the CVC is not 3 or 4 digits"));
            continue;
        };
        let Ok(currency) = Currency::parse(&row.currency) else {
            rejected.push(reject("currency is not an ISO 4217 code"));
            continue;
        };
        let Ok(nominal) = Amount::new(row.nominal_minor, currency) else {
            rejected.push(reject("nominal_minor must be greater than zero"));
            continue;
        };
        if !seen.insert(code.expose().to_owned()) {
            rejected.push(reject("the same code appears earlier in this job"));
            continue;
        }
        let digest = keys.code_digest(&code);
        let sealed_cvc = keys
            .seal_cvc(&digest, &cvc)
            .map_err(|e| JobError::Keys(e.to_string()))?;
        certificates.push(NewCertificate {
            id: Uuid::now_v7(),
            code_digest: digest,
            code_last4: code.last4().to_owned(),
            nominal,
            expires_at: row.expires_at,
            cvc_verifier: keys.cvc_verifier(&digest, &cvc),
            sealed_cvc,
        });
    }
    Ok((
        IssueBatch {
            batch_id: job.batch_id,
            job: job.job,
            rejected: u32::try_from(rejected.len()).unwrap_or(u32::MAX),
            certificates,
            channel: channel.to_owned(),
            initiator: None,
            source_event,
        },
        rejected,
    ))
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
    let channel = crate::api::authenticate_for(&state, &headers, Scope::Upload)?;
    let key = crate::api::required_idempotency_key(&headers)?;
    let request_hash: [u8; 32] = Sha256::new()
        .chain_update(b"upload\0")
        .chain_update(&body)
        .finalize()
        .into();
    let job: UploadJob = serde_json::from_slice(&body)
        .map_err(|e| Problem::new(ProblemCode::BadRequest, Some(format!("invalid JSON body: {e}"))))?;
    let job_no = job.job;
    let (batch, rejected) = prepare(
        state.keys.as_ref(),
        job,
        channel.as_str(),
        Some(format!("http:{key}")),
    )
    .map_err(|e| match e {
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
            .insert(crate::api::REPLAYED_HEADER, HeaderValue::from_static("true"));
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
    crate::api::authenticate_for(&state, &headers, Scope::Upload)?;
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
