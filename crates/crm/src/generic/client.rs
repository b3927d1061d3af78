//! The generic CRM client: signed requests and the port implementation.

use super::transformers::{self as tf, BatchGet, BatchWrite, Items, WriteResults, REQUEST_ID_FIELD};
use super::GenericCrmConfig;
use crate::signing::{self, SignedParts, NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::wire::{self, Reply};
use async_trait::async_trait;
use backbone_sync::event::ShipmentId;
use backbone_sync::mapping::{CrmMapping, CrmStatusWrite};
use backbone_sync::ports::{CrmError, CrmGateway, ItemResult, ShipmentStates};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};

pub struct GenericRestCrm {
    http: reqwest::Client,
    base: String,
    token: SecretString,
    secret: SecretString,
    mapping: CrmMapping,
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
        Ok(Self {
            http: wire::http_client(config.timeout_ms, config.connect_timeout_ms)?,
            base: config.base_url.trim_end_matches('/').to_owned(),
            token: config.token.clone(),
            secret: config.signing_secret.clone(),
            mapping,
        })
    }

    /// Sends one request signed over its method, target (path and query as sent), timestamp,
    /// a fresh nonce and body (see [`crate::signing`]).
    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        request_id: &str,
    ) -> Result<Reply, CrmError> {
        let url = reqwest::Url::parse(&format!("{}{path}", self.base))
            .map_err(|e| CrmError::permanent(format!("request URL: {e}")))?;
        let ts = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
        let nonce = signing::new_nonce();
        let signature = signing::sign(
            self.secret.expose_secret().as_bytes(),
            &SignedParts {
                method: method.as_str(),
                target: &request_target(&url),
                timestamp: &ts,
                nonce: &nonce,
                body: &body,
            },
        );
        let mut req = self
            .http
            .request(method, url)
            .bearer_auth(self.token.expose_secret())
            .header(TIMESTAMP_HEADER, &ts)
            .header(NONCE_HEADER, &nonce)
            .header(SIGNATURE_HEADER, signature)
            .header("x-request-id", request_id);
        if !body.is_empty() {
            req = req.header("content-type", "application/json").body(body);
        }
        wire::send(req).await
    }
}

/// The request target HTTP/1.1 sends for `url`: its path and, if it has one, `?` and the query.
fn request_target(url: &reqwest::Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    }
}

fn require_success(reply: &Reply, what: &str) -> Result<(), CrmError> {
    if reply.status.is_success() {
        Ok(())
    } else {
        Err(reply.refused(what))
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

fn fresh_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn to_json(body: &impl serde::Serialize) -> Result<Vec<u8>, CrmError> {
    serde_json::to_vec(body).map_err(|e| CrmError::permanent(e.to_string()))
}

#[async_trait]
impl CrmGateway for GenericRestCrm {
    #[tracing::instrument(name = "crm.read_states", skip_all, fields(shipments = shipments.len()))]
    async fn read_states(&self, shipments: &[ShipmentId]) -> Result<ShipmentStates, CrmError> {
        if let [one] = shipments {
            let path = status_path(one.as_str());
            let reply = self
                .call(Method::GET, &path, Vec::new(), &fresh_request_id())
                .await?;
            if reply.status == StatusCode::NOT_FOUND {
                return Ok(ShipmentStates::default());
            }
            require_success(&reply, "read status")?;
            let obj: Map<String, Value> = reply.json("read status")?;
            let record = tf::parse_record(&self.mapping, &obj);
            return Ok(tf::gather_states(shipments, [record]));
        }
        let body = to_json(&BatchGet {
            shipment_ids: shipments.iter().map(ShipmentId::as_str).collect(),
        })?;
        let reply = self
            .call(
                Method::POST,
                "/api/v1/shipments/status:batchGet",
                body,
                &fresh_request_id(),
            )
            .await?;
        require_success(&reply, "batch read")?;
        let items: Items = reply.json("batch read")?;
        let records = items.items.iter().map(|obj| tf::parse_record(&self.mapping, obj));
        Ok(tf::gather_states(shipments, records))
    }

    #[tracing::instrument(name = "crm.write_statuses", skip_all, fields(writes = writes.len()))]
    async fn write_statuses(&self, writes: &[CrmStatusWrite]) -> Result<Vec<ItemResult>, CrmError> {
        if let [one] = writes {
            let path = status_path(one.shipment_id.as_str());
            let body = to_json(&tf::item(&self.mapping, one))?;
            let reply = self.call(Method::PUT, &path, body, &one.correlation_id).await?;
            let result = match require_success(&reply, "write status") {
                Err(e) if e.is_transient() => return Err(e),
                other => other,
            };
            return Ok(vec![ItemResult {
                result,
                http_status: Some(reply.status.as_u16()),
                response_excerpt: Some(reply.excerpt()),
            }]);
        }
        let body = to_json(&BatchWrite {
            items: writes.iter().map(|w| tf::item(&self.mapping, w)).collect(),
        })?;
        let reply = self
            .call(
                Method::POST,
                "/api/v1/shipments/status:batchWrite",
                body,
                &fresh_request_id(),
            )
            .await?;
        require_success(&reply, "batch write")?;
        let parsed: WriteResults = reply.json("batch write")?;
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
            .map(tf::WriteResultDto::into_item_result)
            .collect())
    }
}
