//! `batch`: up to 50 commands run in order, each answered under its key.

use super::methods::call;
use super::params::{as_u64, php_params};
use super::{fail, time_block, Bitrix24Schema, Fail, Out, MAX_BATCH_COMMANDS};
use crate::table::{text, Table};
use axum::http::StatusCode;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

/// PHP renders an empty map as `[]`.
fn php_map(m: Map<String, Value>) -> Value {
    if m.is_empty() {
        json!([])
    } else {
        Value::Object(m)
    }
}

pub(super) fn batch(t: &mut Table, schema: &Bitrix24Schema, p: &Map<String, Value>) -> Result<Out, Fail> {
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
