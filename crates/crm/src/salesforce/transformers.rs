//! Salesforce wire shapes and their conversion to domain types.

use backbone_sync::event::ShipmentId;
use backbone_sync::mapping::{CrmMapping, CrmShipmentState, CrmStatusWrite};
use backbone_sync::ports::CrmErrorKind;
use serde::Deserialize;
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `[{"message": "...", "errorCode": "...", "fields": [...]}]` (REST) or, inside collection
/// results, `{"statusCode": "...", "message": "..."}`.
#[derive(Debug, Deserialize)]
pub(crate) struct ApiError {
    #[serde(default, alias = "statusCode")]
    #[serde(rename = "errorCode")]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

pub(crate) fn parse_errors(body: &[u8]) -> Vec<ApiError> {
    serde_json::from_slice(body).unwrap_or_default()
}

/// Record-level error codes worth another try: row locks and a concurrent create of the same
/// external id (the retry then updates).
pub(crate) fn classify(code: &str) -> CrmErrorKind {
    match code {
        "UNABLE_TO_LOCK_ROW" | "DUPLICATE_VALUE" | "SERVER_UNAVAILABLE" | "REQUEST_RUNNING_TOO_LONG" => {
            CrmErrorKind::Transient
        }
        _ => CrmErrorKind::Permanent,
    }
}

/// One result of a collections upsert.
#[derive(Debug, Deserialize)]
pub(crate) struct UpsertResult {
    #[serde(default)]
    pub success: bool,
    #[serde(default)]
    pub errors: Vec<ApiError>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct QueryResult {
    #[serde(default)]
    pub records: Vec<Map<String, Value>>,
    #[serde(default)]
    pub done: bool,
    #[serde(default)]
    pub next_records_url: Option<String>,
}

/// An API name: letters, digits and single underscores (custom ones end in `__c`).
pub(crate) fn is_api_name(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.ends_with('_')
}

/// A SOQL string literal.
pub(crate) fn soql_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

pub(crate) fn soql(sobject: &str, mapping: &CrmMapping, shipments: &[ShipmentId]) -> String {
    let f = mapping.fields();
    let ids: Vec<String> = shipments.iter().map(|s| soql_quote(s.as_str())).collect();
    format!(
        "SELECT Id, {ext}, {status}, {ts} FROM {sobject} WHERE {ext} IN ({ids})",
        ext = f.shipment_id,
        status = f.status,
        ts = f.timestamp,
        ids = ids.join(", ")
    )
}

/// Salesforce renders date-times as `2026-11-01T10:00:00.000+0000`: RFC 3339 needs `+00:00`.
pub(crate) fn normalise_time(v: &mut Value) {
    if let Value::String(s) = v {
        let b = s.as_bytes();
        let n = b.len();
        // The shortest text this can apply to is eight bytes: `b[n - 8]` is read.
        if n >= 8
            && matches!(b[n - 5], b'+' | b'-')
            && b[n - 4..].iter().all(u8::is_ascii_digit)
            && b[n - 8] != b'-'
        {
            s.insert(n - 2, ':');
        }
    }
}

/// A record's shipment id and state; `None` for records not of one of `wanted` (SOQL matches
/// text case-insensitively, so `ABC` also returns `abc`).
pub(crate) fn parse_record(
    mut record: Map<String, Value>,
    mapping: &CrmMapping,
    wanted: &[ShipmentId],
) -> Option<(ShipmentId, Option<CrmShipmentState>)> {
    let f = mapping.fields();
    let ext = record.get(&f.shipment_id)?.as_str()?;
    let id = wanted.iter().find(|w| w.as_str() == ext)?.clone();
    if let Some(ts) = record.get_mut(&f.timestamp) {
        normalise_time(ts);
    }
    Some((id, mapping.parse_state(&record)))
}

/// The fields of one write. Times go at millisecond precision, which is what Salesforce keeps.
pub(crate) fn record(mapping: &CrmMapping, w: &CrmStatusWrite) -> Map<String, Value> {
    let mut m = mapping.render(w);
    if let Some(Value::String(s)) = m.get_mut(&mapping.fields().timestamp) {
        if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
            let nanos = t.unix_timestamp_nanos();
            if let Ok(t) = OffsetDateTime::from_unix_timestamp_nanos(nanos - nanos.rem_euclid(1_000_000)) {
                if let Ok(text) = t.format(&Rfc3339) {
                    *s = text;
                }
            }
        }
    }
    m
}

/// `Sforce-Limit-Info: api-usage=10018/100000; api-bursts=1/750` → (used, max).
pub(crate) fn api_usage(header: &str) -> Option<(u64, u64)> {
    header.split(';').find_map(|part| {
        let v = part.trim().strip_prefix("api-usage=")?;
        let (used, max) = v.split_once('/')?;
        Some((used.trim().parse().ok()?, max.trim().parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use backbone_sync::mapping::MappingConfig;

    #[test]
    fn soql_literals_cannot_break_out() {
        assert_eq!(soql_quote(r"a'b\c"), r"'a\'b\\c'");
    }

    #[test]
    fn limit_info_is_parsed_in_both_documented_forms() {
        assert_eq!(api_usage("api-usage=10018/100000"), Some((10018, 100_000)));
        assert_eq!(api_usage("api-usage=18/5000; api-bursts=1/750"), Some((18, 5000)));
        assert_eq!(api_usage("per-app-api-usage=1/2"), None);
    }

    #[test]
    fn a_short_time_ending_like_an_offset_is_left_as_it_is() {
        for short in ["a+1234", "-+1234", "12-1234"] {
            let mut v = Value::from(short);
            normalise_time(&mut v);
            assert_eq!(v, Value::from(short));
        }
        let m = CrmMapping::new(MappingConfig::default()).unwrap();
        let rec: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "shipmentId": "s-1", "status": "x", "timestamp": "a+1234"}))
        .unwrap();
        let wanted = [ShipmentId::parse("s-1").unwrap()];
        let (id, state) = parse_record(rec, &m, &wanted).unwrap();
        assert_eq!(id.as_str(), "s-1");
        assert!(state.is_none(), "not a time: no state");
        let mut v = Value::from("10:00:00+0000");
        normalise_time(&mut v);
        assert_eq!(v, Value::from("10:00:00+00:00"));
    }

    #[test]
    fn salesforce_times_read_back_as_rfc3339() {
        let mut cfg = MappingConfig::default();
        cfg.fields.shipment_id = "Shipment_Id__c".into();
        cfg.fields.status = "Status__c".into();
        cfg.fields.timestamp = "Status_At__c".into();
        let m = CrmMapping::new(cfg).unwrap();
        let rec: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "attributes": {"type": "Shipment__c"}, "Id": "a01", "Shipment_Id__c": "s-1",
            "Status__c": "in_transit", "Status_At__c": "2026-11-01T10:00:00.123+0000"}))
        .unwrap();
        let wanted = [ShipmentId::parse("s-1").unwrap()];
        let (id, state) = parse_record(rec, &m, &wanted).unwrap();
        assert_eq!(id.as_str(), "s-1");
        assert_eq!(
            state.unwrap().updated_at,
            time::macros::datetime!(2026-11-01 10:00:00.123 UTC)
        );
    }
}
