//! Parameters as PHP clients send them: in the query, as JSON, as a form, or URL-encoded
//! inside a `batch` command.

use super::{fail, Fail};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};

/// PHP-style parameters (`fields[stageId]=X&filter[@originId][]=a`) as nested JSON.
pub(super) fn php_params(query: &str) -> Map<String, Value> {
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
pub(super) fn params(
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Map<String, Value>, Fail> {
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

pub(super) fn as_u64(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
