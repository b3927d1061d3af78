//! Bitrix24 REST, as our adapter calls it: the universal `crm.item.*` methods and `batch`.
//!
//! - Incoming webhook: `/rest/{user_id}/{code}/{method}[.json]`, the code being the vendor
//!   secret. OAuth: `/rest/{method}[.json]` with `auth` in the body or query, the access token
//!   from `GET /oauth/token/?grant_type=refresh_token&...` (the portal's OAuth server:
//!   point `oauth_url` here too). Refresh tokens rotate and are single use.
//! - Parameters as JSON, as a form, or (inside `batch`) as URL-encoded `fields[name]=value`.
//! - `crm.item.add|update|get|list|fields` keep items of any standard entity type (1-4, 7, 31,
//!   smart processes from 128). Unknown and read-only fields are ignored without an error, as
//!   the portal does. `crm.item.list` filters with `=`, `!`, `@`, `!@`, `>`, `>=`, `<`, `<=`
//!   and `%`, orders by `id`, and pages by 50 (`start`, `next`, `total`).
//! - `batch`: at most 50 commands (`ERROR_BATCH_LENGTH_EXCEEDED`), no nested `batch`, `halt`;
//!   empty maps come back as `[]`, as PHP renders them. `$result[...]` references are not
//!   resolved.
//! - Faults: rate limit 503 `QUERY_LIMIT_EXCEEDED`, failures and outages 500
//!   `INTERNAL_SERVER_ERROR`. A batch counts as one request.
//! - Contacts, to-do activities and timeline comments of the two-way sync: [`people`].
//! - Not simulated: the leaky bucket itself (use `rate_limit_rps`), `OPERATION_TIME_LIMIT`,
//!   stage validation, deprecated `crm.deal.*` methods, events other than those of contacts and
//!   activities ([`crate::webhooks`]).

mod batch;
mod filter;
mod handlers;
mod methods;
mod params;
mod people;

use crate::table::Table;
use crate::{json_response, Dialect, Sim};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use handlers::{oauth_call, token, webhook};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::OffsetDateTime;

pub const MAX_BATCH_COMMANDS: usize = 50;
pub const PAGE_SIZE: usize = 50;
const D: Dialect = Dialect::Bitrix24;
const ORIGIN_ID: &str = "originId";

/// The portal's CRM fields besides the built-in ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Bitrix24Schema {
    /// User fields (strings) that every CRM object type has, e.g. `ufCrmStatusAt`.
    pub user_fields: Vec<String>,
    /// The field read back as the status (`Sim::status_of`).
    pub status_field: String,
    /// The field that carries the event id (for counting repeated writes).
    pub event_field: String,
}

impl Default for Bitrix24Schema {
    fn default() -> Self {
        Self {
            user_fields: vec![
                "ufCrmClientId".into(),
                "ufCrmStatusAt".into(),
                "ufCrmEventId".into(),
            ],
            status_field: "stageId".into(),
            event_field: "ufCrmEventId".into(),
        }
    }
}

pub(crate) fn table(schema: &Bitrix24Schema) -> Table {
    Table::new(1, ORIGIN_ID, &schema.event_field, false)
}

pub(crate) fn routes() -> Router<Sim> {
    Router::new()
        .route("/rest/{user}/{code}/{method}", get(webhook).post(webhook))
        .route("/rest/{method}", get(oauth_call).post(oauth_call))
        .route("/oauth/token/", get(token).post(token))
        .route("/oauth/token", get(token).post(token))
}

/// A refused call: HTTP status, `error` and `error_description`.
struct Fail {
    status: StatusCode,
    code: &'static str,
    description: String,
}

fn fail(status: StatusCode, code: &'static str, description: impl Into<String>) -> Fail {
    Fail {
        status,
        code,
        description: description.into(),
    }
}

impl Fail {
    fn body(&self) -> Value {
        json!({"error": self.code, "error_description": self.description})
    }

    fn response(&self) -> Response {
        json_response(self.status, "application/json", &self.body())
    }
}

/// A method's answer: `result`, and for lists `total` and `next`.
struct Out {
    result: Value,
    total: Option<usize>,
    next: Option<usize>,
}

impl Out {
    fn plain(result: Value) -> Self {
        Self {
            result,
            total: None,
            next: None,
        }
    }
}

fn time_block(started: OffsetDateTime) -> Value {
    let now = OffsetDateTime::now_utc();
    let secs = |t: OffsetDateTime| t.unix_timestamp_nanos() as f64 / 1e9;
    json!({"start": secs(started), "finish": secs(now), "duration": secs(now) - secs(started),
        "processing": secs(now) - secs(started), "date_start": iso(started), "date_finish": iso(now),
        "operating_reset_at": now.unix_timestamp() + 600, "operating": 0})
}

fn iso(t: OffsetDateTime) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]+00:00");
    t.format(&fmt).unwrap_or_default()
}
