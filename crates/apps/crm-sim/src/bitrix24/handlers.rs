//! The entry points: incoming webhooks, OAuth calls and the OAuth server.

use super::batch::batch;
use super::methods::call;
use super::params::params;
use super::people;
use super::{fail, time_block, D};
use crate::people::request_id;
use crate::table::text;
use crate::{json_response, origin, same, Refusal, Sim};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

impl Sim {
    async fn bitrix24(&self, method: &str, p: Map<String, Value>, headers: &HeaderMap) -> Response {
        let started = OffsetDateTime::now_utc();
        let gate = self.gate(D).await;
        match gate.refusal {
            None => {}
            Some(Refusal::RateLimited) => {
                return fail(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "QUERY_LIMIT_EXCEEDED",
                    "Too many requests",
                )
                .response()
            }
            Some(_) => {
                return fail(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "INTERNAL_SERVER_ERROR",
                    "Internal server error (simulated)",
                )
                .response()
            }
        }
        let method = method.trim_end_matches(".json");
        let schema = &self.schemas().bitrix24;
        let outcome = if people::handles(method) {
            self.bitrix24_people(method, &p, request_id(headers))
        } else {
            let mut s = self.lock();
            if method == "batch" {
                batch(&mut s.bitrix24, schema, &p)
            } else {
                call(&mut s.bitrix24, schema, method, &p)
            }
        };
        match outcome {
            Ok(out) => {
                let mut body = Map::new();
                body.insert("result".into(), out.result);
                if let Some(total) = out.total {
                    body.insert("total".into(), Value::from(total));
                }
                if let Some(next) = out.next {
                    body.insert("next".into(), Value::from(next));
                }
                body.insert("time".into(), time_block(started));
                json_response(StatusCode::OK, "application/json", &Value::Object(body))
            }
            Err(f) => f.response(),
        }
    }
}

pub(super) async fn webhook(
    State(sim): State<Sim>,
    Path((user, code, method)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let user_ok = user.parse::<u64>().is_ok_and(|u| u > 0);
    if !user_ok || !same(&code, sim.vendor_secret()) {
        sim.reject(D);
        return fail(
            StatusCode::UNAUTHORIZED,
            "INVALID_CREDENTIALS",
            "Invalid request credentials",
        )
        .response();
    }
    match params(query.as_deref(), &headers, &body) {
        Ok(p) => sim.bitrix24(&method, p, &headers).await,
        Err(f) => f.response(),
    }
}

pub(super) async fn oauth_call(
    State(sim): State<Sim>,
    Path(method): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut p = match params(query.as_deref(), &headers, &body) {
        Ok(p) => p,
        Err(f) => return f.response(),
    };
    let refused = match p.remove("auth").as_ref().and_then(text) {
        None => Some(fail(
            StatusCode::UNAUTHORIZED,
            "NO_AUTH_FOUND",
            "Wrong authorization data",
        )),
        Some(token) if !sim.lock().grants(D).access_valid(&token) => Some(fail(
            StatusCode::UNAUTHORIZED,
            "expired_token",
            "The access token provided has expired.",
        )),
        Some(_) => None,
    };
    if let Some(f) = refused {
        sim.reject(D);
        return f.response();
    }
    sim.bitrix24(&method, p, &headers).await
}

/// The OAuth server: `grant_type=refresh_token` with the client's id and secret.
pub(super) async fn token(
    State(sim): State<Sim>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut p: std::collections::HashMap<String, String> =
        form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    p.extend(form_urlencoded::parse(&body).into_owned());
    let get = |k: &str| p.get(k).map(String::as_str).unwrap_or_default();
    let error = |status: StatusCode, code: &'static str, description: &str| {
        json_response(
            status,
            "application/json",
            &json!({"error": code, "error_description": description}),
        )
    };
    match get("grant_type") {
        "refresh_token" => {}
        "authorization_code" => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "crm-sim issues no authorization codes: use the refresh token",
            )
        }
        _ => return error(StatusCode::BAD_REQUEST, "invalid_request", "grant_type"),
    }
    if get("client_id").is_empty() || !same(get("client_secret"), sim.vendor_secret()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Invalid client credentials",
        );
    }
    let ttl = sim.token_ttl();
    let issued = {
        let mut s = sim.lock();
        let grants = s.grants(D);
        grants
            .redeem_refresh(get("refresh_token"), sim.vendor_secret())
            .then(|| (grants.issue_access("b24.", ttl), grants.issue_refresh()))
    };
    let Some((access, refresh)) = issued else {
        return error(StatusCode::BAD_REQUEST, "invalid_grant", "Invalid refresh token");
    };
    let origin = origin(&headers);
    json_response(
        StatusCode::OK,
        "application/json",
        &json!({"access_token": access, "client_endpoint": format!("{origin}/rest/"),
            "domain": origin.trim_start_matches("http://"), "expires_in": ttl.as_secs(),
            "member_id": "crm-sim", "refresh_token": refresh, "scope": "crm",
            "server_endpoint": format!("{origin}/rest/"), "status": "L"}),
    )
}
