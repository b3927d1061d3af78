//! The operations on one certificate: authorize, capture, void, activate, refund, cancel.

use super::{
    amount, authenticate_for, code_digest, header, operation_id, parse_body, ApiResult, INITIATOR_HEADER,
};
use super::{required_idempotency_key, REPLAYED_HEADER};
use crate::auth::Scope;
use crate::desk::{self, ChannelOperation};
use crate::problem::{Problem, ProblemCode};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use backbone_certificates::{Applied, Command, Cvc, SaleLinks};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;
use uuid::Uuid;

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

/// An operation as parsed from the request, before the desk runs it.
struct Operation<'a> {
    route: &'static str,
    status: StatusCode,
    channel: backbone_certificates::Channel,
    digest: backbone_certificates::CodeDigest,
    digest_hex: String,
    command: Command,
    canonical: serde_json::Value,
    cvc: Option<Cvc>,
    headers: &'a HeaderMap,
}

async fn run(state: &AppState, op: Operation<'_>) -> ApiResult {
    run_with_sms(state, op, None).await
}

/// `cvc_sms_to` queues the CVC SMS with the activation.
async fn run_with_sms(state: &AppState, op: Operation<'_>, cvc_sms_to: Option<String>) -> ApiResult {
    let idempotency_key = required_idempotency_key(op.headers)?;
    let applied = desk::operate(
        state,
        ChannelOperation {
            route: op.route,
            channel: op.channel,
            digest: op.digest,
            digest_hex: op.digest_hex,
            command: op.command,
            canonical: op.canonical,
            cvc: op.cvc,
            idempotency_key,
            initiator: header(op.headers, INITIATOR_HEADER).map(|s| s.chars().take(128).collect()),
            cvc_sms_to,
        },
    )
    .await?;
    Ok(render(&applied, op.status))
}

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
            desk::record_failure(&state, channel, None).await;
            return Err(p);
        }
    };
    desk::too_many_attempts(&state, channel, Some(&digest_hex)).await?;
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
                price: None,
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
