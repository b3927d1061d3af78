//! CVC deliveries for an operator: `GET /admin/v1/sms` lists those not sent yet, and
//! `POST /admin/v1/sms/requeue` puts failed ones back in the queue through the store function
//! `gift-certificates sms requeue` uses, or only counts them (`dry_run`).

use super::{limit, mask_phone, operator, unavailable, utc};
use crate::http::{code_digest, not_found, parse_body, ApiResult};
use crate::problem::{Problem, ProblemCode};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::Json;
use backbone_certificates::code::mask_last4;
use backbone_certificates::store::SmsQueue;
use backbone_postgres::certificates::admin::SmsDelivery;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

/// Deliveries listed when no `limit` is given.
pub const DEFAULT_LIMIT: i64 = 50;
/// The most deliveries one call lists.
pub const MAX_LIMIT: i64 = 200;

#[derive(Debug, Deserialize)]
pub struct DeliveriesQuery {
    state: Option<String>,
    limit: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveriesResponse {
    /// Most recently changed first.
    pub deliveries: Vec<DeliveryEntry>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryEntry {
    /// The delivery's id: its certificate's id (one delivery per certificate), as
    /// `gift-certificates sms requeue --certificate` takes it.
    pub id: Uuid,
    /// `****-****-****-` and the code's last four characters.
    pub certificate_masked: String,
    /// Asterisks and the number's last two digits (all that is kept of it in the clear).
    pub phone_masked: String,
    /// `pending` or `failed`.
    pub state: String,
    /// Attempts made; a requeue sets it back to 0.
    pub attempts: i32,
    /// The last attempt's error, as the provider or the network gave it.
    pub last_error: Option<String>,
    /// When the delivery last changed (queued, attempted, failed, requeued).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequeueRequest {
    /// Only this certificate's delivery (its code); all failed deliveries when `null` or absent.
    #[serde(default)]
    #[schema(
        pattern = r"^[A-HJ-NP-Za-hj-np-z2-9]{4}-?[A-HJ-NP-Za-hj-np-z2-9]{4}-?[A-HJ-NP-Za-hj-np-z2-9]{4}-?[A-HJ-NP-Za-hj-np-z2-9]{4}$",
        min_length = 16,
        max_length = 19
    )]
    pub certificate: Option<String>,
    /// Count what would be requeued, change nothing. `false` when absent.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RequeueResponse {
    /// Failed deliveries the requeue takes: those whose CVC and number are still stored.
    pub matched: u64,
    /// Put back in the queue now: 0 in a dry run, `matched` otherwise.
    pub requeued: u64,
    pub dry_run: bool,
}

/// The statuses `state` selects: `pending`, `failed`, or both when absent.
fn statuses(state: Option<&str>) -> Result<Vec<&'static str>, Problem> {
    match state {
        None => Ok(vec!["pending", "failed"]),
        Some("pending") => Ok(vec!["pending"]),
        Some("failed") => Ok(vec!["failed"]),
        Some(_) => Err(Problem::new(
            ProblemCode::BadRequest,
            Some("state must be pending or failed".into()),
        )),
    }
}

fn delivery(d: &SmsDelivery) -> DeliveryEntry {
    DeliveryEntry {
        id: d.certificate_id,
        certificate_masked: mask_last4(&d.code_last4),
        phone_masked: mask_phone(&d.phone_last2),
        state: d.status.clone(),
        attempts: d.attempts,
        last_error: d.last_error.clone(),
        updated_at: utc(d.updated_at),
    }
}

/// The certificate a requeue is limited to: `None` for all; `404 certificate-not-found` for a
/// code that does not parse or that no certificate has.
async fn certificate(state: &AppState, code: Option<&str>) -> Result<Option<Uuid>, Problem> {
    let Some(code) = code else {
        return Ok(None);
    };
    let (digest, _) = code_digest(state, code)?;
    let id = state.store().certificate_id(&digest).await.map_err(unavailable)?;
    id.map(Some).ok_or_else(not_found)
}

#[utoipa::path(get, path = "/admin/v1/sms", tag = "admin",
    params(("state" = Option<String>, Query, description = "`pending` or `failed`; both when absent"),
           ("limit" = Option<i64>, Query, description = "1 to 200; 50 when absent", minimum = 1, maximum = 200)),
    responses((status = 200, body = DeliveriesResponse),
              (status = 400, body = Problem, content_type = "application/problem+json", description = "`bad-request`: state or limit"),
              (status = 401, body = Problem, content_type = "application/problem+json", description = "`unauthenticated`"),
              (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("admin_bearer" = [])))]
pub async fn deliveries(State(state): State<Arc<AppState>>, Query(q): Query<DeliveriesQuery>) -> ApiResult {
    let statuses = statuses(q.state.as_deref())?;
    let limit = limit(q.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let found = state
        .store()
        .sms_deliveries(&statuses, limit)
        .await
        .map_err(unavailable)?;
    Ok(Json(DeliveriesResponse {
        deliveries: found.iter().map(delivery).collect(),
    })
    .into_response())
}

#[utoipa::path(post, path = "/admin/v1/sms/requeue", tag = "admin",
    params(("X-Operator" = String, Header, description = "The person requeueing, recorded in each requeued delivery's audit row: 1 to 64 bytes of UTF-8, no control characters", min_length = 1, max_length = 64)),
    request_body = RequeueRequest,
    responses((status = 200, body = RequeueResponse),
              (status = 400, body = Problem, content_type = "application/problem+json", description = "`bad-request`: X-Operator or the body"),
              (status = 401, body = Problem, content_type = "application/problem+json", description = "`unauthenticated`"),
              (status = 404, body = Problem, content_type = "application/problem+json", description = "`certificate-not-found`: unknown or malformed code"),
              (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("admin_bearer" = [])))]
pub async fn requeue(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let operator = operator(&headers)?;
    let req: RequeueRequest = parse_body(&body)?;
    let certificate = certificate(&state, req.certificate.as_deref()).await?;
    let store = state.store();
    let (matched, requeued) = if req.dry_run {
        (store.requeueable_sms(certificate).await.map_err(unavailable)?, 0)
    } else {
        let n = store
            .requeue_failed_sms_by(certificate, Some(&operator))
            .await
            .map_err(unavailable)?;
        state.sms_wakeup.notify_one();
        (n, n)
    };
    tracing::info!(
        operator = %operator,
        certificate_id = ?certificate,
        matched,
        requeued,
        dry_run = req.dry_run,
        "CVC deliveries requeued from the admin API"
    );
    Ok(Json(RequeueResponse {
        matched,
        requeued,
        dry_run: req.dry_run,
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_filter_is_pending_failed_or_both() {
        assert_eq!(statuses(None).ok(), Some(vec!["pending", "failed"]));
        assert_eq!(statuses(Some("failed")).ok(), Some(vec!["failed"]));
        assert_eq!(statuses(Some("pending")).ok(), Some(vec!["pending"]));
        assert!(statuses(Some("sent")).is_err());
        assert!(statuses(Some("")).is_err());
    }
}
