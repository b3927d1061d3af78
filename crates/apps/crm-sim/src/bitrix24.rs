//! Bitrix24 REST, as our adapter calls it: the universal `crm.item.*` methods and `batch`.
//!
//! - Incoming webhook: `/rest/{user_id}/{code}/{method}[.json]`, the code being the vendor
//!   secret. OAuth: `/rest/{method}[.json]` with `auth` in the body or query, the access token
//!   from `GET /oauth/token/?grant_type=refresh_token&...` (the portal's OAuth server:
//!   point `oauth_url` here too). Refresh tokens rotate and are single use.
//! - Parameters as JSON, as a form, or (inside `batch`) as URL-encoded `fields[name]=value`.
//! - `crm.item.add|update|get|list|fields` keep items of any standard entity type (1-4, 7, 31,
//!   smart processes from 128). Unknown and read-only fields are ignored without an error, as
//!   the portal does. `crm.item.list` filters with `=`, `!`, `@`, `!@`, `>`, `>=`, `<`, `<=`
//!   and `%`, orders by `id`, and pages by 50 (`start`, `next`, `total`).
//! - `batch`: at most 50 commands (`ERROR_BATCH_LENGTH_EXCEEDED`), no nested `batch`, `halt`;
//!   empty maps come back as `[]`, as PHP renders them. `$result[...]` references are not
//!   resolved.
//! - Faults: rate limit 503 `QUERY_LIMIT_EXCEEDED`, failures and outages 500
//!   `INTERNAL_SERVER_ERROR`. A batch counts as one request.
//! - Not simulated: the leaky bucket itself (use `rate_limit_rps`), `OPERATION_TIME_LIMIT`,
//!   stage validation, deprecated `crm.deal.*` methods, events.

use crate::table::{text, Table};
use crate::{json_response, origin, same, Dialect, Refusal, Sim};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

pub const MAX_BATCH_COMMANDS: usize = 50;
pub const PAGE_SIZE: usize = 50;
const D: Dialect = Dialect::Bitrix24;
const ORIGIN_ID: &str = "originId";
const WRITABLE: [&str; 19] = [
    "title",
    "stageId",
    "categoryId",
    "opportunity",
    "currencyId",
    "assignedById",
    "originatorId",
    "originId",
    "comments",
    "sourceId",
    "sourceDescription",
    "contactId",
    "companyId",
    "begindate",
    "closedate",
    "opened",
    "closed",
    "typeId",
    "probability",
];
const READ_ONLY: [&str; 6] = [
    "id",
    "createdBy",
    "updatedBy",
    "createdTime",
    "updatedTime",
    "movedTime",
];

/// The portal's CRM fields besides the built-in ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Bitrix24Schema {
    /// User fields (strings) that every CRM object type has, e.g. `ufCrmStatusAt`.
    pub user_fields: Vec<String>,
    /// The field read back as the status (`Sim::status_of`).
    pub status_field: String,
    /// The field that carries the event id (for counting repeated writes).
    pub event_field: String,
}

impl Default for Bitrix24Schema {
    fn default() -> Self {
        Self {
            user_fields: vec![
                "ufCrmClientId".into(),
                "ufCrmStatusAt".into(),
                "ufCrmEventId".into(),
            ],
            status_field: "stageId".into(),
            event_field: "ufCrmEventId".into(),
        }
    }
}

pub(crate) fn table(schema: &Bitrix24Schema) -> Table {
    Table::new(1, ORIGIN_ID, &schema.event_field, false)
}

pub(crate) fn routes() -> Router<Sim> {
    Router::new()
        .route("/rest/{user}/{code}/{method}", get(webhook).post(webhook))
        .route("/rest/{method}", get(oauth_call).post(oauth_call))
        .route("/oauth/token/", get(token).post(token))
        .route("/oauth/token", get(token).post(token))
}

/// A refused call: HTTP status, `error` and `error_description`.
struct Fail {
    status: StatusCode,
    code: &'static str,
    description: String,
}

fn fail(status: StatusCode, code: &'static str, description: impl Into<String>) -> Fail {
    Fail {
        status,
        code,
        description: description.into(),
    }
}

impl Fail {
    fn body(&self) -> Value {
        json!({"error": self.code, "error_description": self.description})
    }

    fn response(&self) -> Response {
        json_response(self.status, "application/json", &self.body())
    }
}

/// A method's answer: `result`, and for lists `total` and `next`.
struct Out {
    result: Value,
    total: Option<usize>,
    next: Option<usize>,
}

impl Out {
    fn plain(result: Value) -> Self {
        Self {
            result,
            total: None,
            next: None,
        }
    }
}

fn time_block(started: OffsetDateTime) -> Value {
    let now = OffsetDateTime::now_utc();
    let secs = |t: OffsetDateTime| t.unix_timestamp_nanos() as f64 / 1e9;
    json!({"start": secs(started), "finish": secs(now), "duration": secs(now) - secs(started),
        "processing": secs(now) - secs(started), "date_start": iso(started), "date_finish": iso(now),
        "operating_reset_at": now.unix_timestamp() + 600, "operating": 0})
}

fn iso(t: OffsetDateTime) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]+00:00");
    t.format(&fmt).unwrap_or_default()
}

/// PHP-style parameters (`fields[stageId]=X&filter[@originId][]=a`) as nested JSON.
pub(crate) fn php_params(query: &str) -> Map<String, Value> {
    let mut root = Value::Object(Map::new());
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let (head, mut rest) = match k.find('[') {
            Some(i) => (&k[..i], &k[i..]),
            None => (&k[..], ""),
        };
        let mut path = vec![head.to_owned()];
        while let Some(inner) = rest.strip_prefix('[') {
            let Some(end) = inner.find(']') else { break };
            path.push(inner[..end].to_owned());
            rest = &inner[end + 1..];
        }
        insert(&mut root, &path, Value::from(v.into_owned()));
    }
    match root {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn insert(node: &mut Value, path: &[String], v: Value) {
    let Some((first, rest)) = path.split_first() else {
        *node = v;
        return;
    };
    if first.is_empty() {
        if !node.is_array() {
            *node = Value::Array(Vec::new());
        }
        if let Value::Array(items) = node {
            items.push(Value::Null);
            if let Some(last) = items.last_mut() {
                insert(last, rest, v);
            }
        }
        return;
    }
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    if let Value::Object(m) = node {
        insert(m.entry(first.clone()).or_insert(Value::Null), rest, v);
    }
}

/// Query parameters merged with the body (JSON or a form); the body wins.
fn params(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, Fail> {
    let mut p = query.map(php_params).unwrap_or_default();
    let form = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if form {
        p.extend(php_params(&String::from_utf8_lossy(body)));
    } else if !body.iter().all(u8::is_ascii_whitespace) {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => p.extend(m),
            _ => {
                return Err(fail(
                    StatusCode::BAD_REQUEST,
                    "INVALID_REQUEST",
                    "the body is not a JSON object",
                ))
            }
        }
    }
    Ok(p)
}

fn as_u64(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn entity_type(p: &Map<String, Value>) -> Result<u64, Fail> {
    let Some(t) = as_u64(p.get("entityTypeId")) else {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "INVALID_ARG_VALUE",
            "entityTypeId is required",
        ));
    };
    if matches!(t, 1..=4 | 7 | 31) || t >= 128 {
        Ok(t)
    } else {
        Err(fail(
            StatusCode::BAD_REQUEST,
            "NOT_FOUND",
            format!("entity type {t} not found"),
        ))
    }
}

fn item_id(p: &Map<String, Value>) -> Result<u64, Fail> {
    as_u64(p.get("id")).ok_or_else(|| fail(StatusCode::BAD_REQUEST, "INVALID_ARG_VALUE", "id is required"))
}

fn not_found() -> Fail {
    fail(StatusCode::BAD_REQUEST, "NOT_FOUND", "Not found.")
}

/// Every field of an item, unset ones as `null`.
fn render(schema: &Bitrix24Schema, id: u64, record: &Map<String, Value>) -> Value {
    let mut out = Map::new();
    out.insert("id".into(), Value::from(id));
    out.insert(
        "entityTypeId".into(),
        record.get("entityTypeId").cloned().unwrap_or(Value::Null),
    );
    let names = READ_ONLY[1..]
        .iter()
        .chain(WRITABLE.iter())
        .copied()
        .chain(schema.user_fields.iter().map(String::as_str));
    for name in names {
        out.insert(name.into(), record.get(name).cloned().unwrap_or(Value::Null));
    }
    Value::Object(out)
}

/// The fields of an add or update the portal keeps: known, writable ones.
fn writable(schema: &Bitrix24Schema, p: &Map<String, Value>) -> Result<Map<String, Value>, Fail> {
    let Some(Value::Object(fields)) = p.get("fields") else {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "INVALID_ARG_VALUE",
            "Parameter 'fields' must be array.",
        ));
    };
    Ok(fields
        .iter()
        .filter(|(k, _)| WRITABLE.contains(&k.as_str()) || schema.user_fields.contains(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect())
}

fn fields_description(schema: &Bitrix24Schema) -> Value {
    let mut out = Map::new();
    let describe = |ty: &str, read_only: bool, title: &str| {
        json!({"type": ty, "isRequired": false, "isReadOnly": read_only, "isImmutable": false,
            "isMultiple": false, "isDynamic": false, "title": title})
    };
    for f in READ_ONLY {
        let ty = if f.ends_with("Time") {
            "datetime"
        } else {
            "integer"
        };
        out.insert(f.into(), describe(ty, true, f));
    }
    for f in WRITABLE {
        out.insert(f.into(), describe("string", false, f));
    }
    for f in &schema.user_fields {
        out.insert(f.clone(), describe("string", false, f));
    }
    json!({ "fields": out })
}

enum Op {
    Eq,
    Ne,
    In,
    NotIn,
    Gt,
    Ge,
    Lt,
    Le,
    Like,
}

struct Condition {
    op: Op,
    field: String,
    values: Vec<String>,
}

fn conditions(filter: Option<&Value>) -> Result<Vec<Condition>, Fail> {
    let Some(filter) = filter else {
        return Ok(Vec::new());
    };
    let Value::Object(filter) = filter else {
        // PHP sends an empty filter as [].
        return match filter {
            Value::Array(a) if a.is_empty() => Ok(Vec::new()),
            _ => Err(fail(
                StatusCode::BAD_REQUEST,
                "INVALID_ARG_VALUE",
                "filter must be an object",
            )),
        };
    };
    let mut out = Vec::new();
    for (key, value) in filter {
        let (op, field) = [
            ("!@", Op::NotIn),
            ("!=", Op::Ne),
            (">=", Op::Ge),
            ("<=", Op::Le),
            ("@", Op::In),
            ("=", Op::Eq),
            ("!", Op::Ne),
            (">", Op::Gt),
            ("<", Op::Lt),
            ("%", Op::Like),
        ]
        .into_iter()
        .find_map(|(prefix, op)| key.strip_prefix(prefix).map(|f| (op, f)))
        .unwrap_or((Op::Eq, key.as_str()));
        let values: Vec<String> = match value {
            Value::Array(a) => a.iter().filter_map(text).collect(),
            Value::Object(m) => m.values().filter_map(text).collect(),
            other => text(other).into_iter().collect(),
        };
        let op = match (op, value.is_array() || value.is_object()) {
            (Op::Eq, true) => Op::In,
            (Op::Ne, true) => Op::NotIn,
            (op, _) => op,
        };
        out.push(Condition {
            op,
            field: field.to_owned(),
            values,
        });
    }
    Ok(out)
}

fn compare(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
        _ => a.cmp(b),
    }
}

fn matches(c: &Condition, value: Option<String>) -> bool {
    use std::cmp::Ordering::{Greater, Less};
    let first = c.values.first().map(String::as_str).unwrap_or_default();
    match (&c.op, value) {
        (Op::Eq, v) => v.as_deref() == Some(first) || (v.is_none() && first.is_empty()),
        (Op::Ne, v) => v.as_deref() != Some(first),
        (Op::In, Some(v)) => c.values.contains(&v),
        (Op::NotIn, v) => v.is_none_or(|v| !c.values.contains(&v)),
        (Op::Gt, Some(v)) => compare(&v, first) == Greater,
        (Op::Ge, Some(v)) => compare(&v, first) != Less,
        (Op::Lt, Some(v)) => compare(&v, first) == Less,
        (Op::Le, Some(v)) => compare(&v, first) != Greater,
        (Op::Like, Some(v)) => v.to_lowercase().contains(&first.to_lowercase()),
        (_, None) => false,
    }
}

fn list(t: &Table, schema: &Bitrix24Schema, p: &Map<String, Value>) -> Result<Out, Fail> {
    let et = entity_type(p)?;
    let conditions = conditions(p.get("filter"))?;
    let select: Vec<String> = match p.get("select") {
        Some(Value::Array(a)) if !a.is_empty() => a.iter().filter_map(text).collect(),
        Some(Value::Object(m)) if !m.is_empty() => m.values().filter_map(text).collect(),
        _ => vec!["*".into()],
    };
    let descending = p
        .get("order")
        .and_then(|o| o.get("id"))
        .and_then(Value::as_str)
        .is_some_and(|d| d.eq_ignore_ascii_case("desc"));
    let start = match p.get("start") {
        Some(v) => as_u64(Some(v)).unwrap_or(0) as usize,
        None => 0,
    };
    let mut found: Vec<(u64, &Map<String, Value>)> = t
        .iter()
        .filter(|(_, r)| as_u64(r.get("entityTypeId")) == Some(et))
        .filter(|(id, r)| {
            conditions.iter().all(|c| {
                let v = if c.field == "id" {
                    Some(id.to_string())
                } else {
                    r.get(&c.field).and_then(text)
                };
                matches(c, v)
            })
        })
        .collect();
    if descending {
        found.reverse();
    }
    let total = found.len();
    let items: Vec<Value> = found
        .into_iter()
        .skip(start)
        .take(PAGE_SIZE)
        .map(|(id, r)| {
            let full = render(schema, id, r);
            if select.iter().any(|s| s == "*") {
                return full;
            }
            let mut out = Map::new();
            out.insert("id".into(), Value::from(id));
            for s in &select {
                out.insert(s.clone(), full.get(s).cloned().unwrap_or(Value::Null));
            }
            Value::Object(out)
        })
        .collect();
    Ok(Out {
        result: json!({ "items": items }),
        total: Some(total),
        next: (total > start + PAGE_SIZE).then_some(start + PAGE_SIZE),
    })
}

fn now_text() -> Value {
    Value::from(iso(OffsetDateTime::now_utc()))
}

/// One REST method other than `batch`.
fn call(t: &mut Table, schema: &Bitrix24Schema, method: &str, p: &Map<String, Value>) -> Result<Out, Fail> {
    match method {
        "crm.item.fields" => {
            entity_type(p)?;
            Ok(Out::plain(fields_description(schema)))
        }
        "crm.item.list" => list(t, schema, p),
        "crm.item.get" => {
            let et = entity_type(p)?;
            let id = item_id(p)?;
            match t.get(id).filter(|r| as_u64(r.get("entityTypeId")) == Some(et)) {
                Some(r) => Ok(Out::plain(json!({"item": render(schema, id, r)}))),
                None => Err(not_found()),
            }
        }
        "crm.item.add" => {
            let et = entity_type(p)?;
            let mut fields = writable(schema, p)?;
            fields.insert("entityTypeId".into(), Value::from(et));
            for (k, v) in [
                ("createdTime", now_text()),
                ("updatedTime", now_text()),
                ("createdBy", Value::from(1)),
                ("updatedBy", Value::from(1)),
            ] {
                fields.insert(k.into(), v);
            }
            let id = t.create(fields);
            let item = t.get(id).map(|r| render(schema, id, r)).unwrap_or(Value::Null);
            Ok(Out::plain(json!({ "item": item })))
        }
        "crm.item.update" => {
            let et = entity_type(p)?;
            let id = item_id(p)?;
            if t.get(id)
                .is_none_or(|r| as_u64(r.get("entityTypeId")) != Some(et))
            {
                return Err(not_found());
            }
            let mut fields = writable(schema, p)?;
            fields.insert("updatedTime".into(), now_text());
            t.update(id, fields);
            let item = t.get(id).map(|r| render(schema, id, r)).unwrap_or(Value::Null);
            Ok(Out::plain(json!({ "item": item })))
        }
        "batch" => Err(fail(
            StatusCode::METHOD_NOT_ALLOWED,
            "ERROR_BATCH_METHOD_NOT_ALLOWED",
            "Method is not allowed for batch usage",
        )),
        _ => Err(fail(
            StatusCode::NOT_FOUND,
            "ERROR_METHOD_NOT_FOUND",
            "Method not found!",
        )),
    }
}

/// PHP renders an empty map as `[]`.
fn php_map(m: Map<String, Value>) -> Value {
    if m.is_empty() {
        json!([])
    } else {
        Value::Object(m)
    }
}

fn batch(t: &mut Table, schema: &Bitrix24Schema, p: &Map<String, Value>) -> Result<Out, Fail> {
    let halt =
        matches!(p.get("halt"), Some(Value::Bool(true))) || as_u64(p.get("halt")).is_some_and(|h| h != 0);
    let commands: Vec<(String, String)> = match p.get("cmd") {
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| (k.clone(), text(v).unwrap_or_default()))
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), text(v).unwrap_or_default()))
            .collect(),
        _ => {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                "INVALID_ARG_VALUE",
                "cmd must be a map of commands",
            ))
        }
    };
    if commands.len() > MAX_BATCH_COMMANDS {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "ERROR_BATCH_LENGTH_EXCEEDED",
            "Max batch length exceeded",
        ));
    }
    let (mut result, mut errors, mut totals, mut nexts, mut times) =
        (Map::new(), Map::new(), Map::new(), Map::new(), Map::new());
    for (key, command) in commands {
        let started = OffsetDateTime::now_utc();
        let (method, query) = command.split_once('?').unwrap_or((command.as_str(), ""));
        let outcome = if query.contains("$result[") {
            Err(fail(
                StatusCode::BAD_REQUEST,
                "INVALID_ARG_VALUE",
                "crm-sim does not resolve $result references",
            ))
        } else {
            call(t, schema, method.trim_end_matches(".json"), &php_params(query))
        };
        match outcome {
            Ok(out) => {
                result.insert(key.clone(), out.result);
                if let Some(total) = out.total {
                    totals.insert(key.clone(), Value::from(total));
                }
                if let Some(next) = out.next {
                    nexts.insert(key.clone(), Value::from(next));
                }
                times.insert(key, time_block(started));
            }
            Err(f) => {
                errors.insert(key, f.body());
                if halt {
                    break;
                }
            }
        }
    }
    Ok(Out::plain(
        json!({"result": php_map(result), "result_error": php_map(errors),
        "result_total": php_map(totals), "result_next": php_map(nexts), "result_time": php_map(times)}),
    ))
}

impl Sim {
    async fn bitrix24(&self, method: &str, p: Map<String, Value>) -> Response {
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
        let outcome = {
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

async fn webhook(
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
        Ok(p) => sim.bitrix24(&method, p).await,
        Err(f) => f.response(),
    }
}

async fn oauth_call(
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
    sim.bitrix24(&method, p).await
}

/// The OAuth server: `grant_type=refresh_token` with the client's id and secret.
async fn token(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn php_parameters_nest() {
        let p = php_params(
            "entityTypeId=2&id=82&fields%5BstageId%5D=C1%3AWON&fields%5BufCrmNote%5D=a%26b%3Dc+d&filter[@originId][]=a&filter[@originId][]=b",
        );
        assert_eq!(
            Value::Object(p),
            json!({"entityTypeId": "2", "id": "82", "fields": {"stageId": "C1:WON", "ufCrmNote": "a&b=c d"},
                "filter": {"@originId": ["a", "b"]}})
        );
    }
}
