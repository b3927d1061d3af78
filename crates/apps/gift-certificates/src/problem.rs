//! RFC 9457 problem details. Every refusal has a stable `code` (the last segment of `type`),
//! listed once in [`ProblemCode`]; unexpected failures are logged with their cause and answered with
//! an opaque 503/500.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

// Every problem this service answers with, once: variant = (code, HTTP status, title).
backbone_http::problem_codes! {
    BadRequest = ("bad-request", 400, "The request is malformed"),
    IdempotencyKeyRequired = ("idempotency-key-required", 400, "Idempotency-Key header is required"),
    CvcRequired = ("cvc-required", 400, "The certificate's security code is required"),
    Unauthenticated = ("unauthenticated", 401, "Missing or unknown service token"),
    Forbidden = ("forbidden", 403, "This channel may not perform this operation"),
    CertificateNotFound = ("certificate-not-found", 404, "No certificate matches this code and security code"),
    UnknownHold = ("unknown-hold", 404, "No such hold or capture on this certificate"),
    DeadLetterNotFound = ("dead-letter-not-found", 404, "No dead letter at this partition and offset"),
    MethodNotAllowed = ("method-not-allowed", 405, "This endpoint does not accept this method"),
    IdempotencyInFlight = ("idempotency-in-flight", 409, "A request with this Idempotency-Key is still being processed"),
    WrongState = ("wrong-state", 409, "The certificate's state does not allow this operation"),
    HoldNotActive = ("hold-not-active", 409, "The hold is no longer active"),
    AlreadyReversed = ("already-reversed", 409, "The capture was already reversed"),
    CertificateInUse = ("certificate-in-use", 409, "The certificate has been spent from or has active holds"),
    PayloadTooLarge = ("payload-too-large", 413, "The request body is larger than this service accepts"),
    IdempotencyKeyReused = ("idempotency-key-reused", 422, "This Idempotency-Key was used for a different request"),
    InvalidAmount = ("invalid-amount", 422, "Amounts are positive integers in minor units"),
    InvalidCurrency = ("invalid-currency", 422, "Currencies are ISO 4217 codes"),
    CurrencyMismatch = ("currency-mismatch", 422, "The currency differs from the certificate's"),
    InsufficientFunds = ("insufficient-funds", 422, "The available balance is lower than the amount"),
    CaptureExceedsHold = ("capture-exceeds-hold", 422, "A capture cannot exceed its hold"),
    HoldExpired = ("hold-expired", 422, "The hold has expired"),
    BadHoldExpiry = ("bad-hold-expiry", 422, "The hold lifetime is out of range"),
    CertificateExpired = ("certificate-expired", 422, "The certificate has expired"),
    BadOperationId = ("bad-operation-id", 422, "The operation id is not valid"),
    OperationIdReused = ("operation-id-reused", 422, "The operation id was used for a different request"),
    NominalMismatch = ("nominal-mismatch", 422, "A sale line's amount differs from the certificate's nominal"),
    TooManyAttempts = ("too-many-attempts", 429, "Too many failed attempts; try again later"),
    Unavailable = ("unavailable", 503, "A dependency is unavailable; retry with the same Idempotency-Key"),
    Internal = ("internal", 500, "Unexpected error"),
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Extra members, such as `retry_after_seconds`.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
    /// A stored refusal answered again: sent as the `idempotent-replayed: true` header.
    #[serde(skip)]
    #[schema(ignore)]
    pub replayed: bool,
}

impl Problem {
    pub fn new(code: ProblemCode, detail: impl Into<Option<String>>) -> Self {
        Self {
            kind: format!("/problems/{}", code.as_str()),
            title: code.title(),
            status: code.status(),
            code: code.as_str(),
            detail: detail.into(),
            extra: None,
            replayed: false,
        }
    }

    /// A refusal by the domain rules. A code missing from the table is a programming error
    /// (the tests below hold every refusal against it): logged, answered as `internal`.
    pub fn refusal(code: &str, detail: String) -> Self {
        match ProblemCode::parse(code) {
            Some(code) => Self::new(code, detail),
            None => {
                tracing::error!(code, "a domain refusal without a problem code");
                Self::new(ProblemCode::Internal, None)
            }
        }
    }

    pub fn with(mut self, key: &str, value: serde_json::Value) -> Self {
        self.extra
            .get_or_insert_with(Default::default)
            .insert(key.to_owned(), value);
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let retry_after = self
            .extra
            .as_ref()
            .and_then(|e| e.get("retry_after_seconds"))
            .and_then(serde_json::Value::as_u64);
        let replayed = self.replayed;
        let mut response = backbone_http::problem_response(self.status, axum::Json(self));
        if let Some(seconds) = retry_after {
            if let Ok(v) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if replayed {
            response
                .headers_mut()
                .insert(crate::http::REPLAYED_HEADER, HeaderValue::from_static("true"));
        }
        response
    }
}

/// Turns an error the framework answered by itself (405, 413, an undecodable path...) into a
/// problem document of the same status. Its own text is dropped: it may quote the input.
pub async fn as_problem(response: Response) -> Response {
    backbone_http::framework_answer(response, |status| {
        let code = match status.as_u16() {
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
    fn every_domain_refusal_has_a_4xx_entry() {
        use backbone_certificates::{CertificateError as E, Currency, OperationId, State};
        let op = OperationId::parse("x").unwrap();
        let rub = Currency::parse("RUB").unwrap();
        let all = [
            E::BadOperationId,
            E::InvalidTransition {
                state: State::Issued,
                action: "capture",
            },
            E::CurrencyMismatch {
                expected: rub,
                got: rub,
            },
            E::InsufficientFunds {
                available: 1,
                requested: 2,
            },
            E::UnknownOperation(op.clone()),
            E::HoldExpired(op.clone()),
            E::HoldNotActive(op.clone()),
            E::CaptureExceedsHold {
                held: 1,
                requested: 2,
            },
            E::AlreadyReversed(op.clone()),
            E::HoldExpiryInPast,
            E::CertificateExpired(time::OffsetDateTime::UNIX_EPOCH),
            E::InUse,
            E::IdempotencyConflict(op),
            E::NominalMismatch,
        ];
        for e in all {
            let p = Problem::refusal(e.code(), String::new());
            assert_eq!(p.code, e.code(), "{e:?} has no entry");
            assert!((400..500).contains(&p.status), "{e:?}");
        }
    }

    #[test]
    fn codes_are_unique_and_parse_back() {
        let mut codes: Vec<&str> = ProblemCode::ALL.iter().map(|c| c.as_str()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ProblemCode::ALL.len());
        for code in ProblemCode::ALL {
            assert_eq!(ProblemCode::parse(code.as_str()), Some(*code));
        }
        assert_eq!(ProblemCode::parse("no-such-code"), None);
    }
}
