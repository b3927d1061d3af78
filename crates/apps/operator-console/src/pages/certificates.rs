//! Certificates: look-up by code (never in a URL) and cancel.

use super::*;

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

pub(super) fn money(minor: i64, currency: &str) -> String {
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
pub(super) fn masked(code: &str) -> String {
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
