//! The admin API (`/admin/v1/*`): what the operator console shows and does, through this
//! service's own stores and the same domain path as the channels' API, never around it. Every
//! call needs `Authorization: Bearer <admin.token>` (checked once, for every route, by [`gate`]);
//! a write also names the person behind it in `X-Operator`, recorded in the audit log (or, for a
//! dead-letter replay, sent with each record as `x-replayed-by`). Codes are shown masked and
//! phone numbers by their last two digits; no token, code, CVC or number is logged.

pub mod certificates;
pub mod dead_letters;
pub mod deliveries;
pub mod overview;
pub mod uploads;

use crate::problem::{Problem, ProblemCode};
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use backbone_certificates::store::StoreError;
use std::sync::Arc;
use time::OffsetDateTime;

/// The header naming the person behind a write.
pub const OPERATOR_HEADER: &str = "x-operator";
/// At most this many bytes in `X-Operator`.
pub const MAX_OPERATOR_BYTES: usize = 64;

/// The admin routes, each behind [`gate`]; merged into the service's router.
pub fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin/v1/overview", get(overview::overview))
        .route("/admin/v1/certificates/{code}", get(certificates::certificate))
        .route("/admin/v1/certificates/{code}/cancel", post(certificates::cancel))
        .route("/admin/v1/uploads", get(uploads::uploads))
        .route("/admin/v1/sms", get(deliveries::deliveries))
        .route("/admin/v1/sms/requeue", post(deliveries::requeue))
        .route("/admin/v1/dead-letters", get(dead_letters::list))
        .route("/admin/v1/dead-letters/replay", post(dead_letters::replay))
        .route(
            "/admin/v1/dead-letters/{partition}/{offset}",
            get(dead_letters::letter),
        )
        .route_layer(axum::middleware::from_fn_with_state(state, gate))
}

/// Lets a request through only with the admin token; anything else (no token, a channel's
/// token, a wrong one, or no admin token configured) is `401 unauthenticated`.
async fn gate(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let authorization = super::header(request.headers(), "authorization");
    if !state.admin_token.admits(authorization) {
        return Problem::new(
            ProblemCode::Unauthenticated,
            Some("the admin API needs Authorization: Bearer <admin token>".into()),
        )
        .into_response();
    }
    next.run(request).await
}

/// The person named by `X-Operator`: 1 to [`MAX_OPERATOR_BYTES`] bytes of UTF-8 without control
/// characters, else `400 bad-request` (the value is never quoted back).
pub(crate) fn operator(headers: &HeaderMap) -> Result<String, Problem> {
    use backbone_certificates::ids::check_text;
    headers
        .get(OPERATOR_HEADER)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .filter(|name| check_text(name, MAX_OPERATOR_BYTES).is_ok())
        .map(str::to_owned)
        .ok_or_else(|| {
            Problem::new(
                ProblemCode::BadRequest,
                Some("X-Operator must name the person: 1 to 64 bytes, no control characters".into()),
            )
        })
}

/// A list's `limit` query parameter: `default` when absent, else an integer in `1..=max`
/// (`400 bad-request` otherwise).
pub(crate) fn limit(raw: Option<&str>, default: i64, max: i64) -> Result<i64, Problem> {
    let Some(raw) = raw else {
        return Ok(default);
    };
    raw.parse::<i64>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            Problem::new(
                ProblemCode::BadRequest,
                Some(format!("limit must be an integer in 1..={max}")),
            )
        })
}

/// A store that failed: logged with its cause, answered `503 unavailable`.
pub(crate) fn unavailable(e: StoreError) -> Problem {
    super::apply_error(e.into())
}

/// `at` in UTC, so that every time the admin API answers is RFC 3339 with `Z`.
pub(crate) fn utc(at: OffsetDateTime) -> OffsetDateTime {
    at.to_offset(time::UtcOffset::UTC)
}

/// A phone number as the admin API shows it: only its last two digits are stored.
pub(crate) fn mask_phone(last2: &str) -> String {
    format!("*******{last2}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_operator(value: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            OPERATOR_HEADER,
            HeaderValue::from_bytes(value).expect("a header value"),
        );
        headers
    }

    #[test]
    fn the_operator_is_named_in_bounded_printable_text() {
        assert_eq!(
            operator(&with_operator(b"alice.smith")).ok().as_deref(),
            Some("alice.smith")
        );
        let cyrillic = "Анна Петрова";
        assert_eq!(
            operator(&with_operator(cyrillic.as_bytes())).ok().as_deref(),
            Some(cyrillic)
        );
        assert!(operator(&HeaderMap::new()).is_err());
        assert!(operator(&with_operator(&[b'x'; 65])).is_err());
        assert!(operator(&with_operator(b"tab\there")).is_err());
        assert!(operator(&with_operator(&[0xff, 0xfe])).is_err());
        let refused = operator(&with_operator(b"a\tb")).expect_err("refused");
        assert_eq!((refused.status, refused.code), (400, "bad-request"));
        assert!(!refused.detail.unwrap_or_default().contains("a\tb"));
    }

    #[test]
    fn limits_default_and_stay_in_bounds() {
        assert_eq!(limit(None, 20, 100).ok(), Some(20));
        assert_eq!(limit(Some("1"), 20, 100).ok(), Some(1));
        assert_eq!(limit(Some("100"), 20, 100).ok(), Some(100));
        for bad in ["0", "101", "-1", "ten", "", "1.5"] {
            assert!(limit(Some(bad), 20, 100).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_phone_shows_its_last_two_digits_only() {
        assert_eq!(mask_phone("67"), "*******67");
    }
}
