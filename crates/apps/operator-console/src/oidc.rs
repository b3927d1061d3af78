//! Logging in through an OpenID Connect provider, when `[oidc]` is configured: the
//! authorization-code flow with PKCE (S256), a `state` bound to the browser by a cookie and a
//! `nonce` bound to the ID token, the token's signature checked against the provider's JWKS
//! (RS/PS/ES algorithms only), its issuer, audience and expiry checked, and the person's role
//! taken from one claim through a configured map (no mapped value: no login).

use crate::auth::Role;
use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::RwLock;

/// The cookie that binds a login in progress to the browser that started it.
pub const STATE_COOKIE: &str = "console_oidc";
/// A login must come back from the provider within this long.
pub const PENDING_FOR: Duration = Duration::from_secs(600);
/// Logins in progress held at most (the oldest are dropped first).
const MAX_PENDING: usize = 10_000;
/// The algorithms an ID token may be signed with: asymmetric only.
const ALGORITHMS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
];

fn empty_secret() -> SecretString {
    SecretString::from(String::new())
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcConfig {
    /// The provider's issuer URL (its discovery document is
    /// `<issuer>/.well-known/openid-configuration`). Empty: single sign-on is off.
    pub issuer: String,
    pub client_id: String,
    /// Sent with the code exchange (`client_secret_post`); empty for a public client.
    #[serde(skip_serializing, default = "empty_secret")]
    pub client_secret: SecretString,
    /// This console's callback as registered with the provider:
    /// `https://console.example/oidc/callback`.
    pub redirect_url: String,
    pub scopes: Vec<String>,
    /// The claim that names the person (shown, and recorded with every action).
    pub username_claim: String,
    /// The claim holding the person's groups or roles (a string or a list of strings).
    pub roles_claim: String,
    /// Which value of `roles_claim` grants which role; the highest one held wins.
    pub roles: BTreeMap<String, Role>,
}

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            client_id: String::new(),
            client_secret: empty_secret(),
            redirect_url: String::new(),
            scopes: vec!["openid".into(), "profile".into(), "email".into()],
            username_claim: "preferred_username".into(),
            roles_claim: "roles".into(),
            roles: BTreeMap::new(),
        }
    }
}

/// `https`, or `http` to this host only (a local provider).
fn secure_url(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|u| {
        u.scheme() == "https"
            || (u.scheme() == "http" && matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]")))
    })
}

impl OidcConfig {
    pub fn enabled(&self) -> bool {
        !self.issuer.is_empty()
    }

    pub fn validate(&self, problems: &mut Vec<String>) {
        if !self.enabled() {
            return;
        }
        if !secure_url(&self.issuer) {
            problems.push("oidc.issuer must be an https URL (http only for 127.0.0.1)".into());
        }
        if !secure_url(&self.redirect_url) {
            problems.push("oidc.redirect_url must be an https URL (http only for 127.0.0.1)".into());
        }
        if self.client_id.trim().is_empty() {
            problems.push("oidc.client_id is required".into());
        }
        if !self.scopes.iter().any(|s| s == "openid") {
            problems.push("oidc.scopes must include openid".into());
        }
        if self.roles.is_empty() {
            problems.push("oidc.roles must map at least one claim value to a role".into());
        }
    }
}

/// Why a single sign-on failed. The page says only that it failed; the log says why.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the provider is unreachable or answered unexpectedly: {0}")]
    Provider(String),
    #[error("unknown or expired login (state)")]
    State,
    #[error("the ID token is not valid: {0}")]
    Token(String),
    #[error("the ID token names no one (claim {0})")]
    NoName(String),
    #[error("no role is granted to {0}")]
    NoRole(String),
}

#[derive(Debug, Clone, Deserialize)]
struct Metadata {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

struct Pending {
    nonce: String,
    verifier: String,
    started: Instant,
}

pub struct Oidc {
    cfg: OidcConfig,
    http: reqwest::Client,
    metadata: RwLock<Option<Metadata>>,
    keys: RwLock<Option<JwkSet>>,
    pending: Mutex<HashMap<String, Pending>>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn random() -> String {
    b64(&rand::random::<[u8; 32]>())
}

impl Oidc {
    pub fn new(cfg: OidcConfig, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            cfg,
            http: reqwest::Client::builder()
                .timeout(timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            metadata: RwLock::new(None),
            keys: RwLock::new(None),
            pending: Mutex::new(HashMap::new()),
        })
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, OidcError> {
        let r = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| OidcError::Provider(e.to_string()))?;
        if !r.status().is_success() {
            return Err(OidcError::Provider(format!("{url}: {}", r.status())));
        }
        r.json().await.map_err(|e| OidcError::Provider(e.to_string()))
    }

    /// The discovery document, read once (and again after a failure).
    async fn metadata(&self) -> Result<Metadata, OidcError> {
        if let Some(m) = self.metadata.read().await.clone() {
            return Ok(m);
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.cfg.issuer.trim_end_matches('/')
        );
        let m: Metadata = self.get(&url).await?;
        if m.issuer.trim_end_matches('/') != self.cfg.issuer.trim_end_matches('/') {
            return Err(OidcError::Provider(format!(
                "the discovery document names issuer {}",
                m.issuer
            )));
        }
        *self.metadata.write().await = Some(m.clone());
        Ok(m)
    }

    /// The provider's signing key `kid`; the key set is read again once when the key is
    /// unknown (the provider rotated its keys).
    async fn key(&self, kid: Option<&str>) -> Result<DecodingKey, OidcError> {
        let find = |set: &JwkSet| match kid {
            Some(k) => set.find(k).cloned(),
            None if set.keys.len() == 1 => set.keys.first().cloned(),
            None => None,
        };
        if let Some(jwk) = self.keys.read().await.as_ref().and_then(find) {
            return DecodingKey::from_jwk(&jwk).map_err(|e| OidcError::Token(e.to_string()));
        }
        let set: JwkSet = self.get(&self.metadata().await?.jwks_uri).await?;
        let jwk = find(&set).ok_or_else(|| OidcError::Token("signed with an unknown key".into()))?;
        *self.keys.write().await = Some(set);
        DecodingKey::from_jwk(&jwk).map_err(|e| OidcError::Token(e.to_string()))
    }

    /// Where to send the browser, and the `state` to bind to it with [`STATE_COOKIE`].
    pub async fn start(&self) -> Result<(String, String), OidcError> {
        let m = self.metadata().await?;
        let (state, nonce, verifier) = (random(), random(), random());
        let challenge = b64(&Sha256::digest(verifier.as_bytes()));
        let mut url =
            reqwest::Url::parse(&m.authorization_endpoint).map_err(|e| OidcError::Provider(e.to_string()))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.cfg.client_id)
            .append_pair("redirect_uri", &self.cfg.redirect_url)
            .append_pair("scope", &self.cfg.scopes.join(" "))
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        pending.retain(|_, p| p.started.elapsed() < PENDING_FOR);
        if pending.len() >= MAX_PENDING {
            if let Some(oldest) = pending
                .iter()
                .min_by_key(|(_, p)| p.started)
                .map(|(k, _)| k.clone())
            {
                pending.remove(&oldest);
            }
        }
        pending.insert(
            state.clone(),
            Pending {
                nonce,
                verifier,
                started: Instant::now(),
            },
        );
        Ok((url.to_string(), state))
    }

    /// The person behind a callback: `state` must be one this console started (and the
    /// browser's cookie's), `code` is exchanged once for an ID token, which must verify.
    pub async fn finish(&self, state: &str, code: &str) -> Result<(String, Role), OidcError> {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(state)
            .filter(|p| p.started.elapsed() < PENDING_FOR)
            .ok_or(OidcError::State)?;
        let m = self.metadata().await?;
        let body = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "authorization_code")
                .append_pair("code", code)
                .append_pair("redirect_uri", &self.cfg.redirect_url)
                .append_pair("client_id", &self.cfg.client_id)
                .append_pair("code_verifier", &pending.verifier);
            if !self.cfg.client_secret.expose_secret().is_empty() {
                form.append_pair("client_secret", self.cfg.client_secret.expose_secret());
            }
            form.finish()
        };
        let r = self
            .http
            .post(&m.token_endpoint)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| OidcError::Provider(e.to_string()))?;
        if !r.status().is_success() {
            return Err(OidcError::Provider(format!(
                "the token endpoint answered {}",
                r.status()
            )));
        }
        let tokens: Value = r.json().await.map_err(|e| OidcError::Provider(e.to_string()))?;
        let id_token = tokens
            .get("id_token")
            .and_then(Value::as_str)
            .ok_or_else(|| OidcError::Token("no id_token in the answer".into()))?;
        let claims = self.verify(id_token, &m.issuer, &pending.nonce).await?;
        self.person(&claims)
    }

    async fn verify(
        &self,
        token: &str,
        issuer: &str,
        nonce: &str,
    ) -> Result<HashMap<String, Value>, OidcError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| OidcError::Token(e.to_string()))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(OidcError::Token(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let key = self.key(header.kid.as_deref()).await?;
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[issuer]);
        v.set_audience(&[&self.cfg.client_id]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.leeway = 30;
        let data = jsonwebtoken::decode::<HashMap<String, Value>>(token, &key, &v)
            .map_err(|e| OidcError::Token(e.to_string()))?;
        if data.claims.get("nonce").and_then(Value::as_str) != Some(nonce) {
            return Err(OidcError::Token("the nonce does not match this login".into()));
        }
        Ok(data.claims)
    }

    /// The person's name and highest mapped role.
    fn person(&self, claims: &HashMap<String, Value>) -> Result<(String, Role), OidcError> {
        let name = claims
            .get(&self.cfg.username_claim)
            .and_then(Value::as_str)
            .filter(|n| crate::auth::valid_name(n))
            .ok_or_else(|| OidcError::NoName(self.cfg.username_claim.clone()))?
            .to_owned();
        let held: Vec<&str> = match claims.get(&self.cfg.roles_claim) {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let role = held
            .iter()
            .filter_map(|v| self.cfg.roles.get(*v).copied())
            .max()
            .ok_or_else(|| OidcError::NoRole(name.clone()))?;
        Ok((name, role))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_secure_provider_urls_and_a_role_map_pass() {
        let mut c = OidcConfig {
            issuer: "http://idp.example".into(),
            redirect_url: "https://console.example/oidc/callback".into(),
            ..OidcConfig::default()
        };
        let mut problems = Vec::new();
        c.validate(&mut problems);
        let all = problems.join("\n");
        assert!(
            all.contains("oidc.issuer") && all.contains("client_id") && all.contains("oidc.roles"),
            "{all}"
        );
        c.issuer = "http://127.0.0.1:5556".into();
        c.client_id = "console".into();
        c.roles.insert("oncall".into(), Role::Operator);
        let mut problems = Vec::new();
        c.validate(&mut problems);
        assert!(problems.is_empty(), "{problems:?}");
    }
}
