//! Logging in and out: the password form, single sign-on, logout.

use super::*;

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
