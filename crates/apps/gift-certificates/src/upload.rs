//! Upload jobs of pre-generated codes (`POST /certificates/upload/batch` and the
//! `GiftCertificateUpload` topic share this): validate every row and seal the CVCs; the valid
//! rows are issued in one statement, the rest reported with their reasons. Neither codes nor
//! CVCs appear in a reason.

use backbone_certificates::store::{IssueBatch, NewCertificate};
use backbone_certificates::{Amount, Channel, CodeKeys, Currency, Cvc, GiftCode};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
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
    channel: Channel,
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
            channel,
            initiator: None,
            source_event,
        },
        rejected,
    ))
}
