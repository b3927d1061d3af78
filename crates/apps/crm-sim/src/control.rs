//! `/sim/...`: faults set at run time, and every dialect's counters, records and history read
//! back.

use crate::generic::{bad_json, problem};
use crate::{Dialect, Faults, Sim};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use std::collections::BTreeMap;

pub(crate) fn routes() -> Router<Sim> {
    Router::new()
        .route(
            "/sim/stats",
            get(|State(sim): State<Sim>| async move { Json(sim.stats()) }),
        )
        .route("/sim/faults", post(set_faults))
        .route("/sim/shipments/{id}/history", get(history))
        .route("/sim/vendors/{dialect}/stats", get(dialect_stats))
        .route("/sim/vendors/{dialect}/shipments", get(dialect_shipments))
        .route("/sim/vendors/{dialect}/shipments/{id}", get(dialect_records))
        .route(
            "/sim/vendors/{dialect}/shipments/{id}/history",
            get(dialect_history),
        )
        .route("/sim/vendors/{dialect}/expire-tokens", post(dialect_expire))
}

async fn set_faults(State(sim): State<Sim>, body: Bytes) -> Response {
    match serde_json::from_slice::<Faults>(&body) {
        Ok(f) if (0.0..=1.0).contains(&f.error_rate) => {
            sim.set_faults(f.clone());
            Json(f).into_response()
        }
        Ok(_) => problem(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "error_rate must be within 0..=1",
            None,
        ),
        Err(e) => bad_json(e),
    }
}

async fn history(State(sim): State<Sim>, Path(id): Path<String>) -> Response {
    Json(sim.history(&id)).into_response()
}

fn unknown_dialect() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "not_found",
        "unknown dialect: generic, bitrix24, salesforce or kommo",
        None,
    )
}

async fn dialect_stats(State(sim): State<Sim>, Path(d): Path<String>) -> Response {
    match Dialect::parse(&d) {
        Some(d) => Json(sim.stats_of(d)).into_response(),
        None => unknown_dialect(),
    }
}

async fn dialect_shipments(State(sim): State<Sim>, Path(d): Path<String>) -> Response {
    match Dialect::parse(&d) {
        Some(d) => {
            let out: BTreeMap<String, Option<String>> = sim
                .shipments_of(d)
                .into_iter()
                .map(|s| {
                    let status = sim.status_of(d, &s);
                    (s, status)
                })
                .collect();
            Json(out).into_response()
        }
        None => unknown_dialect(),
    }
}

async fn dialect_records(State(sim): State<Sim>, Path((d, id)): Path<(String, String)>) -> Response {
    match Dialect::parse(&d) {
        Some(d) => Json(sim.records_of(d, &id)).into_response(),
        None => unknown_dialect(),
    }
}

async fn dialect_history(State(sim): State<Sim>, Path((d, id)): Path<(String, String)>) -> Response {
    match Dialect::parse(&d) {
        Some(d) => Json(sim.history_of(d, &id)).into_response(),
        None => unknown_dialect(),
    }
}

async fn dialect_expire(State(sim): State<Sim>, Path(d): Path<String>) -> Response {
    match Dialect::parse(&d) {
        Some(d) => {
            sim.expire_tokens(d);
            StatusCode::NO_CONTENT.into_response()
        }
        None => unknown_dialect(),
    }
}
