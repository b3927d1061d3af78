//! The Bitrix24 client: URLs, auth, limits, and the port implementation.

use super::transformers::{self as tf, ErrorEnvelope, ListedItem};
use super::{Bitrix24Auth, Bitrix24Config};
use crate::limiter::RateLimiter;
use crate::pause::{PauseState, VendorPause};
use crate::token::{AccessToken, Fetched, TokenCache, TokenSource};
use crate::wire::{self, Reply};
use crate::RecordIds;
use async_trait::async_trait;
use backbone_sync::event::ShipmentId;
use backbone_sync::mapping::{CrmMapping, CrmStatusWrite};
use backbone_sync::ports::{CrmError, CrmGateway, ItemResult, ShipmentStates};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// How long a 503 `QUERY_LIMIT_EXCEEDED` holds every caller back: the bucket drains 2/s, so a
/// second frees room for a couple of requests.
const RATE_BACK_OFF: Duration = Duration::from_secs(1);
/// Pause after 429 `OPERATION_TIME_LIMIT` when the answer does not say until when (the limit is
/// counted over 10 minutes).
const OPERATION_LIMIT_PAUSE: Duration = Duration::from_secs(600);

#[derive(Clone, Copy)]
enum Known {
    Item(u64),
    /// Several items carry this shipment's external id: an operator must merge them.
    Ambiguous,
    /// Listed at this moment and not found (see [`crate::ABSENT_FOR`]).
    Absent(std::time::Instant),
}

/// A refused call: the error, and the vendor's error code (`NOT_FOUND`, `ACCESS_DENIED`, ...).
pub(super) struct Refusal {
    pub code: String,
    pub error: CrmError,
}

impl From<CrmError> for Refusal {
    fn from(error: CrmError) -> Self {
        Self {
            code: String::new(),
            error,
        }
    }
}

pub struct Bitrix24Crm {
    http: reqwest::Client,
    rest_base: String,
    pub(super) cfg: Bitrix24Config,
    mapping: CrmMapping,
    limiter: RateLimiter,
    pause: VendorPause,
    tokens: TokenCache,
    oauth: Option<OAuthRefresh>,
    known: RecordIds<Known>,
}

struct OAuthRefresh {
    http: reqwest::Client,
    url: String,
    client_id: String,
    client_secret: SecretString,
    refresh_token: Mutex<SecretString>,
}

#[derive(Deserialize)]
struct TokenDto {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[async_trait]
impl TokenSource for OAuthRefresh {
    async fn fetch(&self) -> Result<Fetched, CrmError> {
        let refresh = self
            .refresh_token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let req = self.http.get(&self.url).query(&[
            ("grant_type", "refresh_token"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose_secret()),
            ("refresh_token", refresh.expose_secret()),
        ]);
        let reply = wire::send(req).await?;
        if !reply.status.is_success() {
            // Never echo the body of a token endpoint: it may repeat what was sent.
            let code = serde_json::from_slice::<tf::ErrorDto>(&reply.body)
                .map(|e| e.code())
                .unwrap_or_default();
            return Err(CrmError::from_status(
                reply.status.as_u16(),
                reply.retry_after(),
                format!(
                    "Bitrix24 OAuth refresh refused: HTTP {} {code}",
                    reply.status.as_u16()
                ),
            ));
        }
        let dto: TokenDto = reply.json("Bitrix24 OAuth refresh")?;
        if let Some(next) = dto.refresh_token {
            // Bitrix24 issues a new refresh token with every refresh.
            *self
                .refresh_token
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = SecretString::from(next);
        }
        Ok(Fetched {
            access_token: SecretString::from(dto.access_token),
            expires_in: dto.expires_in.map(Duration::from_secs),
            instance_url: None,
        })
    }
}

impl Bitrix24Crm {
    pub fn new(cfg: &Bitrix24Config, mapping: CrmMapping) -> Result<Self, String> {
        cfg.validate()?;
        check_mapping(&mapping)?;
        let http = wire::http_client(cfg.timeout_ms, cfg.connect_timeout_ms)?;
        let portal = cfg.portal_url.trim_end_matches('/');
        let rest_base = match cfg.auth {
            Bitrix24Auth::Webhook => format!(
                "{portal}/rest/{}/{}",
                cfg.webhook_user_id,
                cfg.webhook_token.expose_secret()
            ),
            Bitrix24Auth::Oauth => format!("{portal}/rest"),
        };
        let oauth = (cfg.auth == Bitrix24Auth::Oauth).then(|| OAuthRefresh {
            http: http.clone(),
            url: format!("{}/oauth/token/", cfg.oauth_url.trim_end_matches('/')),
            client_id: cfg.client_id.clone(),
            client_secret: cfg.client_secret.clone(),
            refresh_token: Mutex::new(cfg.refresh_token.clone()),
        });
        Ok(Self {
            http,
            rest_base,
            limiter: RateLimiter::new(cfg.burst, cfg.per_second),
            cfg: cfg.clone(),
            mapping,
            pause: VendorPause::default(),
            tokens: TokenCache::default(),
            oauth,
            known: RecordIds::new(100_000),
        })
    }

    /// Why calls are held back, if they are.
    pub fn paused(&self) -> Option<PauseState> {
        self.pause.state()
    }

    /// Access-token fetches so far (OAuth only).
    pub fn token_fetches(&self) -> u64 {
        self.tokens.fetches()
    }

    /// Checks against the portal that every mapped field exists on the configured CRM object
    /// and is writable: Bitrix24 silently ignores unknown fields, so a typo would otherwise
    /// lose every status without an error.
    pub async fn verify_mapping(&self) -> Result<(), String> {
        let result = self
            .call(
                "crm.item.fields",
                json!({"entityTypeId": self.cfg.entity_type_id}),
            )
            .await
            .map_err(|e| format!("Bitrix24 crm.item.fields: {e}"))?;
        let fields = result
            .get("fields")
            .and_then(Value::as_object)
            .ok_or("Bitrix24 crm.item.fields: no `fields` in the answer")?;
        let mut problems = Vec::new();
        let wanted = crate::mapped_fields(self.mapping.fields()).into_iter().chain([
            ("external id", tf::ORIGIN_FIELD),
            ("originator", tf::ORIGINATOR_FIELD),
        ]);
        for (role, name) in wanted {
            match fields.get(name) {
                None => problems.push(format!(
                    "mapping.fields.{role}: `{name}` is not a field of Bitrix24 entity type {}",
                    self.cfg.entity_type_id
                )),
                Some(d) if d.get("isReadOnly").and_then(Value::as_bool) == Some(true) => problems.push(
                    format!("mapping.fields.{role}: `{name}` is read-only in Bitrix24"),
                ),
                Some(_) => {}
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    /// Calls one REST method; `Ok` holds the envelope's `result`.
    async fn call(&self, method: &str, params: Value) -> Result<Value, CrmError> {
        self.call_as(method, params, None).await.map_err(|r| r.error)
    }

    /// [`Self::call`] with an `X-Request-Id`; a refusal keeps the vendor's error code.
    pub(super) async fn call_as(
        &self,
        method: &str,
        params: Value,
        request_id: Option<&str>,
    ) -> Result<Value, Refusal> {
        let mut retried_auth = false;
        loop {
            self.pause.check()?;
            let token = match &self.oauth {
                Some(source) => Some(self.tokens.get(source).await?),
                None => None,
            };
            self.limiter.acquire().await;
            let reply = self.post(method, &params, token.as_deref(), request_id).await?;
            if reply.status.is_success() {
                let mut envelope: Map<String, Value> = reply.json(method)?;
                if let Some(err) = envelope.get("error").filter(|e| !e.is_null()) {
                    // Some failures come back with HTTP 200 and an error body.
                    let code = serde_json::from_value::<tf::ErrorDto>(Value::Object(envelope.clone()))
                        .map(|e| e.code())
                        .unwrap_or_default();
                    return Err(Refusal {
                        code,
                        error: CrmError::permanent(format!("{method}: {err}")),
                    });
                }
                return envelope
                    .remove("result")
                    .ok_or_else(|| CrmError::permanent(format!("{method}: answer without `result`")).into());
            }
            let env: ErrorEnvelope = serde_json::from_slice(&reply.body).unwrap_or_default();
            let code = env.error.code();
            match (reply.status.as_u16(), code.as_str()) {
                (401, "expired_token" | "invalid_token" | "NO_AUTH_FOUND") if !retried_auth => {
                    if let (Some(source), Some(token)) = (&self.oauth, &token) {
                        self.tokens.renew(token, source).await?;
                        retried_auth = true;
                        continue;
                    }
                }
                (503, "QUERY_LIMIT_EXCEEDED") => {
                    self.limiter.back_off(RATE_BACK_OFF);
                    return Err(CrmError {
                        retry_after: Some(RATE_BACK_OFF),
                        ..CrmError::from_status(503, None, format!("{method}: QUERY_LIMIT_EXCEEDED"))
                    }
                    .into());
                }
                (_, "OPERATION_TIME_LIMIT") => {
                    let wait = env
                        .time
                        .and_then(|t| t.operating_reset_at)
                        .and_then(|at| {
                            let now = time::OffsetDateTime::now_utc().unix_timestamp();
                            u64::try_from(at - now).ok()
                        })
                        .map(Duration::from_secs)
                        .or_else(|| reply.retry_after())
                        .unwrap_or(OPERATION_LIMIT_PAUSE)
                        .max(Duration::from_secs(1));
                    self.pause
                        .pause(wait, "Bitrix24 OPERATION_TIME_LIMIT (method time budget spent)");
                    tracing::warn!(
                        method,
                        pause_s = wait.as_secs(),
                        "Bitrix24 method time limit: pausing"
                    );
                    return Err(CrmError {
                        retry_after: Some(wait),
                        ..CrmError::transient(format!("{method}: OPERATION_TIME_LIMIT"))
                    }
                    .into());
                }
                _ => {}
            }
            let error = CrmError::from_status(
                reply.status.as_u16(),
                reply.retry_after(),
                format!(
                    "{method}: HTTP {} {code} {}",
                    reply.status.as_u16(),
                    wire::excerpt(env.error.error_description.as_bytes())
                ),
            );
            return Err(Refusal { code, error });
        }
    }

    async fn post(
        &self,
        method: &str,
        params: &Value,
        token: Option<&AccessToken>,
        request_id: Option<&str>,
    ) -> Result<Reply, CrmError> {
        let mut body = params.clone();
        if let (Some(t), Value::Object(m)) = (token, &mut body) {
            m.insert("auth".into(), Value::from(t.value.expose_secret()));
        }
        let mut req = self
            .http
            .post(format!("{}/{method}.json", self.rest_base))
            .json(&body);
        if let Some(id) = request_id {
            req = req.header("x-request-id", id);
        }
        wire::send(req).await
    }

    /// Lists our items for these shipments, learning their ids.
    async fn lookup(&self, shipments: &[&ShipmentId]) -> Result<Vec<ListedItem>, CrmError> {
        let mut all = Vec::new();
        for page in shipments.chunks(50) {
            let params = tf::list_request(
                self.cfg.entity_type_id,
                &self.cfg.originator_id,
                &self.mapping,
                page,
            );
            let result = self.call("crm.item.list", params).await?;
            let items = tf::parse_list(result, &self.mapping)?;
            let mut seen: HashMap<ShipmentId, u32> = HashMap::new();
            for item in &items {
                *seen.entry(item.shipment.clone()).or_default() += 1;
            }
            for item in &items {
                // An item without an id cannot be written to, and creating another would
                // duplicate it: writes to its shipment are refused like an ambiguous one's.
                let known = match item.id {
                    Some(id) if seen[&item.shipment] == 1 => Known::Item(id),
                    _ => Known::Ambiguous,
                };
                self.known.insert(item.shipment.clone(), known);
            }
            let now = std::time::Instant::now();
            for shipment in page.iter().filter(|s| !seen.contains_key(**s)) {
                self.known.insert((*shipment).clone(), Known::Absent(now));
            }
            all.extend(items);
        }
        Ok(all)
    }
}

impl Bitrix24Crm {
    /// What is known of the shipment's item, a stale "not found" as nothing.
    fn known_now(&self, shipment: &ShipmentId) -> Option<Known> {
        match self.known.get(shipment) {
            Some(Known::Absent(at)) if at.elapsed() > crate::ABSENT_FOR => None,
            known => known,
        }
    }
}

/// Static checks: crm.item speaks camelCase (`stageId`, `ufCrm5_1700000000`); an UPPER_CASE
/// name from the deprecated crm.deal API would be ignored without an error.
fn check_mapping(mapping: &CrmMapping) -> Result<(), String> {
    for (role, name) in crate::mapped_fields(mapping.fields()) {
        if tf::RESERVED.contains(&name) {
            return Err(format!(
                "mapping.fields.{role}: `{name}` is reserved: the adapter keeps the external id in originatorId/originId"
            ));
        }
        let camel = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !camel {
            return Err(format!(
                "mapping.fields.{role}: `{name}` is not a crm.item field name (camelCase, e.g. stageId or ufCrm5_1700000000)"
            ));
        }
    }
    Ok(())
}

#[async_trait]
impl CrmGateway for Bitrix24Crm {
    #[tracing::instrument(name = "crm.read_states", skip_all, fields(vendor = "bitrix24", shipments = shipments.len()))]
    async fn read_states(&self, shipments: &[ShipmentId]) -> Result<ShipmentStates, CrmError> {
        let ids: Vec<&ShipmentId> = shipments.iter().collect();
        let items = self.lookup(&ids).await?;
        let mut out = ShipmentStates::default();
        // Ascending item id: with duplicates, the oldest item's state is reported.
        for item in items {
            match (item.id, item.state) {
                (None, _) => out.unreadable(
                    item.shipment,
                    CrmError::permanent("crm.item.list: the shipment's item has no id"),
                ),
                (Some(_), Some(state))
                    if !out.contains_key(&item.shipment) && !out.unreadable.contains_key(&item.shipment) =>
                {
                    out.insert(item.shipment, state)
                }
                _ => {}
            }
        }
        Ok(out)
    }

    #[tracing::instrument(name = "crm.write_statuses", skip_all, fields(vendor = "bitrix24", writes = writes.len()))]
    async fn write_statuses(&self, writes: &[CrmStatusWrite]) -> Result<Vec<ItemResult>, CrmError> {
        let mut results = Vec::with_capacity(writes.len());
        for chunk in writes.chunks(self.cfg.batch_size) {
            results.extend(self.write_chunk(chunk).await?);
        }
        Ok(results)
    }
}

impl Bitrix24Crm {
    async fn write_chunk(&self, writes: &[CrmStatusWrite]) -> Result<Vec<ItemResult>, CrmError> {
        // Read by external id before any create: a create that timed out earlier is found here.
        let unknown: Vec<&ShipmentId> = writes
            .iter()
            .map(|w| &w.shipment_id)
            .filter(|s| self.known_now(s).is_none())
            .collect();
        if !unknown.is_empty() {
            self.lookup(&unknown).await?;
        }
        let mut cmd = Map::new();
        let mut plan = Vec::with_capacity(writes.len());
        for (i, w) in writes.iter().enumerate() {
            let key = format!("w{i}");
            let mut fields = tf::write_fields(&self.mapping, w);
            let command = match self.known_now(&w.shipment_id) {
                Some(Known::Ambiguous) => {
                    plan.push((key, None));
                    continue;
                }
                Some(Known::Item(id)) => {
                    tf::command("crm.item.update", self.cfg.entity_type_id, Some(id), &fields)
                }
                Some(Known::Absent(_)) | None => {
                    // A create uses up "not found": whatever becomes of it, the next write of
                    // the shipment learns its item (or lists again: a create that timed out
                    // may have been made).
                    self.known.forget(&w.shipment_id);
                    fields.insert(tf::ORIGINATOR_FIELD.into(), self.cfg.originator_id.clone());
                    fields.insert(tf::ORIGIN_FIELD.into(), w.shipment_id.as_str().to_owned());
                    tf::command("crm.item.add", self.cfg.entity_type_id, None, &fields)
                }
            };
            cmd.insert(key.clone(), Value::from(command));
            plan.push((key, Some(())));
        }
        let batch = if cmd.is_empty() {
            tf::BatchResult::default()
        } else {
            tf::parse_batch(self.call("batch", json!({"halt": 0, "cmd": cmd})).await?)?
        };
        let mut out = Vec::with_capacity(writes.len());
        for ((key, planned), w) in plan.into_iter().zip(writes) {
            if planned.is_none() {
                out.push(ItemResult {
                    result: Err(CrmError::permanent(format!(
                        "several Bitrix24 items carry originId {}: an operator must merge them",
                        w.shipment_id
                    ))),
                    http_status: None,
                    response_excerpt: None,
                });
                continue;
            }
            if let Some(ok) = batch.result.get(&key) {
                if let Some(id) = tf::added_id(ok) {
                    self.known.insert(w.shipment_id.clone(), Known::Item(id));
                }
                out.push(ItemResult {
                    result: Ok(()),
                    http_status: Some(200),
                    response_excerpt: Some(wire::excerpt(ok.to_string().as_bytes())),
                });
                continue;
            }
            let (code, text) = match batch.result_error.get(&key) {
                Some(e) => {
                    let dto: tf::ErrorDto = serde_json::from_value(e.clone()).unwrap_or_default();
                    (dto.code(), e.to_string())
                }
                None => ("NO_RESULT".to_owned(), "no result for this command".to_owned()),
            };
            if code == "NOT_FOUND" {
                // The item was deleted since it was listed: look it up again next time.
                self.known.forget(&w.shipment_id);
            }
            let kind = if code == "NO_RESULT" {
                backbone_sync::ports::CrmErrorKind::Transient
            } else {
                tf::classify(&code)
            };
            out.push(ItemResult {
                result: Err(CrmError {
                    kind,
                    http_status: None,
                    retry_after: None,
                    message: format!("Bitrix24 refused the command: {code}"),
                }),
                http_status: None,
                response_excerpt: Some(wire::excerpt(text.as_bytes())),
            });
        }
        Ok(out)
    }
}
