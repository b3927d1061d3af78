//! crm-sim: the generic CRM API (`docs/openapi/crm-generic-v1.yaml`) in memory, for local runs,
//! end-to-end tests and benchmarks. It checks the bearer token and the request signature, applies
//! writes idempotently by `eventId`, counts writes per shipment and injects faults on demand.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
pub use axum::Router;
use backbone_crm::signing::{verify, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

pub const MAX_BATCH: usize = 500;

/// Faults applied to `/api/v1` requests; zero disables each one.
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
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub total_writes: u64,
    pub requests: u64,
    pub duplicate_writes: u64,
    pub rejected_requests: u64,
    pub writes_per_shipment: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Store {
    records: HashMap<String, Map<String, Value>>,
    history: HashMap<String, Vec<Map<String, Value>>>,
    seen_events: HashSet<String>,
    stats: Stats,
    faults: Faults,
    outage_until: Option<Instant>,
    window: (u64, u64),
}

/// Shared simulator state; clone freely.
#[derive(Clone)]
pub struct Sim {
    token: Arc<str>,
    secret: Arc<str>,
    store: Arc<Mutex<Store>>,
    started: Instant,
}

impl Sim {
    pub fn new(token: &str, signing_secret: &str) -> Self {
        Self {
            token: token.into(),
            secret: signing_secret.into(),
            store: Arc::default(),
            started: Instant::now(),
        }
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

    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    pub fn record(&self, shipment: &str) -> Option<Map<String, Value>> {
        self.lock().records.get(shipment).cloned()
    }

    pub fn history(&self, shipment: &str) -> Vec<Map<String, Value>> {
        self.lock().history.get(shipment).cloned().unwrap_or_default()
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/api/v1/shipments/{id}/status", get(read_one).put(write_one))
            .route("/api/v1/shipments/status:batchGet", post(batch_get))
            .route("/api/v1/shipments/status:batchWrite", post(batch_write))
            .route(
                "/sim/stats",
                get(|State(sim): State<Sim>| async move { Json(sim.stats()) }),
            )
            .route("/sim/faults", post(set_faults))
            .route("/sim/shipments/{id}/history", get(history))
            .route("/health", get(|| async { "ok" }))
            .with_state(self.clone())
    }

    /// Token, signature and faults, in that order. `Err` is the response to send instead.
    async fn admit(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), Response> {
        let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let token = header("authorization")
            .strip_prefix("Bearer ")
            .unwrap_or_default();
        if !bool::from(token.as_bytes().ct_eq(self.token.as_bytes())) {
            self.lock().stats.rejected_requests += 1;
            return Err(problem(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token",
                None,
            ));
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if !verify(
            self.secret.as_bytes(),
            header(TIMESTAMP_HEADER),
            body,
            header(SIGNATURE_HEADER),
            now,
        ) {
            self.lock().stats.rejected_requests += 1;
            return Err(problem(
                StatusCode::UNAUTHORIZED,
                "invalid_signature",
                "signature or timestamp invalid",
                None,
            ));
        }
        let (latency, verdict) = {
            let mut s = self.lock();
            s.stats.requests += 1;
            let retry = Some(s.faults.retry_after_s);
            let second = self.started.elapsed().as_secs();
            if s.window.0 != second {
                s.window = (second, 0);
            }
            s.window.1 += 1;
            let verdict = if s.outage_until.is_some_and(|u| Instant::now() < u) {
                Err(problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "simulated outage",
                    retry,
                ))
            } else if s.faults.rate_limit_rps > 0 && s.window.1 > s.faults.rate_limit_rps {
                Err(problem(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "simulated rate limit",
                    retry,
                ))
            } else if s.faults.error_rate > 0.0 && rand::random::<f64>() < s.faults.error_rate {
                Err(problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "simulated failure",
                    retry,
                ))
            } else {
                Ok(())
            };
            (s.faults.latency_ms, verdict)
        };
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        verdict
    }

    /// Applies one write; a repeated `eventId` is acknowledged without a second write.
    fn apply(store: &mut Store, record: Map<String, Value>) -> Result<u16, (u16, &'static str, String)> {
        let shipment = record
            .get("shipmentId")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let event = record.get("eventId").and_then(Value::as_str).map(str::to_owned);
        let (Some(shipment), Some(event)) = (shipment, event) else {
            return Err((
                422,
                "validation_failed",
                "shipmentId and eventId are required".into(),
            ));
        };
        for field in ["status", "timestamp", "clientId"] {
            if !record.get(field).is_some_and(|v| v.is_string() || v.is_number()) {
                return Err((422, "validation_failed", format!("{field} is required")));
            }
        }
        if !store.seen_events.insert(event) {
            store.stats.duplicate_writes += 1;
            return Ok(200);
        }
        store.stats.total_writes += 1;
        *store
            .stats
            .writes_per_shipment
            .entry(shipment.clone())
            .or_default() += 1;
        store
            .history
            .entry(shipment.clone())
            .or_default()
            .push(record.clone());
        store.records.insert(shipment, record);
        Ok(200)
    }
}

fn problem(status: StatusCode, code: &str, detail: &str, retry_after: Option<u64>) -> Response {
    let body = json!({"type": "about:blank", "title": status.canonical_reason(), "status": status.as_u16(),
        "detail": detail, "code": code});
    let mut resp = (
        status,
        [("content-type", "application/problem+json")],
        body.to_string(),
    )
        .into_response();
    if let Some(secs) = retry_after.filter(|s| *s > 0) {
        resp.headers_mut().insert("retry-after", HeaderValue::from(secs));
    }
    resp
}

fn bad_json(e: serde_json::Error) -> Response {
    problem(
        StatusCode::BAD_REQUEST,
        "bad_request",
        &format!("invalid JSON: {e}"),
        None,
    )
}

async fn read_one(State(sim): State<Sim>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = sim.admit(&headers, b"").await {
        return r;
    }
    match sim.record(&id) {
        Some(r) => Json(r).into_response(),
        None => problem(StatusCode::NOT_FOUND, "not_found", "unknown shipment", None),
    }
}

async fn write_one(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = sim.admit(&headers, &body).await {
        return r;
    }
    let record: Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_json(e),
    };
    if record.get("shipmentId").and_then(Value::as_str) != Some(id.as_str()) {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "shipmentId differs from the path",
            None,
        );
    }
    let result = Sim::apply(&mut sim.lock(), record.clone());
    match result {
        Ok(_) => Json(record).into_response(),
        Err((status, code, detail)) => problem(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            code,
            &detail,
            None,
        ),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BatchGet {
    shipment_ids: Vec<String>,
}

async fn batch_get(State(sim): State<Sim>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = sim.admit(&headers, &body).await {
        return r;
    }
    let req: BatchGet = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_json(e),
    };
    if req.shipment_ids.len() > MAX_BATCH {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            "at most 500 shipments",
            None,
        );
    }
    let store = sim.lock();
    let items: Vec<&Map<String, Value>> = req
        .shipment_ids
        .iter()
        .filter_map(|id| store.records.get(id))
        .collect();
    Json(json!({ "items": items })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchWrite {
    items: Vec<Map<String, Value>>,
}

async fn batch_write(State(sim): State<Sim>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = sim.admit(&headers, &body).await {
        return r;
    }
    let req: BatchWrite = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_json(e),
    };
    if req.items.len() > MAX_BATCH {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            "at most 500 items",
            None,
        );
    }
    let mut store = sim.lock();
    let results: Vec<Value> = req
        .items
        .into_iter()
        .map(|item| {
            let ids = json!({"shipmentId": item.get("shipmentId"), "eventId": item.get("eventId")});
            match Sim::apply(&mut store, item) {
                Ok(status) => {
                    json!({"shipmentId": ids["shipmentId"], "eventId": ids["eventId"], "status": status})
                }
                Err((status, code, message)) => {
                    json!({"shipmentId": ids["shipmentId"], "eventId": ids["eventId"],
                    "status": status, "error": {"code": code, "message": message}})
                }
            }
        })
        .collect();
    Json(json!({ "results": results })).into_response()
}

async fn set_faults(State(sim): State<Sim>, body: Bytes) -> Response {
    match serde_json::from_slice::<Faults>(&body) {
        Ok(f) if (0.0..=1.0).contains(&f.error_rate) => {
            sim.set_faults(f.clone());
            Json(f).into_response()
        }
        Ok(_) => problem(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "error_rate must be within 0..=1",
            None,
        ),
        Err(e) => bad_json(e),
    }
}

async fn history(State(sim): State<Sim>, Path(id): Path<String>) -> Response {
    Json(sim.history(&id)).into_response()
}

/// Serves the simulator on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    axum::serve(listener, router).await
}
