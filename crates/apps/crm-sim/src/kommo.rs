//! Kommo (amoCRM) API v4, as our adapter calls it: leads, their custom fields, the pipeline,
//! and the OAuth token endpoint.
//!
//! - Auth: `Authorization: Bearer` with the long-lived token (the vendor secret) or an access
//!   token from `POST /oauth2/access_token` (`grant_type=refresh_token`; refresh tokens rotate
//!   and are single use). Otherwise 401.
//! - `GET /api/v4/leads`: `filter[id][]`, `query` (a case-insensitive search of the name and
//!   custom field values, as loose as Kommo's), `limit` (at most 250), `page`; no leads is
//!   `204 No Content`. `application/hal+json`.
//! - `POST /api/v4/leads` (add) and `PATCH /api/v4/leads` (update by `id`): arrays of at most
//!   250 leads, validated as a whole: an unknown custom field, a stage outside the pipeline or
//!   an unknown lead id answers 400 `validation-errors` per `request_id` and writes nothing.
//!   Answers echo `request_id`.
//! - `GET /api/v4/leads/custom_fields` and `/api/v4/leads/pipelines[/{id}]` describe the
//!   account (the schema).
//! - Faults: rate limit 429, failures and outages 503, all `application/problem+json`.
//! - Contacts, their tasks and notes: [`crate::kommo_people`].
//! - Not simulated: the 403 IP block, companies, `leads/complex`, webhooks about leads.

use crate::table::{text, Table};
use crate::{json_response, origin, same, Dialect, Refusal, Sim};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

pub const MAX_LEADS: usize = 250;
const D: Dialect = Dialect::Kommo;
const HAL: &str = "application/hal+json";
const PROBLEM: &str = "application/problem+json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KommoField {
    pub id: u64,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KommoStage {
    pub id: u64,
    pub name: String,
}

/// The account: lead custom fields (text) and the one pipeline with its stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KommoSchema {
    pub custom_fields: Vec<KommoField>,
    /// The custom field that holds our external id.
    pub external_field_id: u64,
    pub pipeline_id: u64,
    /// Stages of the pipeline; 142 (won) and 143 (lost) belong to every Kommo pipeline.
    pub stages: Vec<KommoStage>,
    /// The field read back as the status (`Sim::status_of`): `status_id`, `name` or `cf:<id>`.
    pub status_field: String,
    /// The field that carries the event id (for counting repeated writes).
    pub event_field: String,
    /// Custom fields of contacts (the two-way sync).
    pub contact_fields: crate::KommoContactFields,
}

impl Default for KommoSchema {
    fn default() -> Self {
        let field = |id: u64, name: &str| KommoField {
            id,
            name: name.into(),
        };
        let stage = |id: u64, name: &str| KommoStage {
            id,
            name: name.into(),
        };
        Self {
            custom_fields: vec![
                field(101, "Client ID"),
                field(102, "Shipment ID"),
                field(103, "Tracking status"),
                field(104, "Status time"),
                field(105, "Event ID"),
            ],
            external_field_id: 102,
            pipeline_id: 1000,
            stages: vec![
                stage(1001, "Created"),
                stage(1002, "Accepted"),
                stage(1003, "In transit"),
                stage(1004, "At pickup point"),
                stage(1005, "Out for delivery"),
                stage(1006, "Returned"),
                stage(142, "Delivered"),
                stage(143, "Lost"),
            ],
            status_field: "status_id".into(),
            event_field: "cf:105".into(),
            contact_fields: crate::KommoContactFields::default(),
        }
    }
}

pub(crate) fn table(schema: &KommoSchema) -> Table {
    Table::new(
        20_000_001,
        &format!("cf:{}", schema.external_field_id),
        &schema.event_field,
        false,
    )
}

pub(crate) fn routes() -> Router<Sim> {
    Router::new()
        .route("/oauth2/access_token", post(token))
        .route("/api/v4/leads", get(list).post(add).patch(update))
        .route("/api/v4/leads/custom_fields", get(custom_fields))
        .route("/api/v4/leads/pipelines", get(pipelines))
        .route("/api/v4/leads/pipelines/{id}", get(pipeline))
}

fn problem(status: StatusCode, detail: &str) -> Response {
    json_response(
        status,
        PROBLEM,
        &json!({"title": status.canonical_reason().unwrap_or_default(),
            "type": format!("https://httpstatus.es/{}", status.as_u16()), "status": status.as_u16(),
            "detail": detail}),
    )
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Sim {
    pub(crate) async fn kommo_admit(&self, headers: &HeaderMap) -> Result<(), Response> {
        let valid = crate::bearer(headers)
            .is_some_and(|t| same(t, self.vendor_secret()) || self.lock().grants(D).access_valid(t));
        if !valid {
            self.reject(D);
            return Err(problem(StatusCode::UNAUTHORIZED, "Unauthorized"));
        }
        let gate = self.gate(D).await;
        let refused = match gate.refusal {
            None => return Ok(()),
            Some(Refusal::RateLimited) => problem(StatusCode::TOO_MANY_REQUESTS, "Too many requests"),
            Some(_) => problem(StatusCode::SERVICE_UNAVAILABLE, "Service unavailable (simulated)"),
        };
        Err(crate::with_retry_after(refused, gate.retry_after))
    }
}

fn render(schema: &KommoSchema, id: u64, r: &Map<String, Value>, origin: &str) -> Value {
    let custom: Vec<Value> = schema
        .custom_fields
        .iter()
        .filter_map(|f| {
            let v = r.get(&format!("cf:{}", f.id)).and_then(text)?;
            Some(json!({"field_id": f.id, "field_name": f.name, "field_code": null,
                "field_type": "text", "values": [{"value": v}]}))
        })
        .collect();
    let get = |k: &str| r.get(k).cloned().unwrap_or(Value::Null);
    json!({"id": id, "name": get("name"), "price": get("price"), "responsible_user_id": 1,
        "group_id": 0, "status_id": get("status_id"), "pipeline_id": get("pipeline_id"),
        "loss_reason_id": null, "created_by": 1, "updated_by": 1, "created_at": get("created_at"),
        "updated_at": get("updated_at"), "closed_at": null, "closest_task_at": null,
        "is_deleted": false,
        "custom_fields_values": if custom.is_empty() { Value::Null } else { Value::from(custom) },
        "score": null, "account_id": 1, "labor_cost": null,
        "_links": {"self": {"href": format!("{origin}/api/v4/leads/{id}")}},
        "_embedded": {"tags": [], "companies": []}})
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

async fn list(State(sim): State<Sim>, RawQuery(raw): RawQuery, headers: HeaderMap) -> Response {
    if let Err(r) = sim.kommo_admit(&headers).await {
        return r;
    }
    let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.as_deref().unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let param = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let limit = param("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(50)
        .clamp(1, MAX_LEADS);
    let page = param("page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let ids: Vec<u64> = pairs
        .iter()
        .filter(|(k, _)| k == "filter[id][]" || k == "filter[id]")
        .flat_map(|(_, v)| {
            v.split(',')
                .filter_map(|i| i.trim().parse().ok())
                .collect::<Vec<_>>()
        })
        .collect();
    let query = param("query").map(str::to_lowercase).filter(|q| !q.is_empty());
    let schema = &sim.schemas().kommo;
    let origin = origin(&headers);
    let s = sim.lock();
    let matching: Vec<(u64, &Map<String, Value>)> = s
        .kommo
        .iter()
        .filter(|(id, _)| ids.is_empty() || ids.contains(id))
        .filter(|(id, r)| match &query {
            None => true,
            Some(q) => {
                id.to_string() == *q
                    || r.iter()
                        .filter(|(k, _)| *k == "name" || k.starts_with("cf:"))
                        .filter_map(|(_, v)| text(v))
                        .any(|v| v.to_lowercase().contains(q.as_str()))
            }
        })
        .collect();
    let more = matching.len() > page * limit;
    let leads: Vec<Value> = matching
        .into_iter()
        .skip((page - 1) * limit)
        .take(limit)
        .map(|(id, r)| render(schema, id, r, &origin))
        .collect();
    if leads.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    let mut links = json!({"self": {"href": format!("{origin}/api/v4/leads?page={page}&limit={limit}")}});
    if more {
        links["next"] = json!({"href": format!("{origin}/api/v4/leads?page={}&limit={limit}", page + 1)});
    }
    json_response(
        StatusCode::OK,
        HAL,
        &json!({"_page": page, "_links": links, "_embedded": {"leads": leads}}),
    )
}

fn invalid(path: &str) -> Value {
    json!({"code": "NotSupportedChoice", "path": path,
        "detail": "The value you selected is not a valid choice."})
}

/// One lead of a request, checked; `Err` lists its validation errors.
fn lead_fields(schema: &KommoSchema, lead: &Value, update: bool) -> Result<Map<String, Value>, Vec<Value>> {
    let mut out = Map::new();
    let mut errors = Vec::new();
    let Value::Object(lead) = lead else {
        return Err(vec![
            json!({"code": "InvalidType", "path": "", "detail": "A lead must be an object."}),
        ]);
    };
    if update {
        match lead.get("id").and_then(as_u64) {
            Some(id) => {
                out.insert("id".into(), Value::from(id));
            }
            None => errors
                .push(json!({"code": "NotBlank", "path": "id", "detail": "This value should not be blank."})),
        }
    }
    if let Some(name) = lead.get("name") {
        match name.as_str() {
            Some(n) => {
                out.insert("name".into(), Value::from(n));
            }
            None => errors.push(json!({"code": "InvalidType", "path": "name",
                "detail": "This value should be of type string."})),
        }
    }
    if let Some(price) = lead.get("price") {
        match price.as_u64() {
            Some(p) => {
                out.insert("price".into(), Value::from(p));
            }
            None => errors.push(json!({"code": "InvalidType", "path": "price",
                "detail": "This value should be of type int."})),
        }
    }
    if let Some(p) = lead.get("pipeline_id") {
        if p.as_u64() == Some(schema.pipeline_id) {
            out.insert("pipeline_id".into(), p.clone());
        } else {
            errors.push(invalid("pipeline_id"));
        }
    }
    if let Some(s) = lead.get("status_id") {
        match s.as_u64().filter(|s| schema.stages.iter().any(|st| st.id == *s)) {
            Some(s) => {
                out.insert("status_id".into(), Value::from(s));
            }
            None => errors.push(invalid("status_id")),
        }
    }
    match lead.get("custom_fields_values") {
        None | Some(Value::Null) => {}
        Some(Value::Array(values)) => {
            for (i, cf) in values.iter().enumerate() {
                let Some(field_id) = cf
                    .get("field_id")
                    .and_then(Value::as_u64)
                    .filter(|id| schema.custom_fields.iter().any(|f| f.id == *id))
                else {
                    let path = if cf.get("field_id").is_some() {
                        "field_id"
                    } else {
                        "field_code"
                    };
                    errors.push(invalid(&format!("custom_fields_values.{i}.{path}")));
                    continue;
                };
                let value = match cf.get("values") {
                    None | Some(Value::Null) => Some(Value::Null),
                    Some(Value::Array(vs)) => match vs.first() {
                        None => Some(Value::Null),
                        Some(v) => v.get("value").and_then(text).map(Value::from),
                    },
                    Some(_) => None,
                };
                match value {
                    Some(v) => {
                        out.insert(format!("cf:{field_id}"), v);
                    }
                    None => errors.push(json!({"code": "InvalidType",
                        "path": format!("custom_fields_values.{i}.values"),
                        "detail": "This value should be of type array."})),
                }
            }
        }
        Some(_) => errors.push(json!({"code": "InvalidType", "path": "custom_fields_values",
            "detail": "This value should be of type array."})),
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn request_id(lead: &Value, index: usize) -> Value {
    lead.get("request_id")
        .and_then(text)
        .map_or_else(|| Value::from(index.to_string()), Value::from)
}

async fn add(State(sim): State<Sim>, headers: HeaderMap, body: Bytes) -> Response {
    write(sim, headers, body, false).await
}

async fn update(State(sim): State<Sim>, headers: HeaderMap, body: Bytes) -> Response {
    write(sim, headers, body, true).await
}

async fn write(sim: Sim, headers: HeaderMap, body: Bytes, update: bool) -> Response {
    if let Err(r) = sim.kommo_admit(&headers).await {
        return r;
    }
    let Ok(Value::Array(leads)) = serde_json::from_slice::<Value>(&body) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "The request body must be an array of leads",
        );
    };
    if leads.is_empty() || leads.len() > MAX_LEADS {
        return problem(StatusCode::BAD_REQUEST, "A request takes 1 to 250 leads");
    }
    let schema = &sim.schemas().kommo;
    let origin = origin(&headers);
    let mut s = sim.lock();
    let t = &mut s.kommo;
    let mut planned = Vec::with_capacity(leads.len());
    let mut refused = Vec::new();
    for (i, lead) in leads.iter().enumerate() {
        match lead_fields(schema, lead, update) {
            Ok(f) if update && f.get("id").and_then(as_u64).is_none_or(|id| t.get(id).is_none()) => {
                refused.push(
                    json!({"request_id": request_id(lead, i), "errors": [{"code": "NotFound",
                    "path": "id", "detail": "Entity not found."}]}),
                );
            }
            Ok(f) => planned.push((request_id(lead, i), f)),
            Err(errors) => refused.push(json!({"request_id": request_id(lead, i), "errors": errors})),
        }
    }
    if !refused.is_empty() {
        return json_response(
            StatusCode::BAD_REQUEST,
            PROBLEM,
            &json!({"validation-errors": refused, "title": "Bad Request",
                "type": "https://httpstatus.es/400", "status": 400, "detail": "Request validation failed"}),
        );
    }
    let mut out = Vec::with_capacity(planned.len());
    for (rid, mut fields) in planned {
        let stamp = Value::from(now());
        fields.insert("updated_at".into(), stamp.clone());
        let id = if update {
            let id = fields.remove("id").and_then(|v| as_u64(&v)).unwrap_or_default();
            t.update(id, fields);
            id
        } else {
            let next = t.peek_id();
            fields
                .entry("name")
                .or_insert_with(|| Value::from(format!("Lead #{next}")));
            fields.entry("price").or_insert(Value::from(0));
            fields
                .entry("pipeline_id")
                .or_insert(Value::from(schema.pipeline_id));
            if let Some(first) = schema.stages.first() {
                fields.entry("status_id").or_insert(Value::from(first.id));
            }
            fields.insert("created_at".into(), stamp.clone());
            t.create(fields)
        };
        let mut lead = json!({"id": id, "request_id": rid,
            "_links": {"self": {"href": format!("{origin}/api/v4/leads/{id}")}}});
        if update {
            lead["updated_at"] = stamp;
        }
        out.push(lead);
    }
    json_response(
        StatusCode::OK,
        HAL,
        &json!({"_links": {"self": {"href": format!("{origin}/api/v4/leads")}}, "_embedded": {"leads": out}}),
    )
}

async fn custom_fields(State(sim): State<Sim>, RawQuery(raw): RawQuery, headers: HeaderMap) -> Response {
    if let Err(r) = sim.kommo_admit(&headers).await {
        return r;
    }
    let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.as_deref().unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let param = |k: &str| {
        pairs
            .iter()
            .find(|(n, _)| n == k)
            .and_then(|(_, v)| v.parse::<usize>().ok())
    };
    let limit = param("limit").unwrap_or(50).clamp(1, MAX_LEADS);
    let page = param("page").unwrap_or(1).max(1);
    let schema = &sim.schemas().kommo;
    let origin = origin(&headers);
    let mut fields: Vec<&KommoField> = schema.custom_fields.iter().collect();
    fields.sort_by_key(|f| f.id);
    let total = fields.len();
    let page_fields: Vec<Value> = fields
        .into_iter()
        .skip((page - 1) * limit)
        .take(limit)
        .map(|f| {
            json!({"id": f.id, "name": f.name, "type": "text", "account_id": 1, "code": null,
                "sort": 500, "is_api_only": false, "enums": null, "request_id": null,
                "entity_type": "leads", "is_deletable": true, "is_visible": true, "is_required": false,
                "settings": null, "remind": null, "currency": null, "group_id": null,
                "is_predefined": false,
                "_links": {"self": {"href": format!("{origin}/api/v4/leads/custom_fields/{}", f.id)}}})
        })
        .collect();
    if page_fields.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    let pages = total.div_ceil(limit);
    let mut links =
        json!({"self": {"href": format!("{origin}/api/v4/leads/custom_fields?page={page}&limit={limit}")}});
    if page < pages {
        links["next"] =
            json!({"href": format!("{origin}/api/v4/leads/custom_fields?page={}&limit={limit}", page + 1)});
    }
    json_response(
        StatusCode::OK,
        HAL,
        &json!({"_total_items": total, "_page": page, "_page_count": pages, "_links": links,
            "_embedded": {"custom_fields": page_fields}}),
    )
}

fn render_pipeline(schema: &KommoSchema, origin: &str) -> Value {
    let statuses: Vec<Value> = schema
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": s.id, "name": s.name, "sort": (i + 1) * 10, "is_editable": s.id != 142 && s.id != 143,
                "pipeline_id": schema.pipeline_id, "color": "#99ccff", "type": 0, "account_id": 1,
                "_links": {"self": {"href":
                    format!("{origin}/api/v4/leads/pipelines/{}/statuses/{}", schema.pipeline_id, s.id)}}})
        })
        .collect();
    json!({"id": schema.pipeline_id, "name": "Shipments", "sort": 1, "is_main": true,
        "is_unsorted_on": false, "is_archive": false, "account_id": 1,
        "_links": {"self": {"href": format!("{origin}/api/v4/leads/pipelines/{}", schema.pipeline_id)}},
        "_embedded": {"statuses": statuses}})
}

async fn pipelines(State(sim): State<Sim>, headers: HeaderMap) -> Response {
    if let Err(r) = sim.kommo_admit(&headers).await {
        return r;
    }
    let origin = origin(&headers);
    let pipeline = render_pipeline(&sim.schemas().kommo, &origin);
    json_response(
        StatusCode::OK,
        HAL,
        &json!({"_total_items": 1, "_links": {"self": {"href": format!("{origin}/api/v4/leads/pipelines")}},
            "_embedded": {"pipelines": [pipeline]}}),
    )
}

async fn pipeline(State(sim): State<Sim>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = sim.kommo_admit(&headers).await {
        return r;
    }
    let schema = &sim.schemas().kommo;
    if id.parse::<u64>().ok() != Some(schema.pipeline_id) {
        return problem(StatusCode::NOT_FOUND, "Pipeline not found");
    }
    json_response(StatusCode::OK, HAL, &render_pipeline(schema, &origin(&headers)))
}

#[derive(Deserialize)]
struct TokenRequest {
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    client_secret: String,
    #[serde(default)]
    grant_type: String,
    #[serde(default)]
    refresh_token: String,
    #[serde(default)]
    redirect_uri: String,
}

async fn token(State(sim): State<Sim>, body: Bytes) -> Response {
    let refuse = |hint: &str| {
        json_response(
            StatusCode::BAD_REQUEST,
            PROBLEM,
            &json!({"hint": hint, "title": "Bad Request", "type": "https://httpstatus.es/400",
                "status": 400, "detail": "Bad request"}),
        )
    };
    let Ok(req) = serde_json::from_slice::<TokenRequest>(&body) else {
        return refuse("The request body must be JSON");
    };
    if req.grant_type != "refresh_token" {
        return refuse("crm-sim grants only refresh_token");
    }
    if req.client_id.is_empty()
        || req.redirect_uri.is_empty()
        || !same(&req.client_secret, sim.vendor_secret())
    {
        return json_response(
            StatusCode::UNAUTHORIZED,
            PROBLEM,
            &json!({"hint": "Client authentication failed", "title": "Unauthorized",
                "type": "https://httpstatus.es/401", "status": 401, "detail": "Unauthorized"}),
        );
    }
    let ttl = sim.token_ttl();
    let issued = {
        let mut s = sim.lock();
        let grants = s.grants(D);
        grants
            .redeem_refresh(&req.refresh_token, sim.vendor_secret())
            .then(|| (grants.issue_access("", ttl), grants.issue_refresh()))
    };
    match issued {
        Some((access, refresh)) => json_response(
            StatusCode::OK,
            "application/json",
            &json!({"token_type": "Bearer", "expires_in": ttl.as_secs(), "server_time": now(),
                "access_token": access, "refresh_token": refresh}),
        ),
        None => refuse("Token has been revoked"),
    }
}
