//! The HTTP API. Handlers only translate: authenticate, parse into domain types, call the
//! certificate service, render. Codes and CVCs never reach a log line: routes are logged by template.

use crate::auth::{AuthError, Channel, Scope};
use crate::problem::{Problem, ProblemCode};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use backbone_certificates::events::Origin;
use backbone_certificates::store::CertificateViews;
use backbone_certificates::{
    Amount, Applied, ApplyError, CertificateRef, CodeDigest, Command, Currency, Cvc, GiftCode,
    IdempotencyClaim, OperationId, OperationRequest, SaleLinks,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use utoipa::ToSchema;
use uuid::Uuid;

pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
pub const CVC_HEADER: &str = "x-certificate-cvc";
pub const INITIATOR_HEADER: &str = "x-initiator";
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

type ApiResult = Result<Response, Problem>;

// ---------------------------------------------------------------------------------------------
// Request and response bodies

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeRequest {
    /// Minor units (kopecks, cents), > 0.
    pub amount_minor: i64,
    pub currency: String,
    /// The certificate's security code.
    #[schema(example = "4821")]
    pub cvc: String,
    /// Hold lifetime; the configured default (15 minutes) when absent.
    pub hold_seconds: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    pub hold_id: String,
    /// At most the held amount; the rest of the hold is released.
    pub amount_minor: i64,
    pub currency: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoidRequest {
    /// A hold to release, or a capture to reverse (refund to the certificate).
    pub target_id: String,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ActivateRequest {
    pub client_id: Option<String>,
    pub order_id: Option<String>,
    pub payment_id: Option<String>,
    /// E.164 number the security code is sent to by SMS, once.
    pub phone: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EmptyRequest {}

/// The result of any operation on a certificate.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperationResponse {
    /// This operation's id: the `hold_id` of an authorize, the `capture_id` of a capture.
    pub operation_id: String,
    pub action: String,
    pub certificate_id: Uuid,
    pub code_masked: String,
    pub amount_minor: Option<i64>,
    pub target_id: Option<String>,
    /// When the hold expires (authorize only).
    pub expires_at: Option<String>,
    pub state: String,
    pub currency: String,
    pub balance_minor: i64,
    pub available_minor: i64,
    /// Holds that expired and were released on the way.
    pub expired_holds: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BalanceResponse {
    pub certificate_id: Uuid,
    pub code_masked: String,
    pub state: String,
    pub currency: String,
    pub balance_minor: i64,
    pub available_minor: i64,
}

// ---------------------------------------------------------------------------------------------
// Shared steps

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
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

fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Problem> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    serde_json::from_slice(body)
        .map_err(|e| Problem::new(ProblemCode::BadRequest, Some(format!("invalid JSON body: {e}"))))
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

fn amount(minor: i64, currency: &str) -> Result<Amount, Problem> {
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

fn operation_id(raw: &str) -> Result<OperationId, Problem> {
    OperationId::parse(raw).map_err(|e| Problem::new(ProblemCode::UnknownHold, Some(e.to_string())))
}

/// A code that does not parse is answered exactly like an unknown one.
fn code_digest(state: &AppState, raw: &str) -> Result<(CodeDigest, String), Problem> {
    let code = GiftCode::parse(raw).map_err(|_| not_found())?;
    let digest = state.keys.code_digest(&code);
    Ok((digest, hex::encode(digest.0)))
}

fn not_found() -> Problem {
    Problem::new(ProblemCode::CertificateNotFound, None)
}

/// The request's identity for idempotency: route, certificate and the parsed body, with the CVC
/// replaced by its keyed verifier so the stored hash reveals nothing about it.
fn request_hash(route: &str, digest: &CodeDigest, canonical: serde_json::Value) -> [u8; 32] {
    Sha256::new()
        .chain_update(route.as_bytes())
        .chain_update([0])
        .chain_update(digest.0)
        .chain_update([0])
        .chain_update(canonical.to_string().as_bytes())
        .finalize()
        .into()
}

async fn too_many_attempts(
    state: &AppState,
    channel: Channel,
    digest_hex: Option<&str>,
) -> Result<(), Problem> {
    match state.limiter.is_blocked(channel.as_str(), digest_hex).await {
        Ok(false) => Ok(()),
        Ok(true) => {
            state.metrics.blocked.inc();
            Err(Problem::new(ProblemCode::TooManyAttempts, None).with(
                "retry_after_seconds",
                state.limiter.policy().lockout_seconds.into(),
            ))
        }
        // Failing open would give up the brute-force limit; failing closed keeps it.
        Err(e) => {
            tracing::error!(error = %e, "attempt counters unavailable");
            Err(Problem::new(ProblemCode::Unavailable, None))
        }
    }
}

async fn record_failure(state: &AppState, channel: Channel, digest_hex: Option<&str>) {
    state.metrics.failed_lookups.inc();
    if let Err(e) = state.limiter.record_failure(channel.as_str(), digest_hex).await {
        tracing::error!(error = %e, "cannot count a failed attempt");
    }
}

pub(crate) fn apply_error(e: ApplyError) -> Problem {
    match e {
        ApplyError::NotFound | ApplyError::WrongCvc => not_found(),
        ApplyError::Refused(r) => Problem::refusal(&r.code, r.detail),
        ApplyError::InFlight => Problem::new(ProblemCode::IdempotencyInFlight, None),
        ApplyError::KeyReused => Problem::new(ProblemCode::IdempotencyKeyReused, None),
        ApplyError::Unavailable(cause) => {
            tracing::error!(error = %cause, "storage unavailable");
            Problem::new(ProblemCode::Unavailable, None)
        }
    }
}

fn render(applied: &Applied, status: StatusCode) -> Response {
    let own = applied.effects.last();
    let expired_holds = applied
        .effects
        .iter()
        .filter(|e| e.action.name() == "expire")
        .filter_map(|e| backbone_certificates::events::target_of(&e.action))
        .collect();
    let expires_at = own.and_then(|e| match &e.action {
        backbone_certificates::Action::Authorize { expires_at, .. } => expires_at
            .format(&time::format_description::well_known::Rfc3339)
            .ok(),
        _ => None,
    });
    let body = OperationResponse {
        operation_id: own.map(|e| e.operation.to_string()).unwrap_or_default(),
        action: own.map(|e| e.action.name().to_owned()).unwrap_or_default(),
        certificate_id: applied.certificate_id,
        code_masked: backbone_certificates::code::mask_last4(&applied.code_last4),
        amount_minor: own.and_then(|e| e.amount),
        target_id: own.and_then(|e| backbone_certificates::events::target_of(&e.action)),
        expires_at,
        state: applied.state.as_str().to_owned(),
        currency: applied.currency.clone(),
        balance_minor: applied.balance,
        available_minor: applied.available,
        expired_holds,
    };
    let mut response = (status, Json(body)).into_response();
    if applied.replayed {
        response
            .headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    response
}

struct Operation<'a> {
    route: &'static str,
    status: StatusCode,
    channel: Channel,
    digest: CodeDigest,
    digest_hex: String,
    command: Command,
    canonical: serde_json::Value,
    cvc: Option<Cvc>,
    headers: &'a HeaderMap,
}

async fn run(state: &AppState, op: Operation<'_>) -> ApiResult {
    run_with_sms(state, op, None).await
}

/// Runs one operation with its idempotency key; counts wrong codes and CVCs. `cvc_sms_to`
/// queues the CVC SMS in the same transaction (activation).
async fn run_with_sms(state: &AppState, op: Operation<'_>, cvc_sms_to: Option<String>) -> ApiResult {
    let key = required_idempotency_key(op.headers)?;
    let cvc_verifier = op
        .cvc
        .as_ref()
        .map(|cvc| state.keys.cvc_verifier(&op.digest, cvc));
    let mut canonical = op.canonical;
    if let Some(v) = &cvc_verifier {
        canonical["cvc"] = hex::encode(v).into();
    }
    let request = OperationRequest {
        certificate: CertificateRef::Code(op.digest),
        operation: OperationId::parse(Uuid::now_v7().to_string())
            .map_err(|e| Problem::new(ProblemCode::Internal, Some(e.to_string())))?,
        command: op.command,
        origin: Origin {
            channel: op.channel.as_str().to_owned(),
            initiator: header(op.headers, INITIATOR_HEADER).map(|s| s.chars().take(128).collect()),
            source_event: Some(format!("http:{key}")),
        },
        idempotency: Some(IdempotencyClaim {
            request_hash: request_hash(op.route, &op.digest, canonical),
            key,
            retention: time::Duration::hours(i64::from(state.idempotency_retention_hours)),
        }),
        cvc_verifier,
        cvc_sms_to,
    };
    let timer = state
        .metrics
        .operation_seconds
        .with_label_values(&[op.route])
        .start_timer();
    // Detached: a client that hangs up must not cancel the transaction half-way (a dropped
    // transaction would keep its locks until its connection is reused).
    let certificates = state.certificates.clone();
    let result = tokio::spawn(async move { certificates.apply(request).await })
        .await
        .unwrap_or_else(|e| Err(ApplyError::Unavailable(format!("operation task failed: {e}"))));
    timer.observe_duration();
    match result {
        Ok(applied) => {
            state
                .metrics
                .operations
                .with_label_values(&[op.route, if applied.replayed { "replayed" } else { "applied" }])
                .inc();
            if !applied.replayed {
                state.after_commit(&op.digest_hex).await;
            }
            // The right CVC ends the certificate's run of failures.
            if op.cvc.is_some() {
                if let Err(e) = state.limiter.clear(&op.digest_hex).await {
                    tracing::warn!(error = %e, "cannot reset the failed-attempt count");
                }
            }
            Ok(render(&applied, op.status))
        }
        Err(e) => {
            let wrong = matches!(e, ApplyError::NotFound | ApplyError::WrongCvc);
            if wrong && op.cvc.is_some() {
                record_failure(state, op.channel, Some(&op.digest_hex)).await;
            }
            let problem = apply_error(e);
            state
                .metrics
                .operations
                .with_label_values(&[op.route, problem.code])
                .inc();
            Err(problem)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers

#[utoipa::path(post, path = "/certificates/{code}/authorize", tag = "certificates",
    params(("code" = String, Path, description = "Certificate code"),
           ("Idempotency-Key" = String, Header, description = "Unique per request; retries reuse it")),
    request_body = AuthorizeRequest,
    responses((status = 201, body = OperationResponse, description = "Hold created"),
              (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn authorize(
    State(state): State<Arc<AppState>>,
    Path(code): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let channel = authenticate_for(&state, &headers, Scope::Authorize)?;
    let req: AuthorizeRequest = parse_body(&body)?;
    let amount = amount(req.amount_minor, &req.currency)?;
    let ttl = req.hold_seconds.unwrap_or(state.holds.default_ttl_seconds);
    if !(1..=state.holds.max_ttl_seconds).contains(&ttl) {
        return Err(Problem::new(
            ProblemCode::BadHoldExpiry,
            Some(format!(
                "hold_seconds must be in 1..={}",
                state.holds.max_ttl_seconds
            )),
        ));
    }
    let cvc = Cvc::parse(&req.cvc)
        .map_err(|_| Problem::new(ProblemCode::CvcRequired, Some("cvc is 3 or 4 digits".into())))?;
    let (digest, digest_hex) = match code_digest(&state, &code) {
        Ok(d) => d,
        Err(p) => {
            record_failure(&state, channel, None).await;
            return Err(p);
        }
    };
    too_many_attempts(&state, channel, Some(&digest_hex)).await?;
    let canonical =
        serde_json::json!({"amount": amount.minor(), "currency": amount.currency().as_str(), "ttl": ttl});
    run(
        &state,
        Operation {
            route: "authorize",
            status: StatusCode::CREATED,
            channel,
            digest,
            digest_hex,
            command: Command::Authorize {
                amount,
                ttl_seconds: ttl,
            },
            canonical,
            cvc: Some(cvc),
            headers: &headers,
        },
    )
    .await
}

#[utoipa::path(post, path = "/certificates/{code}/capture", tag = "certificates",
    params(("code" = String, Path, description = "Certificate code"),
           ("Idempotency-Key" = String, Header, description = "Unique per request; retries reuse it")),
    request_body = CaptureRequest,
    responses((status = 200, body = OperationResponse, description = "Captured; the rest of the hold is released"),
              (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn capture(
    State(state): State<Arc<AppState>>,
    Path(code): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let channel = authenticate_for(&state, &headers, Scope::Capture)?;
    let req: CaptureRequest = parse_body(&body)?;
    let amount = amount(req.amount_minor, &req.currency)?;
    let hold = operation_id(&req.hold_id)?;
    let (digest, digest_hex) = code_digest(&state, &code)?;
    let canonical = serde_json::json!({"hold": hold.as_str(), "amount": amount.minor(), "currency": amount.currency().as_str()});
    run(
        &state,
        Operation {
            route: "capture",
            status: StatusCode::OK,
            channel,
            digest,
            digest_hex,
            command: Command::Capture { hold, amount },
            canonical,
            cvc: None,
            headers: &headers,
        },
    )
    .await
}

#[utoipa::path(post, path = "/certificates/{code}/void", tag = "certificates",
    params(("code" = String, Path, description = "Certificate code"),
           ("Idempotency-Key" = String, Header, description = "Unique per request; retries reuse it")),
    request_body = VoidRequest,
    responses((status = 200, body = OperationResponse, description = "Hold released or capture reversed"),
              (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn void(
    State(state): State<Arc<AppState>>,
    Path(code): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let channel = authenticate_for(&state, &headers, Scope::Void)?;
    let req: VoidRequest = parse_body(&body)?;
    let target = operation_id(&req.target_id)?;
    let (digest, digest_hex) = code_digest(&state, &code)?;
    let canonical = serde_json::json!({"target": target.as_str()});
    run(
        &state,
        Operation {
            route: "void",
            status: StatusCode::OK,
            channel,
            digest,
            digest_hex,
            command: Command::Void { target },
            canonical,
            cvc: None,
            headers: &headers,
        },
    )
    .await
}

#[utoipa::path(post, path = "/certificates/{code}/activate", tag = "certificates",
    params(("code" = String, Path, description = "Certificate code"),
           ("Idempotency-Key" = String, Header, description = "Unique per request; retries reuse it")),
    request_body = ActivateRequest,
    responses((status = 200, body = OperationResponse, description = "Active; the CVC SMS is queued when a phone is given"),
              (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn activate(
    State(state): State<Arc<AppState>>,
    Path(code): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let channel = authenticate_for(&state, &headers, Scope::Activate)?;
    let req: ActivateRequest = parse_body(&body)?;
    if let Some(phone) = &req.phone {
        if !crate::sms::valid_phone(phone) {
            return Err(Problem::new(
                ProblemCode::BadRequest,
                Some("phone must be E.164: + and 8 to 15 digits".into()),
            ));
        }
    }
    let (digest, digest_hex) = code_digest(&state, &code)?;
    let canonical = serde_json::json!({"client": req.client_id, "order": req.order_id, "payment": req.payment_id, "phone": req.phone});
    let phone = req.phone.clone();
    let response = run_with_sms(
        &state,
        Operation {
            route: "activate",
            status: StatusCode::OK,
            channel,
            digest,
            digest_hex,
            command: Command::Activate {
                links: SaleLinks {
                    client_id: req.client_id,
                    order_id: req.order_id,
                    payment_id: req.payment_id,
                },
            },
            canonical,
            cvc: None,
            headers: &headers,
        },
        phone,
    )
    .await?;
    state.sms_wakeup.notify_one();
    Ok(response)
}

macro_rules! simple_operation {
    ($name:ident, $route:literal, $path:literal, $scope:expr, $command:expr, $doc:literal) => {
        #[utoipa::path(post, path = $path, tag = "certificates",
            params(("code" = String, Path, description = "Certificate code"),
                   ("Idempotency-Key" = String, Header, description = "Unique per request; retries reuse it")),
            responses((status = 200, body = OperationResponse, description = $doc),
                      (status = "4XX", body = Problem, content_type = "application/problem+json")),
            security(("bearer" = [])))]
        pub async fn $name(
            State(state): State<Arc<AppState>>,
            Path(code): Path<String>,
            headers: HeaderMap,
            body: Bytes,
        ) -> ApiResult {
            let channel = authenticate_for(&state, &headers, $scope)?;
            let _: EmptyRequest = parse_body(&body)?;
            let (digest, digest_hex) = code_digest(&state, &code)?;
            run(
                &state,
                Operation {
                    route: $route,
                    status: StatusCode::OK,
                    channel,
                    digest,
                    digest_hex,
                    command: $command,
                    canonical: serde_json::json!({}),
                    cvc: None,
                    headers: &headers,
                },
            )
            .await
        }
    };
}

simple_operation!(
    refund,
    "refund",
    "/certificates/{code}/refund",
    Scope::Refund,
    Command::Refund,
    "The sale is refunded (only while nothing was spent)"
);
simple_operation!(
    cancel,
    "cancel",
    "/certificates/{code}/cancel",
    Scope::Cancel,
    Command::Cancel,
    "The certificate is cancelled; active holds are released"
);

#[utoipa::path(get, path = "/certificates/{code}/balance", tag = "certificates",
    params(("code" = String, Path, description = "Certificate code"),
           ("X-Certificate-Cvc" = String, Header, description = "The certificate's security code")),
    responses((status = 200, body = BalanceResponse),
              (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn balance(
    State(state): State<Arc<AppState>>,
    Path(code): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let channel = authenticate_for(&state, &headers, Scope::Balance)?;
    let cvc = header(&headers, CVC_HEADER)
        .ok_or_else(|| Problem::new(ProblemCode::CvcRequired, None))
        .and_then(|c| {
            Cvc::parse(c).map_err(|_| Problem::new(ProblemCode::CvcRequired, Some("3 or 4 digits".into())))
        })?;
    let (digest, digest_hex) = match code_digest(&state, &code) {
        Ok(d) => d,
        Err(p) => {
            too_many_attempts(&state, channel, None).await?;
            record_failure(&state, channel, None).await;
            return Err(p);
        }
    };
    too_many_attempts(&state, channel, Some(&digest_hex)).await?;
    let view = state.balance_view(&digest, &digest_hex).await?;
    let Some(view) = view else {
        record_failure(&state, channel, Some(&digest_hex)).await;
        return Err(not_found());
    };
    if !state.keys.verify_cvc(&digest, &cvc, &view.cvc_verifier) {
        record_failure(&state, channel, Some(&digest_hex)).await;
        return Err(not_found());
    }
    Ok(Json(BalanceResponse {
        certificate_id: view.certificate_id,
        code_masked: backbone_certificates::code::mask_last4(&view.code_last4),
        state: view.state.as_str().to_owned(),
        currency: view.currency,
        balance_minor: view.balance,
        available_minor: view.available,
    })
    .into_response())
}

#[utoipa::path(get, path = "/certificates/{code}", tag = "certificates",
    params(("code" = String, Path, description = "Certificate code")),
    responses((status = 200, description = "State, masked code, links and operation history"),
              (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn view(
    State(state): State<Arc<AppState>>,
    Path(code): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    authenticate_for(&state, &headers, Scope::Read)?;
    let (digest, _) = code_digest(&state, &code)?;
    let view = state
        .store()
        .view(&digest)
        .await
        .map_err(|e| apply_error(e.into()))?
        .ok_or_else(not_found)?;
    let mut body =
        serde_json::to_value(&view).map_err(|e| Problem::new(ProblemCode::Internal, Some(e.to_string())))?;
    body["code_masked"] = backbone_certificates::code::mask_last4(&view.code_last4).into();
    Ok(Json(body).into_response())
}
