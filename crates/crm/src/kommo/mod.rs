//! Kommo / amoCRM (API v4). A shipment is one lead; the shipment id lives in a custom field
//! (`mapping.fields.shipment_id = "cf:<field id>"`), which is the external id.
//!
//! - Mapped fields: `status_id` (the lead's pipeline stage; statuses map to numeric stage ids),
//!   `name`, or `cf:<field id>` (a custom field; the status time wants a text field, which keeps
//!   the full RFC 3339 time).
//! - Reads: known leads by `filter[id][]` (one call); others by `query=<shipment id>`, keeping
//!   only leads whose external-id field equals the shipment id exactly. 204 means none.
//! - Writes: `PATCH /api/v4/leads` (known leads) and `POST /api/v4/leads` (new ones, each with
//!   `request_id`), at most 50 per call. A lead id only ever comes from a read by external id or
//!   from a create's answer, so a create that timed out is found, not repeated.
//! - A 400 answer lists `validation-errors` per `request_id`: those items are refused for good,
//!   the others were not written and are retried.
//! - Limits: 7 requests/s; 429 backs off; 403 means the account or IP is blocked: calls pause
//!   (the service stops taking work) and an alert is logged.
//! - Auth: a long-lived token, or OAuth with single-use refresh tokens: one refresh at a time,
//!   the rotated refresh token kept in memory and, when `token_file` is set, written there
//!   atomically so a restart does not present a spent token.
//! - Client cards ([`backbone_sync::clients::ClientCrm`], `people`): contacts (not leads) with
//!   our client id in a custom field (`contact_fields.client_id`), tasks on the contact, history
//!   as `common` notes.

mod client;
mod people;
mod people_wire;
pub(crate) mod transformers;

pub use client::KommoCrm;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KommoAuth {
    /// A private integration's long-lived token.
    #[default]
    LongLived,
    /// OAuth 2.0 with rotating refresh tokens.
    Oauth,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KommoConfig {
    /// The account's own domain, e.g. `https://acme.kommo.com` or `https://acme.amocrm.ru`.
    pub base_url: String,
    pub auth: KommoAuth,
    /// Long-lived token (secret; never serialized, never logged).
    #[serde(skip_serializing, default = "empty_secret")]
    pub access_token: SecretString,
    pub client_id: String,
    #[serde(skip_serializing, default = "empty_secret")]
    pub client_secret: SecretString,
    /// The current refresh token (secret). Single use: each refresh returns the next one.
    #[serde(skip_serializing, default = "empty_secret")]
    pub refresh_token: SecretString,
    pub redirect_uri: String,
    /// File that keeps the latest refresh token across restarts (read at start when present).
    pub token_file: Option<String>,
    /// Pipeline of new leads (0: the account's main pipeline).
    pub pipeline_id: u64,
    /// Requests at once, then per second (Kommo allows 7 per second).
    pub burst: u32,
    pub per_second: f64,
    /// Leads per add/update call (at most 250; 50 recommended).
    pub batch_size: usize,
    /// How long calls pause after a 403 block.
    pub block_pause_secs: u64,
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Client cards: the contact custom fields we keep.
    pub contact_fields: KommoContactFields,
}

/// Ids of the contact custom fields of a client card (Kommo has no external id of its own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KommoContactFields {
    /// Text field holding our client id: the external id.
    pub client_id: u64,
    /// Text field of the segment.
    pub segment: u64,
    /// Checkbox fields of the consents.
    pub consent_sms: u64,
    pub consent_email: u64,
}

impl Default for KommoContactFields {
    fn default() -> Self {
        Self {
            client_id: 900_001,
            segment: 900_002,
            consent_sms: 900_003,
            consent_email: 900_004,
        }
    }
}

impl KommoContactFields {
    fn validate(&self) -> Result<(), String> {
        let ids = [self.client_id, self.segment, self.consent_sms, self.consent_email];
        if ids.contains(&0) {
            return Err("crm.kommo.contact_fields: every field id must be set (> 0)".into());
        }
        let distinct: std::collections::HashSet<u64> = ids.into_iter().collect();
        if distinct.len() != ids.len() {
            return Err("crm.kommo.contact_fields: each field needs its own id".into());
        }
        Ok(())
    }
}

fn empty_secret() -> SecretString {
    SecretString::from("")
}

impl Default for KommoConfig {
    fn default() -> Self {
        Self {
            base_url: "https://example.kommo.com".into(),
            auth: KommoAuth::LongLived,
            access_token: empty_secret(),
            client_id: String::new(),
            client_secret: empty_secret(),
            refresh_token: empty_secret(),
            redirect_uri: String::new(),
            token_file: None,
            pipeline_id: 0,
            burst: 1,
            per_second: 7.0,
            batch_size: 50,
            block_pause_secs: 900,
            timeout_ms: 10_000,
            connect_timeout_ms: 2_000,
            contact_fields: KommoContactFields::default(),
        }
    }
}

impl std::fmt::Debug for KommoConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KommoConfig")
            .field("base_url", &self.base_url)
            .field("auth", &self.auth)
            .field("access_token", &"[redacted]")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("refresh_token", &"[redacted]")
            .field("redirect_uri", &self.redirect_uri)
            .field("token_file", &self.token_file)
            .field("pipeline_id", &self.pipeline_id)
            .field("burst", &self.burst)
            .field("per_second", &self.per_second)
            .field("batch_size", &self.batch_size)
            .field("block_pause_secs", &self.block_pause_secs)
            .field("timeout_ms", &self.timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("contact_fields", &self.contact_fields)
            .finish()
    }
}

impl KommoConfig {
    pub fn validate(&self) -> Result<(), String> {
        crate::wire::check_base_url("crm.kommo.base_url", &self.base_url)?;
        match self.auth {
            KommoAuth::LongLived => {
                if self.access_token.expose_secret().len() < 16 {
                    return Err("crm.kommo.access_token must be set (the long-lived token)".into());
                }
            }
            KommoAuth::Oauth => {
                if self.client_id.is_empty()
                    || self.client_secret.expose_secret().is_empty()
                    || self.redirect_uri.is_empty()
                    || (self.refresh_token.expose_secret().is_empty() && self.token_file.is_none())
                {
                    return Err(
                        "crm.kommo: auth = \"oauth\" needs client_id, client_secret, redirect_uri and refresh_token (or token_file)"
                            .into(),
                    );
                }
            }
        }
        if !(1..=250).contains(&self.batch_size) {
            return Err("crm.kommo.batch_size must be 1..=250".into());
        }
        if self.burst == 0 || self.per_second <= 0.0 || !self.per_second.is_finite() {
            return Err("crm.kommo.burst and per_second must be > 0".into());
        }
        if self.per_second > 7.0 {
            return Err("crm.kommo.per_second must not exceed 7 (Kommo blocks clients that do)".into());
        }
        if self.block_pause_secs == 0 || self.timeout_ms == 0 {
            return Err("crm.kommo.block_pause_secs and timeout_ms must be > 0".into());
        }
        self.contact_fields.validate()
    }
}
