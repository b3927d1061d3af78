//! The services' admin APIs, the only way the console reads or changes anything: crm-sync's
//! `/admin/v1`, its two-way API's `/v1/operator-tasks`, gift-certificates' `/admin/v1`. Each
//! write names the person (`X-Operator`, or `by` in a resolution).

use crate::config::{Config, ServiceConfig};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::fmt;

/// A call that did not give what was asked, in words fit for the page: the service's problem
/// title and detail, or that it could not be reached. Never the response body beyond that.
#[derive(Debug, Clone)]
pub struct BackendError {
    pub service: &'static str,
    pub status: Option<u16>,
    pub message: String,
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(s) => write!(f, "{} answered {s}: {}", self.service, self.message),
            None => write!(f, "{}: {}", self.service, self.message),
        }
    }
}

struct Api {
    name: &'static str,
    base: String,
    token: SecretString,
}

impl Api {
    fn of(name: &'static str, cfg: &ServiceConfig) -> Option<Self> {
        cfg.enabled().then(|| Self {
            name,
            base: cfg.url.trim_end_matches('/').to_owned(),
            token: cfg.admin_token.clone(),
        })
    }
}

/// Whose dead letters: each service has its own dead-letter topic and admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
pub enum LetterService {
    #[default]
    #[serde(rename = "crm-sync")]
    CrmSync,
    #[serde(rename = "gift-certificates")]
    GiftCertificates,
}

impl LetterService {
    pub fn as_str(self) -> &'static str {
        match self {
            LetterService::CrmSync => "crm-sync",
            LetterService::GiftCertificates => "gift-certificates",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "crm-sync" => Some(Self::CrmSync),
            "gift-certificates" => Some(Self::GiftCertificates),
            _ => None,
        }
    }
}

pub struct Backends {
    http: reqwest::Client,
    crm_sync: Option<Api>,
    two_way: Option<Api>,
    gift: Option<Api>,
}

/// `value` as a query string component.
pub fn enc(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

impl Backends {
    pub fn new(cfg: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(cfg.http.backend_timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            crm_sync: Api::of("crm-sync", &cfg.crm_sync),
            two_way: Api::of("crm-sync two-way API", &cfg.crm_sync_two_way),
            gift: Api::of("gift-certificates", &cfg.gift_certificates),
        })
    }

    pub fn has_two_way(&self) -> bool {
        self.two_way.is_some()
    }

    async fn call<T: DeserializeOwned>(
        &self,
        api: Option<&Api>,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<T, BackendError> {
        let Some(api) = api else {
            return Err(BackendError {
                service: "console",
                status: None,
                message: "this service is not configured".into(),
            });
        };
        let mut req = self
            .http
            .request(method, format!("{}{path}", api.base))
            .bearer_auth(api.token.expose_secret());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let fail = |status: Option<u16>, message: String| BackendError {
            service: api.name,
            status,
            message,
        };
        let response = req.send().await.map_err(|e| {
            tracing::warn!(service = api.name, error = %e, "admin API unreachable");
            fail(None, "unreachable".into())
        })?;
        let status = response.status();
        let doc: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return serde_json::from_value(doc).map_err(|e| {
                tracing::warn!(service = api.name, error = %e, "admin API answered an unexpected document");
                fail(Some(status.as_u16()), "an unexpected answer".into())
            });
        }
        let text = |k: &str| doc.get(k).and_then(Value::as_str).map(str::to_owned);
        let message = match (text("title"), text("detail")) {
            (Some(t), Some(d)) => format!("{t} ({d})"),
            (Some(t), None) => t,
            _ => status.canonical_reason().unwrap_or("error").to_owned(),
        };
        Err(fail(Some(status.as_u16()), message))
    }

    pub async fn crm_overview<T: DeserializeOwned>(&self, hours: u32) -> Result<T, BackendError> {
        let path = format!("/admin/v1/overview?hours={hours}");
        self.call(self.crm_sync.as_ref(), Method::GET, &path, None, &[])
            .await
    }

    /// The admin API that holds `service`'s dead letters (both answer the same shapes).
    fn letters_of(&self, service: LetterService) -> Option<&Api> {
        match service {
            LetterService::CrmSync => self.crm_sync.as_ref(),
            LetterService::GiftCertificates => self.gift.as_ref(),
        }
    }

    pub async fn dead_letters<T: DeserializeOwned>(
        &self,
        service: LetterService,
        query: &str,
    ) -> Result<T, BackendError> {
        let path = format!("/admin/v1/dead-letters?{query}");
        self.call(self.letters_of(service), Method::GET, &path, None, &[])
            .await
    }

    pub async fn dead_letter<T: DeserializeOwned>(
        &self,
        service: LetterService,
        partition: i32,
        offset: i64,
    ) -> Result<T, BackendError> {
        let path = format!("/admin/v1/dead-letters/{partition}/{offset}");
        self.call(self.letters_of(service), Method::GET, &path, None, &[])
            .await
    }

    pub async fn replay<T: DeserializeOwned>(
        &self,
        service: LetterService,
        body: &Value,
        by: &str,
    ) -> Result<T, BackendError> {
        let headers = [("x-operator", by)];
        self.call(
            self.letters_of(service),
            Method::POST,
            "/admin/v1/dead-letters/replay",
            Some(body),
            &headers,
        )
        .await
    }

    pub async fn trace<T: DeserializeOwned>(&self, key: &str, value: &str) -> Result<T, BackendError> {
        let path = format!("/admin/v1/trace?{}={}", enc(key), enc(value));
        self.call(self.crm_sync.as_ref(), Method::GET, &path, None, &[])
            .await
    }

    pub async fn tasks<T: DeserializeOwned>(&self, state: &str) -> Result<T, BackendError> {
        let path = format!("/v1/operator-tasks?state={}", enc(state));
        self.call(self.two_way.as_ref(), Method::GET, &path, None, &[])
            .await
    }

    pub async fn task<T: DeserializeOwned>(&self, id: i64) -> Result<T, BackendError> {
        let path = format!("/v1/operator-tasks/{id}");
        self.call(self.two_way.as_ref(), Method::GET, &path, None, &[])
            .await
    }

    /// `idempotency_key` comes from the form, so a form sent twice resolves once.
    pub async fn resolve<T: DeserializeOwned>(
        &self,
        id: i64,
        body: &Value,
        idempotency_key: &str,
    ) -> Result<T, BackendError> {
        let path = format!("/v1/operator-tasks/{id}/resolve");
        let headers = [("idempotency-key", idempotency_key)];
        self.call(self.two_way.as_ref(), Method::POST, &path, Some(body), &headers)
            .await
    }

    pub async fn gift_overview<T: DeserializeOwned>(&self) -> Result<T, BackendError> {
        self.call(self.gift.as_ref(), Method::GET, "/admin/v1/overview", None, &[])
            .await
    }

    /// The code goes in the path, as the API has it; the console never puts it in its own URLs.
    pub async fn certificate<T: DeserializeOwned>(&self, code: &str) -> Result<T, BackendError> {
        let path = format!("/admin/v1/certificates/{}", enc(code));
        self.call(self.gift.as_ref(), Method::GET, &path, None, &[]).await
    }

    pub async fn cancel<T: DeserializeOwned>(
        &self,
        code: &str,
        reason: &str,
        by: &str,
    ) -> Result<T, BackendError> {
        let path = format!("/admin/v1/certificates/{}/cancel", enc(code));
        let body = serde_json::json!({ "reason": reason });
        self.call(
            self.gift.as_ref(),
            Method::POST,
            &path,
            Some(&body),
            &[("x-operator", by)],
        )
        .await
    }

    pub async fn uploads<T: DeserializeOwned>(&self) -> Result<T, BackendError> {
        self.call(
            self.gift.as_ref(),
            Method::GET,
            "/admin/v1/uploads?limit=50",
            None,
            &[],
        )
        .await
    }

    pub async fn sms<T: DeserializeOwned>(&self, state: &str) -> Result<T, BackendError> {
        let path = format!("/admin/v1/sms?state={}&limit=200", enc(state));
        self.call(self.gift.as_ref(), Method::GET, &path, None, &[]).await
    }

    pub async fn sms_requeue<T: DeserializeOwned>(&self, dry_run: bool, by: &str) -> Result<T, BackendError> {
        let body = serde_json::json!({ "certificate": null, "dry_run": dry_run });
        self.call(
            self.gift.as_ref(),
            Method::POST,
            "/admin/v1/sms/requeue",
            Some(&body),
            &[("x-operator", by)],
        )
        .await
    }

    /// Whether each configured service answers its readiness probe.
    pub async fn ready(&self) -> Vec<(&'static str, bool)> {
        let mut out = Vec::new();
        for api in [&self.crm_sync, &self.gift].into_iter().flatten() {
            let ok = self
                .http
                .get(format!("{}/health/ready", api.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            out.push((api.name, ok));
        }
        out
    }
}
