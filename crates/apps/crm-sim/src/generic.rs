//! The generic CRM API (`docs/openapi/crm-generic-v1.yaml`), `/api/v1/...`: the bearer token,
//! the request signature (over method, path and query, timestamp, nonce and body) and the nonce's
//! freshness are checked before the faults, and writes apply idempotently by `eventId`.

use crate::nonces::Admission;
use crate::{same, with_retry_after, Dialect, Refusal, Sim, Store, MAX_BATCH};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use backbone_crm::signing::{
    verify, Rejection, SignedParts, MAX_SKEW_SECS, NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Map, Value};

pub(crate) fn routes() -> Router<Sim> {
    Router::new()
        .route("/api/v1/shipments/{id}/status", get(read_one).put(write_one))
        .route("/api/v1/shipments/status:batchGet", post(batch_get))
        .route("/api/v1/shipments/status:batchWrite", post(batch_write))
}

impl Sim {
    /// Token, signature, nonce and faults, in that order. `Err` is the response to send instead.
    ///
    /// `uri` is the request target as received: the routes are merged, never nested, so axum's
    /// `Uri` is the path and query the client sent and signed.
    pub(crate) async fn admit(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), Response> {
        let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let token = header("authorization")
            .strip_prefix("Bearer ")
            .unwrap_or_default();
        if !same(token, &self.token) {
            self.lock().stats.rejected_requests += 1;
            return Err(problem(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token",
                None,
            ));
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let parts = SignedParts {
            method: method.as_str(),
            target: uri.path_and_query().map_or("/", |pq| pq.as_str()),
            timestamp: header(TIMESTAMP_HEADER),
            nonce: header(NONCE_HEADER),
            body,
        };
        if let Err(rejection) = verify(self.secret.as_bytes(), &parts, header(SIGNATURE_HEADER), now) {
            self.lock().stats.rejected_requests += 1;
            return Err(match rejection {
                Rejection::BadSignature => problem(
                    StatusCode::UNAUTHORIZED,
                    "invalid_signature",
                    "X-Signature does not match the request, or a signing header is missing or malformed",
                    None,
                ),
                Rejection::TimestampSkew(secs) => problem(
                    StatusCode::UNAUTHORIZED,
                    "timestamp_skew",
                    &format!(
                        "X-Timestamp is {secs} seconds away from the server clock (limit {MAX_SKEW_SECS})"
                    ),
                    None,
                ),
            });
        }
        // `verify` parsed the timestamp; a replay is possible until it is MAX_SKEW_SECS old.
        let expires = parts.timestamp.parse::<i64>().unwrap_or(now) + MAX_SKEW_SECS;
        let admission = {
            let mut store = self.lock();
            let admission = store.nonces.admit(parts.nonce, expires, now);
            if admission == Admission::Replayed {
                store.stats.rejected_requests += 1;
            }
            admission
        };
        match admission {
            Admission::Fresh => {}
            Admission::Replayed => {
                return Err(problem(
                    StatusCode::UNAUTHORIZED,
                    "replayed_nonce",
                    &format!("X-Nonce was already used within the last {MAX_SKEW_SECS} seconds"),
                    None,
                ))
            }
            Admission::Full => {
                return Err(problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "too many requests within the replay window",
                    Some(1),
                ))
            }
        }
        let gate = self.gate(Dialect::Generic).await;
        let retry = gate.retry_after;
        match gate.refusal {
            None => Ok(()),
            Some(Refusal::RateLimited) => Err(problem(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "simulated rate limit",
                retry,
            )),
            Some(Refusal::Outage) => Err(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "simulated outage",
                retry,
            )),
            Some(Refusal::Failure | Refusal::QuotaSpent) => Err(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "simulated failure",
                retry,
            )),
        }
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
        if !store.records.contains_key(&shipment) {
            store.stats.creates += 1;
        }
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

pub(crate) fn problem(status: StatusCode, code: &str, detail: &str, retry_after: Option<u64>) -> Response {
    let body = json!({"type": "about:blank", "title": status.canonical_reason(), "status": status.as_u16(),
        "detail": detail, "code": code});
    let resp = (
        status,
        [("content-type", "application/problem+json")],
        body.to_string(),
    )
        .into_response();
    with_retry_after(resp, retry_after)
}

pub(crate) fn bad_json(e: serde_json::Error) -> Response {
    problem(
        StatusCode::BAD_REQUEST,
        "bad_request",
        &format!("invalid JSON: {e}"),
        None,
    )
}

async fn read_one(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = sim.admit(&method, &uri, &headers, b"").await {
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
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = sim.admit(&method, &uri, &headers, &body).await {
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

async fn batch_get(
    State(sim): State<Sim>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = sim.admit(&method, &uri, &headers, &body).await {
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

async fn batch_write(
    State(sim): State<Sim>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = sim.admit(&method, &uri, &headers, &body).await {
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
