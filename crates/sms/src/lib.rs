//! SMS adapters of the certificates [`SmsSender`] port.
//!
//! [`HttpSmsSender`] speaks the generic provider API in `docs/openapi/sms-provider-v1.yaml`. It
//! sends once and classifies the answer as sent, [`SmsError::Transient`] or
//! [`SmsError::Rejected`]; retries with backoff belong to the caller, which must reuse the
//! message's idempotency key so that the provider de-duplicates.
//!
//! The message text carries a CVC: it is never logged, and error messages carry only the HTTP
//! status and the provider's stable problem `code`/`title`, never its `detail` (which may echo the
//! request) nor the phone number.

use async_trait::async_trait;
use backbone_certificates::ports::{SmsError, SmsMessage, SmsReceipt, SmsSender};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

const MESSAGES_PATH: &str = "/v1/messages";
const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Longest provider `code`/`title` copied into an error.
const REASON_LEN: usize = 80;

/// `[sms]` configuration.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsProviderConfig {
    /// e.g. `https://sms.example.com`; `/v1/messages` is appended.
    pub base_url: String,
    /// Bearer token (never serialized, never logged).
    #[serde(default = "empty_secret")]
    pub token: SecretString,
    /// Registered sender name or number; the account default when absent.
    #[serde(default)]
    pub sender: Option<String>,
    /// Whole request, connect to last body byte.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

fn empty_secret() -> SecretString {
    SecretString::from("")
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn default_connect_timeout_ms() -> u64 {
    2_000
}

impl SmsProviderConfig {
    pub fn new(base_url: impl Into<String>, token: SecretString) -> Self {
        Self {
            base_url: base_url.into(),
            token,
            sender: None,
            timeout_ms: default_timeout_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
        }
    }

    /// Checks the values; errors name the setting, never its value.
    pub fn validate(&self) -> Result<(), SmsConfigError> {
        let url =
            reqwest::Url::parse(&self.base_url).map_err(|e| SmsConfigError(format!("sms.base_url: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(SmsConfigError("sms.base_url must be http(s)".into()));
        }
        if self.token.expose_secret().trim().is_empty() {
            return Err(SmsConfigError("sms.token must be set".into()));
        }
        if self.timeout_ms == 0 || self.connect_timeout_ms == 0 {
            return Err(SmsConfigError(
                "sms.timeout_ms and sms.connect_timeout_ms must be > 0".into(),
            ));
        }
        if self
            .sender
            .as_deref()
            .is_some_and(|s| s.is_empty() || s.len() > 20)
        {
            return Err(SmsConfigError("sms.sender must have 1 to 20 characters".into()));
        }
        Ok(())
    }
}

impl std::fmt::Debug for SmsProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmsProviderConfig")
            .field("base_url", &self.base_url)
            .field("token", &"[redacted]")
            .field("sender", &self.sender)
            .field("timeout_ms", &self.timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SMS provider configuration: {0}")]
pub struct SmsConfigError(pub String);

/// The generic HTTP SMS provider.
pub struct HttpSmsSender {
    http: reqwest::Client,
    url: String,
    token: SecretString,
    sender: Option<String>,
}

impl std::fmt::Debug for HttpSmsSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSmsSender")
            .field("url", &self.url)
            .field("sender", &self.sender)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct MessageRequest<'a> {
    to: &'a str,
    text: &'a str,
    client_ref: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'a str>,
}

#[derive(Deserialize)]
struct MessageResponse {
    id: String,
    #[serde(default)]
    status: String,
}

#[derive(Deserialize, Default)]
struct Problem {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    title: Option<String>,
}

impl HttpSmsSender {
    pub fn new(config: &SmsProviderConfig) -> Result<Self, SmsConfigError> {
        config.validate()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            // A redirect would replay the bearer token elsewhere; a 3xx is a configuration error.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| SmsConfigError(format!("HTTP client: {e}")))?;
        Ok(Self {
            http,
            url: format!("{}{MESSAGES_PATH}", config.base_url.trim_end_matches('/')),
            token: config.token.clone(),
            sender: config.sender.clone(),
        })
    }
}

#[async_trait]
impl SmsSender for HttpSmsSender {
    async fn send(&self, message: &SmsMessage) -> Result<SmsReceipt, SmsError> {
        let started = Instant::now();
        let body = MessageRequest {
            to: &message.to,
            text: &message.text,
            client_ref: &message.idempotency_key,
            from: self.sender.as_deref(),
        };
        let response = self
            .http
            .post(&self.url)
            .bearer_auth(self.token.expose_secret())
            .header(IDEMPOTENCY_HEADER, &message.idempotency_key)
            .json(&body)
            .send()
            .await
            .map_err(transport_error);
        let outcome = match response {
            Ok(resp) => classify(resp).await,
            Err(e) => Err(e),
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match &outcome {
            Ok(receipt) => tracing::debug!(
                idempotency_key = %message.idempotency_key,
                provider_id = %receipt.provider_id,
                elapsed_ms,
                "SMS accepted by the provider"
            ),
            Err(e) => tracing::warn!(
                idempotency_key = %message.idempotency_key,
                elapsed_ms,
                error = %e,
                "SMS not accepted"
            ),
        }
        outcome
    }
}

async fn classify(resp: reqwest::Response) -> Result<SmsReceipt, SmsError> {
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let body = resp.bytes().await.map_err(transport_error)?;
    if status.is_success() {
        return match serde_json::from_slice::<MessageResponse>(&body) {
            Ok(m) if !m.id.trim().is_empty() => {
                tracing::trace!(status = %m.status, "provider message status");
                Ok(SmsReceipt { provider_id: m.id })
            }
            // The provider may have taken the message; a retry with the same key is
            // de-duplicated, so asking again is safe.
            _ => Err(SmsError::Transient(format!(
                "HTTP {} without a readable message id",
                status.as_u16()
            ))),
        };
    }
    let problem: Problem = serde_json::from_slice(&body).unwrap_or_default();
    let reason = problem
        .code
        .or(problem.title)
        .map(|r| format!(" {}", r.chars().take(REASON_LEN).collect::<String>()))
        .unwrap_or_default();
    let described = format!("HTTP {}{reason}", status.as_u16());
    Err(match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            SmsError::Rejected(format!("{described}: credentials refused, check sms.token"))
        }
        StatusCode::TOO_MANY_REQUESTS => SmsError::Transient(match retry_after {
            Some(s) => format!("{described}; retry after {s} s"),
            None => described,
        }),
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_EARLY => SmsError::Transient(described),
        s if s.is_server_error() => SmsError::Transient(described),
        s if s.is_redirection() => SmsError::Rejected(format!("{described}: redirected, check sms.base_url")),
        _ => SmsError::Rejected(described),
    })
}

fn transport_error(e: reqwest::Error) -> SmsError {
    // The URL and the request are left out: reqwest's messages can carry them.
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect error"
    } else if e.is_builder() {
        return SmsError::Rejected("request could not be built".into());
    } else {
        "connection error"
    };
    SmsError::Transient(kind.to_owned())
}
