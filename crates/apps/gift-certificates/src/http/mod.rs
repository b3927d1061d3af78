//! The HTTP API. Handlers translate only: authenticate, parse into domain types, call the
//! desk (`crate::desk`) or a view, render. Codes and CVCs never reach a log line: routes are
//! logged by template.

pub mod admin;
mod operations;
mod reads;
mod uploads;

use crate::auth::{AuthError, Channel, Scope};
use crate::problem::{Problem, ProblemCode};
use crate::state::AppState;
use crate::upload::{RejectedRow, UploadJob, UploadRow};
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::Router;
use backbone_certificates::store::CertificateViews;
use backbone_certificates::{Amount, ApplyError, CodeDigest, Currency, GiftCode, OperationId};
use backbone_kafka::{
    DeadLetterDetail, DeadLetterList, DeadLetterReplayRequest, DeadLetterSummary, LetterPosition,
    ReplaySummary, ReplayedLetter,
};
use std::sync::Arc;
use utoipa::OpenApi;

pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
pub const CVC_HEADER: &str = "x-certificate-cvc";
pub const INITIATOR_HEADER: &str = "x-initiator";
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

type ApiResult = Result<axum::response::Response, Problem>;

#[derive(OpenApi)]
#[openapi(
    info(title = "gift-certificates", version = "1.0.0",
         description = "Master service for gift certificates. Every POST needs an Idempotency-Key; errors are RFC 9457 problem details."),
    paths(operations::authorize, operations::capture, operations::void, operations::activate, operations::refund,
          operations::cancel, reads::balance, reads::view, uploads::upload_batch, uploads::open_batch, uploads::batch_status,
          admin::overview::overview, admin::certificates::certificate, admin::certificates::cancel,
          admin::uploads::uploads, admin::deliveries::deliveries, admin::deliveries::requeue,
          admin::dead_letters::list, admin::dead_letters::letter, admin::dead_letters::replay),
    components(schemas(Problem, operations::OperationResponse, reads::BalanceResponse, operations::AuthorizeRequest,
                       operations::CaptureRequest, operations::VoidRequest, operations::ActivateRequest, UploadJob, UploadRow,
                       uploads::UploadResponse, uploads::OpenedBatchResponse, RejectedRow,
                       admin::overview::OverviewResponse, admin::overview::OutboxFigures, admin::overview::SmsFigures,
                       admin::overview::UploadFigures, admin::overview::OverviewSeries, admin::overview::OverviewBucket,
                       admin::certificates::AdminCertificateResponse, admin::certificates::AdminHoldEntry,
                       admin::certificates::AdminHistoryEntry, admin::certificates::AdminAuditEntry,
                       admin::certificates::CancelRequest, admin::uploads::UploadsResponse, admin::uploads::AdminUpload,
                       admin::deliveries::DeliveriesResponse, admin::deliveries::DeliveryEntry,
                       admin::deliveries::RequeueRequest, admin::deliveries::RequeueResponse,
                       DeadLetterList, DeadLetterSummary, DeadLetterDetail, DeadLetterReplayRequest,
                       LetterPosition, ReplaySummary, ReplayedLetter)),
    tags((name = "admin", description = "The operator console's API: `Authorization: Bearer <admin token>` (`admin.token`), never a channel token; writes name the person in `X-Operator`.")),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "admin_bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin token (`admin.token`); it opens `/admin/v1/*` only",
                    ))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document, as served at `/openapi.json` and committed under `docs/openapi/`.
pub fn openapi_json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

/// The channels' API, the admin API (`/admin/v1/*`), `/openapi.json`, metrics and health.
pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    use tower_http::trace::TraceLayer;
    Router::new()
        .route("/certificates/upload/batch", post(uploads::upload_batch))
        .route(
            "/certificates/upload/batches/{id}",
            get(uploads::batch_status).put(uploads::open_batch),
        )
        .route("/certificates/{code}/activate", post(operations::activate))
        .route("/certificates/{code}/authorize", post(operations::authorize))
        .route("/certificates/{code}/capture", post(operations::capture))
        .route("/certificates/{code}/void", post(operations::void))
        .route("/certificates/{code}/refund", post(operations::refund))
        .route("/certificates/{code}/cancel", post(operations::cancel))
        .route("/certificates/{code}/balance", get(reads::balance))
        .route("/certificates/{code}", get(reads::view))
        .merge(admin::routes(state.clone()))
        .route(
            "/openapi.json",
            get(|| async { ([("content-type", "application/json")], openapi_json()) }),
        )
        .route("/metrics", get(render_metrics))
        .route("/health/live", get(|| async { "ok" }))
        .route("/health/ready", get(ready))
        .fallback(|| async { Problem::new(ProblemCode::BadRequest, Some("no such endpoint".into())) })
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        // Whatever the framework answers by itself (405, 413, a path it cannot decode) is a
        // problem document too, and never carries the framework's text about the input.
        .layer(axum::middleware::map_response(crate::problem::as_problem))
        // Spans name the route template (`/certificates/{code}/balance`), never the code itself.
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
                let route = req
                    .extensions()
                    .get::<axum::extract::MatchedPath>()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_else(|| "unmatched".into());
                tracing::info_span!("http", method = %req.method(), route = %route)
            }),
        )
        .with_state(state)
}

/// What is in memory only: the row-counting gauges come from the background refresh
/// (`metrics::run_refresh`), so a flood of scrapes costs PostgreSQL nothing.
async fn render_metrics(axum::extract::State(state): axum::extract::State<Arc<AppState>>) -> String {
    backbone_telemetry::render_metrics(&state.metrics.registry)
}

async fn ready(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
) -> Result<&'static str, Problem> {
    state
        .store()
        .ping()
        .await
        .map_err(|_| Problem::new(ProblemCode::Unavailable, Some("PostgreSQL".into())))?;
    Ok("ready")
}

// ---------------------------------------------------------------------------------------------
// Parsing at the edge

pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub(crate) fn authenticate_for(
    state: &AppState,
    headers: &HeaderMap,
    scope: Scope,
) -> Result<Channel, Problem> {
    match state.tokens.check(header(headers, "authorization"), scope) {
        Ok(channel) => Ok(channel),
        Err(AuthError::Unauthenticated) => Err(Problem::new(ProblemCode::Unauthenticated, None)),
        Err(AuthError::Forbidden(channel)) => Err(Problem::new(
            ProblemCode::Forbidden,
            Some(format!("channel {channel} may not do this")),
        )),
    }
}

/// The JSON body as `T`. A refusal names the place (a field, a line and column), never what the
/// caller sent there: a value or an unknown field's name may be a code or a CVC.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Problem> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    let mut de = serde_json::Deserializer::from_slice(body);
    let bad = |detail: String| Problem::new(ProblemCode::BadRequest, Some(detail));
    let value = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| bad(describe_json_error(&e.path().to_string(), e.inner())))?;
    de.end().map_err(|e| bad(describe_json_error(".", &e)))?;
    Ok(value)
}

/// What is wrong with a JSON body, in the schema's words: serde's own messages quote the input.
pub(crate) fn describe_json_error(path: &str, e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let message = e.to_string();
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
            let field = message.split('`').nth(1).unwrap_or_default();
            let field: String = field.chars().take(64).collect();
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

/// Authenticates the channel, then requires the `Idempotency-Key`: both before the body is
/// read, so a POST without a key is `400 idempotency-key-required` whatever its body.
pub(crate) fn authenticate_post(
    state: &AppState,
    headers: &HeaderMap,
    scope: Scope,
) -> Result<(Channel, String), Problem> {
    let channel = authenticate_for(state, headers, scope)?;
    Ok((channel, required_idempotency_key(headers)?))
}

/// `X-Initiator`: at most 128 bytes, no control characters; refused, never cut or stored as sent.
pub(crate) fn initiator(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get(INITIATOR_HEADER) else {
        return Ok(None);
    };
    let text = value.to_str().ok().filter(|t| {
        backbone_certificates::ids::check_text(t, backbone_certificates::ids::MAX_TEXT_BYTES).is_ok()
    });
    match text {
        Some(t) => Ok(Some(t.to_owned())),
        None => Err(Problem::new(
            ProblemCode::BadRequest,
            Some("X-Initiator must be 1..=128 bytes of printable characters".into()),
        )),
    }
}

/// An id another system gives us (`client_id`, `order_id`, `payment_id`): bounded and printable.
pub(crate) fn external_id(field: &str, value: Option<String>) -> Result<Option<String>, Problem> {
    use backbone_certificates::ids::{check_id, MAX_ID_BYTES};
    match value {
        Some(v) => check_id(&v, MAX_ID_BYTES)
            .map(|()| Some(v))
            .map_err(|e| Problem::new(ProblemCode::BadRequest, Some(format!("{field} {e}")))),
        None => Ok(None),
    }
}

pub(crate) fn required_idempotency_key(headers: &HeaderMap) -> Result<String, Problem> {
    let key = header(headers, IDEMPOTENCY_HEADER)
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| Problem::new(ProblemCode::IdempotencyKeyRequired, None))?;
    if key.len() > 255 || key.chars().any(char::is_control) {
        return Err(Problem::new(
            ProblemCode::BadRequest,
            Some("Idempotency-Key must be 1..=255 printable characters".into()),
        ));
    }
    Ok(key.to_owned())
}

pub(crate) fn amount(minor: i64, currency: &str) -> Result<Amount, Problem> {
    let currency = Currency::parse(currency).map_err(|_| {
        Problem::new(
            ProblemCode::InvalidCurrency,
            Some("currency must be an ISO 4217 code like RUB".into()),
        )
    })?;
    Amount::new(minor, currency).map_err(|_| {
        Problem::new(
            ProblemCode::InvalidAmount,
            Some("amount_minor must be greater than zero".into()),
        )
    })
}

/// A hold or capture id as the caller sent it: 1..=128 printable characters, else
/// `422 bad-operation-id` (a malformed id says nothing about any certificate).
pub(crate) fn operation_id(field: &str, raw: &str) -> Result<OperationId, Problem> {
    OperationId::parse(raw).map_err(|_| {
        Problem::new(
            ProblemCode::BadOperationId,
            Some(format!("{field} must be 1..=128 printable characters")),
        )
    })
}

/// A code that does not parse is answered exactly like an unknown one.
pub(crate) fn code_digest(state: &AppState, raw: &str) -> Result<(CodeDigest, String), Problem> {
    let code = GiftCode::parse(raw).map_err(|_| not_found())?;
    let digest = state.keys.code_digest(&code);
    Ok((digest, hex::encode(digest.0)))
}

pub(crate) fn not_found() -> Problem {
    Problem::new(ProblemCode::CertificateNotFound, None)
}

/// A capture or void whose hold or capture is unknown, another channel's, or on an unknown code:
/// one answer for all three.
pub(crate) fn unknown_hold() -> Problem {
    Problem::new(ProblemCode::UnknownHold, None)
}

pub(crate) fn apply_error(e: ApplyError) -> Problem {
    match e {
        ApplyError::NotFound | ApplyError::WrongCvc => not_found(),
        ApplyError::UnknownTarget => unknown_hold(),
        ApplyError::Refused(r) => {
            let mut problem = Problem::refusal(&r.code, r.detail);
            problem.replayed = r.replayed;
            problem
        }
        ApplyError::InFlight => Problem::new(ProblemCode::IdempotencyInFlight, None),
        ApplyError::KeyReused => Problem::new(ProblemCode::IdempotencyKeyReused, None),
        ApplyError::Unavailable(cause) => {
            tracing::error!(error = %cause, "storage unavailable");
            Problem::new(ProblemCode::Unavailable, None)
        }
    }
}
