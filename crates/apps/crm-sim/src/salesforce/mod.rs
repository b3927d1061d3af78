//! Salesforce REST, as our adapter calls it: the OAuth token endpoint, `describe`, upsert by
//! External ID (one record, and sObject Collections) and SOQL queries by External ID.
//!
//! - `POST /services/oauth2/token`: `client_credentials` (any client id, the vendor secret) or
//!   `urn:ietf:params:oauth:grant-type:jwt-bearer` (an RS256 JWT whose `iss`, `sub`, `aud` and
//!   `exp` are checked; its signature is not). `instance_url` is this simulator.
//! - Sessions expire (401 `INVALID_SESSION_ID`); every data answer carries
//!   `Sforce-Limit-Info: api-usage=used/max`.
//! - Upsert: 201 created, 200 (`created: false`; 204 before API 46.0), 300 when several
//!   records match, 404 for a field that is not an External ID, 400 `INVALID_FIELD` for unknown
//!   fields. External ids match case-insensitively. Date-time fields keep milliseconds and read
//!   back as `2026-11-01T10:00:00.000+0000`.
//! - Collections upsert: at most 200 records, `allOrNone`, one result per record in order;
//!   a repeated external id in one request and several matching records are
//!   `DUPLICATE_EXTERNAL_ID`.
//! - Queries: `SELECT f, ... FROM Object [WHERE f IN (...) | WHERE f = '...'] [LIMIT n]`;
//!   anything else is `MALFORMED_QUERY`. One page (`done: true`).
//! - Faults: rate limit 403 `REQUEST_LIMIT_EXCEEDED` (`ConcurrentPerOrgLongTxn Limit
//!   exceeded.`), spent `api_quota` 403 `REQUEST_LIMIT_EXCEEDED` (`TotalRequests Limit
//!   exceeded.`), failures and outages 503 `SERVER_UNAVAILABLE`.
//! - `Contact` and `Task` of the two-way sync, upserted and read by External ID or `Id`:
//!   [`people`].

mod people;
mod query;
mod schema;
mod token;
mod upsert;

pub use schema::SalesforceSchema;

use crate::table::Table;
use crate::{json_response, Dialect, Gate, Refusal, Sim};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, patch, post};
use axum::Router;
use query::query;
use schema::describe;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use token::token;
use upsert::{upsert_collection, upsert_one};

pub const MAX_COLLECTION: usize = 200;
const D: Dialect = Dialect::Salesforce;

pub(crate) fn table(schema: &SalesforceSchema) -> Table {
    Table::new(1, &schema.external_id_field, &schema.event_field, true)
}

/// An 18-character record id.
pub fn record_id(n: u64) -> String {
    format!("a01SIM{n:09}AAA")
}

pub(crate) fn routes() -> Router<Sim> {
    Router::new()
        .route("/services/oauth2/token", post(token))
        .route(
            "/services/data/{version}/sobjects/{sobject}/describe",
            get(describe),
        )
        .route(
            "/services/data/{version}/sobjects/{sobject}/{id}",
            get(people::read_by_id),
        )
        .route(
            "/services/data/{version}/sobjects/{sobject}/{field}/{value}",
            patch(upsert_one).get(people::read_by_external),
        )
        .route(
            "/services/data/{version}/composite/sobjects/{sobject}/{field}",
            patch(upsert_collection),
        )
        .route("/services/data/{version}/query", get(query))
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(
        status,
        "application/json",
        &json!([{"message": message, "errorCode": code, "fields": []}]),
    )
}

fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "The requested resource does not exist",
    )
}

/// Salesforce's own date-time rendering: `2026-11-01T10:00:00.000+0000`.
fn sf_time(t: OffsetDateTime) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]+0000"
    );
    t.to_offset(time::UtcOffset::UTC).format(&fmt).unwrap_or_default()
}

fn parse_time(s: &str) -> Option<OffsetDateTime> {
    let mut s = s.to_owned();
    // `+0000` → `+00:00`
    let n = s.len();
    if n > 5 && matches!(s.as_bytes()[n - 5], b'+' | b'-') && s[n - 4..].bytes().all(|b| b.is_ascii_digit()) {
        s.insert(n - 2, ':');
    }
    OffsetDateTime::parse(&s, &Rfc3339).ok()
}

fn now_value() -> Value {
    Value::from(sf_time(OffsetDateTime::now_utc()))
}

/// `v62.0` → 62.0; versions before 20.0 do not exist.
fn version(v: &str) -> Option<f64> {
    v.strip_prefix('v')?.parse().ok().filter(|v| *v >= 20.0)
}

impl Sim {
    /// Session and faults of one data call; `Err` is the answer to send instead.
    async fn salesforce_admit(&self, headers: &HeaderMap) -> Result<(u64, u64), Response> {
        let valid = crate::bearer(headers).is_some_and(|t| self.lock().grants(D).access_valid(t));
        if !valid {
            self.reject(D);
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "INVALID_SESSION_ID",
                "Session expired or invalid",
            ));
        }
        let Gate {
            refusal,
            retry_after,
            api_usage,
        } = self.gate(D).await;
        let refused = match refusal {
            None => return Ok(api_usage),
            Some(Refusal::RateLimited) => error(
                StatusCode::FORBIDDEN,
                "REQUEST_LIMIT_EXCEEDED",
                "ConcurrentPerOrgLongTxn Limit exceeded.",
            ),
            Some(Refusal::QuotaSpent) => error(
                StatusCode::FORBIDDEN,
                "REQUEST_LIMIT_EXCEEDED",
                "TotalRequests Limit exceeded.",
            ),
            Some(Refusal::Outage | Refusal::Failure) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVER_UNAVAILABLE",
                "The server is temporarily unavailable (simulated).",
            ),
        };
        Err(with_usage(
            crate::with_retry_after(refused, retry_after),
            api_usage,
        ))
    }
}

fn with_usage(mut resp: Response, (used, max): (u64, u64)) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!("api-usage={used}/{max}")) {
        resp.headers_mut().insert("sforce-limit-info", v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_back_in_salesforce_form() {
        let t = parse_time("2026-11-01T10:00:00.123456Z").unwrap();
        assert_eq!(sf_time(t), "2026-11-01T10:00:00.123+0000");
        assert_eq!(
            parse_time("2026-11-01T10:00:00.123+0000"),
            parse_time("2026-11-01T10:00:00.123Z")
        );
        assert_eq!(record_id(42).len(), 18);
    }
}
