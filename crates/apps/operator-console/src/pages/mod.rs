//! The pages: each handler checks the session (and the form's CSRF token), calls one or two
//! admin APIs, records what it did, and renders a template.

use crate::audit::Entry;
use crate::auth::{self, Role, Session, LOGIN_COOKIE, SESSION_COOKIE};
use crate::backends::{enc, BackendError, LetterService};
use crate::chart::{self, BarChart, Column, LineChart};
use crate::views::{self, *};
use crate::Console;
use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde_json::{json, Value};
use std::sync::Arc;
use time::OffsetDateTime;

type Page = Result<Response, Response>;
type St = State<Arc<Console>>;

// ---------------------------------------------------------------------------------------------
// Forms and rendering

/// A form body (`application/x-www-form-urlencoded`), keeping repeated fields.
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn parse(body: &[u8]) -> Self {
        Self(form_urlencoded::parse(body).into_owned().collect())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The field, trimmed, or empty.
    pub fn text(&self, name: &str) -> String {
        self.get(name).unwrap_or_default().trim().to_owned()
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

fn render(t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "template failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "The page could not be drawn.").into_response()
        }
    }
}

fn render_status(status: StatusCode, t: &impl Template) -> Response {
    let mut r = render(t);
    *r.status_mut() = status;
    r
}

/// What the layout needs: who is logged in, what they may do, the form token, the page.
pub struct Nav {
    pub user: String,
    pub role: &'static str,
    pub csrf: String,
    pub current: &'static str,
    pub can_operate: bool,
    pub can_admin: bool,
}

impl Nav {
    /// No one logged in: the layout draws no menu.
    fn anonymous() -> Self {
        Self {
            user: String::new(),
            role: "",
            csrf: String::new(),
            current: "",
            can_operate: false,
            can_admin: false,
        }
    }

    fn of(s: &Session, current: &'static str) -> Self {
        Self {
            user: s.user.clone(),
            role: s.role.as_str(),
            csrf: s.csrf.clone(),
            current,
            can_operate: s.role >= Role::Operator,
            can_admin: s.role >= Role::Admin,
        }
    }
}

fn record(console: &Console, s: &Session, action: &'static str, target: String, outcome: impl Into<String>) {
    console.audit.record(Entry {
        at: OffsetDateTime::now_utc(),
        user: s.user.clone(),
        role: s.role.as_str(),
        action,
        target,
        outcome: outcome.into(),
    });
}

fn outcome_of<T>(r: &Result<T, BackendError>) -> String {
    match r {
        Ok(_) => "ok".to_owned(),
        Err(e) => format!("failed: {e}"),
    }
}

use views::when;

fn hhmm(rfc3339: &str) -> String {
    let f = time::macros::format_description!("[hour]:[minute]");
    OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()
        .and_then(|t| t.to_offset(time::UtcOffset::UTC).format(&f).ok())
        .unwrap_or_default()
}

fn opt_when(v: Option<&String>) -> String {
    v.map_or_else(|| "—".to_owned(), |s| when(s))
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.0} ms"))
}

mod certificates;
mod conflicts;
mod letters;
mod login;
mod overview;
mod tables;
mod trace;

pub use certificates::*;
pub use conflicts::*;
pub use letters::*;
pub use login::*;
pub use overview::*;
pub use tables::*;
pub use trace::*;

// ---------------------------------------------------------------------------------------------
// Pages every section answers with

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    nav: Nav,
    title: String,
    message: String,
}

pub fn forbidden(s: &Session, needed: Role) -> Response {
    render_status(
        StatusCode::FORBIDDEN,
        &MessagePage {
            nav: Nav::of(s, ""),
            title: "Not allowed".into(),
            message: format!(
                "This needs the {} role; you are logged in as {} ({}).",
                needed.as_str(),
                s.user,
                s.role.as_str()
            ),
        },
    )
}

/// A form without this session's token, or from another origin.
pub fn refused_form(s: &Session) -> Response {
    message(
        s,
        "",
        "Form refused",
        "The form has expired or came from another site. Reload the page and try again.",
        StatusCode::FORBIDDEN,
    )
}

pub async fn not_found(State(c): St, headers: HeaderMap) -> Response {
    render_status(
        StatusCode::NOT_FOUND,
        &MessagePage {
            nav: c
                .session(&headers)
                .map_or_else(Nav::anonymous, |(_, s)| Nav::of(&s, "")),
            title: "Not found".into(),
            message: "There is no such page.".into(),
        },
    )
}

pub async fn ready() -> &'static str {
    "ready"
}

pub async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../../static/console.css"),
    )
        .into_response()
}

fn status_of(e: &BackendError) -> StatusCode {
    match e.status {
        Some(404) => StatusCode::NOT_FOUND,
        Some(s) if (400..500).contains(&s) => StatusCode::BAD_REQUEST,
        _ => StatusCode::BAD_GATEWAY,
    }
}

fn message(s: &Session, current: &'static str, title: &str, text: &str, status: StatusCode) -> Response {
    render_status(
        status,
        &MessagePage {
            nav: Nav::of(s, current),
            title: title.to_owned(),
            message: text.to_owned(),
        },
    )
}

#[derive(serde::Deserialize)]
pub struct StateQuery {
    state: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::certificates::{masked, money};
    use super::letters::{as_rfc3339, positions};
    use super::*;

    #[test]
    fn forms_keep_repeated_fields_and_positions_parse() {
        let f = Form::parse(b"csrf=abc&letter=0%3A5&letter=2:17&letter=bad&confirm=yes");
        assert_eq!(f.get("csrf"), Some("abc"));
        assert_eq!(positions(&f), [(0, 5), (2, 17)]);
        assert_eq!(f.text("missing"), "");
    }

    #[test]
    fn times_and_amounts_read_well() {
        assert_eq!(when("2026-11-01T10:00:05.123456Z"), "2026-11-01 10:00:05 UTC");
        assert_eq!(when("not a time"), "not a time");
        assert_eq!(
            as_rfc3339("2026-11-01T10:00").as_deref(),
            Some("2026-11-01T10:00:00Z")
        );
        assert_eq!(as_rfc3339(" "), None);
        assert_eq!(money(123_456, "RUB"), "1234.56 RUB");
        assert_eq!(money(-5, "RUB"), "-0.05 RUB");
        assert_eq!(masked("GC-ABCD-EFGH-1234"), "****1234");
    }
}
