//! Upload jobs of pre-generated codes (`POST /certificates/upload/batch` and the
//! `GiftCertificateUpload` topic share this): validate every row and seal the CVCs; the valid
//! rows are issued in one statement, the rest reported with their reasons. Neither codes nor
//! CVCs appear in a reason.

use backbone_certificates::code::CodeError;
use backbone_certificates::store::{IssueBatch, NewCertificate};
use backbone_certificates::{Amount, Channel, CodeKeys, Currency, Cvc, GiftCode};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

/// Most rows one job may carry (`docs/batch-upload-contract.md`): keeps a Kafka record under
/// the default 1 MB limit.
pub const MAX_ROWS: usize = 5_000;
/// Longest batch id, in characters (all ASCII).
pub const MAX_BATCH_ID: usize = 64;

/// A batch id as the contract allows it: 1 to 64 characters from `A-Z a-z 0-9 . _ -`, safe in
/// keys, headers, file names and operation ids.
pub fn valid_batch_id(id: &str) -> bool {
    (1..=MAX_BATCH_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadJob {
    /// `1`.
    #[schema(minimum = 1, maximum = 1)]
    pub version: u16,
    /// 1-64 characters of `A-Z a-z 0-9 . _ -`.
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$", min_length = 1, max_length = 64)]
    pub batch_id: String,
    /// The job's number within its batch, from 0.
    #[schema(minimum = 0)]
    pub job: u32,
    #[schema(min_items = 1, max_items = 5000)]
    pub certificates: Vec<UploadRow>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadRow {
    /// The normalised code: 16 characters of `ABCDEFGHJKLMNPQRSTUVWXYZ23456789` with a valid
    /// check character.
    #[schema(pattern = r"^[A-HJ-NP-Z2-9]{16}$", min_length = 16, max_length = 16)]
    pub code: String,
    #[schema(pattern = r"^[0-9]{3,4}$", min_length = 3, max_length = 4)]
    pub cvc: String,
    #[schema(minimum = 1)]
    pub nominal_minor: i64,
    #[schema(pattern = r"^[A-Z]{3}$", min_length = 3, max_length = 3)]
    pub currency: String,
    /// RFC 3339, in the future; `null` for no expiry.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
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
    /// Why, in one of the fixed texts of [`RowReason`]: never a part of the row.
    pub reason: String,
}

impl RejectedRow {
    pub fn new(index: usize, reason: RowReason) -> Self {
        Self {
            index,
            reason: reason.text().to_owned(),
        }
    }
}

/// Why a row is not issued: a closed set of fixed texts (`docs/batch-upload-contract.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowReason {
    CodeFormat,
    CodeCheckCharacter,
    Cvc,
    Currency,
    Nominal,
    Expired,
    RepeatedInJob,
}

impl RowReason {
    pub const ALL: [RowReason; 7] = [
        RowReason::CodeFormat,
        RowReason::CodeCheckCharacter,
        RowReason::Cvc,
        RowReason::Currency,
        RowReason::Nominal,
        RowReason::Expired,
        RowReason::RepeatedInJob,
    ];

    pub fn text(self) -> &'static str {
        match self {
            RowReason::CodeFormat => "a certificate code has 16 characters from the code alphabet",
            RowReason::CodeCheckCharacter => "the certificate code's check character does not match",
            RowReason::Cvc => "the CVC is not 3 or 4 digits",
            RowReason::Currency => "currency is not an ISO 4217 code",
            RowReason::Nominal => "nominal_minor must be greater than zero",
            RowReason::Expired => "expires_at is not in the future",
            RowReason::RepeatedInJob => "the same code appears earlier in this job",
        }
    }
}

/// One row's fields, checked in this order; the first that fails is the reason.
fn check_row(row: &UploadRow, now: OffsetDateTime) -> Result<(GiftCode, Cvc, Amount), RowReason> {
    let code = GiftCode::parse(&row.code).map_err(|e| match e {
        CodeError::CheckCharacter => RowReason::CodeCheckCharacter,
        _ => RowReason::CodeFormat,
    })?;
    let cvc = Cvc::parse(&row.cvc).map_err(|_| RowReason::Cvc)?;
    let currency = Currency::parse(&row.currency).map_err(|_| RowReason::Currency)?;
    let nominal = Amount::new(row.nominal_minor, currency).map_err(|_| RowReason::Nominal)?;
    if row.expires_at.is_some_and(|at| at <= now) {
        return Err(RowReason::Expired);
    }
    Ok((code, cvc, nominal))
}

/// Why a job as a whole cannot be taken. The words name the field, never its value.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("version: this service reads version 1 only")]
    Version,
    #[error("batch_id: 1 to {MAX_BATCH_ID} characters from A-Z a-z 0-9 . _ -")]
    BatchId,
    #[error("certificates: a job carries 1 to {MAX_ROWS} certificates")]
    Size,
    #[error("sealing a CVC failed: {0}")]
    Keys(String),
}

/// Checks what concerns the job as a whole: version, batch id, size.
pub fn check_job(job: &UploadJob) -> Result<(), JobError> {
    if job.version != 1 {
        return Err(JobError::Version);
    }
    if !valid_batch_id(&job.batch_id) {
        return Err(JobError::BatchId);
    }
    if job.certificates.is_empty() || job.certificates.len() > MAX_ROWS {
        return Err(JobError::Size);
    }
    Ok(())
}

/// Validates and seals a job's rows: the one validation of uploads over HTTP and Kafka. A job
/// invalid as a whole is an error; each invalid row is listed with its reason (which never
/// quotes the row), and the rest are ready to issue. A row that expires at or before `now`
/// is rejected, not issued.
pub fn prepare(
    keys: &dyn CodeKeys,
    job: UploadJob,
    channel: Channel,
    source_event: Option<String>,
) -> Result<(IssueBatch, Vec<RejectedRow>), JobError> {
    prepare_at(keys, job, channel, source_event, OffsetDateTime::now_utc())
}

/// [`prepare`] as of `now`.
pub fn prepare_at(
    keys: &dyn CodeKeys,
    job: UploadJob,
    channel: Channel,
    source_event: Option<String>,
    now: OffsetDateTime,
) -> Result<(IssueBatch, Vec<RejectedRow>), JobError> {
    check_job(&job)?;
    let mut rejected = Vec::new();
    let mut certificates = Vec::with_capacity(job.certificates.len());
    let mut seen = HashSet::with_capacity(job.certificates.len());
    for (index, row) in job.certificates.into_iter().enumerate() {
        let (code, cvc, nominal) = match check_row(&row, now) {
            Ok(valid) => valid,
            Err(reason) => {
                rejected.push(RejectedRow::new(index, reason));
                continue;
            }
        };
        if !seen.insert(code.expose().to_owned()) {
            rejected.push(RejectedRow::new(index, RowReason::RepeatedInJob));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_ids_follow_the_contract() {
        for good in ["spring-2027-rub-5000", "a", "A.b_c-9", &"x".repeat(MAX_BATCH_ID)] {
            assert!(valid_batch_id(good), "{good}");
        }
        for bad in [
            "",
            "bad id!",
            "ü-batch",
            &"x".repeat(MAX_BATCH_ID + 1),
            "a/b",
            "a:b",
            "a\0b",
        ] {
            assert!(!valid_batch_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn row_reasons_are_distinct_fixed_texts() {
        let mut texts: Vec<&str> = RowReason::ALL.iter().map(|r| r.text()).collect();
        texts.sort_unstable();
        texts.dedup();
        assert_eq!(texts.len(), RowReason::ALL.len());
    }
}
