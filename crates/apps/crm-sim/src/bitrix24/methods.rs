//! The `crm.item.*` methods.

use super::filter::{conditions, matches};
use super::params::as_u64;
use super::{fail, iso, Bitrix24Schema, Fail, Out, PAGE_SIZE};
use crate::table::{text, Table};
use axum::http::StatusCode;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

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
pub(super) fn call(
    t: &mut Table,
    schema: &Bitrix24Schema,
    method: &str,
    p: &Map<String, Value>,
) -> Result<Out, Fail> {
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
