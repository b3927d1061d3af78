//! `load`: stream the file, validate every row, write rejects, cut the rest into jobs and send
//! them, skipping jobs the progress file says were acknowledged.
//!
//! Jobs are numbered from 0 and hold `job_size` accepted rows each, in file order, so the same file
//! and job size always give the same jobs with byte-identical bodies. A reading thread feeds a
//! bounded queue; at most `concurrency` jobs are in flight; memory is the de-duplication set plus
//! a few jobs, whatever the file size.

use crate::checkpoint::{job_digest, Checkpoint, JobDigest};
use crate::contract::{UploadAck, UploadJob, CONTRACT_VERSION, MAX_JOB_SIZE};
use crate::dedup::SeenCodes;
use crate::format::RejectReason;
use crate::progress::{Counters, Progress, ProgressMode};
use crate::reader::BatchReader;
use crate::sink::{OutgoingJob, SendError, Sink};
use anyhow::Context;
use rand::Rng;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub file: PathBuf,
    pub batch_id: String,
    pub job_size: usize,
    pub rejects: PathBuf,
    /// Jobs in flight at once.
    pub concurrency: usize,
    /// Tries per job before the run stops (it can be resumed).
    pub max_attempts: u32,
    /// First backoff; doubles per try, with jitter, up to 30 s.
    pub retry_base: Duration,
    pub progress: ProgressMode,
    pub progress_every: Duration,
}

impl LoadOptions {
    pub fn new(file: impl Into<PathBuf>, batch_id: impl Into<String>) -> Self {
        let file = file.into();
        let batch_id = batch_id.into();
        Self {
            rejects: default_rejects_path(&file, &batch_id),
            file,
            batch_id,
            job_size: 1_000,
            concurrency: 4,
            max_attempts: 8,
            retry_base: Duration::from_millis(200),
            progress: ProgressMode::Auto,
            progress_every: Duration::from_secs(5),
        }
    }

    /// The progress file: next to the reject file.
    pub fn progress_path(&self) -> PathBuf {
        let mut p = self.rejects.clone().into_os_string();
        p.push(".progress");
        p.into()
    }
}

/// `FILE.BATCH_ID.rejects.csv`: each batch of a file has its own reject and progress files.
pub fn default_rejects_path(file: &Path, batch_id: &str) -> PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(format!(".{batch_id}.rejects.csv"));
    p.into()
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub rows: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub duplicates_in_file: u64,
    pub jobs: u64,
    pub jobs_sent: u64,
    /// Acknowledged by an earlier run and not sent again.
    pub jobs_skipped: u64,
    /// Issued and already-existing codes as the service counted them (HTTP only).
    pub issued: Option<u64>,
    pub duplicates_at_service: Option<u64>,
    pub elapsed: Duration,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = |v: Option<u64>| v.map_or("n/a".to_owned(), |n| n.to_string());
        write!(
            f,
            "rows {} accepted {} rejected {} (duplicates in file {}) jobs {} (sent {}, skipped as acknowledged {}) \
             issued {} duplicates at service {} time {:.2}s",
            self.rows,
            self.accepted,
            self.rejected,
            self.duplicates_in_file,
            self.jobs,
            self.jobs_sent,
            self.jobs_skipped,
            opt(self.issued),
            opt(self.duplicates_at_service),
            self.elapsed.as_secs_f64()
        )
    }
}

/// A job the service or broker acknowledged: number, digest, the service's counts (HTTP).
type Sent = (u32, JobDigest, Option<UploadAck>);

struct ReadyJob {
    job: OutgoingJob,
    digest: JobDigest,
}

#[derive(Default)]
struct ReadTotals {
    rows: u64,
    accepted: u64,
    rejected: u64,
    duplicates_in_file: u64,
    jobs: u64,
}

fn create_private(path: &Path) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

/// The reading side, on a blocking thread.
fn read_file(
    options: &LoadOptions,
    tx: mpsc::Sender<ReadyJob>,
    counters: &Counters,
) -> anyhow::Result<ReadTotals> {
    let file = File::open(&options.file).with_context(|| format!("{}", options.file.display()))?;
    let mut reader =
        BatchReader::new(file).map_err(|e| anyhow::anyhow!("{}: {e}", options.file.display()))?;
    let mut rejects = open_rejects(&options.rejects)?;

    let mut seen = SeenCodes::new();
    let mut totals = ReadTotals::default();
    let mut current = Vec::with_capacity(options.job_size);
    let mut next_job: u32 = 0;
    let emit = |certificates, job| ready_job(&options.batch_id, certificates, job);
    while let Some(row) = reader.next_row()? {
        totals.rows += 1;
        counters.rows.fetch_add(1, Ordering::Relaxed);
        counters
            .bytes
            .store(row.record.position().map_or(0, |p| p.byte()), Ordering::Relaxed);
        let outcome = row.outcome.and_then(|(code, cert)| {
            if seen.insert(code.expose()) {
                Ok(cert)
            } else {
                Err(RejectReason::DuplicateInFile)
            }
        });
        match outcome {
            Ok(cert) => {
                totals.accepted += 1;
                counters.accepted.fetch_add(1, Ordering::Relaxed);
                current.push(cert);
                if current.len() == options.job_size {
                    let full = std::mem::replace(&mut current, Vec::with_capacity(options.job_size));
                    let ready = emit(full, next_job)?;
                    next_job += 1;
                    totals.jobs += 1;
                    if tx.blocking_send(ready).is_err() {
                        // The sending side stopped on an error; it reports it.
                        break;
                    }
                }
            }
            Err(reason) => {
                totals.rejected += 1;
                if reason == RejectReason::DuplicateInFile {
                    totals.duplicates_in_file += 1;
                }
                counters.rejected.fetch_add(1, Ordering::Relaxed);
                write_reject(&mut rejects, row.line, reason, row.record)?;
            }
        }
    }
    if !current.is_empty() {
        let ready = emit(std::mem::take(&mut current), next_job)?;
        totals.jobs += 1;
        let _ = tx.blocking_send(ready);
    }
    counters.bytes.store(reader.bytes_read(), Ordering::Relaxed);
    close_rejects(rejects)?;
    Ok(totals)
}

type RejectFile = csv::Writer<std::io::BufWriter<File>>;

/// The reject file holds rejected rows, CVCs included: owner-only like the input.
fn open_rejects(path: &std::path::Path) -> anyhow::Result<RejectFile> {
    let file = create_private(path).with_context(|| format!("reject file {}", path.display()))?;
    let mut rejects = csv::Writer::from_writer(std::io::BufWriter::new(file));
    rejects.write_record(["line", "reason", "record"])?;
    Ok(rejects)
}

fn write_reject(
    rejects: &mut RejectFile,
    line: u64,
    reason: RejectReason,
    record: &csv::ByteRecord,
) -> anyhow::Result<()> {
    let raw: Vec<String> = record
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    rejects.write_record([line.to_string(), reason.code().to_owned(), raw.join(",")])?;
    Ok(())
}

/// Flushed and synced: the reject file is complete once the load returns.
fn close_rejects(rejects: RejectFile) -> anyhow::Result<()> {
    let file = rejects
        .into_inner()
        .map_err(|e| anyhow::anyhow!("reject file: {}", e.error()))?
        .into_inner()
        .map_err(|e| anyhow::anyhow!("reject file: {}", e.error()))?;
    file.sync_all()?;
    Ok(())
}

/// One job of the batch, serialised once: its body is what is sent and what its digest covers.
fn ready_job(
    batch_id: &str,
    certificates: Vec<crate::contract::UploadCertificate>,
    job: u32,
) -> anyhow::Result<ReadyJob> {
    let job_body = UploadJob {
        version: CONTRACT_VERSION,
        batch_id: batch_id.to_owned(),
        job,
        certificates,
    };
    let body = serde_json::to_vec(&job_body)?;
    Ok(ReadyJob {
        digest: job_digest(&body),
        job: OutgoingJob {
            job,
            certificates: job_body.certificates.len(),
            body,
        },
    })
}

fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base
        .saturating_mul(1 << attempt.min(16))
        .min(Duration::from_secs(30));
    // Full jitter on the upper half keeps retries of parallel jobs apart.
    let half = exp / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

async fn send_with_retries(
    sink: Arc<Sink>,
    ready: ReadyJob,
    options: Arc<LoadOptions>,
    progress: Arc<Progress>,
) -> Result<Sent, SendError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match sink.send(&ready.job).await {
            Ok(ack) => return Ok((ready.job.job, ready.digest, ack)),
            Err(SendError::Retryable { reason, retry_after }) if attempt < options.max_attempts => {
                let wait = retry_after
                    .unwrap_or_else(|| backoff(options.retry_base, attempt - 1))
                    .min(Duration::from_secs(30));
                progress.counters.retries.fetch_add(1, Ordering::Relaxed);
                progress.note(&format!(
                    "{reason}; try {attempt} of {}, again in {} ms",
                    options.max_attempts,
                    wait.as_millis()
                ));
                tokio::time::sleep(wait).await;
            }
            Err(SendError::Retryable { reason, .. }) => {
                return Err(SendError::Fatal(format!(
                    "{reason}; gave up after {attempt} tries"
                )))
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs a load. An error leaves the progress file with every job acknowledged so far; running
/// again with the same file, batch id and job size finishes the batch.
fn check_options(options: &LoadOptions) -> anyhow::Result<()> {
    crate::contract::validate_batch_id(&options.batch_id).map_err(anyhow::Error::msg)?;
    if !(1..=MAX_JOB_SIZE).contains(&options.job_size) {
        anyhow::bail!("--job-size must be 1..={MAX_JOB_SIZE}");
    }
    if options.concurrency == 0 || options.max_attempts == 0 {
        anyhow::bail!("--concurrency and --max-attempts must be at least 1");
    }
    Ok(())
}

/// What the service said it issued and found duplicate, over the acknowledged jobs; unknown
/// once one acknowledgement did not say.
#[derive(Default)]
struct Tally {
    issued: u64,
    duplicates: u64,
    unknown: bool,
}

impl Tally {
    fn add(&mut self, issued: Option<u64>, duplicates: Option<u64>) {
        match (issued, duplicates) {
            (Some(i), Some(d)) => {
                self.issued += i;
                self.duplicates += d;
            }
            _ => self.unknown = true,
        }
    }
}

/// A job acknowledged by an earlier run may be skipped only if it is the same job.
fn check_resumed(earlier: &JobDigest, ready: &ReadyJob, batch_id: &str) -> anyhow::Result<()> {
    if *earlier != ready.digest {
        anyhow::bail!(
            "job {} differs from the one acknowledged earlier for batch {batch_id}: the file, its order or \
             the job size changed; load it under a new batch id",
            ready.job.job
        );
    }
    Ok(())
}

/// Opens the batch at the service (over Kafka), retrying what is worth another try.
async fn open_batch(sink: &Sink, options: &LoadOptions) -> anyhow::Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match sink.open_batch().await {
            Ok(()) => return Ok(()),
            Err(SendError::Retryable { reason, retry_after }) if attempt < options.max_attempts => {
                let wait = retry_after
                    .unwrap_or_else(|| backoff(options.retry_base, attempt - 1))
                    .min(Duration::from_secs(30));
                eprintln!("{reason}; try {attempt} of {}", options.max_attempts);
                tokio::time::sleep(wait).await;
            }
            Err(SendError::Retryable { reason, .. }) => {
                anyhow::bail!("{reason}; gave up after {attempt} tries; nothing was sent")
            }
            Err(SendError::Fatal(reason)) => anyhow::bail!("{reason}; nothing was sent"),
        }
    }
}

pub async fn load(options: LoadOptions, sink: Arc<Sink>) -> anyhow::Result<Summary> {
    let started = Instant::now();
    check_options(&options)?;
    open_batch(&sink, &options).await?;
    let total_bytes = std::fs::metadata(&options.file)
        .with_context(|| format!("{}", options.file.display()))?
        .len();
    let mut checkpoint = Checkpoint::open(&options.progress_path(), &options.batch_id, options.job_size)?;
    let options = Arc::new(options);
    let progress = Arc::new(Progress::start(
        options.progress,
        total_bytes,
        options.progress_every,
    ));

    let (tx, mut rx) = mpsc::channel::<ReadyJob>(options.concurrency * 2);
    let reader = tokio::task::spawn_blocking({
        let options = options.clone();
        let progress = progress.clone();
        move || read_file(&options, tx, &progress.counters)
    });

    let mut summary = Summary::default();
    let mut counts = Tally::default();
    let mut failure: Option<anyhow::Error> = None;
    let mut inflight = JoinSet::new();
    let finished = |result: Result<Result<Sent, SendError>, tokio::task::JoinError>,
                    checkpoint: &mut Checkpoint,
                    summary: &mut Summary,
                    counts: &mut Tally|
     -> anyhow::Result<()> {
        let (job, digest, ack) = result??;
        checkpoint.record(job, digest, ack.as_ref())?;
        summary.jobs_sent += 1;
        progress.counters.jobs_sent.fetch_add(1, Ordering::Relaxed);
        counts.add(ack.as_ref().map(|a| a.issued), ack.as_ref().map(|a| a.duplicates));
        Ok(())
    };

    'receive: while let Some(ready) = rx.recv().await {
        if let Some(prev) = checkpoint.acknowledged(ready.job.job) {
            if let Err(e) = check_resumed(&prev.digest, &ready, &options.batch_id) {
                failure = Some(e);
                break;
            }
            summary.jobs_skipped += 1;
            progress.counters.jobs_skipped.fetch_add(1, Ordering::Relaxed);
            counts.add(prev.issued, prev.duplicates);
            continue;
        }
        while inflight.len() >= options.concurrency {
            if let Some(done) = inflight.join_next().await {
                if let Err(e) = finished(done, &mut checkpoint, &mut summary, &mut counts) {
                    failure = Some(e);
                    break 'receive;
                }
            }
        }
        inflight.spawn(send_with_retries(
            sink.clone(),
            ready,
            options.clone(),
            progress.clone(),
        ));
    }
    // Stop the reader if we broke off, then record whatever is still in flight.
    drop(rx);
    while let Some(done) = inflight.join_next().await {
        if let Err(e) = finished(done, &mut checkpoint, &mut summary, &mut counts) {
            failure.get_or_insert(e);
        }
    }
    if let Sink::Kafka(k) = sink.as_ref() {
        k.flush();
    }
    let read = reader.await?;
    progress.finish().await;
    if let Some(e) = failure {
        return Err(e.context(format!(
            "batch {} stopped; acknowledged jobs are in {}; run the same command again to continue",
            options.batch_id,
            checkpoint.path().display()
        )));
    }
    let read = read?;
    summary.rows = read.rows;
    summary.accepted = read.accepted;
    summary.rejected = read.rejected;
    summary.duplicates_in_file = read.duplicates_in_file;
    summary.jobs = read.jobs;
    if !counts.unknown {
        summary.issued = Some(counts.issued);
        summary.duplicates_at_service = Some(counts.duplicates);
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}
