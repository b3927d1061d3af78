//! The generic REST CRM (`docs/openapi/crm-generic-v1.yaml`).
//!
//! One shipment: `GET`/`PUT /api/v1/shipments/{id}/status`; a `PUT` carries `X-Request-Id` = the
//! event's correlation id. Several: `POST /api/v1/shipments/status:batchGet` and `:batchWrite`.
//! Reads and batch calls carry a fresh `X-Request-Id`; batch items carry their own `requestId`.

use crate::signing::{sign, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use async_trait::async_trait;
use backbone_sync::event::ShipmentId;
use backbone_sync::mapping::{CrmMapping, CrmShipmentState, CrmStatusWrite};
use backbone_sync::ports::{CrmError, CrmGateway, ItemResult};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::time::Duration;

const EXCERPT_LEN: usize = 512;
const REQUEST_ID_FIELD: &str = "requestId";

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericCrmConfig {
    /// e.g. `http://127.0.0.1:8081`
    pub base_url: String,
    /// Bearer token of this service (never serialized, never logged).
    #[serde(skip_serializing, default = "empty_secret")]
    pub token: SecretString,
    /// Key of the HMAC request signature (never serialized, never logged).
    #[serde(skip_serializing, default = "empty_secret")]
    pub signing_secret: SecretString,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

fn empty_secret() -> SecretString {
    SecretString::from("")
}

fn default_timeout_ms() -> u64 {
    5_000
}

fn default_connect_timeout_ms() -> u64 {
    1_000
}

impl Default for GenericCrmConfig {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8081".into(),
            token: empty_secret(),
            signing_secret: empty_secret(),
            timeout_ms: default_timeout_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
        }
    }
}

impl std::fmt::Debug for GenericCrmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenericCrmConfig")
            .field("base_url", &self.base_url)
            .field("token", &"[redacted]")
            .field("signing_secret", &"[redacted]")
            .field("timeout_ms", &self.timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .finish()
    }
}

impl GenericCrmConfig {
    pub fn validate(&self) -> Result<(), String> {
        let url = reqwest::Url::parse(&self.base_url).map_err(|e| format!("crm.base_url: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("crm.base_url must be http(s)".into());
        }
        if self.token.expose_secret().len() < 16 {
            return Err("crm.token must be set (at least 16 characters)".into());
        }
        if self.signing_secret.expose_secret().len() < 16 {
            return Err("crm.signing_secret must be set (at least 16 characters)".into());
        }
        if self.timeout_ms == 0 {
            return Err("crm.timeout_ms must be > 0".into());
        }
        Ok(())
    }
}

pub struct GenericRestCrm {
    http: reqwest::Client,
    base: String,
    token: SecretString,
    secret: SecretString,
    mapping: CrmMapping,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BatchGet<'a> {
    shipment_ids: Vec<&'a str>,
}

#[derive(Deserialize)]
struct Items {
    items: Vec<Map<String, Value>>,
}

#[derive(Serialize)]
struct BatchWrite {
    items: Vec<Map<String, Value>>,
}

#[derive(Deserialize)]
struct WriteResults {
    results: Vec<WriteResultDto>,
}

#[derive(Deserialize)]
struct WriteResultDto {
    status: u16,
    #[serde(default)]
    error: Option<ErrorDto>,
}

#[derive(Deserialize, Serialize)]
struct ErrorDto {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

struct Response {
    status: StatusCode,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

impl GenericRestCrm {
    pub fn new(config: &GenericCrmConfig, mapping: CrmMapping) -> Result<Self, String> {
        config.validate()?;
        let f = mapping.fields();
        if [&f.client_id, &f.shipment_id, &f.status, &f.timestamp, &f.event_id]
            .contains(&&REQUEST_ID_FIELD.to_owned())
        {
            return Err(format!(
                "mapping.fields: `{REQUEST_ID_FIELD}` is reserved by the generic CRM API"
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .pool_max_idle_per_host(16)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self {
            http,
            base: config.base_url.trim_end_matches('/').to_owned(),
            token: config.token.clone(),
            secret: config.signing_secret.clone(),
            mapping,
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        request_id: &str,
    ) -> Result<Response, CrmError> {
        let ts = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
        let signature = sign(self.secret.expose_secret().as_bytes(), &ts, &body);
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token.expose_secret())
            .header(TIMESTAMP_HEADER, &ts)
            .header(SIGNATURE_HEADER, signature)
            .header("x-request-id", request_id);
        for (k, v) in backbone_telemetry::current_trace_headers() {
            req = req.header(k, v);
        }
        if !body.is_empty() {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req.send().await.map_err(transport_error)?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = resp.bytes().await.map_err(transport_error)?.to_vec();
        Ok(Response {
            status,
            retry_after,
            body,
        })
    }

    fn require_success(resp: &Response, what: &str) -> Result<(), CrmError> {
        if resp.status.is_success() {
            return Ok(());
        }
        Err(CrmError::from_status(
            resp.status.as_u16(),
            resp.retry_after,
            format!("{what}: HTTP {} {}", resp.status.as_u16(), excerpt(&resp.body)),
        ))
    }

    fn parse_record(&self, obj: &Map<String, Value>) -> Result<(ShipmentId, CrmShipmentState), CrmError> {
        let field = &self.mapping.fields().shipment_id;
        let id = obj
            .get(field)
            .and_then(Value::as_str)
            .and_then(|s| ShipmentId::parse(s).ok())
            .ok_or_else(|| CrmError::permanent(format!("CRM record without a valid `{field}`")))?;
        let state = self
            .mapping
            .parse_state(obj)
            .ok_or_else(|| CrmError::permanent(format!("CRM record for {id} lacks status or timestamp")))?;
        Ok((id, state))
    }

    fn item(&self, w: &CrmStatusWrite) -> Map<String, Value> {
        let mut item = self.mapping.render(w);
        item.insert(REQUEST_ID_FIELD.into(), Value::from(w.correlation_id.as_str()));
        item
    }
}

fn transport_error(e: reqwest::Error) -> CrmError {
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

fn excerpt(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    match s.char_indices().nth(EXCERPT_LEN) {
        Some((i, _)) => s[..i].to_owned(),
        None => s.into_owned(),
    }
}

/// `/api/v1/shipments/{id}/status` with the id percent-encoded as one path segment.
fn status_path(id: &str) -> String {
    let mut url = reqwest::Url::parse("http://crm/api/v1/shipments/").expect("static URL parses");
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty().push(id).push("status");
    }
    url.path().to_owned()
}

fn invalid_json(what: &str, e: serde_json::Error) -> CrmError {
    CrmError::permanent(format!("{what}: response is not the documented JSON: {e}"))
}

#[async_trait]
impl CrmGateway for GenericRestCrm {
    #[tracing::instrument(name = "crm.read_states", skip_all, fields(shipments = shipments.len()))]
    async fn read_states(
        &self,
        shipments: &[ShipmentId],
    ) -> Result<HashMap<ShipmentId, CrmShipmentState>, CrmError> {
        if let [one] = shipments {
            let path = status_path(one.as_str());
            let resp = self
                .call(Method::GET, &path, Vec::new(), &uuid::Uuid::new_v4().to_string())
                .await?;
            if resp.status == StatusCode::NOT_FOUND {
                return Ok(HashMap::new());
            }
            Self::require_success(&resp, "read status")?;
            let obj: Map<String, Value> =
                serde_json::from_slice(&resp.body).map_err(|e| invalid_json("read status", e))?;
            let (id, state) = self.parse_record(&obj)?;
            return Ok(HashMap::from([(id, state)]));
        }
        let body = serde_json::to_vec(&BatchGet {
            shipment_ids: shipments.iter().map(ShipmentId::as_str).collect(),
        })
        .map_err(|e| CrmError::permanent(e.to_string()))?;
        let resp = self
            .call(
                Method::POST,
                "/api/v1/shipments/status:batchGet",
                body,
                &uuid::Uuid::new_v4().to_string(),
            )
            .await?;
        Self::require_success(&resp, "batch read")?;
        let items: Items = serde_json::from_slice(&resp.body).map_err(|e| invalid_json("batch read", e))?;
        items.items.iter().map(|obj| self.parse_record(obj)).collect()
    }

    #[tracing::instrument(name = "crm.write_statuses", skip_all, fields(writes = writes.len()))]
    async fn write_statuses(&self, writes: &[CrmStatusWrite]) -> Result<Vec<ItemResult>, CrmError> {
        if let [one] = writes {
            let path = status_path(one.shipment_id.as_str());
            let body = serde_json::to_vec(&self.item(one)).map_err(|e| CrmError::permanent(e.to_string()))?;
            let resp = self.call(Method::PUT, &path, body, &one.correlation_id).await?;
            let result = match Self::require_success(&resp, "write status") {
                Err(e) if e.is_transient() => return Err(e),
                other => other,
            };
            return Ok(vec![ItemResult {
                result,
                http_status: Some(resp.status.as_u16()),
                response_excerpt: Some(excerpt(&resp.body)),
            }]);
        }
        let body = serde_json::to_vec(&BatchWrite {
            items: writes.iter().map(|w| self.item(w)).collect(),
        })
        .map_err(|e| CrmError::permanent(e.to_string()))?;
        let resp = self
            .call(
                Method::POST,
                "/api/v1/shipments/status:batchWrite",
                body,
                &uuid::Uuid::new_v4().to_string(),
            )
            .await?;
        Self::require_success(&resp, "batch write")?;
        let parsed: WriteResults =
            serde_json::from_slice(&resp.body).map_err(|e| invalid_json("batch write", e))?;
        if parsed.results.len() != writes.len() {
            return Err(CrmError::transient(format!(
                "batch write answered {} results for {} items",
                parsed.results.len(),
                writes.len()
            )));
        }
        Ok(parsed
            .results
            .into_iter()
            .map(|r| {
                let excerpt = r.error.as_ref().and_then(|e| serde_json::to_string(e).ok());
                let result = if (200..300).contains(&r.status) {
                    Ok(())
                } else {
                    let msg = r
                        .error
                        .map(|e| format!("{}: {}", e.code, e.message))
                        .unwrap_or_default();
                    Err(CrmError::from_status(
                        r.status,
                        None,
                        format!("item refused with {}: {msg}", r.status),
                    ))
                };
                ItemResult {
                    result,
                    http_status: Some(r.status),
                    response_excerpt: excerpt,
                }
            })
            .collect())
    }
}
