//! The upload-job contract shared with the gift-certificates service
//! (`docs/batch-upload-contract.md`). Change both sides together, with a new `version`.

use serde::{Deserialize, Serialize};
use std::fmt;

pub const CONTRACT_VERSION: u32 = 1;
pub const UPLOAD_PATH: &str = "/certificates/upload/batch";
pub const UPLOAD_TOPIC: &str = "GiftCertificateUpload";
/// Where a batch is opened (`PUT`) and its totals read (`GET`); the id is one of
/// [`validate_batch_id`]'s, safe in a path as it is.
pub fn batch_path(batch_id: &str) -> String {
    format!("/certificates/upload/batches/{batch_id}")
}
/// Most certificates in one job: keeps a Kafka record under the default 1 MB limit.
pub const MAX_JOB_SIZE: usize = 5_000;

/// One job: a slice of a batch, numbered from 0 in file order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadJob {
    pub version: u32,
    pub batch_id: String,
    pub job: u32,
    pub certificates: Vec<UploadCertificate>,
}

/// One pre-generated certificate: the code normalised (16 characters, no separators).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadCertificate {
    pub code: String,
    pub cvc: String,
    pub nominal_minor: i64,
    pub currency: String,
    /// RFC 3339 in UTC, or `null` for no expiry.
    pub expires_at: Option<String>,
}

impl fmt::Debug for UploadCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let last4 = self.code.get(self.code.len().saturating_sub(4)..).unwrap_or("");
        f.debug_struct("UploadCertificate")
            .field("code", &backbone_certificates::code::mask_last4(last4))
            .field("cvc", &"***")
            .field("nominal_minor", &self.nominal_minor)
            .field("currency", &self.currency)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The service's answer to a job over HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadAck {
    pub batch_id: String,
    pub job: u32,
    /// Certificates issued by this job.
    pub issued: u64,
    /// Codes that already existed (in this or another batch); never overwritten.
    pub duplicates: u64,
}

/// `Idempotency-Key` of a job over HTTP.
pub fn idempotency_key(batch_id: &str, job: u32) -> String {
    format!("{batch_id}:{job}")
}

/// A batch id: 1 to 64 characters from `A-Z a-z 0-9 . _ -`, so that it is safe in keys, headers
/// and file names.
pub fn validate_batch_id(id: &str) -> Result<(), String> {
    if (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Ok(())
    } else {
        Err("a batch id has 1 to 64 characters from A-Z a-z 0-9 . _ -".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_ids_follow_the_contract() {
        for good in ["spring-2027-rub-5000", "a", "A.b_c-9", &"x".repeat(64)] {
            assert_eq!(validate_batch_id(good), Ok(()), "{good}");
        }
        for bad in ["", "bad id!", "ü-batch", &"x".repeat(65), "a/b", "a:b", "tab\t"] {
            assert!(validate_batch_id(bad).is_err(), "{bad:?}");
        }
    }
}
