//! Salesforce REST, as our adapter calls it: the OAuth token endpoint, `describe`, upsert by
//! External ID (one record, and sObject Collections) and SOQL queries by External ID.
//!
//! - `POST /services/oauth2/token`: `client_credentials` (any client id, the vendor secret) or
//!   `urn:ietf:params:oauth:grant-type:jwt-bearer` (an RS256 JWT whose `iss`, `sub`, `aud` and
//!   `exp` are checked; its signature is not). `instance_url` is this simulator.
//! - Sessions expire (401 `INVALID_SESSION_ID`); every data answer carries
//!   `Sforce-Limit-Info: api-usage=used/max`.
//! - Upsert: 201 created, 200 (`created: false`; 204 before API 46.0), 300 when several
//!   records match, 404 for a field that is not an External ID, 400 `INVALID_FIELD` for unknown
//!   fields. External ids match case-insensitively. Date-time fields keep milliseconds and read
//!   back as `2026-11-01T10:00:00.000+0000`.
//! - Collections upsert: at most 200 records, `allOrNone`, one result per record in order;
//!   a repeated external id in one request and several matching records are
//!   `DUPLICATE_EXTERNAL_ID`.
//! - Queries: `SELECT f, ... FROM Object [WHERE f IN (...) | WHERE f = '...'] [LIMIT n]`;
//!   anything else is `MALFORMED_QUERY`. One page (`done: true`).
//! - Faults: rate limit 403 `REQUEST_LIMIT_EXCEEDED` (`ConcurrentPerOrgLongTxn Limit
//!   exceeded.`), spent `api_quota` 403 `REQUEST_LIMIT_EXCEEDED` (`TotalRequests Limit
//!   exceeded.`), failures and outages 503 `SERVER_UNAVAILABLE`.

use crate::table::{text, Table};
use crate::{json_response, origin, same, Dialect, Gate, Refusal, Sim};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::Router;
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub const MAX_COLLECTION: usize = 200;
const D: Dialect = Dialect::Salesforce;
const READ_ONLY: [&str; 4] = ["Id", "CreatedDate", "LastModifiedDate", "SystemModstamp"];

/// The org's sObject that keeps shipments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SalesforceSchema {
    pub sobject: String,
    /// The External ID field (text, unique).
    pub external_id_field: String,
    /// Other text fields; `Name` is always there.
    pub text_fields: Vec<String>,
    /// Date-time fields.
    pub datetime_fields: Vec<String>,
    /// The field read back as the status (`Sim::status_of`).
    pub status_field: String,
    /// The field that carries the event id (for counting repeated writes).
    pub event_field: String,
}

impl Default for SalesforceSchema {
    fn default() -> Self {
        Self {
            sobject: "Shipment__c".into(),
            external_id_field: "Shipment_Id__c".into(),
            text_fields: vec!["Client_Id__c".into(), "Status__c".into(), "Event_Id__c".into()],
            datetime_fields: vec!["Status_At__c".into()],
            status_field: "Status__c".into(),
            event_field: "Event_Id__c".into(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Id,
    Text,
    DateTime,
}

impl SalesforceSchema {
    /// A field's API name as the schema spells it, and its kind (names are case-insensitive).
    fn field(&self, name: &str) -> Option<(String, Kind, bool)> {
        let read_only = READ_ONLY.iter().find(|f| f.eq_ignore_ascii_case(name)).map(|f| {
            let kind = if *f == "Id" { Kind::Id } else { Kind::DateTime };
            ((*f).to_owned(), kind, true)
        });
        read_only.or_else(|| {
            std::iter::once(&self.external_id_field)
                .chain(&self.text_fields)
                .chain(std::iter::once(&"Name".to_owned()))
                .find(|f| f.eq_ignore_ascii_case(name))
                .map(|f| (f.clone(), Kind::Text, false))
                .or_else(|| {
                    self.datetime_fields
                        .iter()
                        .find(|f| f.eq_ignore_ascii_case(name))
                        .map(|f| (f.clone(), Kind::DateTime, false))
                })
        })
    }

    fn all_fields(&self) -> Vec<(String, Kind, bool)> {
        let mut out: Vec<(String, Kind, bool)> = READ_ONLY
            .iter()
            .map(|f| {
                (
                    (*f).to_owned(),
                    if *f == "Id" { Kind::Id } else { Kind::DateTime },
                    true,
                )
            })
            .collect();
        out.push(("Name".into(), Kind::Text, false));
        out.push((self.external_id_field.clone(), Kind::Text, false));
        out.extend(self.text_fields.iter().map(|f| (f.clone(), Kind::Text, false)));
        out.extend(
            self.datetime_fields
                .iter()
                .map(|f| (f.clone(), Kind::DateTime, false)),
        );
        out
    }
}

pub(crate) fn table(schema: &SalesforceSchema) -> Table {
    Table::new(1, &schema.external_id_field, &schema.event_field, true)
}

/// An 18-character record id.
pub fn record_id(n: u64) -> String {
    format!("a01SIM{n:09}AAA")
}

pub(crate) fn routes() -> Router<Sim> {
    Router::new()
        .route("/services/oauth2/token", post(token))
        .route(
            "/services/data/{version}/sobjects/{sobject}/describe",
            get(describe),
        )
        .route(
            "/services/data/{version}/sobjects/{sobject}/{field}/{value}",
            patch(upsert_one),
        )
        .route(
            "/services/data/{version}/composite/sobjects/{sobject}/{field}",
            patch(upsert_collection),
        )
        .route("/services/data/{version}/query", get(query))
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(
        status,
        "application/json",
        &json!([{"message": message, "errorCode": code, "fields": []}]),
    )
}

fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "The requested resource does not exist",
    )
}

/// Salesforce's own date-time rendering: `2026-11-01T10:00:00.000+0000`.
fn sf_time(t: OffsetDateTime) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]+0000"
    );
    t.to_offset(time::UtcOffset::UTC).format(&fmt).unwrap_or_default()
}

fn parse_time(s: &str) -> Option<OffsetDateTime> {
    let mut s = s.to_owned();
    // `+0000` → `+00:00`
    let n = s.len();
    if n > 5 && matches!(s.as_bytes()[n - 5], b'+' | b'-') && s[n - 4..].bytes().all(|b| b.is_ascii_digit()) {
        s.insert(n - 2, ':');
    }
    OffsetDateTime::parse(&s, &Rfc3339).ok()
}

fn now_value() -> Value {
    Value::from(sf_time(OffsetDateTime::now_utc()))
}

/// `v62.0` → 62.0; versions before 20.0 do not exist.
fn version(v: &str) -> Option<f64> {
    v.strip_prefix('v')?.parse().ok().filter(|v| *v >= 20.0)
}

impl Sim {
    /// Session and faults of one data call; `Err` is the answer to send instead.
    async fn salesforce_admit(&self, headers: &HeaderMap) -> Result<(u64, u64), Response> {
        let valid = crate::bearer(headers).is_some_and(|t| self.lock().grants(D).access_valid(t));
        if !valid {
            self.reject(D);
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "INVALID_SESSION_ID",
                "Session expired or invalid",
            ));
        }
        let Gate {
            refusal,
            retry_after,
            api_usage,
        } = self.gate(D).await;
        let refused = match refusal {
            None => return Ok(api_usage),
            Some(Refusal::RateLimited) => error(
                StatusCode::FORBIDDEN,
                "REQUEST_LIMIT_EXCEEDED",
                "ConcurrentPerOrgLongTxn Limit exceeded.",
            ),
            Some(Refusal::QuotaSpent) => error(
                StatusCode::FORBIDDEN,
                "REQUEST_LIMIT_EXCEEDED",
                "TotalRequests Limit exceeded.",
            ),
            Some(Refusal::Outage | Refusal::Failure) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVER_UNAVAILABLE",
                "The server is temporarily unavailable (simulated).",
            ),
        };
        Err(with_usage(
            crate::with_retry_after(refused, retry_after),
            api_usage,
        ))
    }
}

fn with_usage(mut resp: Response, (used, max): (u64, u64)) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!("api-usage={used}/{max}")) {
        resp.headers_mut().insert("sforce-limit-info", v);
    }
    resp
}

async fn token(State(sim): State<Sim>, headers: HeaderMap, body: Bytes) -> Response {
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

async fn describe(
    State(sim): State<Sim>,
    Path((v, sobject)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let usage = match sim.salesforce_admit(&headers).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let schema = &sim.schemas().salesforce;
    if version(&v).is_none() || !sobject.eq_ignore_ascii_case(&schema.sobject) {
        return with_usage(not_found(), usage);
    }
    let fields: Vec<Value> = schema
        .all_fields()
        .into_iter()
        .map(|(name, kind, read_only)| {
            let external = name == schema.external_id_field;
            let ty = match kind {
                Kind::Id => "id",
                Kind::Text => "string",
                Kind::DateTime => "datetime",
            };
            json!({"name": name, "label": name, "type": ty, "externalId": external, "unique": external,
                "idLookup": external || kind == Kind::Id, "updateable": !read_only,
                "createable": !read_only, "nillable": !read_only, "length": if kind == Kind::Text { 255 } else { 0 }})
        })
        .collect();
    with_usage(
        json_response(
            StatusCode::OK,
            "application/json",
            &json!({"name": schema.sobject, "label": schema.sobject, "custom": true,
                "createable": true, "updateable": true, "queryable": true, "fields": fields}),
        ),
        usage,
    )
}

/// The fields of one record to write, checked and converted; `Err` is the error list entry.
fn fields_of(
    schema: &SalesforceSchema,
    body: &Map<String, Value>,
) -> Result<Map<String, Value>, (StatusCode, &'static str, String)> {
    let mut out = Map::new();
    for (k, v) in body {
        if k == "attributes" {
            continue;
        }
        let Some((name, kind, read_only)) = schema.field(k) else {
            return Err((
                StatusCode::BAD_REQUEST,
                "INVALID_FIELD",
                format!("No such column '{k}' on sobject of type {}", schema.sobject),
            ));
        };
        if read_only {
            return Err((
                StatusCode::BAD_REQUEST,
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                format!("Unable to create/update fields: {name}."),
            ));
        }
        let value = match (kind, v) {
            (_, Value::Null) => Value::Null,
            (Kind::DateTime, v) => match v.as_str().and_then(parse_time) {
                Some(t) => Value::from(sf_time(t)),
                None => {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        "JSON_PARSER_ERROR",
                        format!(
                            "Cannot deserialize instance of datetime from VALUE_STRING value {v} for {name}"
                        ),
                    ))
                }
            },
            (_, v) => match text(v) {
                Some(s) => Value::from(s),
                None => {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        "JSON_PARSER_ERROR",
                        format!("Cannot deserialize instance of string for {name}"),
                    ))
                }
            },
        };
        out.insert(name, value);
    }
    Ok(out)
}

fn write(t: &mut Table, existing: Option<u64>, mut fields: Map<String, Value>) -> u64 {
    fields.insert("LastModifiedDate".into(), now_value());
    fields.insert("SystemModstamp".into(), now_value());
    match existing {
        Some(id) => {
            t.update(id, fields);
            id
        }
        None => {
            fields.insert("CreatedDate".into(), now_value());
            t.create(fields)
        }
    }
}

async fn upsert_one(
    State(sim): State<Sim>,
    Path((v, sobject, field, value)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let usage = match sim.salesforce_admit(&headers).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let answer = upsert_one_answer(&sim, &v, &sobject, &field, &value, &body);
    with_usage(answer, usage)
}

fn upsert_one_answer(sim: &Sim, v: &str, sobject: &str, field: &str, value: &str, body: &[u8]) -> Response {
    let schema = &sim.schemas().salesforce;
    let Some(api) = version(v) else {
        return not_found();
    };
    if !sobject.eq_ignore_ascii_case(&schema.sobject)
        || !field.eq_ignore_ascii_case(&schema.external_id_field)
    {
        return not_found();
    }
    let body: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, "JSON_PARSER_ERROR", &e.to_string()),
    };
    let mut fields = match fields_of(schema, &body) {
        Ok(f) => f,
        Err((status, code, message)) => return error(status, code, &message),
    };
    let ext = &schema.external_id_field;
    if fields
        .get(ext)
        .and_then(text)
        .is_some_and(|e| !e.eq_ignore_ascii_case(value))
    {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_FIELD",
            &format!("{ext} in the body differs from the External ID in the URL"),
        );
    }
    let mut s = sim.lock();
    let t = &mut s.salesforce;
    let matching = t.find(value);
    if matching.len() > 1 {
        let urls: Vec<String> = matching
            .iter()
            .map(|id| {
                format!(
                    "/services/data/{v}/sobjects/{}/{}",
                    schema.sobject,
                    record_id(*id)
                )
            })
            .collect();
        return json_response(StatusCode::MULTIPLE_CHOICES, "application/json", &json!(urls));
    }
    let existing = matching.first().copied();
    if existing.is_none() {
        fields.insert(ext.clone(), Value::from(value));
    }
    let id = write(t, existing, fields);
    let created = existing.is_none();
    match (created, api >= 46.0) {
        (false, false) => StatusCode::NO_CONTENT.into_response(),
        (_, new_api) => {
            let mut body = json!({"id": record_id(id), "success": true, "errors": []});
            if new_api {
                body["created"] = Value::from(created);
            }
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            json_response(status, "application/json", &body)
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Collection {
    #[serde(default)]
    all_or_none: bool,
    records: Vec<Map<String, Value>>,
}

async fn upsert_collection(
    State(sim): State<Sim>,
    Path((v, sobject, field)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let usage = match sim.salesforce_admit(&headers).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    with_usage(upsert_collection_answer(&sim, &v, &sobject, &field, &body), usage)
}

fn record_error(code: &str, message: &str, fields: &[&str]) -> Value {
    json!({"success": false, "errors": [{"statusCode": code, "message": message, "fields": fields}]})
}

fn upsert_collection_answer(sim: &Sim, v: &str, sobject: &str, field: &str, body: &[u8]) -> Response {
    let schema = &sim.schemas().salesforce;
    let ext = schema.external_id_field.as_str();
    if version(v).is_none_or(|api| api < 46.0)
        || !sobject.eq_ignore_ascii_case(&schema.sobject)
        || !field.eq_ignore_ascii_case(ext)
    {
        return not_found();
    }
    let req: Collection = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "JSON_PARSER_ERROR", &e.to_string()),
    };
    if req.records.len() > MAX_COLLECTION {
        return error(
            StatusCode::BAD_REQUEST,
            "EXCEEDED_ID_LIMIT",
            "record limit reached. cannot submit more than 200 records into this call",
        );
    }
    // Shape problems refuse the whole request, as the JSON deserializer does.
    let mut planned = Vec::with_capacity(req.records.len());
    for r in &req.records {
        let ty = r
            .get("attributes")
            .and_then(|a| a.get("type"))
            .and_then(Value::as_str);
        if !ty.is_some_and(|t| t.eq_ignore_ascii_case(&schema.sobject)) {
            return error(
                StatusCode::BAD_REQUEST,
                "INVALID_TYPE",
                "Must send a concrete entity type.",
            );
        }
        match fields_of(schema, r) {
            Ok(f) => planned.push(f),
            Err((status, code, message)) => return error(status, code, &message),
        }
    }
    let keys: Vec<Option<String>> = planned
        .iter()
        .map(|f| {
            f.get(ext)
                .and_then(text)
                .filter(|s| !s.is_empty())
                .map(|s| s.to_lowercase())
        })
        .collect();
    let mut s = sim.lock();
    let t = &mut s.salesforce;
    let verdicts: Vec<Result<Option<u64>, Value>> = keys
        .iter()
        .map(|k| {
            let Some(k) = k else {
                return Err(record_error(
                    "MISSING_ARGUMENT",
                    "External ID field value is missing",
                    &[ext],
                ));
            };
            if keys.iter().filter(|o| o.as_ref() == Some(k)).count() > 1 {
                return Err(record_error(
                    "DUPLICATE_EXTERNAL_ID",
                    &format!("Duplicate external id specified: {k}"),
                    &[ext],
                ));
            }
            match t.find(k).as_slice() {
                [] => Ok(None),
                [one] => Ok(Some(*one)),
                _ => Err(record_error(
                    "DUPLICATE_EXTERNAL_ID",
                    &format!("{ext}: more than one record found for external id field: {k}"),
                    &[ext],
                )),
            }
        })
        .collect();
    let any_failed = verdicts.iter().any(Result::is_err);
    let results: Vec<Value> = verdicts
        .into_iter()
        .zip(planned)
        .map(|(verdict, fields)| match verdict {
            Err(e) => e,
            Ok(_) if req.all_or_none && any_failed => record_error(
                "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                "Record rolled back because not all records were valid and the request was using AllOrNone header",
                &[],
            ),
            Ok(existing) => {
                let id = write(t, existing, fields);
                json!({"id": record_id(id), "success": true, "errors": [], "created": existing.is_none()})
            }
        })
        .collect();
    json_response(StatusCode::OK, "application/json", &Value::from(results))
}

/// A parsed query: `SELECT fields FROM object [WHERE field IN (...)] [LIMIT n]`.
#[derive(Debug, PartialEq)]
struct Soql {
    fields: Vec<String>,
    object: String,
    filter: Option<(String, Vec<String>)>,
    limit: Option<usize>,
}

/// Splits off a keyword (case-insensitive, followed by whitespace or the end).
fn keyword<'a>(s: &'a str, word: &str) -> Option<&'a str> {
    let s = s.trim_start();
    let head = s.get(..word.len())?;
    let rest = &s[word.len()..];
    (head.eq_ignore_ascii_case(word) && (rest.is_empty() || rest.starts_with(char::is_whitespace)))
        .then_some(rest)
}

/// One string literal at the start of `s`; the rest after it.
fn literal(s: &str) -> Option<(String, &str)> {
    let s = s.trim_start();
    let mut chars = s.char_indices();
    if chars.next()?.1 != '\'' {
        return None;
    }
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '\'' => return Some((out, &s[i + 1..])),
            '\\' => {
                let (_, e) = chars.next()?;
                out.push(match e {
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    other => other,
                });
            }
            c => out.push(c),
        }
    }
    None
}

fn parse_soql(q: &str) -> Result<Soql, String> {
    let rest = keyword(q, "SELECT").ok_or("expected SELECT")?;
    let upper = rest.to_ascii_uppercase();
    let from = upper.find(" FROM ").ok_or("expected FROM")?;
    let fields: Vec<String> = rest[..from].split(',').map(|f| f.trim().to_owned()).collect();
    if fields
        .iter()
        .any(|f| f.is_empty() || !f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    {
        return Err("unexpected token in the field list".into());
    }
    let rest = rest[from + 6..].trim_start();
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    let object = rest[..end].to_owned();
    let mut rest = &rest[end..];
    let mut filter = None;
    if let Some(after) = keyword(rest, "WHERE") {
        let after = after.trim_start();
        let end = after
            .find(|c: char| c.is_whitespace() || c == '=' || c == '(')
            .ok_or("unexpected end of the WHERE clause")?;
        let field = after[..end].to_owned();
        let after = after[end..].trim_start();
        let mut values = Vec::new();
        if let Some(list) = keyword(after, "IN") {
            let mut list = list.trim_start().strip_prefix('(').ok_or("expected ( after IN")?;
            loop {
                let (v, r) = literal(list).ok_or("expected a string literal")?;
                values.push(v);
                let r = r.trim_start();
                if let Some(r) = r.strip_prefix(',') {
                    list = r;
                } else {
                    rest = r.strip_prefix(')').ok_or("expected ) after the IN list")?;
                    break;
                }
            }
        } else if let Some(eq) = after.strip_prefix('=') {
            let (v, r) = literal(eq).ok_or("expected a string literal")?;
            values.push(v);
            rest = r;
        } else {
            return Err("crm-sim understands only WHERE field IN (...) and WHERE field = '...'".into());
        }
        filter = Some((field, values));
    }
    let mut limit = None;
    if let Some(after) = keyword(rest, "LIMIT") {
        let after = after.trim();
        limit = Some(after.parse().map_err(|_| "LIMIT needs a number")?);
        rest = "";
    }
    if !rest.trim().is_empty() {
        return Err(format!("unexpected token: {}", rest.trim()));
    }
    Ok(Soql {
        fields,
        object,
        filter,
        limit,
    })
}

async fn query(
    State(sim): State<Sim>,
    Path(v): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let usage = match sim.salesforce_admit(&headers).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    with_usage(query_answer(&sim, &v, raw.as_deref().unwrap_or_default()), usage)
}

fn query_answer(sim: &Sim, v: &str, raw: &str) -> Response {
    let schema = &sim.schemas().salesforce;
    if version(v).is_none() {
        return not_found();
    }
    let Some(q) = form_urlencoded::parse(raw.as_bytes())
        .find(|(k, _)| k == "q")
        .map(|(_, q)| q.into_owned())
    else {
        return error(StatusCode::BAD_REQUEST, "MALFORMED_QUERY", "q is required");
    };
    let soql = match parse_soql(&q) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, "MALFORMED_QUERY", &e),
    };
    if !soql.object.eq_ignore_ascii_case(&schema.sobject) {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_TYPE",
            &format!("sObject type '{}' is not supported.", soql.object),
        );
    }
    let mut columns = Vec::with_capacity(soql.fields.len());
    for f in soql.fields.iter().chain(soql.filter.as_ref().map(|(f, _)| f)) {
        match schema.field(f) {
            Some((name, _, _)) => columns.push(name),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_FIELD",
                    &format!("No such column '{f}' on entity '{}'.", schema.sobject),
                )
            }
        }
    }
    let filter_column = soql.filter.as_ref().and_then(|_| columns.pop());
    let s = sim.lock();
    let t = &s.salesforce;
    let value_of = |id: u64, r: &Map<String, Value>, column: &str| -> Value {
        if column == "Id" {
            Value::from(record_id(id))
        } else {
            r.get(column).cloned().unwrap_or(Value::Null)
        }
    };
    let records: Vec<Value> = t
        .iter()
        .filter(|(id, r)| match (&soql.filter, &filter_column) {
            (Some((_, values)), Some(column)) => value_of(*id, r, column)
                .as_str()
                .is_some_and(|v| values.iter().any(|w| w.eq_ignore_ascii_case(v))),
            _ => true,
        })
        .take(soql.limit.unwrap_or(usize::MAX))
        .map(|(id, r)| {
            let mut out = Map::new();
            out.insert(
                "attributes".into(),
                json!({"type": schema.sobject,
                    "url": format!("/services/data/{v}/sobjects/{}/{}", schema.sobject, record_id(id))}),
            );
            for c in &columns {
                out.insert(c.clone(), value_of(id, r, c));
            }
            Value::Object(out)
        })
        .collect();
    json_response(
        StatusCode::OK,
        "application/json",
        &json!({"totalSize": records.len(), "done": true, "records": records}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_with_escaped_literals_parse() {
        let q = parse_soql(
            r"SELECT Id, Shipment_Id__c FROM Shipment__c WHERE Shipment_Id__c IN ('a\'b', 'c\\d', 's-1')",
        )
        .unwrap();
        assert_eq!(q.fields, ["Id", "Shipment_Id__c"]);
        assert_eq!(q.object, "Shipment__c");
        assert_eq!(
            q.filter,
            Some((
                "Shipment_Id__c".into(),
                vec!["a'b".into(), r"c\d".into(), "s-1".into()]
            ))
        );
        let q = parse_soql("select Id from Shipment__c where Name = 'x' limit 5").unwrap();
        assert_eq!(q.limit, Some(5));
        assert!(parse_soql("SELECT Id FROM Shipment__c WHERE Name LIKE 'x%'").is_err());
        assert!(parse_soql("SELECT Id FROM Shipment__c ORDER BY Name").is_err());
    }

    #[test]
    fn times_read_back_in_salesforce_form() {
        let t = parse_time("2026-11-01T10:00:00.123456Z").unwrap();
        assert_eq!(sf_time(t), "2026-11-01T10:00:00.123+0000");
        assert_eq!(
            parse_time("2026-11-01T10:00:00.123+0000"),
            parse_time("2026-11-01T10:00:00.123Z")
        );
        assert_eq!(record_id(42).len(), 18);
    }
}
