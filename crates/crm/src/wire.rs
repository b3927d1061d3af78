//! HTTP plumbing shared by the CRM clients: one response shape, transport-error
//! classification, `Retry-After`, and excerpts for `integrations_log` that never carry a URL (a
//! Bitrix24 webhook URL holds its token).

use backbone_sync::ports::CrmError;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use std::time::Duration;

const EXCERPT_LEN: usize = 512;

/// A vendor's answer, read in full.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn retry_after(&self) -> Option<Duration> {
        retry_after(&self.headers)
    }

    pub fn excerpt(&self) -> String {
        excerpt(&self.body)
    }

    pub fn json<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T, CrmError> {
        parse_json(&self.body, what)
    }

    /// The error of a whole call that the vendor refused, classified by HTTP status.
    pub fn refused(&self, what: &str) -> CrmError {
        CrmError::from_status(
            self.status.as_u16(),
            self.retry_after(),
            format!("{what}: HTTP {} {}", self.status.as_u16(), self.excerpt()),
        )
    }
}

/// A vendor's JSON answer as `T`; a body that is not that shape is a permanent error.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, CrmError> {
    // serde quotes what it did not expect (`invalid type: string "..."`): a whole vendor value.
    serde_json::from_slice(body).map_err(|e| {
        CrmError::permanent(format!(
            "{what}: response is not the documented JSON: {}",
            clip(&e.to_string())
        ))
    })
}

/// Sends a request with the current trace context and reads the whole body.
pub(crate) async fn send(mut req: reqwest::RequestBuilder) -> Result<Reply, CrmError> {
    for (k, v) in backbone_telemetry::current_trace_headers() {
        req = req.header(k, v);
    }
    let resp = req.send().await.map_err(transport_error)?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.map_err(transport_error)?.to_vec();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

pub(crate) fn http_client(timeout_ms: u64, connect_timeout_ms: u64) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(timeout_ms))
        .connect_timeout(Duration::from_millis(connect_timeout_ms))
        .pool_max_idle_per_host(16)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

pub(crate) fn transport_error(e: reqwest::Error) -> CrmError {
    // Timeouts, refused or reset connections and broken bodies are all worth another try. The
    // URL is dropped from the message: it may carry a vendor token in its path.
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect error"
    } else {
        "transport error"
    };
    CrmError::transient(format!("{kind}: {}", e.without_url()))
}

pub(crate) fn excerpt(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    match s.char_indices().nth(EXCERPT_LEN) {
        Some((i, _)) => s[..i].to_owned(),
        None => s.into_owned(),
    }
}

/// Vendor-sourced text fit for an error message: at most [`EXCERPT_LEN`] characters, with `…`
/// where it was cut.
pub(crate) fn clip(text: &str) -> String {
    match text.char_indices().nth(EXCERPT_LEN) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// Checks a base URL from configuration: absolute http(s), no credentials in it.
pub(crate) fn check_base_url(key: &str, value: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(value).map_err(|e| format!("{key}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{key} must be http(s)"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{key} must not carry credentials"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_of_the_wrong_shape_is_refused_with_a_bounded_message() {
        let body = serde_json::to_vec(&"v".repeat(5000)).unwrap();
        let err = parse_json::<serde_json::Map<String, serde_json::Value>>(&body, "read status").unwrap_err();
        assert!(err
            .message
            .starts_with("read status: response is not the documented JSON: invalid type"));
        assert!(
            err.message.chars().count() < 600,
            "{} characters",
            err.message.chars().count()
        );
        assert!(err.message.ends_with('…'), "{}", err.message);
        let short = parse_json::<u32>(b"{}", "count").unwrap_err();
        assert!(!short.message.ends_with('…'), "{}", short.message);
    }

    #[test]
    fn clipped_text_is_cut_at_a_character_boundary() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(EXCERPT_LEN + 1);
        assert_eq!(clip(&long), format!("{}…", "é".repeat(EXCERPT_LEN)));
    }
}
