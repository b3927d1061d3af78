//! The admin API (`/admin/v1`, on `http.listen` beside `/metrics`): what the operator console
//! shows and does, from this service's own data: the overview with its charts, the dead
//! letters (list, one letter masked, replay), and the trace of events. Served only when
//! `http.admin_token` is set; every call needs `Authorization: Bearer <admin token>`, and a
//! write names the person in `X-Operator`. Conflicts go through the two-way API's
//! `/v1/operator-tasks` with a token of their own (`docs/two-way-sync.md`).

mod dead_letters;
mod openapi;
mod overview;
mod search;

pub use openapi::openapi_json;

use crate::api::problem::{as_problem, Problem, ProblemCode};
use crate::kafka::KafkaConfig;
use crate::metrics::Metrics;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use backbone_sync::ports::SyncLedger;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The header naming the person behind a write, recorded with it.
pub const OPERATOR_HEADER: &str = "x-operator";
/// At most this many bytes in `X-Operator`.
pub const MAX_OPERATOR_BYTES: usize = 64;

/// What the admin API reads from.
pub struct AdminState {
    pub ledger: Arc<dyn SyncLedger>,
    pub metrics: Arc<Metrics>,
    pub kafka: KafkaConfig,
    /// `crm.vendor`, as the overview names it.
    pub vendor: String,
    token: [u8; 32],
}

impl AdminState {
    pub fn new(
        ledger: Arc<dyn SyncLedger>,
        metrics: Arc<Metrics>,
        kafka: KafkaConfig,
        vendor: String,
        token: &SecretString,
    ) -> Self {
        Self {
            ledger,
            metrics,
            kafka,
            vendor,
            token: Sha256::digest(token.expose_secret().as_bytes()).into(),
        }
    }

    /// Whether `authorization` is `Bearer <the admin token>`, compared in constant time.
    fn admits(&self, authorization: Option<&str>) -> bool {
        let Some(token) = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
        else {
            return false;
        };
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        bool::from(presented.ct_eq(&self.token))
    }
}

/// The person named by `X-Operator`: 1 to 64 bytes, no control characters.
pub(crate) fn operator(headers: &HeaderMap) -> Result<String, Problem> {
    let name = headers
        .get(OPERATOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or_default();
    if name.is_empty() || name.len() > MAX_OPERATOR_BYTES || name.chars().any(char::is_control) {
        return Err(Problem::bad_request(
            "X-Operator must name the person: 1 to 64 bytes, no control characters",
        ));
    }
    Ok(name.to_owned())
}

async fn gate(State(state): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    let authorization = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !state.admits(authorization) {
        return Problem::new(ProblemCode::Unauthenticated, None).into_response();
    }
    next.run(req).await
}

/// `/admin/v1/*`, each behind the admin token, and its OpenAPI document at
/// `/admin/openapi.json`; any other path is a `404` problem.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/admin/v1/overview", get(overview::overview))
        .route("/admin/v1/dead-letters", get(dead_letters::list))
        .route("/admin/v1/dead-letters/replay", post(dead_letters::replay))
        .route(
            "/admin/v1/dead-letters/{partition}/{offset}",
            get(dead_letters::one),
        )
        .route("/admin/v1/trace", get(search::trace_route))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), gate))
        .route(
            "/admin/openapi.json",
            get(|| async { ([("content-type", "application/json")], openapi_json()) }),
        )
        .fallback(|| async { Problem::new(ProblemCode::NotFound, None) })
        .layer(axum::middleware::map_response(as_problem))
        .with_state(state)
}

/// A failure of a dependency: logged with its cause, answered as an opaque `503`.
fn unavailable(what: &'static str) -> impl FnOnce(anyhow::Error) -> Problem {
    move |e| {
        tracing::warn!(error = %e, "{what} unavailable for the admin API");
        Problem::new(ProblemCode::Unavailable, Some(what.to_owned()))
    }
}
