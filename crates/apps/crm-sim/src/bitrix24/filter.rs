//! `crm.item.list` filters: the operator prefixes of a `filter` key and how each compares.

use super::{fail, Fail};
use crate::table::text;
use axum::http::StatusCode;
use serde_json::Value;

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

pub(super) struct Condition {
    op: Op,
    pub field: String,
    values: Vec<String>,
}

pub(super) fn conditions(filter: Option<&Value>) -> Result<Vec<Condition>, Fail> {
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

pub(super) fn matches(c: &Condition, value: Option<String>) -> bool {
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
