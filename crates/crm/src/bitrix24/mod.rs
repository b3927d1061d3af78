//! Bitrix24 (REST, universal `crm.item.*` methods). A shipment is one CRM item (a deal by
//! default, or a smart-process item) linked to us by its built-in external id: `originatorId` =
//! this integration, `originId` = the shipment id.
//!
//! - Reads: `crm.item.list` filtered by `originatorId` and `@originId` (50 per page).
//! - Writes: one `batch` call (at most 50 commands) of `crm.item.update` for known items and
//!   `crm.item.add` for new ones. An item id is only ever taken from a read by external id, so a
//!   create that timed out is found, not created twice, on the next attempt.
//! - Errors: `batch` answers HTTP 200 with `result_error` per command; each is classified alone.
//! - Limits: leaky bucket (burst 50, 2/s on standard plans; 250, 5/s on Enterprise). 503
//!   `QUERY_LIMIT_EXCEEDED` backs off; 429 `OPERATION_TIME_LIMIT` pauses until
//!   `operating_reset_at`.
//! - Auth: incoming-webhook URL token, or OAuth (`auth` in the body; refreshed through
//!   `oauth.bitrix.info` once it expires or on `expired_token`, one refresh at a time).
//! - Client cards ([`backbone_sync::clients::ClientCrm`], `people`): `crm.contact.*` linked by
//!   `ORIGINATOR_ID` + `ORIGIN_ID`, tasks as `crm.activity.todo.*`, history as timeline comments.

mod client;
mod people;
mod people_wire;
pub(crate) mod transformers;

pub use client::Bitrix24Crm;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// How the portal is called.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bitrix24Auth {
    /// `https://{portal}/rest/{user_id}/{webhook_token}/{method}.json`.
    #[default]
    Webhook,
    /// A local or marketplace application with an OAuth access token.
    Oauth,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Bitrix24Config {
    /// e.g. `https://example.bitrix24.com`
    pub portal_url: String,
    pub auth: Bitrix24Auth,
    /// The employee whose incoming webhook this is.
    pub webhook_user_id: u64,
    /// The webhook code (secret; never serialized, never logged).
    #[serde(skip_serializing, default = "empty_secret")]
    pub webhook_token: SecretString,
    /// OAuth server, `https://oauth.bitrix.info`.
    pub oauth_url: String,
    pub client_id: String,
    #[serde(skip_serializing, default = "empty_secret")]
    pub client_secret: SecretString,
    /// The refresh token issued at install time (secret). Bitrix24 rotates it on each refresh.
    #[serde(skip_serializing, default = "empty_secret")]
    pub refresh_token: SecretString,
    /// CRM object type: 1 lead, 2 deal, or a smart-process type id.
    pub entity_type_id: u32,
    /// Our `originatorId`: marks the items this integration owns.
    pub originator_id: String,
    /// Leaky bucket: requests at once, then per second (standard plans 50 and 2).
    pub burst: u32,
    pub per_second: f64,
    /// Commands per `batch` call (at most 50).
    pub batch_size: usize,
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Client cards (`crm.contact.*`): our originator and the user fields we keep.
    pub contact_fields: Bitrix24ContactFields,
}

/// Where a client card lives on a Bitrix24 contact besides the standard fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Bitrix24ContactFields {
    /// `ORIGINATOR_ID` of the contacts we link (`ORIGIN_ID` is the client id).
    pub originator_id: String,
    /// User field (string) of the segment.
    pub segment: String,
    /// User fields of the consents, `Y`/`N`.
    pub consent_sms: String,
    pub consent_email: String,
}

impl Default for Bitrix24ContactFields {
    fn default() -> Self {
        Self {
            originator_id: "backbone".into(),
            segment: "UF_CRM_SEGMENT".into(),
            consent_sms: "UF_CRM_CONSENT_SMS".into(),
            consent_email: "UF_CRM_CONSENT_EMAIL".into(),
        }
    }
}

impl Bitrix24ContactFields {
    fn validate(&self) -> Result<(), String> {
        let o = &self.originator_id;
        if o.is_empty() || o.len() > 64 || o.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(
                "crm.bitrix24.contact_fields.originator_id must be 1..=64 characters without spaces".into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (key, name) in [
            ("segment", &self.segment),
            ("consent_sms", &self.consent_sms),
            ("consent_email", &self.consent_email),
        ] {
            let user_field = name.strip_prefix("UF_CRM_").is_some_and(|rest| {
                !rest.is_empty()
                    && rest
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            });
            if !user_field {
                return Err(format!(
                    "crm.bitrix24.contact_fields.{key}: `{name}` is not a contact user field (UF_CRM_...)"
                ));
            }
            if !seen.insert(name) {
                return Err(format!(
                    "crm.bitrix24.contact_fields.{key}: `{name}` is used twice"
                ));
            }
        }
        Ok(())
    }
}

fn empty_secret() -> SecretString {
    SecretString::from("")
}

impl Default for Bitrix24Config {
    fn default() -> Self {
        Self {
            portal_url: "https://example.bitrix24.com".into(),
            auth: Bitrix24Auth::Webhook,
            webhook_user_id: 1,
            webhook_token: empty_secret(),
            oauth_url: "https://oauth.bitrix.info".into(),
            client_id: String::new(),
            client_secret: empty_secret(),
            refresh_token: empty_secret(),
            entity_type_id: 2,
            originator_id: "backbone-crm-sync".into(),
            burst: 50,
            per_second: 2.0,
            batch_size: 50,
            timeout_ms: 10_000,
            connect_timeout_ms: 2_000,
            contact_fields: Bitrix24ContactFields::default(),
        }
    }
}

impl std::fmt::Debug for Bitrix24Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bitrix24Config")
            .field("portal_url", &self.portal_url)
            .field("auth", &self.auth)
            .field("webhook_user_id", &self.webhook_user_id)
            .field("webhook_token", &"[redacted]")
            .field("oauth_url", &self.oauth_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("refresh_token", &"[redacted]")
            .field("entity_type_id", &self.entity_type_id)
            .field("originator_id", &self.originator_id)
            .field("burst", &self.burst)
            .field("per_second", &self.per_second)
            .field("batch_size", &self.batch_size)
            .field("timeout_ms", &self.timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("contact_fields", &self.contact_fields)
            .finish()
    }
}

impl Bitrix24Config {
    /// Checks the configuration on its own (the mapping is checked by [`Bitrix24Crm::new`]).
    pub fn validate(&self) -> Result<(), String> {
        crate::wire::check_base_url("crm.bitrix24.portal_url", &self.portal_url)?;
        match self.auth {
            Bitrix24Auth::Webhook => {
                let t = self.webhook_token.expose_secret();
                if t.len() < 8 || !t.chars().all(|c| c.is_ascii_alphanumeric()) {
                    return Err("crm.bitrix24.webhook_token must be set (the webhook code)".into());
                }
                if self.webhook_user_id == 0 {
                    return Err("crm.bitrix24.webhook_user_id must be set".into());
                }
            }
            Bitrix24Auth::Oauth => {
                crate::wire::check_base_url("crm.bitrix24.oauth_url", &self.oauth_url)?;
                if self.client_id.is_empty()
                    || self.client_secret.expose_secret().is_empty()
                    || self.refresh_token.expose_secret().is_empty()
                {
                    return Err(
                        "crm.bitrix24: auth = \"oauth\" needs client_id, client_secret and refresh_token"
                            .into(),
                    );
                }
            }
        }
        if self.originator_id.trim().is_empty() {
            return Err("crm.bitrix24.originator_id must be set".into());
        }
        if !(1..=50).contains(&self.batch_size) {
            return Err("crm.bitrix24.batch_size must be 1..=50 (the batch method's limit)".into());
        }
        if self.burst == 0 || self.per_second <= 0.0 || !self.per_second.is_finite() {
            return Err("crm.bitrix24.burst and per_second must be > 0".into());
        }
        if self.timeout_ms == 0 {
            return Err("crm.bitrix24.timeout_ms must be > 0".into());
        }
        self.contact_fields.validate()
    }
}
