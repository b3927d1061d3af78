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

// ---------------------------------------------------------------------------------------------
// Login

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    csrf: String,
    error: Option<String>,
    sso: bool,
}

pub async fn login_page(State(c): St, headers: HeaderMap) -> Response {
    if c.session(&headers).is_some() {
        return Redirect::to("/").into_response();
    }
    login_form(&c, None, StatusCode::OK)
}

fn login_form(c: &Console, error: Option<String>, status: StatusCode) -> Response {
    let csrf = auth::random_token();
    let cookie = auth::set_cookie(
        LOGIN_COOKIE,
        &csrf,
        Some(std::time::Duration::from_secs(3600)),
        c.secure_cookies,
    );
    let sso = c.oidc.is_some();
    let mut r = render_status(status, &LoginPage { csrf, error, sso });
    if let Ok(v) = cookie.parse() {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

pub async fn login(State(c): St, headers: HeaderMap, body: Bytes) -> Response {
    let form = Form::parse(&body);
    let cookies = headers.get(header::COOKIE).and_then(|v| v.to_str().ok());
    let expected = auth::cookie(cookies, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !auth::same(form.get("csrf").unwrap_or_default(), expected) {
        return login_form(
            &c,
            Some("The login form expired. Please try again.".into()),
            StatusCode::FORBIDDEN,
        );
    }
    let name = form.text("user");
    let refused =
        |c: &Console, status: StatusCode, message: &str| login_form(c, Some(message.into()), status);
    if !auth::valid_name(&name) {
        return refused(&c, StatusCode::UNAUTHORIZED, "Wrong user name or password.");
    }
    if c.accounts.may_try(&name).is_err() {
        tracing::warn!(user = %name, "login throttled");
        return refused(
            &c,
            StatusCode::TOO_MANY_REQUESTS,
            "Too many login attempts for this user. Wait a minute and try again.",
        );
    }
    match c
        .accounts
        .login(&name, form.get("password").unwrap_or_default())
        .await
    {
        Ok((id, session)) => {
            record(&c, &session, "login", String::new(), "ok");
            let mut r = Redirect::to("/").into_response();
            let set = [
                auth::set_cookie(SESSION_COOKIE, &id, Some(c.session_ttl), c.secure_cookies),
                auth::set_cookie(LOGIN_COOKIE, "", None, c.secure_cookies),
            ];
            for v in set.iter().filter_map(|v| v.parse().ok()) {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
            r
        }
        Err(_) => {
            tracing::warn!(user = %name, "login refused");
            refused(&c, StatusCode::UNAUTHORIZED, "Wrong user name or password.")
        }
    }
}

/// Starts a single sign-on: to the provider, with the login's `state` bound to this browser.
pub async fn oidc_start(State(c): St) -> Response {
    let Some(oidc) = c.oidc.as_ref() else {
        return Redirect::to("/login").into_response();
    };
    match oidc.start().await {
        Ok((url, state)) => {
            let mut r = Redirect::to(&url).into_response();
            // Lax: the provider's redirect back is a cross-site navigation, which a Strict
            // cookie would not join.
            let cookie = auth::set_cookie(
                crate::oidc::STATE_COOKIE,
                &state,
                Some(crate::oidc::PENDING_FOR),
                c.secure_cookies,
            )
            .replace("SameSite=Strict", "SameSite=Lax");
            if let Ok(v) = cookie.parse() {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
            r
        }
        Err(e) => {
            tracing::warn!(error = %e, "single sign-on could not start");
            login_form(
                &c,
                Some("Single sign-on is unavailable. Try again later.".into()),
                StatusCode::BAD_GATEWAY,
            )
        }
    }
}

#[derive(serde::Deserialize)]
pub struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "continue.html")]
struct ContinuePage {}

/// The provider's redirect back: the browser's `state` must be the query's, and the code must
/// give a valid ID token of a person with a role.
pub async fn oidc_callback(State(c): St, headers: HeaderMap, Query(q): Query<Callback>) -> Response {
    let Some(oidc) = c.oidc.as_ref() else {
        return Redirect::to("/login").into_response();
    };
    let cookies = headers.get(header::COOKIE).and_then(|v| v.to_str().ok());
    let bound = auth::cookie(cookies, crate::oidc::STATE_COOKIE).unwrap_or_default();
    let refused = |c: &Console, why: &str| {
        tracing::warn!(reason = why, "single sign-on refused");
        login_form(
            c,
            Some("Single sign-on failed. Try again.".into()),
            StatusCode::UNAUTHORIZED,
        )
    };
    if let Some(e) = q.error {
        return refused(&c, &format!("the provider answered {e}"));
    }
    let (Some(code), Some(state)) = (q.code, q.state) else {
        return refused(&c, "no code or state");
    };
    if bound.is_empty() || !auth::same(bound, &state) {
        return refused(&c, "the state is not this browser's");
    }
    match oidc.finish(&state, &code).await {
        Ok((name, role)) => {
            let (id, session) = c.accounts.open(&name, role);
            record(&c, &session, "login", "single sign-on".into(), "ok");
            // A page, not a redirect: the session cookie is SameSite=Strict, and a redirect
            // still within the provider's cross-site navigation would not send it.
            let mut r = render(&ContinuePage {});
            let set = [
                auth::set_cookie(SESSION_COOKIE, &id, Some(c.session_ttl), c.secure_cookies),
                auth::set_cookie(crate::oidc::STATE_COOKIE, "", None, c.secure_cookies),
            ];
            for v in set.iter().filter_map(|v| v.parse().ok()) {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
            r
        }
        Err(e) => refused(&c, &e.to_string()),
    }
}

pub async fn logout(State(c): St, headers: HeaderMap, body: Bytes) -> Response {
    let form = Form::parse(&body);
    if let Ok(s) = c.require_form(&headers, &form, Role::Viewer) {
        if let Some((id, _)) = c.session(&headers) {
            c.accounts.logout(&id);
        }
        record(&c, &s, "logout", String::new(), "ok");
    }
    let mut r = Redirect::to("/login").into_response();
    if let Ok(v) = auth::set_cookie(SESSION_COOKIE, "", None, c.secure_cookies).parse() {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

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
        include_str!("../static/console.css"),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Overview

struct Figure {
    label: &'static str,
    value: String,
    /// `ok`, `warn` or `bad`: how it reads at a glance.
    tone: &'static str,
}

/// `warn` when `over`, else `ok`.
fn warn_if(over: bool) -> &'static str {
    if over {
        "warn"
    } else {
        "ok"
    }
}

/// `bad` when `over`, else `ok`.
fn bad_if(over: bool) -> &'static str {
    if over {
        "bad"
    } else {
        "ok"
    }
}

fn figure(label: &'static str, value: impl Into<String>, tone: &'static str) -> Figure {
    Figure {
        label,
        value: value.into(),
        tone,
    }
}

struct CrmCard {
    vendor: String,
    figures: Vec<Figure>,
    reasons: Vec<(String, u64)>,
    attempts: BarChart,
    lag: LineChart,
}

struct GiftCard {
    figures: Vec<Figure>,
    states: Vec<(String, u64)>,
    operations: BarChart,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    nav: Nav,
    hours: u32,
    crm: Option<CrmCard>,
    crm_error: Option<String>,
    gift: Option<GiftCard>,
    gift_error: Option<String>,
    services: Vec<(&'static str, bool)>,
}

fn crm_card(o: CrmOverview) -> CrmCard {
    let ratio = o.window.success_ratio;
    let dead: u64 = o.window.dead_letters_by_reason.values().sum();
    let figures = vec![
        figure(
            "Success ratio",
            ratio.map_or_else(|| "—".to_owned(), |r| format!("{:.1} %", r * 100.0)),
            match ratio {
                Some(r) if r < 0.95 => "bad",
                Some(r) if r < 0.99 => "warn",
                _ => "ok",
            },
        ),
        figure("Lag p50", ms(o.window.lag_p50_ms), "ok"),
        figure(
            "Lag p99",
            ms(o.window.lag_p99_ms),
            warn_if(o.window.lag_p99_ms.unwrap_or(0.0) > 5000.0),
        ),
        figure(
            "Retry queue",
            o.now.retry_queue_depth.to_string(),
            warn_if(o.now.retry_queue_depth > 0),
        ),
        figure("Dead letters", dead.to_string(), bad_if(dead > 0)),
        figure(
            "Breaker",
            if o.now.crm_paused {
                format!("{} (vendor paused)", o.now.breaker)
            } else {
                o.now.breaker.clone()
            },
            bad_if(o.now.breaker != "closed" || o.now.crm_paused),
        ),
        figure(
            "Consumer lag",
            o.now.consumer_lag.to_string(),
            warn_if(o.now.consumer_lag > 10_000),
        ),
        figure(
            "Outbox backlog",
            o.now
                .outbox_depth
                .map_or_else(|| "—".to_owned(), |d| d.to_string()),
            warn_if(o.now.outbox_depth.unwrap_or(0) > 1000),
        ),
    ];
    let columns: Vec<Column> = o
        .series
        .buckets
        .iter()
        .map(|b| Column {
            label: hhmm(&b.start),
            values: vec![b.success, b.skipped, b.retry_scheduled, b.dead_lettered],
        })
        .collect();
    let lags: Vec<Option<f64>> = o.series.buckets.iter().map(|b| b.lag_p99_ms).collect();
    CrmCard {
        vendor: o.vendor,
        figures,
        reasons: o.window.dead_letters_by_reason.into_iter().collect(),
        attempts: chart::bars(
            "CRM attempts",
            &[
                ("synced", "s-ok"),
                ("skipped", "s-skip"),
                ("retried", "s-warn"),
                ("dead-lettered", "s-bad"),
            ],
            &columns,
        ),
        lag: chart::line("Event-to-CRM lag p99", "ms", &lags),
    }
}

fn gift_card(o: GiftOverview) -> GiftCard {
    let figures = vec![
        figure(
            "Outbox pending",
            o.outbox.pending.to_string(),
            warn_if(o.outbox.pending > 1000),
        ),
        figure(
            "Outbox parked",
            o.outbox.parked.to_string(),
            bad_if(o.outbox.parked > 0),
        ),
        figure(
            "Oldest pending",
            o.outbox
                .oldest_pending_age_seconds
                .map_or_else(|| "—".to_owned(), |s| format!("{s:.0} s")),
            warn_if(o.outbox.oldest_pending_age_seconds.unwrap_or(0.0) > 60.0),
        ),
        figure("SMS queued", o.sms.pending.to_string(), "ok"),
        figure("SMS failed", o.sms.failed.to_string(), bad_if(o.sms.failed > 0)),
        figure("Uploads open", o.uploads.open.to_string(), "ok"),
    ];
    let columns: Vec<Column> = o
        .series
        .buckets
        .iter()
        .map(|b| Column {
            label: hhmm(&b.start),
            values: vec![b.operations, b.refused],
        })
        .collect();
    GiftCard {
        figures,
        states: o.certificates_by_state.into_iter().collect(),
        operations: chart::bars(
            "Certificate operations",
            &[("applied", "s-ok"), ("refused", "s-bad")],
            &columns,
        ),
    }
}

#[derive(serde::Deserialize)]
pub struct Hours {
    hours: Option<u32>,
}

pub async fn overview(State(c): St, headers: HeaderMap, Query(q): Query<Hours>) -> Page {
    let s = c.require(&headers, Role::Viewer)?;
    let hours = q.hours.filter(|h| (1..=48).contains(h)).unwrap_or(6);
    let (crm, gift, services) = tokio::join!(
        c.backends.crm_overview::<CrmOverview>(hours),
        c.backends.gift_overview::<GiftOverview>(),
        c.backends.ready()
    );
    Ok(render(&OverviewPage {
        nav: Nav::of(&s, "overview"),
        hours,
        crm_error: crm.as_ref().err().map(ToString::to_string),
        crm: crm.ok().map(crm_card),
        gift_error: gift.as_ref().err().map(ToString::to_string),
        gift: gift.ok().map(gift_card),
        services,
    }))
}

// ---------------------------------------------------------------------------------------------
// Dead letters

#[derive(serde::Deserialize, Default)]
pub struct LetterFilter {
    /// `crm-sync` (the default) or `gift-certificates`.
    #[serde(default)]
    service: LetterService,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    event_id: String,
    /// `datetime-local` values, read as UTC.
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
}

/// A `datetime-local` value (`2026-11-01T10:00`) as RFC 3339 UTC; RFC 3339 passes as it is.
fn as_rfc3339(v: &str) -> Option<String> {
    let v = v.trim();
    if v.is_empty() {
        return None;
    }
    if OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339).is_ok() {
        return Some(v.to_owned());
    }
    let with_seconds = if v.len() == 16 {
        format!("{v}:00")
    } else {
        v.to_owned()
    };
    Some(format!("{with_seconds}Z"))
}

impl LetterFilter {
    fn query(&self) -> String {
        let mut q = vec!["limit=200".to_owned()];
        for (k, v) in [
            ("reason", Some(self.reason.trim().to_owned())),
            ("event_id", Some(self.event_id.trim().to_owned())),
            ("since", as_rfc3339(&self.since)),
            ("until", as_rfc3339(&self.until)),
        ] {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                q.push(format!("{k}={}", enc(&v)));
            }
        }
        q.join("&")
    }
}

struct LetterRow {
    position: String,
    partition: i32,
    offset: i64,
    at: String,
    event_id: String,
    reason_code: String,
    reason: String,
    replay_count: u32,
}

fn letter_row(l: &LetterSummary) -> LetterRow {
    LetterRow {
        position: format!("{}:{}", l.partition, l.offset),
        partition: l.partition,
        offset: l.offset,
        at: opt_when(l.dead_lettered_at.as_ref()),
        event_id: l.event_id.clone().unwrap_or_else(|| "—".into()),
        reason_code: l.reason_code.clone().unwrap_or_else(|| "—".into()),
        reason: l.reason.clone().unwrap_or_default(),
        replay_count: l.replay_count,
    }
}

#[derive(Template)]
#[template(path = "dead_letters.html")]
struct DeadLettersPage {
    nav: Nav,
    service: &'static str,
    reason: String,
    event_id: String,
    since: String,
    until: String,
    letters: Vec<LetterRow>,
    truncated: bool,
    error: Option<String>,
}

pub async fn dead_letters(State(c): St, headers: HeaderMap, Query(f): Query<LetterFilter>) -> Page {
    let s = c.require(&headers, Role::Viewer)?;
    let found = c.backends.dead_letters::<LetterList>(f.service, &f.query()).await;
    let (letters, truncated, error) = match found {
        Ok(l) => (l.letters.iter().map(letter_row).collect(), l.truncated, None),
        Err(e) => (Vec::new(), false, Some(e.to_string())),
    };
    Ok(render(&DeadLettersPage {
        nav: Nav::of(&s, "dead-letters"),
        service: f.service.as_str(),
        reason: f.reason,
        event_id: f.event_id,
        since: f.since,
        until: f.until,
        letters,
        truncated,
        error,
    }))
}

#[derive(Template)]
#[template(path = "dead_letter.html")]
struct DeadLetterPage {
    nav: Nav,
    service: &'static str,
    letter: LetterRow,
    source_topic: String,
    key: String,
    headers: Vec<(String, String)>,
    payload: String,
    payload_bytes: usize,
}

#[derive(serde::Deserialize, Default)]
pub struct ServiceQuery {
    #[serde(default)]
    service: LetterService,
}

pub async fn dead_letter(
    State(c): St,
    headers: HeaderMap,
    Path((partition, offset)): Path<(i32, i64)>,
    Query(q): Query<ServiceQuery>,
) -> Page {
    let s = c.require(&headers, Role::Viewer)?;
    match c
        .backends
        .dead_letter::<Letter>(q.service, partition, offset)
        .await
    {
        Ok(l) => Ok(render(&DeadLetterPage {
            nav: Nav::of(&s, "dead-letters"),
            service: q.service.as_str(),
            letter: letter_row(&l.summary),
            source_topic: l.summary.source_topic.clone().unwrap_or_else(|| "—".into()),
            key: l.key.clone().unwrap_or_else(|| "—".into()),
            headers: l.headers.into_iter().collect(),
            payload: serde_json::to_string_pretty(&l.payload).unwrap_or_default(),
            payload_bytes: l.payload_bytes,
        })),
        Err(e) => Ok(message(
            &s,
            "dead-letters",
            "Dead letter",
            &e.to_string(),
            status_of(&e),
        )),
    }
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

struct PlannedRow {
    position: String,
    event_id: String,
    reason_code: String,
    target_topic: String,
    replay_count: u32,
    refused: String,
}

#[derive(Template)]
#[template(path = "replay.html")]
struct ReplayPage {
    nav: Nav,
    service: &'static str,
    dry_run: bool,
    matched: usize,
    replayed: usize,
    refused: usize,
    rows: Vec<PlannedRow>,
    positions: Vec<String>,
}

fn positions(form: &Form) -> Vec<(i32, i64)> {
    form.all("letter")
        .iter()
        .filter_map(|p| {
            let (a, b) = p.split_once(':')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

pub async fn replay(State(c): St, headers: HeaderMap, body: Bytes) -> Page {
    let form = Form::parse(&body);
    let s = c.require_form(&headers, &form, Role::Operator)?;
    let chosen = positions(&form);
    if chosen.is_empty() {
        return Ok(message(
            &s,
            "dead-letters",
            "Replay",
            "Choose at least one letter to replay.",
            StatusCode::BAD_REQUEST,
        ));
    }
    let dry_run = form.get("confirm") != Some("yes");
    let Some(service) = LetterService::parse(form.get("service").unwrap_or("crm-sync")) else {
        return Ok(message(
            &s,
            "dead-letters",
            "Replay",
            "No such service.",
            StatusCode::BAD_REQUEST,
        ));
    };
    let letters: Vec<Value> = chosen
        .iter()
        .map(|(p, o)| json!({"partition": p, "offset": o}))
        .collect();
    let body = json!({"letters": letters, "dry_run": dry_run});
    let result = c.backends.replay::<ReplaySummary>(service, &body, &s.user).await;
    let target = format!(
        "{} {}",
        service.as_str(),
        chosen
            .iter()
            .map(|(p, o)| format!("{p}:{o}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let outcome = match &result {
        Ok(r) if r.dry_run => format!("dry run: {} matched", r.matched),
        Ok(r) => format!("{} replayed, {} refused", r.replayed, r.refused),
        Err(_) => outcome_of(&result),
    };
    record(&c, &s, "dead_letters.replay", target, outcome);
    match result {
        Ok(r) => Ok(render(&ReplayPage {
            nav: Nav::of(&s, "dead-letters"),
            service: service.as_str(),
            dry_run: r.dry_run,
            matched: r.matched,
            replayed: r.replayed,
            refused: r.refused,
            positions: r
                .letters
                .iter()
                .filter(|l| l.refused.is_none())
                .map(|l| format!("{}:{}", l.partition, l.offset))
                .collect(),
            rows: r
                .letters
                .into_iter()
                .map(|l| PlannedRow {
                    position: format!("{}:{}", l.partition, l.offset),
                    event_id: l.event_id.unwrap_or_else(|| "—".into()),
                    reason_code: l.reason_code.unwrap_or_else(|| "—".into()),
                    target_topic: l.target_topic,
                    replay_count: l.replay_count,
                    refused: l.refused.unwrap_or_default(),
                })
                .collect(),
        })),
        Err(e) => Ok(message(
            &s,
            "dead-letters",
            "Replay",
            &e.to_string(),
            status_of(&e),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Trace

#[derive(serde::Deserialize, Default)]
pub struct TraceQuery {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
}

struct Step {
    at: String,
    what: String,
    tone: &'static str,
    detail: String,
}

struct Timeline {
    event_id: String,
    outcome: String,
    replay_count: u32,
    where_from: String,
    shipment_id: String,
    request_id: String,
    steps: Vec<Step>,
}

fn timeline(t: Trace) -> Timeline {
    let first = t.attempts.first();
    let where_from = first.and_then(|a| a.source.as_ref()).map_or_else(
        || "—".to_owned(),
        |s| format!("{} / partition {} / offset {}", s.topic, s.partition, s.offset),
    );
    let shipment_id = first
        .and_then(|a| a.shipment_id.clone())
        .unwrap_or_else(|| "—".into());
    let request_id = first
        .and_then(|a| a.correlation_id.clone())
        .unwrap_or_else(|| "—".into());
    let mut steps: Vec<Step> = Vec::new();
    let mut dead_before = false;
    for a in &t.attempts {
        if dead_before {
            steps.push(Step {
                at: when(&a.sent_at),
                what: "replayed from the dead letters".into(),
                tone: "info",
                detail: String::new(),
            });
        }
        let mut detail = Vec::new();
        if let Some(s) = a.http_status {
            detail.push(format!("CRM {s}"));
        }
        if let Some(e) = &a.error {
            detail.push(e.clone());
        }
        if let Some(x) = a.response_excerpt.as_ref().filter(|x| !x.is_empty()) {
            detail.push(format!("answer: {x}"));
        }
        if let Some(l) = a.latency_ms {
            detail.push(format!("{l:.0} ms"));
        }
        steps.push(Step {
            at: when(&a.sent_at),
            what: format!("attempt {}: {}", a.attempt, a.outcome.replace('_', " ")),
            tone: match a.outcome.as_str() {
                "success" | "unchanged" | "duplicate" | "stale" => "ok",
                "retry_scheduled" => "warn",
                _ => "bad",
            },
            detail: detail.join(" · "),
        });
        dead_before = a.outcome == "dead_lettered";
    }
    if let Some(r) = &t.retry {
        steps.push(Step {
            at: when(&r.next_attempt_at),
            what: format!("next attempt due (attempt {} failed)", r.attempts),
            tone: "warn",
            detail: r.last_error.clone(),
        });
    }
    Timeline {
        event_id: t.event_id,
        outcome: t.outcome.unwrap_or_else(|| "—".into()).replace('_', " "),
        replay_count: t.replay_count,
        where_from,
        shipment_id,
        request_id,
        steps,
    }
}

#[derive(Template)]
#[template(path = "trace.html")]
struct TracePage {
    nav: Nav,
    key: String,
    value: String,
    searched: bool,
    timelines: Vec<Timeline>,
    error: Option<String>,
}

const TRACE_KEYS: [&str; 4] = ["event_id", "shipment_id", "client_id", "request_id"];

pub async fn trace(State(c): St, headers: HeaderMap, Query(q): Query<TraceQuery>) -> Page {
    let s = c.require(&headers, Role::Viewer)?;
    let key = if TRACE_KEYS.contains(&q.key.as_str()) {
        q.key
    } else {
        "event_id".to_owned()
    };
    let value = q.value.trim().to_owned();
    let (timelines, error) = if value.is_empty() {
        (Vec::new(), None)
    } else {
        match c.backends.trace::<Found>(&key, &value).await {
            Ok(f) => (f.events.into_iter().map(timeline).collect(), None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        }
    };
    Ok(render(&TracePage {
        nav: Nav::of(&s, "trace"),
        searched: !value.is_empty(),
        key,
        value,
        timelines,
        error,
    }))
}

// ---------------------------------------------------------------------------------------------
// Conflicts

struct TaskRow {
    id: i64,
    client_id: String,
    field: String,
    ours: String,
    theirs: String,
    created_at: String,
    state: String,
}

fn task_row(t: &Task) -> TaskRow {
    TaskRow {
        id: t.id,
        client_id: t.client_id.clone(),
        field: t.field.clone(),
        ours: views::cell(&t.ours),
        theirs: views::cell(&t.theirs),
        created_at: when(&t.created_at),
        state: t.state.clone(),
    }
}

#[derive(Template)]
#[template(path = "conflicts.html")]
struct ConflictsPage {
    nav: Nav,
    state: String,
    enabled: bool,
    tasks: Vec<TaskRow>,
    error: Option<String>,
}

#[derive(serde::Deserialize)]
pub struct StateQuery {
    state: Option<String>,
}

pub async fn conflicts(State(c): St, headers: HeaderMap, Query(q): Query<StateQuery>) -> Page {
    let s = c.require(&headers, Role::Viewer)?;
    let state = match q.state.as_deref() {
        Some("resolved") => "resolved",
        _ => "open",
    };
    let enabled = c.backends.has_two_way();
    let (tasks, error) = if enabled {
        match c.backends.tasks::<TaskList>(state).await {
            Ok(l) => (l.tasks.iter().map(task_row).collect(), None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        }
    } else {
        (Vec::new(), None)
    };
    Ok(render(&ConflictsPage {
        nav: Nav::of(&s, "conflicts"),
        state: state.to_owned(),
        enabled,
        tasks,
        error,
    }))
}

#[derive(Template)]
#[template(path = "conflict.html")]
struct ConflictPage {
    nav: Nav,
    task: TaskRow,
    reason: String,
    ours_at: String,
    ours_source: String,
    theirs_at: String,
    theirs_source: String,
    resolution: String,
    resolved_by: String,
    resolved_at: String,
    open: bool,
    flag: bool,
    idempotency_key: String,
    notice: Option<String>,
}

async fn conflict_page(c: &Console, s: &Session, id: i64, notice: Option<String>) -> Response {
    match c.backends.task::<Task>(id).await {
        Ok(t) => render(&ConflictPage {
            nav: Nav::of(s, "conflicts"),
            reason: t.reason.clone(),
            ours_at: opt_when(t.ours_at.as_ref()),
            ours_source: t.ours_source.clone().unwrap_or_else(|| "—".into()),
            theirs_at: opt_when(t.theirs_at.as_ref()),
            theirs_source: t.theirs_source.clone(),
            resolution: t.resolution.as_ref().map_or_else(|| "—".to_owned(), views::cell),
            resolved_by: t.resolved_by.clone().unwrap_or_else(|| "—".into()),
            resolved_at: opt_when(t.resolved_at.as_ref()),
            open: t.state == "open",
            flag: t.ours.is_boolean() || t.theirs.is_boolean(),
            idempotency_key: uuid::Uuid::new_v4().to_string(),
            task: task_row(&t),
            notice,
        }),
        Err(e) => message(s, "conflicts", "Conflict", &e.to_string(), status_of(&e)),
    }
}

pub async fn conflict(State(c): St, headers: HeaderMap, Path(id): Path<i64>) -> Page {
    let s = c.require(&headers, Role::Viewer)?;
    Ok(conflict_page(&c, &s, id, None).await)
}

pub async fn resolve(State(c): St, headers: HeaderMap, Path(id): Path<i64>, body: Bytes) -> Page {
    let form = Form::parse(&body);
    let s = c.require_form(&headers, &form, Role::Operator)?;
    let choice = form.text("choice");
    let mut request = json!({"choice": choice, "by": s.user});
    if choice == "value" {
        let raw = form.text("value");
        request["value"] = match (form.get("flag"), raw.as_str()) {
            (_, "") => Value::Null,
            (Some("1"), "true" | "yes") => Value::Bool(true),
            (Some("1"), "false" | "no") => Value::Bool(false),
            _ => Value::String(raw),
        };
    }
    let key = form.text("idempotency_key");
    let key = if key.is_empty() {
        uuid::Uuid::new_v4().to_string()
    } else {
        key
    };
    let result = c.backends.resolve::<Task>(id, &request, &key).await;
    record(
        &c,
        &s,
        "conflict.resolve",
        format!("task {id}: {choice}"),
        outcome_of(&result),
    );
    match result {
        Ok(_) => Ok(Redirect::to(&format!("/conflicts/{id}")).into_response()),
        Err(e) => Ok(conflict_page(&c, &s, id, Some(e.to_string())).await),
    }
}

// ---------------------------------------------------------------------------------------------
// Certificates

struct CertificateView {
    code_masked: String,
    state: String,
    balance: String,
    available: String,
    expires_at: String,
    holds: (Vec<String>, Vec<Vec<String>>),
    history: (Vec<String>, Vec<Vec<String>>),
    audit: (Vec<String>, Vec<Vec<String>>),
    cancellable: bool,
}

fn money(minor: i64, currency: &str) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    format!("{sign}{}.{:02} {currency}", minor.abs() / 100, minor.abs() % 100)
}

fn certificate_view(cert: Certificate) -> CertificateView {
    CertificateView {
        cancellable: !matches!(
            cert.state.to_ascii_lowercase().as_str(),
            "cancelled" | "redeemed" | "expired"
        ),
        balance: money(cert.balance_minor, &cert.currency),
        available: money(cert.available_minor, &cert.currency),
        expires_at: opt_when(cert.expires_at.as_ref()),
        holds: views::table(&cert.holds),
        history: views::table(&cert.history),
        audit: views::table(&cert.audit),
        code_masked: cert.code_masked,
        state: cert.state,
    }
}

#[derive(Template)]
#[template(path = "certificate.html")]
struct CertificatePage {
    nav: Nav,
    cert: Option<CertificateView>,
    /// The code as typed, carried in the cancel form only (never in a URL).
    code: String,
    error: Option<String>,
    notice: Option<String>,
}

pub async fn certificate_search(State(c): St, headers: HeaderMap) -> Page {
    let s = c.require(&headers, Role::Viewer)?;
    Ok(render(&CertificatePage {
        nav: Nav::of(&s, "certificates"),
        cert: None,
        code: String::new(),
        error: None,
        notice: None,
    }))
}

/// The last four characters, for the audit of an action on a code.
fn masked(code: &str) -> String {
    let tail: String = code
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("****{tail}")
}

async fn certificate_page(c: &Console, s: &Session, code: String, notice: Option<String>) -> Response {
    let found = c.backends.certificate::<Certificate>(&code).await;
    let (cert, error) = match found {
        Ok(cert) => (Some(certificate_view(cert)), None),
        Err(e) if e.status == Some(404) => (None, Some("No certificate with this code.".to_owned())),
        Err(e) => (None, Some(e.to_string())),
    };
    render(&CertificatePage {
        nav: Nav::of(s, "certificates"),
        code: if cert.is_some() { code } else { String::new() },
        cert,
        error,
        notice,
    })
}

pub async fn certificate(State(c): St, headers: HeaderMap, body: Bytes) -> Page {
    let form = Form::parse(&body);
    let s = c.require_form(&headers, &form, Role::Viewer)?;
    let code = form.text("code");
    if code.is_empty() {
        return certificate_search(State(c), headers).await;
    }
    record(&c, &s, "certificate.lookup", masked(&code), "ok");
    Ok(certificate_page(&c, &s, code, None).await)
}

pub async fn cancel(State(c): St, headers: HeaderMap, body: Bytes) -> Page {
    let form = Form::parse(&body);
    let s = c.require_form(&headers, &form, Role::Admin)?;
    let (code, reason) = (form.text("code"), form.text("reason"));
    if reason.is_empty() || reason.chars().count() > 200 {
        return Ok(
            certificate_page(&c, &s, code, Some("Give a reason of 1 to 200 characters.".into())).await,
        );
    }
    let result = c.backends.cancel::<Certificate>(&code, &reason, &s.user).await;
    record(&c, &s, "certificate.cancel", masked(&code), outcome_of(&result));
    let notice = match result {
        Ok(_) => "Cancelled.".to_owned(),
        Err(e) => e.to_string(),
    };
    Ok(certificate_page(&c, &s, code, Some(notice)).await)
}

// ---------------------------------------------------------------------------------------------
// Uploads, SMS, activity

#[derive(Template)]
#[template(path = "table.html")]
struct TablePage {
    nav: Nav,
    title: String,
    intro: String,
    columns: Vec<String>,
    rows: Vec<Vec<String>>,
    error: Option<String>,
    notice: Option<String>,
    requeue: bool,
}

pub async fn uploads(State(c): St, headers: HeaderMap) -> Page {
    let s = c.require(&headers, Role::Viewer)?;
    let (columns, rows, error) = match c.backends.uploads::<Uploads>().await {
        Ok(u) => {
            let (cols, rows) = views::table(&u.uploads);
            (cols, rows, None)
        }
        Err(e) => (Vec::new(), Vec::new(), Some(e.to_string())),
    };
    Ok(render(&TablePage {
        nav: Nav::of(&s, "uploads"),
        title: "Batch uploads".into(),
        intro: "The latest batches of pre-generated certificate codes, newest first.".into(),
        columns,
        rows,
        error,
        notice: None,
        requeue: false,
    }))
}

async fn sms_page(c: &Console, s: &Session, state: &str, notice: Option<String>) -> Response {
    let (columns, rows, error) = match c.backends.sms::<SmsList>(state).await {
        Ok(l) => {
            let (cols, rows) = views::table(&l.deliveries);
            (cols, rows, None)
        }
        Err(e) => (Vec::new(), Vec::new(), Some(e.to_string())),
    };
    render(&TablePage {
        nav: Nav::of(s, "sms"),
        title: format!("SMS deliveries: {state}"),
        intro: "CVC deliveries by SMS; certificate codes and phone numbers are masked.".into(),
        columns,
        rows,
        error,
        notice,
        requeue: state == "failed" && s.role >= Role::Operator,
    })
}

pub async fn sms(State(c): St, headers: HeaderMap, Query(q): Query<StateQuery>) -> Page {
    let s = c.require(&headers, Role::Viewer)?;
    let state = if q.state.as_deref() == Some("pending") {
        "pending"
    } else {
        "failed"
    };
    Ok(sms_page(&c, &s, state, None).await)
}

pub async fn sms_requeue(State(c): St, headers: HeaderMap, body: Bytes) -> Page {
    let form = Form::parse(&body);
    let s = c.require_form(&headers, &form, Role::Operator)?;
    let dry_run = form.get("confirm") != Some("yes");
    let result = c.backends.sms_requeue::<Requeued>(dry_run, &s.user).await;
    let notice = match &result {
        Ok(r) if r.dry_run => format!(
            "Dry run: {} failed deliveries would be queued again. Press “Requeue” again with confirm to send.",
            r.matched
        ),
        Ok(r) => format!("{} deliveries queued again.", r.requeued),
        Err(e) => e.to_string(),
    };
    record(
        &c,
        &s,
        "sms.requeue",
        String::new(),
        if dry_run {
            "dry run".to_owned()
        } else {
            outcome_of(&result)
        },
    );
    Ok(sms_page(&c, &s, "failed", Some(notice)).await)
}

struct ActivityRow {
    at: String,
    user: String,
    role: &'static str,
    action: &'static str,
    target: String,
    outcome: String,
}

#[derive(Template)]
#[template(path = "activity.html")]
struct ActivityPage {
    nav: Nav,
    rows: Vec<ActivityRow>,
}

pub async fn activity(State(c): St, headers: HeaderMap) -> Page {
    let s = c.require(&headers, Role::Viewer)?;
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    let rows = c
        .audit
        .latest()
        .into_iter()
        .map(|e| ActivityRow {
            at: e.at.format(&f).unwrap_or_default(),
            user: e.user,
            role: e.role,
            action: e.action,
            target: e.target,
            outcome: e.outcome,
        })
        .collect();
    Ok(render(&ActivityPage {
        nav: Nav::of(&s, "activity"),
        rows,
    }))
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn a_timeline_marks_the_replay_after_a_dead_letter() {
        let attempt = |n: u32, outcome: &str| Attempt {
            attempt: n,
            outcome: outcome.into(),
            sent_at: "2026-11-01T10:00:00Z".into(),
            ..Attempt::default()
        };
        let t = timeline(Trace {
            event_id: "ev-1".into(),
            outcome: Some("success".into()),
            replay_count: 1,
            attempts: vec![
                attempt(1, "retry_scheduled"),
                attempt(2, "dead_lettered"),
                attempt(1, "success"),
            ],
            retry: None,
        });
        let what: Vec<&str> = t.steps.iter().map(|s| s.what.as_str()).collect();
        assert_eq!(
            what,
            [
                "attempt 1: retry scheduled",
                "attempt 2: dead lettered",
                "replayed from the dead letters",
                "attempt 1: success"
            ]
        );
        assert_eq!(t.steps[1].tone, "bad");
    }
}
