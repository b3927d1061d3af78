//! The generic REST CRM (`docs/openapi/crm-generic-v1.yaml`).
//!
//! One shipment: `GET`/`PUT /api/v1/shipments/{id}/status`; a `PUT` carries `X-Request-Id` = the
//! event's correlation id. Several: `POST /api/v1/shipments/status:batchGet` and `:batchWrite`.
//! Reads and batch calls carry a fresh `X-Request-Id`; batch items carry their own `requestId`.
//!
//! Client cards, tasks and interactions ([`backbone_sync::clients::ClientCrm`], `people`): `PUT`
//! by our external id under `/api/v1/contacts`, `/api/v1/tasks`, `/api/v1/interactions`; read by
//! external id or by the CRM's id (`.../by-id/{id}`).

mod client;
mod people;
mod people_wire;
pub(crate) mod transformers;

pub use client::GenericRestCrm;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

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
