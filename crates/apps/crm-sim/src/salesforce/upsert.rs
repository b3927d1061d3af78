//! Upsert by External ID: one record, and sObject Collections.

use super::schema::{Kind, SalesforceSchema};
use super::{
    error, not_found, now_value, parse_time, record_id, sf_time, version, with_usage, MAX_COLLECTION,
};
use crate::table::{text, Table};
use crate::{json_response, Sim};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Map, Value};

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

pub(super) async fn upsert_one(
    State(sim): State<Sim>,
    Path((v, sobject, field, value)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let usage = match sim.salesforce_admit(&headers).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    if let Some(answer) = super::people::upsert(&sim, &v, &sobject, &field, &value, &headers, &body) {
        return with_usage(answer, usage);
    }
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

pub(super) async fn upsert_collection(
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
