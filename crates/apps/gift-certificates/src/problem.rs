//! RFC 9457 problem details. Every refusal has a stable `code` (the last segment of `type`),
//! listed once in [`TABLE`]; unexpected failures are logged with their cause and answered with
//! an opaque 503/500.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// `code` → (HTTP status, title).
pub const TABLE: &[(&str, u16, &str)] = &[
    ("bad-request", 400, "The request is malformed"),
    (
        "idempotency-key-required",
        400,
        "Idempotency-Key header is required",
    ),
    ("cvc-required", 400, "The certificate's security code is required"),
    ("unauthenticated", 401, "Missing or unknown service token"),
    ("forbidden", 403, "This channel may not perform this operation"),
    (
        "certificate-not-found",
        404,
        "No certificate matches this code and security code",
    ),
    ("unknown-hold", 404, "No such hold or capture on this certificate"),
    (
        "idempotency-in-flight",
        409,
        "A request with this Idempotency-Key is still being processed",
    ),
    (
        "wrong-state",
        409,
        "The certificate's state does not allow this operation",
    ),
    ("hold-not-active", 409, "The hold is no longer active"),
    ("already-reversed", 409, "The capture was already reversed"),
    (
        "certificate-in-use",
        409,
        "The certificate has been spent from or has active holds",
    ),
    (
        "idempotency-key-reused",
        422,
        "This Idempotency-Key was used for a different request",
    ),
    (
        "invalid-amount",
        422,
        "Amounts are positive integers in minor units",
    ),
    ("invalid-currency", 422, "Currencies are ISO 4217 codes"),
    (
        "currency-mismatch",
        422,
        "The currency differs from the certificate's",
    ),
    (
        "insufficient-funds",
        422,
        "The available balance is lower than the amount",
    ),
    ("capture-exceeds-hold", 422, "A capture cannot exceed its hold"),
    ("hold-expired", 422, "The hold has expired"),
    ("bad-hold-expiry", 422, "The hold lifetime is out of range"),
    ("certificate-expired", 422, "The certificate has expired"),
    ("bad-operation-id", 422, "The operation id is not valid"),
    (
        "operation-id-reused",
        422,
        "The operation id was used for a different request",
    ),
    (
        "too-many-attempts",
        429,
        "Too many failed attempts; try again later",
    ),
    (
        "unavailable",
        503,
        "A dependency is unavailable; retry with the same Idempotency-Key",
    ),
    ("internal", 500, "Unexpected error"),
];

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
}

impl Problem {
    pub fn new(code: &str, detail: impl Into<Option<String>>) -> Self {
        let (code, status, title) = TABLE.iter().find(|(c, _, _)| *c == code).copied().unwrap_or((
            "internal",
            500,
            "Unexpected error",
        ));
        Self {
            kind: format!("/problems/{code}"),
            title,
            status,
            code,
            detail: detail.into(),
            extra: None,
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
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = self
            .extra
            .as_ref()
            .and_then(|e| e.get("retry_after_seconds"))
            .and_then(serde_json::Value::as_u64);
        let mut response = (status, axum::Json(self)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = retry_after {
            if let Ok(v) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
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
        ];
        for e in all {
            let p = Problem::new(e.code(), None);
            assert_eq!(p.code, e.code(), "{e:?} has no entry");
            assert!((400..500).contains(&p.status), "{e:?}");
        }
    }

    #[test]
    fn codes_are_unique() {
        let mut codes: Vec<&str> = TABLE.iter().map(|(c, _, _)| *c).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), TABLE.len());
    }
}
