//! The two-way sync's HTTP API (`docs/two-way-sync.md`, "Our side: the HTTP API" and "In:
//! webhooks"): client cards, tasks and interactions from internal services, operator tasks for
//! conflicts, and the CRMs' webhooks. Handlers translate only: authenticate, parse into domain
//! types, call the [`ClientStore`], render. Routes are logged by template, never by path.

pub mod auth;
mod clients;
pub mod config;
mod openapi;
mod operator;
pub mod problem;
pub mod request_id;
mod webhooks;

pub use auth::{Caller, Tokens};
pub use config::ApiConfig;
pub use openapi::openapi_json;
pub use problem::{Problem, ProblemCode};
pub use request_id::RequestId;

use auth::IdempotencyKey;
use axum::body::{Body, Bytes};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use backbone_sync::clients::{ClientStore, IdempotencyClaim, Idempotent, StoreError};
use prometheus::{IntCounterVec, Opts, Registry};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Set on an answer that repeats the first answer to the same `Idempotency-Key`.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

type ApiResult = Result<Response, Problem>;

/// What the API serves from.
pub struct ApiState {
    pub store: Arc<dyn ClientStore>,
    pub webhooks: Arc<backbone_crm::webhooks::Webhooks>,
    pub tokens: Tokens,
    pub limits: ApiConfig,
    /// Counters of answers and webhooks, when the service registers them.
    pub metrics: Option<ApiMetrics>,
}

impl ApiState {
    /// The state for `cfg`: its tokens, its limits, no metrics.
    pub fn new(
        store: Arc<dyn ClientStore>,
        webhooks: Arc<backbone_crm::webhooks::Webhooks>,
        cfg: ApiConfig,
    ) -> Self {
        Self {
            store,
            webhooks,
            tokens: Tokens::new(&cfg.tokens),
            limits: cfg,
            metrics: None,
        }
    }

    pub fn with_metrics(mut self, metrics: ApiMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

/// The API's Prometheus counters (`crm_sync_api_responses_total{route,status}`,
/// `crm_sync_webhooks_total{vendor,outcome}`).
#[derive(Clone)]
pub struct ApiMetrics {
    responses: IntCounterVec,
    webhooks: IntCounterVec,
}

impl ApiMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let responses = IntCounterVec::new(
            Opts::new(
                "crm_sync_api_responses_total",
                "HTTP API answers, by route template and status",
            ),
            &["route", "status"],
        )?;
        let webhooks = IntCounterVec::new(
            Opts::new(
                "crm_sync_webhooks_total",
                "Webhooks received, by vendor and outcome (stored, duplicate, empty, unauthenticated, forbidden, malformed, too_large, unavailable, failed)",
            ),
            &["vendor", "outcome"],
        )?;
        registry.register(Box::new(responses.clone()))?;
        registry.register(Box::new(webhooks.clone()))?;
        Ok(Self { responses, webhooks })
    }
}

/// The state the handlers share: the [`ApiState`] and the keys of writes in flight here.
pub(crate) struct Shared {
    api: ApiState,
    in_flight: Mutex<HashSet<(String, String)>>,
}

impl Shared {
    fn count_response(&self, route: &str, status: u16) {
        if let Some(m) = &self.api.metrics {
            m.responses.with_label_values(&[route, &status.to_string()]).inc();
        }
    }

    /// `vendor` is one this service serves (a bounded label).
    fn count_webhook(&self, vendor: &str, outcome: &str) {
        if let Some(m) = &self.api.metrics {
            m.webhooks.with_label_values(&[vendor, outcome]).inc();
        }
    }

    /// Marks the claim's key as in flight in this process until the guard is dropped; a second
    /// request with the same key meanwhile is `409 idempotency-in-flight`. (Across processes
    /// the store's own claim decides.)
    fn begin(&self, claim: &IdempotencyClaim) -> Result<InFlight<'_>, Problem> {
        let key = (claim.scope.clone(), claim.key.clone());
        let mut set = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if !set.insert(key.clone()) {
            return Err(Problem::new(ProblemCode::IdempotencyInFlight, None));
        }
        Ok(InFlight { shared: self, key })
    }
}

struct InFlight<'a> {
    shared: &'a Shared,
    key: (String, String),
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut set = self.shared.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        set.remove(&self.key);
    }
}

/// The API: `/v1` (bearer token), `/webhooks/{vendor}[/{secret}]` (the vendor's own check),
/// `/openapi.json`.
pub fn router(state: ApiState) -> Router {
    let shared = Arc::new(Shared {
        api: state,
        in_flight: Mutex::new(HashSet::new()),
    });
    let v1 = Router::new()
        .route(
            "/v1/clients/{client_id}",
            get(clients::get_card)
                .put(clients::put_card)
                .patch(clients::patch_card),
        )
        .route("/v1/clients/{client_id}/tasks/{task_id}", put(clients::put_task))
        .route(
            "/v1/clients/{client_id}/interactions/{interaction_id}",
            put(clients::put_interaction),
        )
        .route("/v1/operator-tasks", get(operator::list))
        .route("/v1/operator-tasks/{id}", get(operator::one))
        .route("/v1/operator-tasks/{id}/resolve", post(operator::resolve))
        .route_layer(axum::middleware::from_fn_with_state(shared.clone(), auth::gate));
    Router::new()
        .merge(v1)
        .route("/webhooks/{vendor}", post(webhooks::receive))
        .route("/webhooks/{vendor}/{secret}", post(webhooks::receive_with_secret))
        .route(
            "/openapi.json",
            get(|| async { ([("content-type", "application/json")], openapi_json()) }),
        )
        .fallback(|| async { Problem::new(ProblemCode::NotFound, None) })
        // Whatever the framework answers by itself (404, 405, a path it cannot decode) is a
        // problem document too, and never carries the framework's text about the input.
        .layer(axum::middleware::map_response(problem::as_problem))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            request_id::layer,
        ))
        .with_state(shared)
}

// ---------------------------------------------------------------------------------------------
// Parsing at the edge

/// The body, at most `limit` bytes: a `Content-Length` above it is refused unread, a body that
/// grows past it is refused as soon as it does.
pub(crate) async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, Problem> {
    use futures::StreamExt;
    let too_large = || {
        Problem::new(
            ProblemCode::PayloadTooLarge,
            Some(format!("at most {limit} bytes")),
        )
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| Problem::bad_request("the body could not be read"))?;
        if buf.len() + chunk.len() > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

/// The JSON body as `T`. A refusal names the place (a field, a line and column), never what the
/// caller sent there.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| Problem::bad_request(describe_json_error(&e.path().to_string(), e.inner())))?;
    de.end()
        .map_err(|e| Problem::bad_request(describe_json_error(".", &e)))?;
    Ok(value)
}

/// What is wrong with a JSON body, in the schema's words: serde's own messages quote the input.
pub(crate) fn describe_json_error(path: &str, e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let message = e.to_string();
    // A path below `fields` ends in a key the caller chose: name only the known part.
    let path = match path.split_once('.') {
        Some((head, _)) if head == "fields" => head,
        _ => path,
    };
    let place = if path.is_empty() || path == "." {
        "the body".to_owned()
    } else {
        format!("field `{}`", path.chars().take(120).collect::<String>())
    };
    match e.classify() {
        Category::Syntax | Category::Eof => format!(
            "invalid JSON body: syntax error at line {} column {}",
            e.line(),
            e.column()
        ),
        Category::Io => "the body could not be read".to_owned(),
        // The path ends in the unknown field's name, which is input: name nothing.
        Category::Data if message.starts_with("unknown field") => {
            "the body has a field this endpoint does not accept".to_owned()
        }
        Category::Data if message.starts_with("missing field") => {
            // serde names the missing field of our own schema: safe to repeat.
            let field: String = message
                .split('`')
                .nth(1)
                .unwrap_or_default()
                .chars()
                .take(64)
                .collect();
            if place == "the body" {
                format!("field `{field}` is required")
            } else {
                format!("{place}: field `{field}` is required")
            }
        }
        Category::Data => match message.rsplit_once(", expected ") {
            // The expectation is the schema's; what came before it is the input.
            Some((_, expected)) => {
                let expected = expected.split(" at line ").next().unwrap_or_default();
                format!(
                    "{place}: expected {}",
                    expected.chars().take(120).collect::<String>()
                )
            }
            None => format!("{place}: value not allowed"),
        },
    }
}

/// A `/v1` write as the gate let it through: who, with which key, for which call.
pub(crate) struct Write {
    caller: Caller,
    key: IdempotencyKey,
    request_id: RequestId,
    method: String,
    path: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Write {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        let missing = || {
            tracing::error!("a write reached its handler without the gate");
            Problem::new(ProblemCode::Internal, None)
        };
        Ok(Self {
            caller: parts.extensions.get::<Caller>().cloned().ok_or_else(missing)?,
            key: parts
                .extensions
                .get::<IdempotencyKey>()
                .cloned()
                .ok_or_else(missing)?,
            request_id: parts
                .extensions
                .get::<RequestId>()
                .cloned()
                .unwrap_or_else(RequestId::generate),
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().to_owned(),
        })
    }
}

impl Write {
    /// The claim: scoped to the caller and the call; the digest covers method, path and body.
    fn claim(&self, body: &[u8]) -> IdempotencyClaim {
        let mut h = Sha256::new();
        h.update(self.method.as_bytes());
        h.update(b"\n");
        h.update(self.path.as_bytes());
        h.update(b"\n");
        h.update(body);
        IdempotencyClaim {
            key: self.key.0.clone(),
            scope: format!("{} {} {}", self.caller, self.method, self.path),
            request_digest: hex::encode(h.finalize()),
        }
    }
}

/// A store's refusal or failure as a problem. Causes are logged, never answered.
pub(crate) fn store_error(e: StoreError) -> Problem {
    match e {
        StoreError::ClientNotFound => Problem::new(ProblemCode::ClientNotFound, None),
        StoreError::OperatorTaskNotFound => Problem::new(ProblemCode::OperatorTaskNotFound, None),
        StoreError::OperatorTaskResolved => Problem::new(ProblemCode::OperatorTaskResolved, None),
        StoreError::InteractionExists => Problem::new(ProblemCode::InteractionExists, None),
        StoreError::TaskOfAnotherClient => Problem::new(ProblemCode::TaskOfAnotherClient, None),
        StoreError::InvalidValue(invalid) => Problem::from(invalid),
        // Only the dispatcher and the processor link CRM ids: no API call gets here.
        e @ StoreError::CrmIdLinkedElsewhere => {
            tracing::error!(error = %e, "unexpected store refusal");
            Problem::new(ProblemCode::Internal, None)
        }
        StoreError::Unavailable(cause) => {
            tracing::error!(error = %cause, "client store unavailable");
            Problem::new(ProblemCode::Unavailable, None)
        }
    }
}

/// Renders a write's answer: `201` when it created, else `200`; a replay says so in a header.
pub(crate) fn written<T, B: serde::Serialize>(
    result: Idempotent<T>,
    created: impl Fn(&T) -> bool,
    render: impl Fn(&T) -> B,
) -> ApiResult {
    let (value, replayed) = match result {
        Idempotent::Fresh(v) => (v, false),
        Idempotent::Replayed(v) => (v, true),
        Idempotent::KeyReused => return Err(Problem::new(ProblemCode::IdempotencyKeyReused, None)),
    };
    let status = if created(&value) {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = (status, axum::Json(render(&value))).into_response();
    if replayed {
        response
            .headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    Ok(response)
}

pub(crate) fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// An RFC 3339 time a caller sent, or `422` naming `field`.
pub(crate) fn parse_time(field: &str, raw: &str) -> Result<time::OffsetDateTime, Problem> {
    time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
        .map_err(|_| Problem::invalid(field, "must be an RFC 3339 time like 2026-12-02T10:00:00Z"))
}
