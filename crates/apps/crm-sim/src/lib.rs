//! crm-sim: an in-memory CRM for local runs, end-to-end tests and benchmarks. One process serves
//! every dialect crm-sync speaks, each on its own paths:
//!
//! - the generic CRM API (`docs/openapi/crm-generic-v1.yaml`), `/api/v1/...`: checks the bearer
//!   token, the request signature and that its nonce is fresh, and applies writes idempotently
//!   by `eventId`;
//! - Bitrix24 REST ([`bitrix24`]), `/rest/...` and `/oauth/token/`;
//! - Salesforce REST ([`salesforce`]), `/services/...`;
//! - Kommo API v4 ([`kommo`]), `/api/v4/...` and `/oauth2/access_token`.
//!
//! Each dialect keeps its own records, found by our external id (the shipment id), counts
//! writes per shipment, keeps every record's history, and answers injected faults in its
//! vendor's documented shape. `/sim/...` reads all of it back.
//!
//! Each dialect also keeps contacts, tasks and notes for the two-way sync (`docs/two-way-sync.md`),
//! served in its vendor's wire shapes, and announces every change to a contact or task by a
//! webhook in the vendor's shape once told where to send them ([`webhooks`], `/sim/webhooks/...`).

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
pub use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

mod auth;
pub mod bitrix24;
mod control;
mod generic;
mod generic_people;
pub mod kommo;
mod kommo_people;
mod nonces;
mod people;
pub mod salesforce;
mod table;
pub mod webhooks;

pub use bitrix24::Bitrix24Schema;
pub use kommo::KommoSchema;
pub use kommo_people::KommoContactFields;
pub use salesforce::SalesforceSchema;

pub const MAX_BATCH: usize = 500;

/// How long an access token issued by a vendor dialect's token endpoint stays valid, unless
/// [`Sim::with_token_ttl`] says otherwise.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// The daily API request allowance reported in Salesforce's `Sforce-Limit-Info` when
/// [`Faults::api_quota`] is not set.
pub const DEFAULT_API_QUOTA: u64 = 5_000_000;

/// The API dialects crm-sim speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dialect {
    Generic,
    Bitrix24,
    Salesforce,
    Kommo,
}

impl Dialect {
    pub const ALL: [Dialect; 4] = [
        Dialect::Generic,
        Dialect::Bitrix24,
        Dialect::Salesforce,
        Dialect::Kommo,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Dialect::Generic => "generic",
            Dialect::Bitrix24 => "bitrix24",
            Dialect::Salesforce => "salesforce",
            Dialect::Kommo => "kommo",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == s)
    }
}

/// What each vendor dialect's account looks like: its objects, fields and stages. The defaults
/// fit `config/crm-sync.<vendor>.local.toml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Schemas {
    pub bitrix24: Bitrix24Schema,
    pub salesforce: SalesforceSchema,
    pub kommo: KommoSchema,
}

/// Faults applied to the data calls of every dialect (not to token endpoints or `/sim`), each
/// answered in its vendor's shape; zero disables each one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Share of requests answered with 503.
    pub error_rate: f64,
    /// Added to every request.
    pub latency_ms: u64,
    /// From now, answer 503 for this long.
    pub outage_for_ms: u64,
    /// Answer 429 above this many requests per second.
    pub rate_limit_rps: u64,
    /// `Retry-After` sent with 429 and 503.
    pub retry_after_s: u64,
    /// Salesforce only: the org's daily API request allowance. Above it every call is refused
    /// with 403 `REQUEST_LIMIT_EXCEEDED` (`TotalRequests Limit exceeded.`); it is also the
    /// maximum reported in `Sforce-Limit-Info`. Zero: no limit.
    pub api_quota: u64,
}

/// Counters of one dialect. For the vendor dialects a write is one record created or updated,
/// and a repeated write is one that carries an event id already written to that shipment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    pub total_writes: u64,
    pub requests: u64,
    pub duplicate_writes: u64,
    pub rejected_requests: u64,
    pub writes_per_shipment: BTreeMap<String, u64>,
    /// Records created (the generic API: shipments written for the first time).
    #[serde(default)]
    pub creates: u64,
    /// Records held now.
    #[serde(default)]
    pub records: u64,
}

struct Store {
    records: HashMap<String, Map<String, Value>>,
    history: HashMap<String, Vec<Map<String, Value>>>,
    seen_events: HashSet<String>,
    /// `X-Nonce`s of the generic API, held for the skew window.
    nonces: nonces::Nonces,
    stats: Stats,
    faults: Faults,
    outage_until: Option<Instant>,
    windows: HashMap<Dialect, (u64, u64)>,
    bitrix24: table::Table,
    salesforce: table::Table,
    kommo: table::Table,
    grants: HashMap<Dialect, auth::Grants>,
    /// Salesforce API requests counted against [`Faults::api_quota`].
    api_used: u64,
}

impl Store {
    fn new(schemas: &Schemas) -> Self {
        Self {
            records: HashMap::new(),
            history: HashMap::new(),
            seen_events: HashSet::new(),
            nonces: nonces::Nonces::new(nonces::MAX_NONCES),
            stats: Stats::default(),
            faults: Faults::default(),
            outage_until: None,
            windows: HashMap::new(),
            bitrix24: bitrix24::table(&schemas.bitrix24),
            salesforce: salesforce::table(&schemas.salesforce),
            kommo: kommo::table(&schemas.kommo),
            grants: HashMap::new(),
            api_used: 0,
        }
    }

    fn table(&self, d: Dialect) -> Option<&table::Table> {
        match d {
            Dialect::Generic => None,
            Dialect::Bitrix24 => Some(&self.bitrix24),
            Dialect::Salesforce => Some(&self.salesforce),
            Dialect::Kommo => Some(&self.kommo),
        }
    }

    fn stats_mut(&mut self, d: Dialect) -> &mut Stats {
        match d {
            Dialect::Generic => &mut self.stats,
            Dialect::Bitrix24 => &mut self.bitrix24.stats,
            Dialect::Salesforce => &mut self.salesforce.stats,
            Dialect::Kommo => &mut self.kommo.stats,
        }
    }

    fn grants(&mut self, d: Dialect) -> &mut auth::Grants {
        self.grants.entry(d).or_default()
    }
}

/// Why a call is refused by an injected fault; each dialect answers it in its vendor's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Outage,
    RateLimited,
    Failure,
    QuotaSpent,
}

/// The verdict of the fault injection on one call.
pub(crate) struct Gate {
    pub refusal: Option<Refusal>,
    pub retry_after: Option<u64>,
    /// Salesforce `api-usage`: requests so far and the allowance.
    pub api_usage: (u64, u64),
}

/// Compares two secrets in constant time.
pub(crate) fn same(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Shared simulator state; clone freely (after the `with_*` calls).
#[derive(Clone)]
pub struct Sim {
    token: Arc<str>,
    secret: Arc<str>,
    vendor_secret: Arc<str>,
    schemas: Arc<Schemas>,
    token_ttl: Duration,
    store: Arc<Mutex<Store>>,
    /// Contacts, tasks and notes of every dialect.
    people: Arc<Mutex<people::Stores>>,
    hooks: Arc<webhooks::Hub>,
    started: Instant,
}

impl Sim {
    /// A simulator whose generic API wants `token` and `signing_secret`; the vendor dialects
    /// accept `token` as their secret too until [`Sim::with_vendor_secret`] says otherwise.
    pub fn new(token: &str, signing_secret: &str) -> Self {
        let schemas = Schemas::default();
        Self {
            token: token.into(),
            secret: signing_secret.into(),
            vendor_secret: token.into(),
            store: Arc::new(Mutex::new(Store::new(&schemas))),
            people: Arc::new(Mutex::new(people::Stores::new())),
            hooks: Arc::new(webhooks::Hub::new()),
            schemas: Arc::new(schemas),
            token_ttl: DEFAULT_TOKEN_TTL,
            started: Instant::now(),
        }
    }

    /// The one secret every vendor dialect accepts: the Bitrix24 webhook code, the OAuth client
    /// secret of Bitrix24, Salesforce and Kommo, the Kommo long-lived token, and the first
    /// (install-time) refresh token of Bitrix24 and Kommo.
    pub fn with_vendor_secret(mut self, secret: &str) -> Self {
        self.vendor_secret = secret.into();
        self
    }

    /// The vendor accounts' objects and fields. Starts the records over: call it first.
    pub fn with_schemas(mut self, schemas: Schemas) -> Self {
        self.store = Arc::new(Mutex::new(Store::new(&schemas)));
        self.people = Arc::new(Mutex::new(people::Stores::new()));
        self.schemas = Arc::new(schemas);
        self
    }

    /// Lifetime of the access tokens the vendor token endpoints issue.
    pub fn with_token_ttl(mut self, ttl: Duration) -> Self {
        self.token_ttl = ttl;
        self
    }

    pub fn schemas(&self) -> &Schemas {
        &self.schemas
    }

    pub(crate) fn vendor_secret(&self) -> &str {
        &self.vendor_secret
    }

    pub(crate) fn token_ttl(&self) -> Duration {
        self.token_ttl
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn set_faults(&self, faults: Faults) {
        let mut s = self.lock();
        s.outage_until =
            (faults.outage_for_ms > 0).then(|| Instant::now() + Duration::from_millis(faults.outage_for_ms));
        s.faults = faults;
    }

    /// Counters of the generic API.
    pub fn stats(&self) -> Stats {
        self.stats_of(Dialect::Generic)
    }

    /// Counters of one dialect.
    pub fn stats_of(&self, d: Dialect) -> Stats {
        let s = self.lock();
        match s.table(d) {
            Some(t) => t.stats(),
            None => Stats {
                records: s.records.len() as u64,
                ..s.stats.clone()
            },
        }
    }

    /// The generic API's record of a shipment.
    pub fn record(&self, shipment: &str) -> Option<Map<String, Value>> {
        self.lock().records.get(shipment).cloned()
    }

    /// The generic API's history of a shipment.
    pub fn history(&self, shipment: &str) -> Vec<Map<String, Value>> {
        self.lock().history.get(shipment).cloned().unwrap_or_default()
    }

    /// Every record of a dialect that carries this shipment id, as flat field maps with the
    /// record id under `id` (Bitrix24 `originId`, the Salesforce External ID field, the Kommo
    /// external-id custom field as `cf:<id>`). More than one means the vendor holds duplicates.
    pub fn records_of(&self, d: Dialect, shipment: &str) -> Vec<Map<String, Value>> {
        let s = self.lock();
        let Some(t) = s.table(d) else {
            return s.records.get(shipment).cloned().into_iter().collect();
        };
        t.find(shipment)
            .into_iter()
            .filter_map(|id| {
                let mut r = t.get(id)?.clone();
                r.insert("id".into(), self.record_id(d, id));
                Some(r)
            })
            .collect()
    }

    fn record_id(&self, d: Dialect, id: u64) -> Value {
        match d {
            Dialect::Salesforce => Value::from(salesforce::record_id(id)),
            _ => Value::from(id),
        }
    }

    /// The status a dialect holds for a shipment: the schema's status field of its oldest
    /// record (for the generic API, `status`).
    pub fn status_of(&self, d: Dialect, shipment: &str) -> Option<String> {
        self.field_of(d, shipment, self.status_field(d))
    }

    /// One field of the oldest record of a shipment, as text.
    pub fn field_of(&self, d: Dialect, shipment: &str, field: &str) -> Option<String> {
        self.records_of(d, shipment)
            .first()
            .and_then(|r| r.get(field))
            .and_then(table::text)
    }

    fn status_field(&self, d: Dialect) -> &str {
        match d {
            Dialect::Generic => "status",
            Dialect::Bitrix24 => &self.schemas.bitrix24.status_field,
            Dialect::Salesforce => &self.schemas.salesforce.status_field,
            Dialect::Kommo => &self.schemas.kommo.status_field,
        }
    }

    /// Snapshots of a shipment's record after each write to it, oldest first.
    pub fn history_of(&self, d: Dialect, shipment: &str) -> Vec<Map<String, Value>> {
        let s = self.lock();
        match s.table(d) {
            Some(t) => t.history(shipment),
            None => s.history.get(shipment).cloned().unwrap_or_default(),
        }
    }

    /// Shipment ids with at least one record in this dialect (Salesforce: lower-cased, as it
    /// matches them).
    pub fn shipments_of(&self, d: Dialect) -> Vec<String> {
        let s = self.lock();
        match s.table(d) {
            Some(t) => t.shipments(),
            None => {
                let mut ids: Vec<String> = s.records.keys().cloned().collect();
                ids.sort();
                ids
            }
        }
    }

    /// Access tokens a dialect's token endpoint has issued so far.
    pub fn tokens_issued(&self, d: Dialect) -> u64 {
        self.lock().grants.get(&d).map_or(0, |g| g.issued)
    }

    /// Every access token of a dialect stops working now, as when the vendor expires or revokes
    /// sessions; refresh tokens stay valid.
    pub fn expire_tokens(&self, d: Dialect) {
        self.lock().grants(d).expire_access();
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/health", get(|| async { "ok" }))
            .merge(generic::routes())
            .merge(generic_people::routes())
            .merge(control::routes())
            .merge(people::control::routes())
            .merge(bitrix24::routes())
            .merge(salesforce::routes())
            .merge(kommo::routes())
            .merge(kommo_people::routes())
            .with_state(self.clone())
    }

    /// Counts the call and applies the injected faults (latency included) for one dialect.
    pub(crate) async fn gate(&self, d: Dialect) -> Gate {
        let (latency, gate) = {
            let mut s = self.lock();
            s.stats_mut(d).requests += 1;
            if d == Dialect::Salesforce {
                s.api_used += 1;
            }
            let second = self.started.elapsed().as_secs();
            let window = s.windows.entry(d).or_default();
            if window.0 != second {
                *window = (second, 0);
            }
            window.1 += 1;
            let in_window = window.1;
            let f = &s.faults;
            let refusal = if s.outage_until.is_some_and(|u| Instant::now() < u) {
                Some(Refusal::Outage)
            } else if f.rate_limit_rps > 0 && in_window > f.rate_limit_rps {
                Some(Refusal::RateLimited)
            } else if d == Dialect::Salesforce && f.api_quota > 0 && s.api_used > f.api_quota {
                Some(Refusal::QuotaSpent)
            } else if f.error_rate > 0.0 && rand::random::<f64>() < f.error_rate {
                Some(Refusal::Failure)
            } else {
                None
            };
            let quota = if f.api_quota > 0 {
                f.api_quota
            } else {
                DEFAULT_API_QUOTA
            };
            (
                f.latency_ms,
                Gate {
                    refusal,
                    retry_after: Some(f.retry_after_s).filter(|s| *s > 0),
                    api_usage: (s.api_used, quota),
                },
            )
        };
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        gate
    }

    /// Counts a call refused for its credentials.
    pub(crate) fn reject(&self, d: Dialect) {
        self.lock().stats_mut(d).rejected_requests += 1;
    }
}

/// The `Host` a request was sent to, for URLs the vendor puts in its answers (Salesforce
/// `instance_url`, Kommo `_links`).
pub(crate) fn origin(headers: &HeaderMap) -> String {
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("http://{host}")
}

/// The bearer token of a request, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// JSON with a given status and content type.
pub(crate) fn json_response(status: StatusCode, content_type: &'static str, body: &Value) -> Response {
    (status, [("content-type", content_type)], body.to_string()).into_response()
}

pub(crate) fn with_retry_after(mut resp: Response, retry_after: Option<u64>) -> Response {
    if let Some(secs) = retry_after.filter(|s| *s > 0) {
        resp.headers_mut().insert("retry-after", HeaderValue::from(secs));
    }
    resp
}

/// Serves the simulator on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    axum::serve(listener, router).await
}
