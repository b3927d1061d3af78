//! `POST /webhooks/{vendor}[/{secret}]`: a CRM says a record changed. No bearer token: the
//! vendor's own credential is checked by [`Webhooks::verify`]; a refused webhook leaves nothing.
//! A verified one is stored with its outbox row and answered at once, in the vendor's words.

use super::problem::{Problem, ProblemCode};
use super::request_id::RequestId;
use super::{read_body, Shared};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use backbone_crm::webhooks::{Ack, InboundRequest, Webhooks, MAX_WEBHOOK_BYTES};
use backbone_sync::clients::{Intake, StoreError, WebhookRefusal};
use std::sync::Arc;

#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum VendorName {
    Generic,
    Bitrix24,
    Kommo,
    Salesforce,
}

#[utoipa::path(post, path = "/webhooks/{vendor}", operation_id = "receiveWebhook", tag = "webhooks",
    description = "A CRM's change notification. `generic` (JSON, `X-Signature` v2 over the request with the webhook secret) answers `202`; `bitrix24` (form; `auth[application_token]` of `auth[member_id]`) answers `200`.",
    params(("vendor" = VendorName, Path, description = "A vendor configured under `[webhooks]`; any other is `404`"),
           ("X-Request-Id" = Option<String>, Header, description = "Correlation id; a malformed one is replaced, never refused", max_length = 128)),
    request_body(description = "The vendor's own body, at most 256 KiB", content(("application/json"), ("application/x-www-form-urlencoded"))),
    responses((status = 202, description = "generic: stored (or a duplicate)"),
              (status = 200, description = "bitrix24: stored (or a duplicate)"),
              (status = 400, body = Problem, content_type = "application/problem+json", description = "Not the vendor's shape; nothing stored"),
              (status = 401, body = Problem, content_type = "application/problem+json", description = "No credential; nothing stored"),
              (status = 403, body = Problem, content_type = "application/problem+json", description = "A credential that does not verify; nothing stored"),
              (status = 404, body = Problem, content_type = "application/problem+json", description = "The vendor is not configured"),
              (status = 413, body = Problem, content_type = "application/problem+json"),
              (status = 503, body = Problem, content_type = "application/problem+json", description = "Not stored; the vendor retries where it can")))]
pub(crate) async fn receive(
    State(shared): State<Arc<Shared>>,
    Path(vendor): Path<String>,
    Extension(request_id): Extension<RequestId>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let target = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    receive_hook(&shared, &vendor, None, target, &request_id, &headers, body).await
}

#[utoipa::path(post, path = "/webhooks/{vendor}/{secret}", operation_id = "receiveWebhookWithSecret", tag = "webhooks",
    description = "A CRM's change notification to a secret URL. `kommo` (form; the path secret and `account[id]`) answers `200`; `salesforce` (a SOAP Outbound Message; the path secret and `OrganizationId`) answers the SOAP `<Ack>true</Ack>`.",
    params(("vendor" = VendorName, Path, description = "A vendor configured under `[webhooks]`; any other is `404`"),
           ("secret" = String, Path, description = "The secret configured for the vendor's webhook URL", min_length = 1, max_length = 256),
           ("X-Request-Id" = Option<String>, Header, description = "Correlation id; a malformed one is replaced, never refused", max_length = 128)),
    request_body(description = "The vendor's own body, at most 256 KiB", content(("application/x-www-form-urlencoded"), ("text/xml"))),
    responses((status = 200, description = "Stored (or a duplicate); Salesforce gets its SOAP acknowledgement", content_type = "text/xml"),
              (status = 400, body = Problem, content_type = "application/problem+json", description = "Not the vendor's shape; nothing stored"),
              (status = 401, body = Problem, content_type = "application/problem+json", description = "No credential; nothing stored"),
              (status = 403, body = Problem, content_type = "application/problem+json", description = "A credential that does not verify; nothing stored"),
              (status = 404, body = Problem, content_type = "application/problem+json", description = "The vendor is not configured"),
              (status = 413, body = Problem, content_type = "application/problem+json"),
              (status = 503, body = Problem, content_type = "application/problem+json", description = "Not stored; the vendor retries where it can")))]
pub(crate) async fn receive_with_secret(
    State(shared): State<Arc<Shared>>,
    Path((vendor, secret)): Path<(String, String)>,
    Extension(request_id): Extension<RequestId>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let target = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    receive_hook(
        &shared,
        &vendor,
        Some(&secret),
        target,
        &request_id,
        &headers,
        body,
    )
    .await
}

async fn receive_hook(
    shared: &Shared,
    vendor: &str,
    secret: Option<&str>,
    target: &str,
    request_id: &RequestId,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let webhooks: &Webhooks = &shared.api.webhooks;
    if !webhooks.serves(vendor) {
        // The vendor's name is not repeated: it is whatever the path said.
        return Problem::new(
            ProblemCode::NotFound,
            Some("no webhook is configured here".into()),
        )
        .into_response();
    }
    let body = match read_body(headers, body, MAX_WEBHOOK_BYTES).await {
        Ok(b) => b,
        Err(p) => {
            shared.count_webhook(vendor, "too_large");
            return p.into_response();
        }
    };
    let inbound = InboundRequest {
        method: "POST",
        target,
        headers,
        body: &body,
        now: time::OffsetDateTime::now_utc(),
    };
    let hints = match webhooks.verify(vendor, secret, &inbound) {
        Ok(hints) => hints,
        Err(refusal) => {
            let (outcome, problem) = match refusal {
                WebhookRefusal::Unauthenticated => (
                    "unauthenticated",
                    Problem::new(ProblemCode::Unauthenticated, None),
                ),
                WebhookRefusal::Forbidden => ("forbidden", Problem::new(ProblemCode::Forbidden, None)),
                WebhookRefusal::Malformed(why) => ("malformed", Problem::bad_request(why)),
            };
            tracing::info!(vendor, outcome, "webhook refused");
            shared.count_webhook(vendor, outcome);
            return problem.into_response();
        }
    };
    if hints.is_empty() {
        shared.count_webhook(vendor, "empty");
        return ack(webhooks.ack(vendor));
    }
    match shared.api.store.intake(&hints, request_id.as_str()).await {
        Ok(intakes) => {
            let stored = intakes.iter().filter(|i| matches!(i, Intake::Stored(_))).count();
            tracing::info!(vendor, hints = hints.len(), stored, "webhook stored");
            shared.count_webhook(vendor, if stored > 0 { "stored" } else { "duplicate" });
            ack(webhooks.ack(vendor))
        }
        Err(StoreError::Unavailable(cause)) => {
            tracing::error!(vendor, error = %cause, "webhook not stored: store unavailable");
            shared.count_webhook(vendor, "unavailable");
            Problem::new(ProblemCode::Unavailable, None).into_response()
        }
        Err(other) => {
            tracing::error!(vendor, error = %other, "webhook not stored");
            shared.count_webhook(vendor, "failed");
            Problem::new(ProblemCode::Internal, None).into_response()
        }
    }
}

fn ack(a: Ack) -> Response {
    let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::OK);
    let mut response = (status, a.body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(a.content_type));
    response
}
