//! `GET /admin/v1/trace`: the timelines of the events found by one key: an event id, a
//! shipment id, a client id or a request id. Each is what `crm-sync trace EVENT_ID` prints.

use super::{unavailable, AdminState};
use crate::api::problem::Problem;
use crate::trace::{trace, Trace};
use axum::extract::{Query, State};
use axum::Json;
use backbone_sync::event::{EventId, ShipmentId};
use backbone_sync::ports::TraceKey;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

/// Events traced per search at most.
pub const MAX_EVENTS: usize = 20;
/// How far back a search by shipment, client or request id looks, at most.
pub const MAX_DAYS: u32 = 31;

#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Search {
    event_id: Option<String>,
    shipment_id: Option<String>,
    client_id: Option<String>,
    request_id: Option<String>,
    /// How far back a search by shipment, client or request id looks: 1 to 31; 7 when absent.
    #[param(minimum = 1, maximum = 31)]
    days: Option<u32>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Found {
    /// Which key was searched: `event_id`, `shipment_id`, `client_id` or `request_id`.
    #[schema(value_type = String)]
    pub by: &'static str,
    pub value: String,
    /// Newest first.
    pub events: Vec<Trace>,
}

fn one_key(s: Search) -> Result<(&'static str, String), Problem> {
    let keys: Vec<(&'static str, String)> = [
        ("event_id", s.event_id),
        ("shipment_id", s.shipment_id),
        ("client_id", s.client_id),
        ("request_id", s.request_id),
    ]
    .into_iter()
    .filter_map(|(name, v)| {
        v.map(|v| (name, v.trim().to_owned()))
            .filter(|(_, v)| !v.is_empty())
    })
    .collect();
    match <[_; 1]>::try_from(keys) {
        Ok([key]) => Ok(key),
        Err(_) => Err(Problem::bad_request(
            "give exactly one of event_id, shipment_id, client_id, request_id",
        )),
    }
}

pub async fn trace_search(state: &AdminState, s: Search) -> Result<Found, Problem> {
    let days = s.days.unwrap_or(7);
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(Problem::invalid("days", "must be 1 to 31"));
    }
    let (by, value) = one_key(s)?;
    let key = match by {
        "event_id" => None,
        "shipment_id" => Some(TraceKey::Shipment(
            ShipmentId::parse(value.clone()).map_err(|e| Problem::invalid(by, &e.to_string()))?,
        )),
        "client_id" => Some(TraceKey::Client(value.clone())),
        _ => Some(TraceKey::Correlation(value.clone())),
    };
    let ids = match key {
        None => vec![EventId::parse(value.clone()).map_err(|e| Problem::invalid(by, &e.to_string()))?],
        Some(key) => {
            let since = OffsetDateTime::now_utc() - Duration::days(i64::from(days));
            state
                .ledger
                .find_events(&key, since, MAX_EVENTS)
                .await
                .map_err(|e| unavailable("PostgreSQL")(e.into()))?
        }
    };
    let mut events = Vec::with_capacity(ids.len());
    for id in &ids {
        let t = trace(state.ledger.as_ref(), id.as_str())
            .await
            .map_err(unavailable("PostgreSQL"))?;
        if t.found {
            events.push(t);
        }
    }
    Ok(Found { by, value, events })
}

/// The timelines of the events found by exactly one of the keys, newest first (at most 20).
#[utoipa::path(get, path = "/admin/v1/trace", tag = "admin", params(Search),
    security(("admin_bearer" = [])),
    responses((status = 200, body = Found), (status = 400, body = Problem, description = "not exactly one key"),
              (status = 401, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem)))]
pub async fn trace_route(
    State(state): State<Arc<AdminState>>,
    Query(s): Query<Search>,
) -> Result<Json<Found>, Problem> {
    trace_search(&state, s).await.map(Json)
}
