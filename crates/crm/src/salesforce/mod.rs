//! Salesforce (REST API). A shipment is one record of a configured sObject with an External ID
//! field holding the shipment id (`mapping.fields.shipment_id`).
//!
//! - Reads: one SOQL query per 200 shipments (`... WHERE Ext__c IN (...)`).
//! - Writes: upsert by External ID, so a retry can never create a second record: one shipment
//!   with `PATCH /sobjects/{Object}/{ExtField}/{id}` (201 created, 200 or 204 updated, 300 several
//!   matches, 404 unknown field), several with sObject Collections upsert (at most 200 records,
//!   `allOrNone: false`, one result per record with HTTP 200).
//! - Auth: OAuth 2.0 JWT bearer (RS256 assertion) or client credentials; the token is cached
//!   and renewed on 401 `INVALID_SESSION_ID`, one renewal at a time.
//! - Limits: a client-side rate, `Sforce-Limit-Info: api-usage=used/max` watched on every answer
//!   (the adapter pauses at a configured share of the daily quota), and 403
//!   `REQUEST_LIMIT_EXCEEDED` pauses calls until the quota window has moved on.
//! - Writes carry `Sforce-Call-Options: client=...` so change events caused by us can be told
//!   apart from the org's own changes.
//! - Client cards ([`backbone_sync::clients::ClientCrm`], `people`): `Contact` upserted by
//!   `contact_fields.client_id`; tasks and history entries as `Task` records upserted by
//!   `task_fields.task_id` and `task_fields.interaction_id`.

mod client;
mod people;
mod people_wire;
pub(crate) mod transformers;

pub use client::SalesforceCrm;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SalesforceAuth {
    /// `urn:ietf:params:oauth:grant-type:jwt-bearer` with an RS256 assertion.
    #[default]
    JwtBearer,
    /// `client_credentials` of a connected app with a run-as user.
    ClientCredentials,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SalesforceConfig {
    /// Token endpoint host: `https://login.salesforce.com`, `https://test.salesforce.com` or the
    /// org's My Domain (client credentials need My Domain).
    pub login_url: String,
    pub auth: SalesforceAuth,
    /// The connected app's consumer key.
    pub client_id: String,
    /// Secret of the connected app (client credentials; never serialized, never logged).
    #[serde(skip_serializing, default = "empty_secret")]
    pub client_secret: SecretString,
    /// The user the JWT bearer flow acts as (`sub`).
    pub username: String,
    /// `aud` of the assertion: `https://login.salesforce.com` or `https://test.salesforce.com`.
    pub audience: String,
    /// PEM private key (PKCS#8 or PKCS#1) whose certificate the connected app holds (secret).
    #[serde(skip_serializing, default = "empty_secret")]
    pub private_key_pem: SecretString,
    /// REST API version, at least 46.0 (collections upsert).
    pub api_version: String,
    /// The sObject a shipment is kept in, e.g. `Shipment__c`.
    pub sobject: String,
    /// Value of `Sforce-Call-Options: client=...` on every call.
    pub call_options_client: String,
    /// Client-side rate: requests at once, then per second.
    pub burst: u32,
    pub per_second: f64,
    /// Records per collections call (at most 200).
    pub collection_size: usize,
    /// Share of the daily API quota (from `Sforce-Limit-Info`) at which calls pause, leaving
    /// the rest to the org's other integrations.
    pub pause_at_usage: f64,
    /// How long calls pause when the daily quota is spent or the threshold is reached.
    pub quota_pause_secs: u64,
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Client cards: our fields on `Contact`.
    pub contact_fields: SalesforceContactFields,
    /// Tasks and interaction history: the External ID fields on `Task`.
    pub task_fields: SalesforceTaskFields,
}

/// Our fields on `Contact` besides the standard ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SalesforceContactFields {
    /// The External ID field holding our client id; contacts are upserted by it.
    pub client_id: String,
    /// Text field of the segment.
    pub segment: String,
    /// Checkbox of the SMS consent (the e-mail consent is the negated `HasOptedOutOfEmail`).
    pub consent_sms: String,
}

impl Default for SalesforceContactFields {
    fn default() -> Self {
        Self {
            client_id: "Backbone_Client_Id__c".into(),
            segment: "Segment__c".into(),
            consent_sms: "Sms_Consent__c".into(),
        }
    }
}

/// The External ID fields on `Task`: one for our tasks, one for interaction-history entries
/// (kept as completed tasks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SalesforceTaskFields {
    pub task_id: String,
    pub interaction_id: String,
}

impl Default for SalesforceTaskFields {
    fn default() -> Self {
        Self {
            task_id: "Backbone_Task_Id__c".into(),
            interaction_id: "Backbone_Interaction_Id__c".into(),
        }
    }
}

fn check_client_fields(c: &SalesforceContactFields, t: &SalesforceTaskFields) -> Result<(), String> {
    for (key, name, external) in [
        ("contact_fields.client_id", &c.client_id, true),
        ("contact_fields.segment", &c.segment, false),
        ("contact_fields.consent_sms", &c.consent_sms, false),
        ("task_fields.task_id", &t.task_id, true),
        ("task_fields.interaction_id", &t.interaction_id, true),
    ] {
        if !transformers::is_api_name(name) {
            return Err(format!("crm.salesforce.{key}: `{name}` is not a field API name"));
        }
        if external && !name.ends_with("__c") {
            return Err(format!(
                "crm.salesforce.{key}: `{name}` must be a custom External ID field (ending in __c)"
            ));
        }
    }
    if t.task_id == t.interaction_id {
        return Err("crm.salesforce.task_fields: task_id and interaction_id must be two fields".into());
    }
    Ok(())
}

fn empty_secret() -> SecretString {
    SecretString::from("")
}

impl Default for SalesforceConfig {
    fn default() -> Self {
        Self {
            login_url: "https://login.salesforce.com".into(),
            auth: SalesforceAuth::JwtBearer,
            client_id: String::new(),
            client_secret: empty_secret(),
            username: String::new(),
            audience: "https://login.salesforce.com".into(),
            private_key_pem: empty_secret(),
            api_version: "62.0".into(),
            sobject: "Shipment__c".into(),
            call_options_client: "backbone-crm-sync".into(),
            burst: 10,
            per_second: 10.0,
            collection_size: 200,
            pause_at_usage: 0.9,
            quota_pause_secs: 3600,
            timeout_ms: 20_000,
            connect_timeout_ms: 2_000,
            contact_fields: SalesforceContactFields::default(),
            task_fields: SalesforceTaskFields::default(),
        }
    }
}

impl std::fmt::Debug for SalesforceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SalesforceConfig")
            .field("login_url", &self.login_url)
            .field("auth", &self.auth)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("username", &self.username)
            .field("audience", &self.audience)
            .field("private_key_pem", &"[redacted]")
            .field("api_version", &self.api_version)
            .field("sobject", &self.sobject)
            .field("call_options_client", &self.call_options_client)
            .field("burst", &self.burst)
            .field("per_second", &self.per_second)
            .field("collection_size", &self.collection_size)
            .field("pause_at_usage", &self.pause_at_usage)
            .field("quota_pause_secs", &self.quota_pause_secs)
            .field("timeout_ms", &self.timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("contact_fields", &self.contact_fields)
            .field("task_fields", &self.task_fields)
            .finish()
    }
}

impl SalesforceConfig {
    pub fn validate(&self) -> Result<(), String> {
        crate::wire::check_base_url("crm.salesforce.login_url", &self.login_url)?;
        if self.client_id.is_empty() {
            return Err("crm.salesforce.client_id (consumer key) must be set".into());
        }
        match self.auth {
            SalesforceAuth::JwtBearer => {
                if self.username.is_empty() {
                    return Err("crm.salesforce.username must be set for the JWT bearer flow".into());
                }
                crate::wire::check_base_url("crm.salesforce.audience", &self.audience)?;
                client::signing_key(self.private_key_pem.expose_secret())?;
            }
            SalesforceAuth::ClientCredentials => {
                if self.client_secret.expose_secret().is_empty() {
                    return Err("crm.salesforce.client_secret must be set for client credentials".into());
                }
            }
        }
        let version: f64 = self
            .api_version
            .parse()
            .map_err(|_| "crm.salesforce.api_version must look like 62.0".to_owned())?;
        if version < 46.0 {
            return Err("crm.salesforce.api_version must be at least 46.0 (collections upsert)".into());
        }
        if !transformers::is_api_name(&self.sobject) {
            return Err("crm.salesforce.sobject must be an API name such as Shipment__c".into());
        }
        if !(1..=200).contains(&self.collection_size) {
            return Err("crm.salesforce.collection_size must be 1..=200".into());
        }
        if !(self.pause_at_usage > 0.0 && self.pause_at_usage <= 1.0) {
            return Err("crm.salesforce.pause_at_usage must be in (0, 1]".into());
        }
        if self.burst == 0 || self.per_second <= 0.0 || !self.per_second.is_finite() {
            return Err("crm.salesforce.burst and per_second must be > 0".into());
        }
        if self.quota_pause_secs == 0 || self.timeout_ms == 0 {
            return Err("crm.salesforce.quota_pause_secs and timeout_ms must be > 0".into());
        }
        check_client_fields(&self.contact_fields, &self.task_fields)
    }
}
