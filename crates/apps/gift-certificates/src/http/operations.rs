//! The operations on one certificate: authorize, capture, void, activate, refund, cancel.

use super::REPLAYED_HEADER;
use super::{
    amount, authenticate_post, code_digest, external_id, initiator, operation_id, parse_body, ApiResult,
};
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
    #[schema(minimum = 1, maximum = 9_223_372_036_854_775_807_i64)]
    pub amount_minor: i64,
    /// ISO 4217: three upper-case letters; the certificate's currency.
    #[schema(pattern = r"^[A-Z]{3}$", min_length = 3, max_length = 3, example = "RUB")]
    pub currency: String,
    /// The certificate's security code: 3 or 4 digits, as a string (leading zeros count).
    /// Missing or malformed: `400 cvc-required`.
    #[schema(value_type = String, pattern = r"^[0-9]{3,4}$", min_length = 3, max_length = 4, example = "4821")]
    pub cvc: Option<serde_json::Value>,
    /// Hold lifetime in seconds; the configured default (15 minutes) when absent, at most
    /// `holds.max_ttl_seconds` (7 days by default).
    #[schema(minimum = 1, maximum = 604_800)]
    pub hold_seconds: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    /// The authorize's `operation_id`.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$"
    )]
    pub hold_id: String,
    /// At most the held amount; the rest of the hold is released.
    #[schema(minimum = 1, maximum = 9_223_372_036_854_775_807_i64)]
    pub amount_minor: i64,
    #[schema(pattern = r"^[A-Z]{3}$", min_length = 3, max_length = 3, example = "RUB")]
    pub currency: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoidRequest {
    /// A hold to release, or a capture to reverse (refund to the certificate).
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$"
    )]
    pub target_id: String,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ActivateRequest {
    /// 1..=64 bytes, no whitespace or control characters.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\s\u0000-\u001f\u007f-\u009f]+$"
    )]
    pub client_id: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\s\u0000-\u001f\u007f-\u009f]+$"
    )]
    pub order_id: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\s\u0000-\u001f\u007f-\u009f]+$"
    )]
    pub payment_id: Option<String>,
    /// E.164 number the security code is sent to by SMS, once.
    #[schema(
        pattern = r"^\+[0-9]{8,15}$",
        min_length = 9,
        max_length = 16,
        example = "+79991234567"
    )]
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
    idempotency_key: String,
    code: &'a str,
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
    let applied = desk::operate(
        state,
        ChannelOperation {
            route: op.route,
            channel: op.channel,
            code: code_digest(state, op.code).ok(),
            command: op.command,
            canonical: op.canonical,
            cvc: op.cvc,
            idempotency_key: Some(op.idempotency_key),
            initiator: initiator(op.headers)?,
            cvc_sms_to,
            reason: None,
        },
    )
    .await?;
    Ok(render(&applied, op.status))
}

#[utoipa::path(post, path = "/certificates/{code}/authorize", tag = "certificates",
    params(("code" = String, Path, description = "Certificate code: 16 characters of `ABCDEFGHJKLMNPQRSTUVWXYZ23456789`, either case, optionally in groups of four joined by `-`", pattern = r"^[A-HJ-NP-Za-hj-np-z2-9]{4}-?[A-HJ-NP-Za-hj-np-z2-9]{4}-?[A-HJ-NP-Za-hj-np-z2-9]{4}-?[A-HJ-NP-Za-hj-np-z2-9]{4}$", min_length = 16, max_length = 19),
           ("Idempotency-Key" = String, Header, description = "Unique per request; retries reuse it. 1 to 255 printable characters", min_length = 1, max_length = 255, pattern = r"^[^\u0000-\u001f\u007f]+$"),
           ("X-Initiator" = Option<String>, Header, description = "A cashier or system id for the audit log: 1 to 128 bytes, no control characters", max_length = 128)),
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
    let (channel, idempotency_key) = authenticate_post(&state, &headers, Scope::Authorize)?;
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
    let cvc = req
        .cvc
        .as_ref()
        .and_then(serde_json::Value::as_str)
        .and_then(|c| Cvc::parse(c).ok())
        .ok_or_else(|| {
            Problem::new(
                ProblemCode::CvcRequired,
                Some("cvc is a string of 3 or 4 digits".into()),
            )
        })?;
    let canonical =
        serde_json::json!({"amount": amount.minor(), "currency": amount.currency().as_str(), "ttl": ttl});
    run(
        &state,
        Operation {
            route: "authorize",
            status: StatusCode::CREATED,
            channel,
            idempotency_key,
            code: &code,
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
    params(("code" = String, Path, description = "Certificate code: 16 characters of `ABCDEFGHJKLMNPQRSTUVWXYZ23456789`, either case, optionally in groups of four joined by `-`", pattern = r"^[A-HJ-NP-Za-hj-np-z2-9]{4}-?[A-HJ-NP-Za-hj-np-z2-9]{4}-?[A-HJ-NP-Za-hj-np-z2-9]{4}-?[A-HJ-NP-Za-hj-np-z2-9]{4}$", min_length = 16, max_length = 19),
           ("Idempotency-Key" = String, Header, description = "Unique per request; retries reuse it. 1 to 255 printable characters", min_length = 1, max_length = 255, pattern = r"^[^\u0000-\u001f\u007f]+$"),
           ("X-Initiator" = Option<String>, Header, description = "A cashier or system id for the audit log: 1 to 128 bytes, no control characters", max_length = 128)),
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
    let (channel, idempotency_key) = authenticate_post(&state, &headers, Scope::Capture)?;
    let req: CaptureRequest = parse_body(&body)?;
    let amount = amount(req.amount_minor, &req.currency)?;
    let hold = operation_id("hold_id", &req.hold_id)?;
    let canonical = serde_json::json!({"hold": hold.as_str(), "amount": amount.minor(), "currency": amount.currency().as_str()});
    run(
        &state,
        Operation {
            route: "capture",
            status: StatusCode::OK,
            channel,
            idempotency_key,
            code: &code,
            command: Command::Capture { hold, amount },
            canonical,
            cvc: None,
            headers: &headers,
        },
    )
    .await
}

#[utoipa::path(post, path = "/certificates/{code}/void", tag = "certificates",
    params(("code" = String, Path, description = "Certificate code: 16 characters of `ABCDEFGHJKLMNPQRSTUVWXYZ23456789`, either case, optionally in groups of four joined by `-`", pattern = r"^[A-HJ-NP-Za-hj-np-z2-9]{4}-?[A-HJ-NP-Za-hj-np-z2-9]{4}-?[A-HJ-NP-Za-hj-np-z2-9]{4}-?[A-HJ-NP-Za-hj-np-z2-9]{4}$", min_length = 16, max_length = 19),
           ("Idempotency-Key" = String, Header, description = "Unique per request; retries reuse it. 1 to 255 printable characters", min_length = 1, max_length = 255, pattern = r"^[^\u0000-\u001f\u007f]+$"),
           ("X-Initiator" = Option<String>, Header, description = "A cashier or system id for the audit log: 1 to 128 bytes, no control characters", max_length = 128)),
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
    let (channel, idempotency_key) = authenticate_post(&state, &headers, Scope::Void)?;
    let req: VoidRequest = parse_body(&body)?;
    let target = operation_id("target_id", &req.target_id)?;
    let canonical = serde_json::json!({"target": target.as_str()});
    run(
        &state,
        Operation {
            route: "void",
            status: StatusCode::OK,
            channel,
            idempotency_key,
            code: &code,
            command: Command::Void { target },
            canonical,
            cvc: None,
            headers: &headers,
        },
    )
    .await
}

#[utoipa::path(post, path = "/certificates/{code}/activate", tag = "certificates",
    params(("code" = String, Path, description = "Certificate code: 16 characters of `ABCDEFGHJKLMNPQRSTUVWXYZ23456789`, either case, optionally in groups of four joined by `-`", pattern = r"^[A-HJ-NP-Za-hj-np-z2-9]{4}-?[A-HJ-NP-Za-hj-np-z2-9]{4}-?[A-HJ-NP-Za-hj-np-z2-9]{4}-?[A-HJ-NP-Za-hj-np-z2-9]{4}$", min_length = 16, max_length = 19),
           ("Idempotency-Key" = String, Header, description = "Unique per request; retries reuse it. 1 to 255 printable characters", min_length = 1, max_length = 255, pattern = r"^[^\u0000-\u001f\u007f]+$"),
           ("X-Initiator" = Option<String>, Header, description = "A cashier or system id for the audit log: 1 to 128 bytes, no control characters", max_length = 128)),
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
    let (channel, idempotency_key) = authenticate_post(&state, &headers, Scope::Activate)?;
    let mut req: ActivateRequest = parse_body(&body)?;
    req.client_id = external_id("client_id", req.client_id.take())?;
    req.order_id = external_id("order_id", req.order_id.take())?;
    req.payment_id = external_id("payment_id", req.payment_id.take())?;
    if let Some(phone) = &req.phone {
        if !crate::sms::valid_phone(phone) {
            return Err(Problem::new(
                ProblemCode::BadRequest,
                Some("phone must be E.164: + and 8 to 15 digits".into()),
            ));
        }
    }
    let canonical = serde_json::json!({"client": req.client_id, "order": req.order_id, "payment": req.payment_id, "phone": req.phone});
    let phone = req.phone.clone();
    let response = run_with_sms(
        &state,
        Operation {
            route: "activate",
            status: StatusCode::OK,
            channel,
            idempotency_key,
            code: &code,
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
            params(("code" = String, Path, description = "Certificate code: 16 characters of `ABCDEFGHJKLMNPQRSTUVWXYZ23456789`, either case, optionally in groups of four joined by `-`", pattern = r"^[A-HJ-NP-Za-hj-np-z2-9]{4}-?[A-HJ-NP-Za-hj-np-z2-9]{4}-?[A-HJ-NP-Za-hj-np-z2-9]{4}-?[A-HJ-NP-Za-hj-np-z2-9]{4}$", min_length = 16, max_length = 19),
                   ("Idempotency-Key" = String, Header, description = "Unique per request; retries reuse it. 1 to 255 printable characters", min_length = 1, max_length = 255, pattern = r"^[^\u0000-\u001f\u007f]+$"),
           ("X-Initiator" = Option<String>, Header, description = "A cashier or system id for the audit log: 1 to 128 bytes, no control characters", max_length = 128)),
            responses((status = 200, body = OperationResponse, description = $doc),
                      (status = "4XX", body = Problem, content_type = "application/problem+json")),
            security(("bearer" = [])))]
        pub async fn $name(
            State(state): State<Arc<AppState>>,
            Path(code): Path<String>,
            headers: HeaderMap,
            body: Bytes,
        ) -> ApiResult {
            let (channel, idempotency_key) = authenticate_post(&state, &headers, $scope)?;
            let _: EmptyRequest = parse_body(&body)?;
            run(
                &state,
                Operation {
                    route: $route,
                    status: StatusCode::OK,
                    channel,
                    idempotency_key,
                    code: &code,
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
