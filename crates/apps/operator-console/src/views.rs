//! What the pages read from the services' admin APIs: only the fields they show, each with a
//! default, so a service that adds a field never breaks a page.

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct CrmOverview {
    pub vendor: String,
    pub now: CrmNow,
    pub window: CrmWindow,
    pub series: CrmSeries,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct CrmNow {
    pub breaker: String,
    pub crm_paused: bool,
    pub retry_queue_depth: i64,
    pub consumer_lag: i64,
    pub outbox_depth: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct CrmWindow {
    pub hours: u32,
    pub attempts: BTreeMap<String, u64>,
    pub success_ratio: Option<f64>,
    pub lag_p50_ms: Option<f64>,
    pub lag_p99_ms: Option<f64>,
    pub dead_letters_by_reason: BTreeMap<String, u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct CrmSeries {
    pub bucket_seconds: i64,
    pub buckets: Vec<CrmPoint>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct CrmPoint {
    pub start: String,
    pub success: u64,
    pub retry_scheduled: u64,
    pub dead_lettered: u64,
    pub skipped: u64,
    pub lag_p99_ms: Option<f64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct GiftOverview {
    pub certificates_by_state: BTreeMap<String, u64>,
    pub outbox: GiftOutbox,
    pub sms: GiftSms,
    pub uploads: GiftUploads,
    pub series: GiftSeries,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct GiftOutbox {
    pub pending: i64,
    pub parked: i64,
    pub oldest_pending_age_seconds: Option<f64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct GiftSms {
    pub pending: i64,
    pub failed: i64,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct GiftUploads {
    pub open: i64,
    pub recent: i64,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct GiftSeries {
    pub buckets: Vec<GiftPoint>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct GiftPoint {
    pub start: String,
    pub operations: u64,
    pub refused: u64,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct LetterList {
    pub letters: Vec<LetterSummary>,
    pub truncated: bool,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default)]
pub struct LetterSummary {
    pub partition: i32,
    pub offset: i64,
    pub dead_lettered_at: Option<String>,
    pub event_id: Option<String>,
    pub reason_code: Option<String>,
    pub reason: Option<String>,
    pub source_topic: Option<String>,
    pub replay_count: u32,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct Letter {
    #[serde(flatten)]
    pub summary: LetterSummary,
    pub headers: BTreeMap<String, String>,
    pub key: Option<String>,
    pub payload: Value,
    pub payload_bytes: usize,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct ReplaySummary {
    pub matched: usize,
    pub replayed: usize,
    pub refused: usize,
    pub dry_run: bool,
    pub letters: Vec<ReplayedLetter>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct ReplayedLetter {
    pub partition: i32,
    pub offset: i64,
    pub event_id: Option<String>,
    pub reason_code: Option<String>,
    pub target_topic: String,
    pub replay_count: u32,
    pub refused: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct Found {
    pub by: String,
    pub value: String,
    pub events: Vec<Trace>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct Trace {
    pub event_id: String,
    pub outcome: Option<String>,
    pub replay_count: u32,
    pub attempts: Vec<Attempt>,
    pub retry: Option<Retry>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct Attempt {
    pub attempt: u32,
    pub outcome: String,
    pub sent_at: String,
    pub http_status: Option<u16>,
    pub response_excerpt: Option<String>,
    pub error: Option<String>,
    pub latency_ms: Option<f64>,
    pub event_time: Option<String>,
    pub shipment_id: Option<String>,
    pub correlation_id: Option<String>,
    pub source: Option<Source>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct Source {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct Retry {
    pub next_attempt_at: String,
    pub attempts: u32,
    pub last_error: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct TaskList {
    pub tasks: Vec<Task>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct Task {
    pub id: i64,
    pub client_id: String,
    pub field: String,
    pub ours: Value,
    pub ours_at: Option<String>,
    pub ours_source: Option<String>,
    pub theirs: Value,
    pub theirs_at: Option<String>,
    pub theirs_source: String,
    pub reason: String,
    pub state: String,
    pub created_at: String,
    pub resolution: Option<Value>,
    pub resolved_by: Option<String>,
    pub resolved_at: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct Certificate {
    pub code_masked: String,
    pub state: String,
    pub currency: String,
    pub balance_minor: i64,
    pub available_minor: i64,
    pub expires_at: Option<String>,
    pub holds: Vec<BTreeMap<String, Value>>,
    pub history: Vec<BTreeMap<String, Value>>,
    pub audit: Vec<BTreeMap<String, Value>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct Uploads {
    pub uploads: Vec<BTreeMap<String, Value>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct SmsList {
    pub deliveries: Vec<BTreeMap<String, Value>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct Requeued {
    pub matched: i64,
    pub requeued: i64,
    pub dry_run: bool,
}

/// A time as the pages show it: `2026-11-01 10:00:05 UTC`, whatever precision it came with;
/// anything else as it is.
pub fn when(rfc3339: &str) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()
        .and_then(|t| t.to_offset(time::UtcOffset::UTC).format(&f).ok())
        .unwrap_or_else(|| rfc3339.to_owned())
}

/// A JSON value as a cell's text: strings bare (times as [`when`] writes them), `null` as a
/// dash, the rest as JSON.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "—".to_owned(),
        Value::String(s) => when(s),
        other => other.to_string(),
    }
}

/// The columns of a list of objects: the keys of the first rows, in a stable order.
pub fn columns(rows: &[BTreeMap<String, Value>]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for row in rows.iter().take(20) {
        for k in row.keys() {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    keys
}

/// The rows as text, column by column.
pub fn table(rows: &[BTreeMap<String, Value>]) -> (Vec<String>, Vec<Vec<String>>) {
    let cols = columns(rows);
    let body = rows
        .iter()
        .map(|r| {
            cols.iter()
                .map(|c| r.get(c).map_or_else(|| "—".to_owned(), cell))
                .collect()
        })
        .collect();
    (cols, body)
}
