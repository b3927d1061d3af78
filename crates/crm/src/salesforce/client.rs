//! The Salesforce client: token grants, limits, and the port implementation.

use super::transformers::{self as tf, QueryResult, UpsertResult};
use super::{SalesforceAuth, SalesforceConfig};
use crate::limiter::RateLimiter;
use crate::pause::{PauseState, VendorPause};
use crate::token::{Fetched, TokenCache, TokenSource};
use crate::wire::{self, Reply};
use async_trait::async_trait;
use backbone_sync::event::ShipmentId;
use backbone_sync::mapping::{CrmMapping, CrmStatusWrite};
use backbone_sync::ports::{CrmError, CrmErrorKind, CrmGateway, ItemResult, ShipmentStates};
use base64::Engine;
use reqwest::{Method, StatusCode};
use rsa::pkcs1v15::SigningKey;
use rsa::signature::{SignatureEncoding, Signer};
use rsa::RsaPrivateKey;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::HashMap;
use std::time::Duration;

/// A concurrent-request refusal (`ConcurrentPerOrgLongTxn`) clears within seconds.
const CONCURRENCY_BACK_OFF: Duration = Duration::from_secs(5);
/// JWT assertions live three minutes at most.
const ASSERTION_TTL_SECS: i64 = 180;

pub(super) fn signing_key(pem: &str) -> Result<SigningKey<Sha256>, String> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    let key = RsaPrivateKey::from_pkcs8_pem(pem)
        .or_else(|_| RsaPrivateKey::from_pkcs1_pem(pem))
        .map_err(|_| "crm.salesforce.private_key_pem is not an RSA private key in PEM".to_owned())?;
    Ok(SigningKey::<Sha256>::new(key))
}

enum Grant {
    JwtBearer {
        key: Box<SigningKey<Sha256>>,
        client_id: String,
        username: String,
        audience: String,
    },
    ClientCredentials {
        client_id: String,
        client_secret: SecretString,
    },
}

struct Grantor {
    http: reqwest::Client,
    token_url: String,
    grant: Grant,
}

#[derive(Deserialize)]
struct TokenDto {
    access_token: String,
    instance_url: String,
}

#[derive(Deserialize, Default)]
struct TokenErrorDto {
    #[serde(default)]
    error: String,
}

fn jwt(key: &SigningKey<Sha256>, iss: &str, sub: &str, aud: &str, now: i64) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = json!({"iss": iss, "sub": sub, "aud": aud, "exp": now + ASSERTION_TTL_SECS});
    let payload = b64.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let signature = key.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", b64.encode(signature.to_bytes()))
}

#[async_trait]
impl TokenSource for Grantor {
    async fn fetch(&self) -> Result<Fetched, CrmError> {
        let form: Vec<(&str, String)> = match &self.grant {
            Grant::JwtBearer {
                key,
                client_id,
                username,
                audience,
            } => {
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                vec![
                    ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer".into()),
                    ("assertion", jwt(key, client_id, username, audience, now)),
                ]
            }
            Grant::ClientCredentials {
                client_id,
                client_secret,
            } => vec![
                ("grant_type", "client_credentials".into()),
                ("client_id", client_id.clone()),
                ("client_secret", client_secret.expose_secret().to_owned()),
            ],
        };
        let reply = wire::send(self.http.post(&self.token_url).form(&form)).await?;
        if !reply.status.is_success() {
            // Only the error code: a token endpoint's body is never logged.
            let code = serde_json::from_slice::<TokenErrorDto>(&reply.body)
                .unwrap_or_default()
                .error;
            return Err(CrmError::from_status(
                reply.status.as_u16(),
                reply.retry_after(),
                format!(
                    "Salesforce token grant refused: HTTP {} {code}",
                    reply.status.as_u16()
                ),
            ));
        }
        let dto: TokenDto = reply.json("Salesforce token grant")?;
        Ok(Fetched {
            access_token: SecretString::from(dto.access_token),
            // Salesforce does not say; a rejected token is renewed on 401.
            expires_in: None,
            instance_url: Some(dto.instance_url.trim_end_matches('/').to_owned()),
        })
    }
}

pub struct SalesforceCrm {
    http: reqwest::Client,
    pub(super) cfg: SalesforceConfig,
    mapping: CrmMapping,
    limiter: RateLimiter,
    pause: VendorPause,
    tokens: TokenCache,
    grantor: Grantor,
}

impl SalesforceCrm {
    pub fn new(cfg: &SalesforceConfig, mapping: CrmMapping) -> Result<Self, String> {
        cfg.validate()?;
        for (role, name) in crate::mapped_fields(mapping.fields()) {
            if !tf::is_api_name(name) {
                return Err(format!(
                    "mapping.fields.{role}: `{name}` is not a Salesforce field API name"
                ));
            }
        }
        if !mapping.fields().shipment_id.ends_with("__c") {
            return Err(
                "mapping.fields.shipment_id must be a custom External ID field (ending in __c)".into(),
            );
        }
        let http = wire::http_client(cfg.timeout_ms, cfg.connect_timeout_ms)?;
        let grant = match cfg.auth {
            SalesforceAuth::JwtBearer => Grant::JwtBearer {
                key: Box::new(signing_key(cfg.private_key_pem.expose_secret())?),
                client_id: cfg.client_id.clone(),
                username: cfg.username.clone(),
                audience: cfg.audience.clone(),
            },
            SalesforceAuth::ClientCredentials => Grant::ClientCredentials {
                client_id: cfg.client_id.clone(),
                client_secret: cfg.client_secret.clone(),
            },
        };
        Ok(Self {
            grantor: Grantor {
                http: http.clone(),
                token_url: format!("{}/services/oauth2/token", cfg.login_url.trim_end_matches('/')),
                grant,
            },
            http,
            limiter: RateLimiter::new(cfg.burst, cfg.per_second),
            cfg: cfg.clone(),
            mapping,
            pause: VendorPause::default(),
            tokens: TokenCache::default(),
        })
    }

    pub fn paused(&self) -> Option<PauseState> {
        self.pause.state()
    }

    pub fn token_fetches(&self) -> u64 {
        self.tokens.fetches()
    }

    pub(super) fn data_path(&self, rest: &str) -> String {
        format!("/services/data/v{}{rest}", self.cfg.api_version)
    }

    /// Checks against the org that the sObject has every mapped field and that the shipment id
    /// field is an External ID.
    pub async fn verify_mapping(&self) -> Result<(), String> {
        let path = self.data_path(&format!("/sobjects/{}/describe", self.cfg.sobject));
        let reply = self
            .call(Method::GET, &path, None)
            .await
            .map_err(|e| format!("Salesforce describe: {e}"))?;
        if !reply.status.is_success() {
            return Err(format!(
                "Salesforce describe of {}: {}",
                self.cfg.sobject,
                reply.refused("describe")
            ));
        }
        let described: Value = reply.json("describe").map_err(|e| e.to_string())?;
        let fields: HashMap<&str, &Value> = described
            .get("fields")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|f| Some((f.get("name")?.as_str()?, f)))
                    .collect()
            })
            .unwrap_or_default();
        let mut problems = Vec::new();
        for (role, name) in crate::mapped_fields(self.mapping.fields()) {
            // Field API names are case-insensitive.
            let found = fields
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, f)| *f);
            match found {
                None => problems.push(format!(
                    "mapping.fields.{role}: `{name}` is not a field of {}",
                    self.cfg.sobject
                )),
                Some(f) if role == "shipment_id" && f.get("externalId") != Some(&Value::Bool(true)) => {
                    problems.push(format!(
                        "mapping.fields.shipment_id: `{name}` is not an External ID field"
                    ))
                }
                Some(f) if f.get("updateable") == Some(&Value::Bool(false)) && role != "shipment_id" => {
                    problems.push(format!("mapping.fields.{role}: `{name}` is not updateable"))
                }
                Some(_) => {}
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    /// One data call with the cached token, renewed once on 401. Quota refusals pause the
    /// adapter and come back as `Err`; any other answer is returned for the caller to read.
    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Reply, CrmError> {
        self.call_as(method, path, body, None).await
    }

    /// [`Self::call`] with an `X-Request-Id`.
    pub(super) async fn call_as(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        request_id: Option<&str>,
    ) -> Result<Reply, CrmError> {
        let mut renewed = false;
        loop {
            self.pause.check()?;
            let token = self.tokens.get(&self.grantor).await?;
            let base = token.instance_url.as_deref().unwrap_or_default();
            self.limiter.acquire().await;
            let mut req = self
                .http
                .request(method.clone(), format!("{base}{path}"))
                .bearer_auth(token.value.expose_secret())
                .header(
                    "sforce-call-options",
                    format!("client={}", self.cfg.call_options_client),
                );
            if let Some(b) = body {
                req = req.json(b);
            }
            if let Some(id) = request_id {
                req = req.header("x-request-id", id);
            }
            let reply = wire::send(req).await?;
            self.track_usage(&reply);
            if reply.status == StatusCode::UNAUTHORIZED && !renewed {
                // 401 [{"errorCode": "INVALID_SESSION_ID"}]: the session expired or was revoked.
                self.tokens.renew(&token, &self.grantor).await?;
                renewed = true;
                continue;
            }
            if reply.status == StatusCode::FORBIDDEN {
                let errors = tf::parse_errors(&reply.body);
                if let Some(e) = errors.iter().find(|e| e.code == "REQUEST_LIMIT_EXCEEDED") {
                    return Err(self.limit_refusal(&e.message));
                }
            }
            return Ok(reply);
        }
    }

    fn limit_refusal(&self, message: &str) -> CrmError {
        if message.contains("ConcurrentPerOrgLongTxn") {
            self.limiter.back_off(CONCURRENCY_BACK_OFF);
            return CrmError {
                retry_after: Some(CONCURRENCY_BACK_OFF),
                ..CrmError::transient("Salesforce REQUEST_LIMIT_EXCEEDED (concurrent long requests)")
            };
        }
        // The org's rolling 24-hour quota is spent: retrying now only fails again and spends
        // nothing useful. Pause; the service stops taking work meanwhile.
        let pause = Duration::from_secs(self.cfg.quota_pause_secs);
        self.pause.pause(
            pause,
            "Salesforce daily API quota exceeded (REQUEST_LIMIT_EXCEEDED)",
        );
        tracing::error!(
            pause_s = pause.as_secs(),
            alert = true,
            "Salesforce API quota exceeded: pausing CRM calls"
        );
        CrmError {
            retry_after: Some(pause),
            ..CrmError::from_status(
                403,
                None,
                "Salesforce REQUEST_LIMIT_EXCEEDED: daily API quota spent",
            )
        }
        .as_transient()
    }

    fn track_usage(&self, reply: &Reply) {
        let Some((used, max)) = reply
            .headers
            .get("sforce-limit-info")
            .and_then(|v| v.to_str().ok())
            .and_then(tf::api_usage)
        else {
            return;
        };
        if max > 0 && used as f64 >= self.cfg.pause_at_usage * max as f64 {
            let pause = Duration::from_secs(self.cfg.quota_pause_secs);
            self.pause.pause(
                pause,
                "Salesforce API usage reached crm.salesforce.pause_at_usage",
            );
            tracing::warn!(
                used,
                max,
                pause_s = pause.as_secs(),
                "Salesforce API usage near the daily limit: pausing"
            );
        }
    }

    async fn upsert_one(&self, w: &CrmStatusWrite) -> Result<ItemResult, CrmError> {
        let mut fields = tf::record(&self.mapping, w);
        let ext = &self.mapping.fields().shipment_id;
        fields.remove(ext);
        let mut url = reqwest::Url::parse("http://x/").map_err(|e| CrmError::permanent(e.to_string()))?;
        url.path_segments_mut()
            .map_err(|()| CrmError::permanent("URL"))?
            .pop_if_empty()
            .push(w.shipment_id.as_str());
        let path = self.data_path(&format!("/sobjects/{}/{ext}{}", self.cfg.sobject, url.path()));
        let reply = self
            .call(Method::PATCH, &path, Some(&Value::Object(fields)))
            .await?;
        let status = reply.status.as_u16();
        let result = match status {
            200 | 201 | 204 => Ok(()),
            300 => Err(CrmError::from_status(
                300,
                None,
                format!(
                    "several {} records have {ext} = {}: an operator must merge them",
                    self.cfg.sobject, w.shipment_id
                ),
            )),
            400..=499 if status != 408 && status != 429 => {
                let errors = tf::parse_errors(&reply.body);
                let kind = match errors.first() {
                    Some(e) => tf::classify(&e.code),
                    None => CrmErrorKind::Permanent,
                };
                let what = errors
                    .first()
                    .map(|e| format!("{}: {}", e.code, e.message))
                    .unwrap_or_default();
                Err(CrmError {
                    kind,
                    http_status: Some(status),
                    retry_after: None,
                    message: format!("Salesforce refused the upsert: HTTP {status} {what}"),
                })
            }
            _ => return Err(reply.refused("Salesforce upsert")),
        };
        Ok(ItemResult {
            result,
            http_status: Some(status),
            response_excerpt: Some(reply.excerpt()),
        })
    }

    async fn upsert_collection(&self, writes: &[CrmStatusWrite]) -> Result<Vec<ItemResult>, CrmError> {
        let ext = &self.mapping.fields().shipment_id;
        let records: Vec<Value> = writes
            .iter()
            .map(|w| {
                let mut r = tf::record(&self.mapping, w);
                r.insert("attributes".into(), json!({"type": self.cfg.sobject}));
                Value::Object(r)
            })
            .collect();
        let path = self.data_path(&format!("/composite/sobjects/{}/{ext}", self.cfg.sobject));
        let body = json!({"allOrNone": false, "records": records});
        let reply = self.call(Method::PATCH, &path, Some(&body)).await?;
        if reply.status == StatusCode::BAD_REQUEST {
            // The request as a whole is malformed (an unknown field, say): every record would
            // fail the same way, so each is refused for good.
            let err = reply.refused("Salesforce collections upsert");
            return Ok(writes
                .iter()
                .map(|_| ItemResult {
                    result: Err(err.clone()),
                    http_status: Some(400),
                    response_excerpt: Some(reply.excerpt()),
                })
                .collect());
        }
        if !reply.status.is_success() {
            return Err(reply.refused("Salesforce collections upsert"));
        }
        let results: Vec<UpsertResult> = reply.json("Salesforce collections upsert")?;
        if results.len() != writes.len() {
            return Err(CrmError::transient(format!(
                "Salesforce answered {} results for {} records",
                results.len(),
                writes.len()
            )));
        }
        Ok(results
            .into_iter()
            .map(|r| {
                let excerpt = serde_json::to_string(
                    &r.errors
                        .iter()
                        .map(|e| json!({"statusCode": e.code, "message": e.message}))
                        .collect::<Vec<_>>(),
                )
                .ok();
                let result = if r.success {
                    Ok(())
                } else {
                    let first = r.errors.first();
                    let code = first.map(|e| e.code.as_str()).unwrap_or("UNKNOWN");
                    let kind = tf::classify(code);
                    let operator = if code == "DUPLICATE_EXTERNAL_ID" {
                        " (several records match: an operator must merge them)"
                    } else {
                        ""
                    };
                    Err(CrmError {
                        kind,
                        http_status: None,
                        retry_after: None,
                        message: format!(
                            "Salesforce refused the record: {code}: {}{operator}",
                            first.map(|e| e.message.as_str()).unwrap_or_default()
                        ),
                    })
                };
                ItemResult {
                    result,
                    http_status: Some(200),
                    response_excerpt: excerpt,
                }
            })
            .collect())
    }
}

#[async_trait]
impl CrmGateway for SalesforceCrm {
    #[tracing::instrument(name = "crm.read_states", skip_all, fields(vendor = "salesforce", shipments = shipments.len()))]
    async fn read_states(&self, shipments: &[ShipmentId]) -> Result<ShipmentStates, CrmError> {
        // A record that lacks our fields reads as unknown: the next upsert by external id fills it.
        let mut out = ShipmentStates::default();
        for chunk in shipments.chunks(200) {
            let q = tf::soql(&self.cfg.sobject, &self.mapping, chunk);
            let mut path = {
                let mut url =
                    reqwest::Url::parse("http://x/").map_err(|e| CrmError::permanent(e.to_string()))?;
                url.set_path(&self.data_path("/query"));
                url.query_pairs_mut().append_pair("q", &q);
                format!("{}?{}", url.path(), url.query().unwrap_or_default())
            };
            loop {
                let reply = self.call(Method::GET, &path, None).await?;
                if !reply.status.is_success() {
                    return Err(reply.refused("Salesforce query"));
                }
                let page: QueryResult = reply.json("Salesforce query")?;
                for record in page.records {
                    if let Some((id, Some(state))) = tf::parse_record(record, &self.mapping, chunk) {
                        out.insert(id, state);
                    }
                }
                match page.next_records_url {
                    Some(next) if !page.done => path = next,
                    _ => break,
                }
            }
        }
        Ok(out)
    }

    #[tracing::instrument(name = "crm.write_statuses", skip_all, fields(vendor = "salesforce", writes = writes.len()))]
    async fn write_statuses(&self, writes: &[CrmStatusWrite]) -> Result<Vec<ItemResult>, CrmError> {
        if let [one] = writes {
            return Ok(vec![self.upsert_one(one).await?]);
        }
        let mut out = Vec::with_capacity(writes.len());
        for chunk in writes.chunks(self.cfg.collection_size) {
            out.extend(self.upsert_collection(chunk).await?);
        }
        Ok(out)
    }
}
