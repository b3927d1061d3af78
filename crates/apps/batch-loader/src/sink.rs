//! Where jobs go: the service's HTTP endpoint or the `GiftCertificateUpload` topic. A sink sends
//! once and says whether a failure is worth another try; the loader retries. Over Kafka the
//! batch is first opened over the service's API (the service takes jobs from the topic only for
//! a batch opened with an upload token).

use crate::contract::{batch_path, idempotency_key, UploadAck, UPLOAD_PATH};
use backbone_kafka::{KafkaPublisher, KafkaSettings, OutgoingRecord};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Timeouts, broken connections, 408/409/425/429 and 5xx, broker errors.
    #[error("{reason}")]
    Retryable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Retrying the same job cannot help: bad request, refused token, a wrong answer.
    #[error("{0}")]
    Fatal(String),
}

/// One job ready to go: its number and its exact JSON body.
pub struct OutgoingJob {
    pub job: u32,
    pub body: Vec<u8>,
    pub certificates: usize,
}

/// The service's API as the loader uses it: its base URL and a token with the upload scope.
pub struct ServiceApi {
    http: reqwest::Client,
    base: String,
    token: SecretString,
}

impl ServiceApi {
    pub fn new(base_url: &str, token: SecretString, timeout: Duration) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(base_url).map_err(|e| anyhow::anyhow!("--url: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            anyhow::bail!("--url must be http(s)");
        }
        if token.expose_secret().trim().is_empty() {
            anyhow::bail!(
                "--token (or BATCH_LOADER_TOKEN) must be set: --via http sends the jobs with it, \
                 --via kafka opens the batch with it"
            );
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// Opens the batch for uploads over Kafka (`PUT /certificates/upload/batches/{id}`);
    /// `true` when this call opened it, `false` when it was open already.
    pub async fn open_batch(&self, batch_id: &str) -> Result<bool, SendError> {
        let resp = self
            .http
            .put(format!("{}{}", self.base, batch_path(batch_id)))
            .bearer_auth(self.token.expose_secret())
            .send()
            .await
            .map_err(transport_error)?;
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        let body = resp.bytes().await.map_err(transport_error)?;
        match status {
            StatusCode::CREATED => Ok(true),
            StatusCode::OK => Ok(false),
            _ => Err(classify(
                status,
                format!(
                    "opening batch {batch_id} over the service's API: HTTP {}{}",
                    status.as_u16(),
                    problem_summary(&body)
                ),
                retry_after,
            )),
        }
    }
}

pub struct HttpSink {
    api: ServiceApi,
    url: String,
    batch_id: String,
}

impl HttpSink {
    pub fn new(
        base_url: &str,
        token: SecretString,
        batch_id: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let api = ServiceApi::new(base_url, token, timeout)?;
        Ok(Self {
            url: format!("{}{UPLOAD_PATH}", api.base),
            api,
            batch_id: batch_id.to_owned(),
        })
    }

    async fn send(&self, job: &OutgoingJob) -> Result<Option<UploadAck>, SendError> {
        let resp = self
            .api
            .http
            .post(&self.url)
            .bearer_auth(self.api.token.expose_secret())
            .header("idempotency-key", idempotency_key(&self.batch_id, job.job))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(job.body.clone())
            .send()
            .await
            .map_err(transport_error)?;
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        let body = resp.bytes().await.map_err(transport_error)?;
        if status == StatusCode::OK {
            let ack: UploadAck = serde_json::from_slice(&body)
                .map_err(|e| SendError::Fatal(format!("job {}: unreadable answer: {e}", job.job)))?;
            if ack.batch_id != self.batch_id || ack.job != job.job {
                return Err(SendError::Fatal(format!(
                    "job {}: the answer is for batch {:?} job {}",
                    job.job, ack.batch_id, ack.job
                )));
            }
            if ack.issued + ack.duplicates > job.certificates as u64 {
                return Err(SendError::Fatal(format!(
                    "job {}: the answer counts {} certificates, the job has {}",
                    job.job,
                    ack.issued + ack.duplicates,
                    job.certificates
                )));
            }
            return Ok(Some(ack));
        }
        let reason = format!(
            "job {}: HTTP {}{}",
            job.job,
            status.as_u16(),
            problem_summary(&body)
        );
        Err(classify(status, reason, retry_after))
    }
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// 408, 409, 425, 429 and 5xx are worth another try; any other answer is not.
fn classify(status: StatusCode, reason: String, retry_after: Option<Duration>) -> SendError {
    match status {
        StatusCode::REQUEST_TIMEOUT
        | StatusCode::CONFLICT
        | StatusCode::TOO_EARLY
        | StatusCode::TOO_MANY_REQUESTS => SendError::Retryable { reason, retry_after },
        s if s.is_server_error() => SendError::Retryable { reason, retry_after },
        _ => SendError::Fatal(reason),
    }
}

#[derive(Deserialize, Default)]
struct Problem {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    detail: Option<String>,
}

fn problem_summary(body: &[u8]) -> String {
    let p: Problem = serde_json::from_slice(body).unwrap_or_default();
    [p.code, p.title, p.detail]
        .into_iter()
        .flatten()
        .map(|s| s.chars().take(200).collect::<String>())
        .fold(String::new(), |acc, s| format!("{acc} {s}"))
}

fn transport_error(e: reqwest::Error) -> SendError {
    let reason = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect error"
    } else {
        "connection error"
    };
    SendError::Retryable {
        reason: reason.to_owned(),
        retry_after: None,
    }
}

/// The record key of a job: `<batch_id>:<job>`, the same text as its idempotency key.
pub fn job_key(batch_id: &str, job: u32) -> String {
    idempotency_key(batch_id, job)
}

pub struct KafkaSink {
    publisher: KafkaPublisher,
    topic: String,
    batch_id: String,
    api: ServiceApi,
}

impl KafkaSink {
    /// An idempotent producer with `acks=all` (the `backbone-kafka` publisher); `api` opens the
    /// batch before the first job goes out.
    pub fn new(
        settings: &KafkaSettings,
        topic: &str,
        batch_id: &str,
        api: ServiceApi,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            publisher: KafkaPublisher::new(settings)?,
            topic: topic.to_owned(),
            batch_id: batch_id.to_owned(),
            api,
        })
    }

    async fn send(&self, job: &OutgoingJob) -> Result<Option<UploadAck>, SendError> {
        // One key per job: a batch's jobs spread over the topic's partitions, and the service
        // handles them at once (the batch's record counts each job, in any order).
        let key = job_key(&self.batch_id, job.job);
        let record = OutgoingRecord {
            topic: &self.topic,
            key: Some(key.as_bytes()),
            payload: Some(&job.body),
            headers: vec![(
                "idempotency-key".to_owned(),
                idempotency_key(&self.batch_id, job.job),
            )],
        };
        self.publisher
            .send_all(vec![record])
            .await
            .map_err(|e| SendError::Retryable {
                reason: format!("job {}: {e}", job.job),
                retry_after: None,
            })?;
        Ok(None)
    }

    pub fn flush(&self) {
        let _ = self.publisher.flush(Duration::from_secs(10));
    }
}

/// The sink chosen with `--via`.
pub enum Sink {
    Http(HttpSink),
    Kafka(KafkaSink),
}

impl Sink {
    /// Readies the batch at the service once, before any job: over Kafka it is opened over the
    /// API (the service takes jobs from the topic only for an opened batch); over HTTP each
    /// upload opens it.
    pub async fn open_batch(&self) -> Result<(), SendError> {
        match self {
            Self::Http(_) => Ok(()),
            Self::Kafka(s) => s.api.open_batch(&s.batch_id).await.map(|_| ()),
        }
    }

    /// Sends once. `Ok(Some(ack))` over HTTP; `Ok(None)` over Kafka, where the broker's
    /// acknowledgement is the answer and the service's counts are not known.
    pub async fn send(&self, job: &OutgoingJob) -> Result<Option<UploadAck>, SendError> {
        match self {
            Self::Http(s) => s.send(job).await,
            Self::Kafka(s) => s.send(job).await,
        }
    }
}
