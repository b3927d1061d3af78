//! The operator console: a server-rendered web page for the people on call, working only
//! through the services' admin APIs (`docs/operator-console.md`). Pages are HTML from askama
//! templates with no script at all; charts are SVG drawn here. Every page needs a session;
//! every form carries the session's CSRF token; every action is recorded with who did it.

// A page answers a page either way (`Result<Response, Response>`), as axum handlers do; and
// figment's test jail returns its large error by value.
#![allow(clippy::result_large_err)]

pub mod audit;
pub mod auth;
mod backends;
mod chart;
pub mod config;
pub mod oidc;
mod pages;
mod views;

pub use config::Config;

use audit::AuditLog;
use auth::{Accounts, Role, Session, SESSION_COOKIE};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use backends::Backends;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Everything the pages share.
pub struct Console {
    accounts: Accounts,
    backends: Backends,
    audit: AuditLog,
    oidc: Option<oidc::Oidc>,
    secure_cookies: bool,
    session_ttl: std::time::Duration,
}

impl Console {
    pub fn new(cfg: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            accounts: Accounts::new(&cfg.users, cfg.http.session_ttl, cfg.http.logins_per_minute),
            backends: Backends::new(cfg)?,
            audit: AuditLog::default(),
            oidc: cfg
                .oidc
                .enabled()
                .then(|| oidc::Oidc::new(clone_oidc(&cfg.oidc), cfg.http.backend_timeout))
                .transpose()?,
            secure_cookies: cfg.http.secure_cookies,
            session_ttl: cfg.http.session_ttl,
        })
    }

    /// The session of the request, if it has a live one.
    fn session(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let cookies = headers.get(header::COOKIE).and_then(|v| v.to_str().ok());
        let id = auth::cookie(cookies, SESSION_COOKIE)?;
        self.accounts.session(id).map(|s| (id.to_owned(), s))
    }

    /// The session, when it holds at least `role`: otherwise to the login page (no session)
    /// or a `403` page.
    fn require(&self, headers: &HeaderMap, role: Role) -> Result<Session, Response> {
        match self.session(headers) {
            None => Err(Redirect::to("/login").into_response()),
            Some((_, s)) if s.role >= role => Ok(s),
            Some((_, s)) => Err(pages::forbidden(&s, role)),
        }
    }

    /// [`Console::require`] for a form: also its CSRF token, and an `Origin`, when sent, of this
    /// host.
    fn require_form(&self, headers: &HeaderMap, form: &pages::Form, role: Role) -> Result<Session, Response> {
        let session = self.require(headers, role)?;
        if !same_origin(headers) || !auth::same(form.get("csrf").unwrap_or_default(), &session.csrf) {
            tracing::warn!(user = %session.user, "form refused: CSRF token or origin mismatch");
            return Err(pages::refused_form(&session));
        }
        Ok(session)
    }
}

/// A copy of the OIDC settings for the provider client (secrets are not `Clone` by design).
fn clone_oidc(c: &oidc::OidcConfig) -> oidc::OidcConfig {
    oidc::OidcConfig {
        issuer: c.issuer.clone(),
        client_id: c.client_id.clone(),
        client_secret: c.client_secret.clone(),
        redirect_url: c.redirect_url.clone(),
        scopes: c.scopes.clone(),
        username_claim: c.username_claim.clone(),
        roles_claim: c.roles_claim.clone(),
        roles: c.roles.clone(),
    }
}

/// Whether the request's `Origin` (when the browser sends one) names the host it was sent to.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| !host.is_empty() && rest == host)
}

/// What every answer carries: no caching, no framing, no script, no sniffing.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, "x-content-type-options", "nosniff");
    // `same-origin`: the browser still sends `Origin` with the console's own forms (with
    // `no-referrer` it sends `Origin: null`, which the form check refuses).
    set(h, "referrer-policy", "same-origin");
    set(h, "x-frame-options", "DENY");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, "cache-control", "no-store");
    }
    response
}

pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/login", get(pages::login_page).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/oidc/start", get(pages::oidc_start))
        .route("/oidc/callback", get(pages::oidc_callback))
        .route("/", get(pages::overview))
        .route("/dead-letters", get(pages::dead_letters))
        .route("/dead-letters/replay", post(pages::replay))
        .route("/dead-letters/{partition}/{offset}", get(pages::dead_letter))
        .route("/trace", get(pages::trace))
        .route("/conflicts", get(pages::conflicts))
        .route("/conflicts/{id}", get(pages::conflict))
        .route("/conflicts/{id}/resolve", post(pages::resolve))
        .route(
            "/certificates",
            get(pages::certificate_search).post(pages::certificate),
        )
        .route("/certificates/cancel", post(pages::cancel))
        .route("/uploads", get(pages::uploads))
        .route("/sms", get(pages::sms))
        .route("/sms/requeue", post(pages::sms_requeue))
        .route("/activity", get(pages::activity))
        .route("/static/console.css", get(pages::stylesheet))
        .route("/health/live", get(|| async { "live" }))
        .route("/health/ready", get(pages::ready))
        .fallback(pages::not_found)
        .layer(axum::middleware::map_response(security_headers))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(console)
}

/// Serves the console on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cfg: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let console = Arc::new(Console::new(cfg)?);
    tracing::info!(addr = %listener.local_addr()?, "operator console listening");
    axum::serve(listener, router(console))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

/// Validates `cfg`, binds `http.listen` and serves until `shutdown`.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    let listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .map_err(|e| anyhow::anyhow!("binding http.listen {}: {e}", cfg.http.listen))?;
    serve(listener, &cfg, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header"));
        }
        h
    }

    #[test]
    fn a_form_from_another_origin_is_refused() {
        assert!(same_origin(&headers(&[("host", "console.local:8095")])));
        assert!(same_origin(&headers(&[
            ("host", "console.local:8095"),
            ("origin", "https://console.local:8095")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "console.local:8095"),
            ("origin", "https://evil.example")
        ])));
        assert!(!same_origin(&headers(&[(
            "origin",
            "https://console.local:8095"
        )])));
    }
}
