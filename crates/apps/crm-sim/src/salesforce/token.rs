//! `POST /services/oauth2/token`: client credentials and the JWT bearer flow.

use super::D;
use crate::{json_response, origin, same, Sim};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};
use time::OffsetDateTime;

pub(super) async fn token(State(sim): State<Sim>, headers: HeaderMap, body: Bytes) -> Response {
    let form: std::collections::HashMap<String, String> =
        form_urlencoded::parse(&body).into_owned().collect();
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    let refuse = |code: &str, description: &str| {
        json_response(
            StatusCode::BAD_REQUEST,
            "application/json",
            &json!({"error": code, "error_description": description}),
        )
    };
    let granted = match get("grant_type") {
        "client_credentials" => {
            !get("client_id").is_empty() && same(get("client_secret"), sim.vendor_secret())
        }
        "urn:ietf:params:oauth:grant-type:jwt-bearer" => match check_assertion(get("assertion")) {
            Ok(()) => true,
            Err(why) => return refuse("invalid_grant", why),
        },
        _ => return refuse("unsupported_grant_type", "grant type not supported"),
    };
    if !granted {
        return refuse("invalid_client", "invalid client credentials");
    }
    let access = sim.lock().grants(D).issue_access("00DSIM!", sim.token_ttl());
    let origin = origin(&headers);
    json_response(
        StatusCode::OK,
        "application/json",
        &json!({"access_token": access, "scope": "api", "instance_url": origin,
            "id": format!("{origin}/id/00DSIM000000001/005SIM000000001"), "token_type": "Bearer",
            "issued_at": (OffsetDateTime::now_utc().unix_timestamp() * 1000).to_string(),
            "signature": "crm-sim"}),
    )
}

/// The JWT bearer assertion's shape and claims (the signature is not verified).
fn check_assertion(jwt: &str) -> Result<(), &'static str> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return Err("assertion is not a JWT");
    };
    let decode = |s: &str| -> Option<Value> { serde_json::from_slice(&b64.decode(s).ok()?).ok() };
    let header = decode(header).ok_or("assertion header is not JSON")?;
    let claims = decode(claims).ok_or("assertion claims are not JSON")?;
    if header["alg"] != "RS256" || b64.decode(signature).map_or(true, |s| s.is_empty()) {
        return Err("assertion must be signed with RS256");
    }
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let nonempty = |k: &str| claims[k].as_str().is_some_and(|s| !s.is_empty());
    if !nonempty("iss") || !nonempty("sub") {
        return Err("assertion lacks iss or sub");
    }
    if !claims["aud"].as_str().is_some_and(|a| a.starts_with("http")) {
        return Err("audience is invalid");
    }
    match claims["exp"].as_i64() {
        Some(exp) if exp > now && exp <= now + 300 => Ok(()),
        _ => Err("expired assertion or bad exp"),
    }
}
