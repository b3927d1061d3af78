//! An upload job (`docs/batch-upload-contract.md`) from arbitrary bytes, through the service's one
//! validation of HTTP and Kafka jobs, `gift_certificates::upload::prepare_at`, with a fixed
//! in-memory key set.
//!
//! - Nothing panics.
//! - A job is refused as a whole exactly when the contract says so (version 1, a batch id of 1-64
//!   characters from `A-Z a-z 0-9 . _ -`, 1 to 5,000 certificates), with one of the fixed texts.
//! - Otherwise every row is accounted for once: to be issued, or rejected at its index (in order)
//!   with one of the fixed reasons, which quote nothing of the row; the batch record's rejected
//!   count agrees; no row expiring at or before `now` is to be issued; no code is issued twice.
#![no_main]

use backbone_certificates::Channel;
use backbone_kms::{DataKeyPolicy, EnvelopeCodeKeys, LocalKeyRing, LocalMasterKey};
use gift_certificates::upload::{prepare_at, valid_batch_id, JobError, RowReason, UploadJob, MAX_ROWS};
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use std::sync::{Arc, LazyLock};
use time::OffsetDateTime;

static KEYS: LazyLock<EnvelopeCodeKeys> = LazyLock::new(|| {
    let master = LocalMasterKey::from_bytes(&[7; 32]);
    let digests = master.digest_keys();
    EnvelopeCodeKeys::new(
        Arc::new(LocalKeyRing::new(master, Vec::new())),
        digests,
        DataKeyPolicy::default(),
    )
});

/// 2026-01-01T00:00:00Z: a fixed "now", so that a run is repeatable.
const NOW: i64 = 1_767_225_600;

fuzz_target!(|data: &[u8]| {
    let Ok(job) = serde_json::from_slice::<UploadJob>(data) else {
        return;
    };
    let now = OffsetDateTime::from_unix_timestamp(NOW).expect("a valid time");
    let rows = job.certificates.len();
    let allowed = job.version == 1 && valid_batch_id(&job.batch_id) && (1..=MAX_ROWS).contains(&rows);
    let expiring: Vec<bool> = job
        .certificates
        .iter()
        .map(|r| r.expires_at.is_some_and(|at| at <= now))
        .collect();
    let job_texts: Vec<String> = [JobError::Version, JobError::BatchId, JobError::Size]
        .iter()
        .map(ToString::to_string)
        .collect();
    let reasons: Vec<&str> = RowReason::ALL.iter().map(|r| r.text()).collect();

    match prepare_at(&*KEYS, job, Channel::BatchLoader, None, now) {
        Err(JobError::Keys(e)) => panic!("the in-memory keys failed: {e}"),
        Err(e) => {
            assert!(!allowed, "a job the contract allows was refused: {e}");
            assert!(job_texts.contains(&e.to_string()), "an unexpected text: {e}");
        }
        Ok((batch, rejected)) => {
            assert!(allowed, "a job the contract forbids was taken");
            assert_eq!(
                batch.certificates.len() + rejected.len(),
                rows,
                "a row is lost or doubled"
            );
            assert_eq!(batch.rejected as usize, rejected.len());
            assert!(
                rejected.windows(2).all(|w| w[0].index < w[1].index),
                "rejected rows out of order or twice"
            );
            for r in &rejected {
                assert!(r.index < rows);
                assert!(
                    reasons.contains(&r.reason.as_str()),
                    "an unexpected reason: {}",
                    r.reason
                );
            }
            let rejected_at: HashSet<usize> = rejected.iter().map(|r| r.index).collect();
            for (i, expired) in expiring.iter().enumerate() {
                assert!(
                    !expired || rejected_at.contains(&i),
                    "row {i} has expired and is issued"
                );
            }
            let digests: HashSet<[u8; 32]> = batch.certificates.iter().map(|c| c.code_digest.0).collect();
            assert_eq!(digests.len(), batch.certificates.len(), "a code is issued twice");
            for c in &batch.certificates {
                assert!(c.expires_at.is_none_or(|at| at > now));
            }
        }
    }
});
