//! SOQL queries by External ID.

use super::{error, not_found, record_id, version, with_usage};
use crate::{json_response, Sim};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{json, Map, Value};

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

pub(super) async fn query(
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
}
