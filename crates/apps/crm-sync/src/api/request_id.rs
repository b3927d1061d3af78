//! `X-Request-Id`: taken from the caller when well-formed, generated (a UUID v4) when absent,
//! answered back on every response and carried in the request's tracing span. A malformed one
//! is `400 bad-request-id` on `/v1`; a CRM's webhook is never refused for it (a fresh id is used).

use super::problem::{Problem, ProblemCode};
use super::Shared;
use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use backbone_sync::clients::model::check_request_id;
use std::sync::Arc;
use tracing::Instrument;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The request's id, as the handlers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

impl RequestId {
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The id a request carries: `Ok(None)` when it carries none, `Err` when it is malformed.
fn presented(req: &Request) -> Result<Option<RequestId>, ()> {
    let Some(value) = req.headers().get(REQUEST_ID_HEADER) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(s) if check_request_id(s).is_ok() => Ok(Some(RequestId(s.to_owned()))),
        _ => Err(()),
    }
}

fn answer_with(mut response: Response, id: &RequestId) -> Response {
    if let Ok(v) = HeaderValue::from_str(id.as_str()) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    response
}

/// The outermost layer: every answer, the framework's own included, carries the id.
pub(crate) async fn layer(State(shared): State<Arc<Shared>>, mut req: Request, next: Next) -> Response {
    // The route template, never the path: paths hold client ids and webhook secrets.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let webhook = req.uri().path().starts_with("/webhooks/");
    let id = match presented(&req) {
        Ok(Some(id)) => id,
        Ok(None) => RequestId::generate(),
        Err(()) if webhook => RequestId::generate(),
        Err(()) => {
            // The malformed id is not repeated: the answer carries a fresh one.
            let id = RequestId::generate();
            shared.count_response(&route, 400);
            return answer_with(Problem::new(ProblemCode::BadRequestId, None).into_response(), &id);
        }
    };
    req.extensions_mut().insert(id.clone());
    let span = tracing::info_span!(
        "http",
        method = %req.method(),
        route = %route,
        request_id = %id.as_str(),
        caller = tracing::field::Empty,
    );
    // A caller's W3C trace context makes this request part of its trace (and, through the
    // outbox, the CRM write it causes).
    let trace: std::collections::HashMap<String, String> = ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|k| Some((k.to_owned(), req.headers().get(k)?.to_str().ok()?.to_owned())))
        .collect();
    backbone_telemetry::set_parent_from_headers(&span, &trace);
    let response = async {
        let response = next.run(req).await;
        tracing::debug!(status = response.status().as_u16(), "answered");
        response
    }
    .instrument(span)
    .await;
    shared.count_response(&route, response.status().as_u16());
    answer_with(response, &id)
}
