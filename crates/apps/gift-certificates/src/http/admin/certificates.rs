//! One certificate for an operator: `GET /admin/v1/certificates/{code}` (state, balances, holds,
//! history, audit) and `POST /admin/v1/certificates/{code}/cancel`, which cancels through the
//! same desk and domain path as `POST /certificates/{code}/cancel`, as the `internal` channel,
//! with the operator as the audit row's actor and their reason in its details.

use super::{operator, unavailable, utc};
use crate::desk::{self, ChannelOperation};
use crate::http::{code_digest, not_found, parse_body, required_idempotency_key, ApiResult};
use crate::http::{IDEMPOTENCY_HEADER, REPLAYED_HEADER};
use crate::problem::{Problem, ProblemCode};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use backbone_certificates::code::mask_last4;
use backbone_certificates::{Channel, CodeDigest, Command};
use backbone_postgres::certificates::admin::{AdminAudit, AdminCertificate, AdminHold, AdminOperation};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

/// At most this many holds, history entries and audit rows (each, the newest).
pub const VIEW_LIMIT: i64 = 200;
/// The longest cancel reason, in characters.
pub const MAX_REASON_CHARS: usize = 200;

/// A certificate as the operator console shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminCertificateResponse {
    pub certificate_id: Uuid,
    /// `****-****-****-` and the code's last four characters.
    pub code_masked: String,
    pub state: String,
    pub currency: String,
    pub nominal_minor: i64,
    pub balance_minor: i64,
    /// The balance less active holds that have not expired.
    pub available_minor: i64,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
    pub client_id: Option<String>,
    pub order_id: Option<String>,
    pub payment_id: Option<String>,
    pub batch_id: Option<String>,
    /// Whether the CVC is still stored sealed, waiting for its SMS.
    pub cvc_pending_delivery: bool,
    /// Newest first, at most 200.
    pub holds: Vec<AdminHoldEntry>,
    /// Newest first, at most 200.
    pub history: Vec<AdminHistoryEntry>,
    /// Newest first, at most 200.
    pub audit: Vec<AdminAuditEntry>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AdminHoldEntry {
    /// The authorize's `operation_id`.
    pub hold_id: String,
    pub amount_minor: i64,
    /// `active`, `captured`, `released` or `expired`.
    pub state: String,
    /// The channel that made it.
    pub channel: String,
    /// What a capture took from it.
    pub captured_minor: Option<i64>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AdminHistoryEntry {
    /// `activate`, `authorize`, `capture`, `void`, `refund`, `cancel` or `expire`.
    pub operation: String,
    pub operation_id: String,
    pub amount_minor: Option<i64>,
    /// The hold a capture or expiry refers to, or what a void released or reversed.
    pub target_id: Option<String>,
    pub balance_before: i64,
    pub balance_after: i64,
    pub state_before: String,
    pub state_after: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    pub channel: Option<String>,
    /// The request's Idempotency-Key as events and the audit log name it: `http:` and a digest
    /// of the channel and key (the key itself is never stored with the operation); `null` for
    /// an operation that came without one (a sale, the hold sweeper, an admin write without a
    /// key).
    pub idempotency_key: Option<String>,
    /// What caused it: the `idempotency_key` reference, `order:<order id>`, or `null`.
    pub source_event: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AdminAuditEntry {
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    /// The operation (`authorize`, `cancel`...), `cvc_sms_sent` or `cvc_sms_requeued`.
    pub action: String,
    /// The person or system named with the request: `X-Operator` for admin writes,
    /// `X-Initiator` for the channels', `hold-sweeper`; `null` when none was named.
    pub actor: Option<String>,
    pub channel: String,
    pub operation_id: Option<String>,
    /// What the row records: amount, target and states for an operation, the operator's
    /// `reason` for an admin cancel.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    /// Why the certificate is cancelled: 1 to 200 characters, no control characters. Recorded
    /// in the audit log, never published.
    #[schema(min_length = 1, max_length = 200)]
    pub reason: String,
}

fn hold(h: &AdminHold) -> AdminHoldEntry {
    AdminHoldEntry {
        hold_id: h.hold_id.clone(),
        amount_minor: h.amount,
        state: h.status.clone(),
        channel: h.channel.clone(),
        captured_minor: h.captured_amount,
        created_at: utc(h.created_at),
        expires_at: utc(h.expires_at),
    }
}

fn history(o: &AdminOperation) -> AdminHistoryEntry {
    AdminHistoryEntry {
        operation: o.action.clone(),
        operation_id: o.operation_id.clone(),
        amount_minor: o.amount,
        target_id: o.target_id.clone(),
        balance_before: o.balance_before,
        balance_after: o.balance_after,
        state_before: o.state_before.clone(),
        state_after: o.state_after.clone(),
        at: utc(o.at),
        channel: Some(o.channel.clone()),
        idempotency_key: o.source_event.clone().filter(|s| s.starts_with("http:")),
        source_event: o.source_event.clone(),
    }
}

fn audit(a: &AdminAudit) -> AdminAuditEntry {
    AdminAuditEntry {
        at: utc(a.at),
        action: a.action.clone(),
        actor: a.initiator.clone(),
        channel: a.channel.clone(),
        operation_id: a.operation_id.clone(),
        detail: a.details.clone(),
    }
}

fn render(c: &AdminCertificate) -> AdminCertificateResponse {
    AdminCertificateResponse {
        certificate_id: c.certificate_id,
        code_masked: mask_last4(&c.code_last4),
        state: c.state.as_str().to_owned(),
        currency: c.currency.clone(),
        nominal_minor: c.nominal,
        balance_minor: c.balance,
        available_minor: c.available,
        expires_at: c.expires_at.map(utc),
        client_id: c.client_id.clone(),
        order_id: c.order_id.clone(),
        payment_id: c.payment_id.clone(),
        batch_id: c.batch_id.clone(),
        cvc_pending_delivery: c.cvc_pending_delivery,
        holds: c.holds.iter().map(hold).collect(),
        history: c.history.iter().map(history).collect(),
        audit: c.audit.iter().map(audit).collect(),
    }
}

/// The certificate with this code's digest, rendered; `404 certificate-not-found` without one.
async fn view(state: &AppState, digest: &CodeDigest) -> Result<AdminCertificateResponse, Problem> {
    let found = state
        .store()
        .admin_certificate(digest, VIEW_LIMIT)
        .await
        .map_err(unavailable)?;
    found.as_ref().map(render).ok_or_else(not_found)
}

/// The cancel reason: 1 to [`MAX_REASON_CHARS`] characters, not only spaces, no control
/// characters; else `400 bad-request` (never quoting it).
fn reason(raw: String) -> Result<String, Problem> {
    let fits = (1..=MAX_REASON_CHARS).contains(&raw.chars().count());
    if fits && !raw.trim().is_empty() && !raw.chars().any(char::is_control) {
        Ok(raw)
    } else {
        Err(Problem::new(
            ProblemCode::BadRequest,
            Some("reason must be 1 to 200 characters, no control characters".into()),
        ))
    }
}

/// An admin write's optional `Idempotency-Key`, kept apart from the `internal` channel's keys.
fn admin_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    if !headers.contains_key(IDEMPOTENCY_HEADER) {
        return Ok(None);
    }
    Ok(Some(format!("admin:{}", required_idempotency_key(headers)?)))
}

#[utoipa::path(get, path = "/admin/v1/certificates/{code}", tag = "admin",
    params(("code" = String, Path, description = "Certificate code: 16 characters of `ABCDEFGHJKLMNPQRSTUVWXYZ23456789`, either case, optionally in groups of four joined by `-`", pattern = r"^[A-HJ-NP-Za-hj-np-z2-9]{4}-?[A-HJ-NP-Za-hj-np-z2-9]{4}-?[A-HJ-NP-Za-hj-np-z2-9]{4}-?[A-HJ-NP-Za-hj-np-z2-9]{4}$", min_length = 16, max_length = 19)),
    responses((status = 200, body = AdminCertificateResponse),
              (status = 401, body = Problem, content_type = "application/problem+json", description = "`unauthenticated`"),
              (status = 404, body = Problem, content_type = "application/problem+json", description = "`certificate-not-found`: unknown or malformed code"),
              (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("admin_bearer" = [])))]
pub async fn certificate(State(state): State<Arc<AppState>>, Path(code): Path<String>) -> ApiResult {
    let (digest, _) = code_digest(&state, &code)?;
    Ok(Json(view(&state, &digest).await?).into_response())
}

#[utoipa::path(post, path = "/admin/v1/certificates/{code}/cancel", tag = "admin",
    params(("code" = String, Path, description = "Certificate code: 16 characters of `ABCDEFGHJKLMNPQRSTUVWXYZ23456789`, either case, optionally in groups of four joined by `-`", pattern = r"^[A-HJ-NP-Za-hj-np-z2-9]{4}-?[A-HJ-NP-Za-hj-np-z2-9]{4}-?[A-HJ-NP-Za-hj-np-z2-9]{4}-?[A-HJ-NP-Za-hj-np-z2-9]{4}$", min_length = 16, max_length = 19),
           ("X-Operator" = String, Header, description = "The person cancelling, recorded as the audit row's actor: 1 to 64 bytes of UTF-8, no control characters", min_length = 1, max_length = 64),
           ("Idempotency-Key" = Option<String>, Header, description = "Optional. With one, a retry with the same key answers the first result again (`idempotent-replayed: true`); without, a repeat is a new request. 1 to 255 printable characters", min_length = 1, max_length = 255, pattern = r"^[^\u0000-\u001f\u007f]+$")),
    request_body = CancelRequest,
    responses((status = 200, body = AdminCertificateResponse, description = "Cancelled; the certificate as GET /admin/v1/certificates/{code} shows it"),
              (status = 400, body = Problem, content_type = "application/problem+json", description = "`bad-request`: X-Operator, Idempotency-Key or the body"),
              (status = 401, body = Problem, content_type = "application/problem+json", description = "`unauthenticated`"),
              (status = 404, body = Problem, content_type = "application/problem+json", description = "`certificate-not-found`"),
              (status = 409, body = Problem, content_type = "application/problem+json", description = "`wrong-state`: already cancelled or refunded"),
              (status = 429, body = Problem, content_type = "application/problem+json", description = "`too-many-attempts`: the internal channel's lookup budget"),
              (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("admin_bearer" = [])))]
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Path(code): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let operator = operator(&headers)?;
    let idempotency_key = admin_key(&headers)?;
    let req: CancelRequest = parse_body(&body)?;
    let reason = reason(req.reason)?;
    let code = code_digest(&state, &code).ok();
    let applied = desk::operate(
        &state,
        ChannelOperation {
            route: "cancel",
            channel: Channel::Internal,
            code: code.clone(),
            command: Command::Cancel,
            canonical: serde_json::json!({"reason": reason}),
            cvc: None,
            idempotency_key,
            initiator: Some(operator.clone()),
            cvc_sms_to: None,
            reason: Some(reason),
        },
    )
    .await?;
    tracing::info!(
        certificate_id = %applied.certificate_id,
        operator = %operator,
        replayed = applied.replayed,
        "certificate cancelled from the admin API"
    );
    // The code parsed, or the desk would have answered 404.
    let (digest, _) = code.ok_or_else(not_found)?;
    let mut response = Json(view(&state, &digest).await?).into_response();
    if applied.replayed {
        response
            .headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_short_printable_text() {
        assert_eq!(
            reason("reported stolen".into()).ok().as_deref(),
            Some("reported stolen")
        );
        assert!(reason("я".repeat(200)).is_ok(), "200 characters, not bytes");
        for bad in [String::new(), "   ".into(), "x".repeat(201), "line\nbreak".into()] {
            assert!(reason(bad).is_err());
        }
    }
}
