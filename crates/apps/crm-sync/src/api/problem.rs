//! RFC 9457 problem details. Every refusal has a stable `code` (the last segment of `type`),
//! listed once in [`ProblemCode`]; unexpected failures are logged with their cause and answered
//! with an opaque 503 or 500.

use axum::response::{IntoResponse, Response};
use backbone_sync::clients::Invalid;
use serde::Serialize;

// Every problem this service answers with, once: variant = (code, HTTP status, title).
backbone_http::problem_codes! {
    BadRequest = ("bad-request", 400, "The request is malformed"),
    BadRequestId = ("bad-request-id", 400, "X-Request-Id must be 1 to 128 characters of A-Z a-z 0-9 . _ : -"),
    IdempotencyKeyRequired = ("idempotency-key-required", 400, "Idempotency-Key header is required"),
    Unauthenticated = ("unauthenticated", 401, "Missing or unknown credentials"),
    Forbidden = ("forbidden", 403, "The credentials do not allow this request"),
    NotFound = ("not-found", 404, "No such endpoint"),
    ClientNotFound = ("client-not-found", 404, "No client card with this id"),
    OperatorTaskNotFound = ("operator-task-not-found", 404, "No operator task with this id"),
    DeadLetterNotFound = ("dead-letter-not-found", 404, "No dead letter at this partition and offset"),
    MethodNotAllowed = ("method-not-allowed", 405, "This endpoint does not accept this method"),
    IdempotencyInFlight = ("idempotency-in-flight", 409, "A request with this Idempotency-Key is still being processed"),
    InteractionExists = ("interaction-exists", 409, "An interaction with this id exists with other content"),
    TaskOfAnotherClient = ("task-of-another-client", 409, "A task with this id belongs to another client"),
    OperatorTaskResolved = ("operator-task-resolved", 409, "The operator task is already resolved"),
    PayloadTooLarge = ("payload-too-large", 413, "The request body is larger than this service accepts"),
    IdempotencyKeyReused = ("idempotency-key-reused", 422, "This Idempotency-Key was used for a different request"),
    InvalidField = ("invalid-field", 422, "A field's value is not allowed"),
    Unavailable = ("unavailable", 503, "A dependency is unavailable; retry with the same Idempotency-Key"),
    Internal = ("internal", 500, "Unexpected error"),
}

/// A refusal as sent: `application/problem+json`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `/problems/<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    /// Stable: `bad-request`, `invalid-field`, `client-not-found`, ...
    pub code: &'static str,
    /// What is wrong, in the schema's words; never a value the caller sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// `invalid-field`: the field that is refused (`phone`, `due_at`, `client_id`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Problem {
    pub fn new(code: ProblemCode, detail: impl Into<Option<String>>) -> Self {
        Self {
            kind: format!("/problems/{}", code.as_str()),
            title: code.title(),
            status: code.status(),
            code: code.as_str(),
            detail: detail.into(),
            field: None,
        }
    }

    /// `422 invalid-field` naming `field`; `reason` says what is allowed, never what was sent.
    pub fn invalid(field: &str, reason: &str) -> Self {
        let mut p = Self::new(ProblemCode::InvalidField, Some(format!("{field}: {reason}")));
        p.field = Some(field.to_owned());
        p
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(ProblemCode::BadRequest, Some(detail.into()))
    }
}

/// The model's refusals name the field and never repeat the value.
impl From<Invalid> for Problem {
    fn from(e: Invalid) -> Self {
        Problem::invalid(&e.field, &e.reason)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        backbone_http::problem_response(self.status, axum::Json(self))
    }
}

/// Turns an error the framework answered by itself (404, 405, an undecodable path or query)
/// into a problem document of the same status. Its own text is dropped: it may quote the input.
pub async fn as_problem(response: Response) -> Response {
    backbone_http::framework_answer(response, |status| {
        let code = match status.as_u16() {
            404 => ProblemCode::NotFound,
            405 => ProblemCode::MethodNotAllowed,
            413 => ProblemCode::PayloadTooLarge,
            401 => ProblemCode::Unauthenticated,
            403 => ProblemCode::Forbidden,
            400..=499 => ProblemCode::BadRequest,
            503 => ProblemCode::Unavailable,
            _ => ProblemCode::Internal,
        };
        let mut problem = Problem::new(code, None);
        if code == ProblemCode::BadRequest {
            problem.detail = Some("the request could not be read".into());
        }
        problem.into_response()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_parse_back() {
        let mut codes: Vec<&str> = ProblemCode::ALL.iter().map(|c| c.as_str()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ProblemCode::ALL.len());
        for code in ProblemCode::ALL {
            assert_eq!(ProblemCode::parse(code.as_str()), Some(*code));
            assert!((400..600).contains(&code.status()), "{code:?}");
        }
        assert_eq!(ProblemCode::parse("no-such-code"), None);
    }

    #[test]
    fn an_invalid_value_names_the_field_and_not_the_value() {
        let e = backbone_sync::clients::Field::Phone
            .check(&backbone_sync::clients::Value::text("secret-phone"))
            .unwrap_err();
        let p = Problem::from(e);
        assert_eq!(p.status, 422);
        assert_eq!(p.field.as_deref(), Some("phone"));
        let json = serde_json::to_string(&p).unwrap_or_default();
        assert!(!json.contains("secret-phone"), "{json}");
    }
}
