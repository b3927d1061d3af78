//! The Kommo client: auth, limits, lookups by external id, and the port implementation.

use super::transformers::{self as tf, LeadsPage, Problem, Slot};
use super::{KommoAuth, KommoConfig};
use crate::limiter::RateLimiter;
use crate::pause::{PauseState, VendorPause};
use crate::token::{Fetched, TokenCache, TokenSource};
use crate::wire::{self, Reply};
use crate::RecordIds;
use async_trait::async_trait;
use backbone_sync::event::ShipmentId;
use backbone_sync::mapping::{CrmMapping, CrmStatusWrite};
use backbone_sync::ports::{CrmError, CrmErrorKind, CrmGateway, ItemResult, ShipmentStates};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

const RATE_BACK_OFF: Duration = Duration::from_secs(1);

#[derive(Clone, Copy)]
enum Known {
    Lead(u64),
    Ambiguous,
    /// Searched for at this moment and not found (see [`crate::ABSENT_FOR`]).
    Absent(std::time::Instant),
}

struct OAuthRefresh {
    http: reqwest::Client,
    url: String,
    client_id: String,
    client_secret: SecretString,
    redirect_uri: String,
    refresh_token: Mutex<SecretString>,
    token_file: Option<String>,
}

#[derive(Deserialize)]
struct TokenDto {
    access_token: String,
    refresh_token: String,
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
        let body = json!({
            "client_id": self.client_id,
            "client_secret": self.client_secret.expose_secret(),
            "grant_type": "refresh_token",
            "refresh_token": refresh.expose_secret(),
            "redirect_uri": self.redirect_uri,
        });
        let reply = wire::send(self.http.post(&self.url).json(&body)).await?;
        if !reply.status.is_success() {
            return Err(CrmError::from_status(
                reply.status.as_u16(),
                reply.retry_after(),
                format!("Kommo token refresh refused: HTTP {}", reply.status.as_u16()),
            ));
        }
        let dto: TokenDto = reply.json("Kommo token refresh")?;
        // The old refresh token is spent now: keep the new one before anything else can fail.
        if let Some(path) = &self.token_file {
            if let Err(e) = persist(path, &dto.refresh_token) {
                tracing::error!(error = %e, alert = true, "cannot persist the rotated Kommo refresh token");
            }
        }
        *self
            .refresh_token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = SecretString::from(dto.refresh_token);
        Ok(Fetched {
            access_token: SecretString::from(dto.access_token),
            expires_in: dto.expires_in.map(Duration::from_secs),
            instance_url: None,
        })
    }
}

/// Writes the file atomically (temporary file, then rename), readable by the owner only.
fn persist(path: &str, token: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = format!("{path}.tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(token.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

pub struct KommoCrm {
    http: reqwest::Client,
    base: String,
    pub(super) cfg: KommoConfig,
    mapping: CrmMapping,
    external: Slot,
    limiter: RateLimiter,
    pause: VendorPause,
    tokens: TokenCache,
    oauth: Option<OAuthRefresh>,
    known: RecordIds<Known>,
}

impl KommoCrm {
    pub fn new(cfg: &KommoConfig, mapping: CrmMapping) -> Result<Self, String> {
        cfg.validate()?;
        let mut seen = HashSet::new();
        for (role, name) in crate::mapped_fields(mapping.fields()) {
            let slot = Slot::parse(name).ok_or_else(|| {
                format!("mapping.fields.{role}: `{name}` is not a Kommo lead field (status_id, name or cf:<field id>)")
            })?;
            if !seen.insert(slot) {
                return Err(format!("mapping.fields.{role}: `{name}` is used twice"));
            }
        }
        let external = Slot::parse(&mapping.fields().shipment_id)
            .filter(|s| matches!(s, Slot::Custom(_)))
            .ok_or(
                "mapping.fields.shipment_id must be a custom field (cf:<field id>): it is the external id",
            )?;
        if matches!(Slot::parse(&mapping.fields().timestamp), Some(Slot::StatusId)) {
            return Err("mapping.fields.timestamp must be a custom field".into());
        }
        let http = wire::http_client(cfg.timeout_ms, cfg.connect_timeout_ms)?;
        let base = cfg.base_url.trim_end_matches('/').to_owned();
        let oauth = match cfg.auth {
            KommoAuth::LongLived => None,
            KommoAuth::Oauth => {
                let stored = cfg
                    .token_file
                    .as_deref()
                    .and_then(|p| std::fs::read_to_string(p).ok())
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty());
                Some(OAuthRefresh {
                    http: http.clone(),
                    url: format!("{base}/oauth2/access_token"),
                    client_id: cfg.client_id.clone(),
                    client_secret: cfg.client_secret.clone(),
                    redirect_uri: cfg.redirect_uri.clone(),
                    refresh_token: Mutex::new(
                        stored.map_or_else(|| cfg.refresh_token.clone(), SecretString::from),
                    ),
                    token_file: cfg.token_file.clone(),
                })
            }
        };
        Ok(Self {
            http,
            base,
            limiter: RateLimiter::new(cfg.burst, cfg.per_second),
            cfg: cfg.clone(),
            mapping,
            external,
            pause: VendorPause::default(),
            tokens: TokenCache::default(),
            oauth,
            known: RecordIds::new(100_000),
        })
    }

    pub fn paused(&self) -> Option<PauseState> {
        self.pause.state()
    }

    pub fn token_fetches(&self) -> u64 {
        self.tokens.fetches()
    }

    /// Checks against the account that every mapped custom field exists on leads and, when
    /// statuses map to pipeline stages, that each CRM status is a stage of `pipeline_id`.
    pub async fn verify_mapping<'a>(
        &self,
        crm_statuses: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), String> {
        let mut problems = Vec::new();
        let mut ids = HashSet::new();
        let mut page = 1;
        loop {
            let reply = self
                .call(
                    Method::GET,
                    &format!("/api/v4/leads/custom_fields?limit=250&page={page}"),
                    None,
                )
                .await
                .map_err(|e| format!("Kommo custom fields: {e}"))?;
            if reply.status == StatusCode::NO_CONTENT {
                break;
            }
            if !reply.status.is_success() {
                return Err(format!("Kommo custom fields: {}", reply.refused("custom fields")));
            }
            let v: Value = reply.json("custom fields").map_err(|e| e.to_string())?;
            let fields = v
                .pointer("/_embedded/custom_fields")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            ids.extend(fields.iter().filter_map(|f| f.get("id")?.as_u64()));
            if fields.len() < 250 || v.pointer("/_links/next").is_none() {
                break;
            }
            page += 1;
        }
        for (role, name) in crate::mapped_fields(self.mapping.fields()) {
            if let Some(Slot::Custom(id)) = Slot::parse(name) {
                if !ids.contains(&id) {
                    problems.push(format!(
                        "mapping.fields.{role}: lead custom field {id} does not exist"
                    ));
                }
            }
        }
        if Slot::parse(&self.mapping.fields().status) == Some(Slot::StatusId) {
            let statuses: Vec<&str> = crm_statuses.into_iter().collect();
            if let Some(bad) = statuses.iter().find(|s| s.parse::<u64>().is_err()) {
                problems.push(format!(
                    "mapping.statuses: `{bad}` is not a Kommo stage id (a number)"
                ));
            } else if self.cfg.pipeline_id == 0 {
                problems.push("crm.kommo.pipeline_id must be set when statuses map to status_id".into());
            } else {
                let path = format!("/api/v4/leads/pipelines/{}", self.cfg.pipeline_id);
                let reply = self
                    .call(Method::GET, &path, None)
                    .await
                    .map_err(|e| format!("Kommo pipeline: {e}"))?;
                if !reply.status.is_success() {
                    return Err(format!("Kommo pipeline: {}", reply.refused("pipeline")));
                }
                let v: Value = reply.json("pipeline").map_err(|e| e.to_string())?;
                let stages: HashSet<String> = v
                    .pointer("/_embedded/statuses")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| Some(s.get("id")?.as_u64()?.to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                for s in statuses {
                    if !stages.contains(s) {
                        problems.push(format!(
                            "mapping.statuses: stage {s} is not in pipeline {}",
                            self.cfg.pipeline_id
                        ));
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    /// One call with the current token, renewed once on 401. 429 and 403 come back as `Err`.
    async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<Reply, CrmError> {
        self.call_as(method, path_and_query, body, None).await
    }

    /// [`Self::call`] with an `X-Request-Id`.
    pub(super) async fn call_as(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
        request_id: Option<&str>,
    ) -> Result<Reply, CrmError> {
        let mut renewed = false;
        loop {
            self.pause.check()?;
            let token = match &self.oauth {
                Some(source) => Some(self.tokens.get(source).await?),
                None => None,
            };
            let bearer = token.as_ref().map_or_else(
                || self.cfg.access_token.expose_secret(),
                |t| t.value.expose_secret(),
            );
            self.limiter.acquire().await;
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path_and_query}", self.base))
                .bearer_auth(bearer);
            if let Some(b) = body {
                req = req.json(b);
            }
            if let Some(id) = request_id {
                req = req.header("x-request-id", id);
            }
            let reply = wire::send(req).await?;
            match reply.status {
                StatusCode::UNAUTHORIZED if !renewed => {
                    if let (Some(source), Some(t)) = (&self.oauth, &token) {
                        self.tokens.renew(t, source).await?;
                        renewed = true;
                        continue;
                    }
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    let wait = reply.retry_after().unwrap_or(RATE_BACK_OFF);
                    self.limiter.back_off(wait);
                    return Err(reply.refused("Kommo rate limit (429)"));
                }
                StatusCode::FORBIDDEN => {
                    // Kommo answers 403 to every call once it blocks the account or our IP
                    // (for exceeding the rate, say). Hammering it only prolongs the block.
                    let pause = Duration::from_secs(self.cfg.block_pause_secs);
                    self.pause
                        .pause(pause, "Kommo refused access (403): account or IP blocked");
                    tracing::error!(
                        pause_s = pause.as_secs(),
                        alert = true,
                        "Kommo answered 403: pausing CRM calls"
                    );
                    return Err(CrmError {
                        retry_after: Some(pause),
                        ..reply.refused("Kommo blocked (403)").as_transient()
                    });
                }
                _ => {}
            }
            return Ok(reply);
        }
    }

    async fn leads(&self, path_and_query: &str) -> Result<Vec<tf::Lead>, CrmError> {
        let reply = self.call(Method::GET, path_and_query, None).await?;
        if reply.status == StatusCode::NO_CONTENT {
            return Ok(Vec::new());
        }
        if !reply.status.is_success() {
            return Err(reply.refused("Kommo leads"));
        }
        Ok(reply.json::<LeadsPage>("Kommo leads")?.embedded.leads)
    }

    /// Finds the leads of these shipments (by id when known, else by search), learning ids.
    async fn lookup(&self, shipments: &[&ShipmentId]) -> Result<HashMap<ShipmentId, tf::Lead>, CrmError> {
        let mut found: HashMap<ShipmentId, Vec<tf::Lead>> = HashMap::new();
        let mut by_id = Vec::new();
        let mut search = Vec::new();
        for s in shipments {
            match self.known.get(s) {
                Some(Known::Lead(id)) => by_id.push(id),
                _ => search.push(*s),
            }
        }
        let wanted: HashSet<&ShipmentId> = shipments.iter().copied().collect();
        let keep = |leads: Vec<tf::Lead>, found: &mut HashMap<ShipmentId, Vec<tf::Lead>>| {
            for lead in leads {
                if let Some(s) = lead.shipment(self.external).filter(|s| wanted.contains(s)) {
                    found.entry(s).or_default().push(lead);
                }
            }
        };
        for ids in by_id.chunks(250) {
            let query = {
                let mut q = form_urlencoded::Serializer::new(String::new());
                q.append_pair("limit", "250");
                for id in ids {
                    q.append_pair("filter[id][]", &id.to_string());
                }
                q.finish()
            };
            keep(self.leads(&format!("/api/v4/leads?{query}")).await?, &mut found);
        }
        for s in search {
            let q = form_urlencoded::Serializer::new(String::new())
                .append_pair("query", s.as_str())
                .append_pair("limit", "250")
                .finish();
            keep(self.leads(&format!("/api/v4/leads?{q}")).await?, &mut found);
        }
        let mut out = HashMap::new();
        for s in shipments {
            match found.remove(*s) {
                Some(mut leads) if leads.len() == 1 => {
                    self.known.insert((*s).clone(), Known::Lead(leads[0].id));
                    out.insert((*s).clone(), leads.remove(0));
                }
                Some(mut leads) => {
                    self.known.insert((*s).clone(), Known::Ambiguous);
                    leads.sort_by_key(|l| l.id);
                    out.insert((*s).clone(), leads.remove(0));
                }
                None => self
                    .known
                    .insert((*s).clone(), Known::Absent(std::time::Instant::now())),
            }
        }
        Ok(out)
    }

    /// What is known of the shipment's lead, a stale "not found" as nothing.
    fn known_now(&self, shipment: &ShipmentId) -> Option<Known> {
        match self.known.get(shipment) {
            Some(Known::Absent(at)) if at.elapsed() > crate::ABSENT_FOR => None,
            known => known,
        }
    }

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
        let mut results: Vec<Option<ItemResult>> = vec![None; writes.len()];
        let (mut updates, mut creates) = (Vec::new(), Vec::new());
        for (i, w) in writes.iter().enumerate() {
            match self.known_now(&w.shipment_id) {
                Some(Known::Ambiguous) => {
                    results[i] = Some(ItemResult {
                        result: Err(CrmError::permanent(format!(
                            "several Kommo leads carry shipment id {}: an operator must merge them",
                            w.shipment_id
                        ))),
                        http_status: None,
                        response_excerpt: None,
                    });
                }
                Some(Known::Lead(id)) => updates.push((i, tf::lead_body(&self.mapping, w, Some(id), 0))),
                Some(Known::Absent(_)) | None => {
                    // A create uses up "not found": whatever becomes of it, the next write of
                    // the shipment learns its lead (or looks again: a create that timed out
                    // may have been made).
                    self.known.forget(&w.shipment_id);
                    creates.push((i, tf::lead_body(&self.mapping, w, None, self.cfg.pipeline_id)))
                }
            }
        }
        for (method, items) in [(Method::PATCH, updates), (Method::POST, creates)] {
            if items.is_empty() {
                continue;
            }
            let body = Value::from(items.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>());
            let reply = self.call(method.clone(), "/api/v4/leads", Some(&body)).await?;
            let indices: Vec<usize> = items.iter().map(|(i, _)| *i).collect();
            for (i, r) in self.read_write_reply(&reply, writes, &indices, method == Method::POST)? {
                results[i] = Some(r);
            }
        }
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or(ItemResult {
                    result: Err(CrmError::transient("no answer for this lead")),
                    http_status: None,
                    response_excerpt: None,
                })
            })
            .collect())
    }

    fn read_write_reply(
        &self,
        reply: &Reply,
        writes: &[CrmStatusWrite],
        indices: &[usize],
        created: bool,
    ) -> Result<Vec<(usize, ItemResult)>, CrmError> {
        let status = reply.status.as_u16();
        if reply.status.is_success() {
            let page: LeadsPage = reply.json("Kommo leads write")?;
            if created {
                for lead in &page.embedded.leads {
                    let rid = lead.request_id.as_ref().map(tf::request_id_text);
                    if let Some(&i) = indices
                        .iter()
                        .find(|&&i| Some(writes[i].event_id.as_str()) == rid.as_deref())
                    {
                        self.known
                            .insert(writes[i].shipment_id.clone(), Known::Lead(lead.id));
                    }
                }
            }
            return Ok(indices
                .iter()
                .map(|&i| {
                    (
                        i,
                        ItemResult {
                            result: Ok(()),
                            http_status: Some(status),
                            response_excerpt: None,
                        },
                    )
                })
                .collect());
        }
        if status != 400 {
            return Err(reply.refused("Kommo leads write"));
        }
        // Kommo validates the request as a whole: nothing was written. Items named in
        // validation-errors are refused for good; the rest are retried.
        let problem: Problem = serde_json::from_slice(&reply.body).unwrap_or_default();
        let mut refused: HashMap<String, String> = HashMap::new();
        for v in &problem.validation_errors {
            refused.insert(
                tf::request_id_text(&v.request_id),
                Value::from(v.errors.clone()).to_string(),
            );
        }
        if refused.is_empty() {
            let detail = problem.detail.unwrap_or_default();
            return Ok(indices
                .iter()
                .map(|&i| {
                    let err =
                        CrmError::from_status(400, None, format!("Kommo refused the request: {detail}"));
                    (
                        i,
                        ItemResult {
                            result: Err(err),
                            http_status: Some(400),
                            response_excerpt: Some(reply.excerpt()),
                        },
                    )
                })
                .collect());
        }
        Ok(indices
            .iter()
            .enumerate()
            .map(|(pos, &i)| {
                let by_event = refused.get(writes[i].event_id.as_str());
                let by_index = refused.get(&pos.to_string());
                let item = match by_event.or(by_index) {
                    Some(errors) => ItemResult {
                        result: Err(CrmError::from_status(
                            400,
                            None,
                            format!("Kommo refused the lead: {errors}"),
                        )),
                        http_status: Some(400),
                        response_excerpt: Some(wire::excerpt(errors.as_bytes())),
                    },
                    None => ItemResult {
                        result: Err(CrmError {
                            kind: CrmErrorKind::Transient,
                            ..CrmError::from_status(
                                400,
                                None,
                                "not written: another lead of the request was refused",
                            )
                        }),
                        http_status: Some(400),
                        response_excerpt: None,
                    },
                };
                (i, item)
            })
            .collect())
    }
}

#[async_trait]
impl CrmGateway for KommoCrm {
    #[tracing::instrument(name = "crm.read_states", skip_all, fields(vendor = "kommo", shipments = shipments.len()))]
    async fn read_states(&self, shipments: &[ShipmentId]) -> Result<ShipmentStates, CrmError> {
        let ids: Vec<&ShipmentId> = shipments.iter().collect();
        let leads = self.lookup(&ids).await?;
        // A lead that lacks our fields reads as unknown: the next write fills it in.
        Ok(leads
            .into_iter()
            .filter_map(|(s, lead)| Some((s, lead.state(&self.mapping)?)))
            .collect())
    }

    #[tracing::instrument(name = "crm.write_statuses", skip_all, fields(vendor = "kommo", writes = writes.len()))]
    async fn write_statuses(&self, writes: &[CrmStatusWrite]) -> Result<Vec<ItemResult>, CrmError> {
        let mut out = Vec::with_capacity(writes.len());
        for chunk in writes.chunks(self.cfg.batch_size) {
            out.extend(self.write_chunk(chunk).await?);
        }
        Ok(out)
    }
}
