//! The progress file: which jobs of a batch the service acknowledged, so that a re-run skips them.
//!
//! Append-only text, one fsync'd line per acknowledged job:
//!
//! ```text
//! batch-loader progress v1 batch=<batch id> job_size=<n>
//! ack <job> <digest> <issued|-> <duplicates|->
//! ```
//!
//! `digest` is the first 16 bytes (hex) of SHA-256 over the job's exact JSON body. A re-run that
//! builds a different body for an acknowledged job number (the file or its order changed) stops
//! instead of skipping it. A torn last line (a crash mid-write) is ignored: that job is sent again,
//! which the service de-duplicates.

use crate::contract::UploadAck;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &str = "batch-loader progress v1";

pub type JobDigest = [u8; 16];

pub fn job_digest(body: &[u8]) -> JobDigest {
    let full = Sha256::digest(body);
    let mut d = [0u8; 16];
    d.copy_from_slice(&full[..16]);
    d
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledged {
    pub digest: JobDigest,
    /// Counts from the service (HTTP); `None` for Kafka, where the broker acknowledges.
    pub issued: Option<u64>,
    pub duplicates: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("progress file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "progress file {path} belongs to another run ({found}); use another --rejects path or remove it"
    )]
    Mismatch { path: PathBuf, found: String },
    #[error("progress file {path}, line {line}: unreadable")]
    Corrupt { path: PathBuf, line: usize },
}

pub struct Checkpoint {
    path: PathBuf,
    file: File,
    acked: HashMap<u32, Acknowledged>,
}

impl Checkpoint {
    /// Opens or creates the progress file of `batch_id` cut into jobs of `job_size`.
    pub fn open(path: &Path, batch_id: &str, job_size: usize) -> Result<Self, CheckpointError> {
        let io = |source| CheckpointError::Io {
            path: path.to_owned(),
            source,
        };
        let header = format!("{MAGIC} batch={batch_id} job_size={job_size}");
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io)?;
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io)?;
        let mut acked = HashMap::new();
        if text.is_empty() {
            file.write_all(format!("{header}\n").as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                // Make the new file's directory entry durable too.
                File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
            }
        } else {
            // Only newline-terminated lines count: a torn last line is dropped.
            let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
            let mut lines = complete.lines();
            let first = lines.next().unwrap_or_default();
            if first != header {
                return Err(CheckpointError::Mismatch {
                    path: path.to_owned(),
                    found: first.chars().take(120).collect(),
                });
            }
            for (i, line) in lines.enumerate() {
                let (job, ack) = parse_ack(line).ok_or(CheckpointError::Corrupt {
                    path: path.to_owned(),
                    line: i + 2,
                })?;
                acked.insert(job, ack);
            }
            if complete.len() != text.len() {
                // Cut the torn tail so the next append starts on a fresh line.
                file.set_len(complete.len() as u64).map_err(io)?;
            }
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            acked,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn acknowledged(&self, job: u32) -> Option<&Acknowledged> {
        self.acked.get(&job)
    }

    pub fn acknowledged_count(&self) -> usize {
        self.acked.len()
    }

    /// Records an acknowledged job durably (fsync) before returning.
    pub fn record(
        &mut self,
        job: u32,
        digest: JobDigest,
        ack: Option<&UploadAck>,
    ) -> Result<(), CheckpointError> {
        let count = |v: Option<u64>| v.map_or("-".to_owned(), |n| n.to_string());
        let issued = ack.map(|a| a.issued);
        let duplicates = ack.map(|a| a.duplicates);
        let line = format!(
            "ack {job} {} {} {}\n",
            hex::encode(digest),
            count(issued),
            count(duplicates)
        );
        let io = |source| CheckpointError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(line.as_bytes()).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.acked.insert(
            job,
            Acknowledged {
                digest,
                issued,
                duplicates,
            },
        );
        Ok(())
    }
}

fn parse_ack(line: &str) -> Option<(u32, Acknowledged)> {
    let mut parts = line.split(' ');
    if parts.next()? != "ack" {
        return None;
    }
    let job = parts.next()?.parse().ok()?;
    let mut digest = [0u8; 16];
    hex::decode_to_slice(parts.next()?, &mut digest).ok()?;
    let count = |s: &str| {
        if s == "-" {
            Some(None)
        } else {
            s.parse().ok().map(Some)
        }
    };
    let issued = count(parts.next()?)?;
    let duplicates = count(parts.next()?)?;
    if parts.next().is_some() {
        return None;
    }
    Some((
        job,
        Acknowledged {
            digest,
            issued,
            duplicates,
        },
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ack(job: u32) -> UploadAck {
        UploadAck {
            batch_id: "b1".into(),
            job,
            issued: 10,
            duplicates: 2,
        }
    }

    #[test]
    fn acknowledged_jobs_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let mut cp = Checkpoint::open(&path, "b1", 100).unwrap();
        cp.record(0, job_digest(b"zero"), Some(&ack(0))).unwrap();
        cp.record(2, job_digest(b"two"), None).unwrap();
        drop(cp);
        let cp = Checkpoint::open(&path, "b1", 100).unwrap();
        assert_eq!(cp.acknowledged_count(), 2);
        let zero = cp.acknowledged(0).unwrap();
        assert_eq!(
            (zero.digest, zero.issued, zero.duplicates),
            (job_digest(b"zero"), Some(10), Some(2))
        );
        assert_eq!(cp.acknowledged(2).unwrap().issued, None);
        assert!(cp.acknowledged(1).is_none());
    }

    #[test]
    fn another_batch_or_job_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        Checkpoint::open(&path, "b1", 100).unwrap();
        assert!(matches!(
            Checkpoint::open(&path, "b2", 100),
            Err(CheckpointError::Mismatch { .. })
        ));
        assert!(matches!(
            Checkpoint::open(&path, "b1", 50),
            Err(CheckpointError::Mismatch { .. })
        ));
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_appends_continue_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let mut cp = Checkpoint::open(&path, "b1", 100).unwrap();
        cp.record(0, job_digest(b"zero"), Some(&ack(0))).unwrap();
        drop(cp);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"ack 1 00ff").unwrap();
        drop(f);
        let mut cp = Checkpoint::open(&path, "b1", 100).unwrap();
        assert!(cp.acknowledged(1).is_none());
        cp.record(1, job_digest(b"one"), None).unwrap();
        drop(cp);
        let cp = Checkpoint::open(&path, "b1", 100).unwrap();
        assert_eq!(cp.acknowledged(1).unwrap().digest, job_digest(b"one"));
        assert_eq!(cp.acknowledged_count(), 2);
    }

    #[test]
    fn a_garbled_complete_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        std::fs::write(&path, format!("{MAGIC} batch=b1 job_size=100\nack x y\n")).unwrap();
        assert!(matches!(
            Checkpoint::open(&path, "b1", 100),
            Err(CheckpointError::Corrupt { line: 2, .. })
        ));
    }
}
