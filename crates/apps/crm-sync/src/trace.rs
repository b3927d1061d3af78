//! `crm-sync trace EVENT_ID`: what became of one parcel-status event, as JSON, from the ledger
//! (every attempt of `integrations_log` with the CRM's status and excerpt, the recorded outcome,
//! the retry waiting in the queue with its due time). The CRM bodies are left out.

use backbone_sync::event::EventId;
use backbone_sync::ports::{AttemptRecord, SourcePosition, SyncLedger};
use serde::Serialize;
use time::OffsetDateTime;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Trace {
    pub event_id: String,
    /// Whether the ledger knows the event at all.
    pub found: bool,
    /// The latest outcome recorded (`success`, `retry_scheduled`, `dead_lettered`, ...).
    #[schema(value_type = Option<String>)]
    pub outcome: Option<&'static str>,
    /// How often the event came back from the dead letters.
    pub replay_count: u32,
    /// Oldest first.
    pub attempts: Vec<Attempt>,
    /// The next attempt, while the event waits in the retry queue.
    pub retry: Option<Retry>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Source {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl From<&SourcePosition> for Source {
    fn from(p: &SourcePosition) -> Self {
        Self {
            topic: p.topic.clone(),
            partition: p.partition,
            offset: p.offset,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Attempt {
    pub attempt: u32,
    #[schema(value_type = String)]
    pub outcome: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub sent_at: OffsetDateTime,
    pub http_status: Option<u16>,
    pub response_excerpt: Option<String>,
    pub error: Option<String>,
    pub latency_ms: Option<f64>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub event_time: Option<OffsetDateTime>,
    pub shipment_id: Option<String>,
    pub client_id: Option<String>,
    pub correlation_id: Option<String>,
    /// Where the record was read from.
    pub source: Option<Source>,
}

impl From<&AttemptRecord> for Attempt {
    fn from(a: &AttemptRecord) -> Self {
        Self {
            attempt: a.attempt,
            outcome: a.outcome.as_str(),
            sent_at: a.sent_at,
            http_status: a.http_status,
            response_excerpt: a.response_excerpt.clone(),
            error: a.error.clone(),
            latency_ms: a.latency_ms,
            event_time: a.event_time,
            shipment_id: a.shipment_id.as_ref().map(|s| s.as_str().to_owned()),
            client_id: a.client_id.clone(),
            correlation_id: a.correlation_id.clone(),
            source: a.source.as_ref().map(Source::from),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Retry {
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub next_attempt_at: OffsetDateTime,
    pub attempts: u32,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub first_failed_at: OffsetDateTime,
    pub last_error: String,
    pub source: Source,
}

/// The trace of `event_id`. `Err` when the id is not a valid event id or the ledger fails.
pub async fn trace(ledger: &dyn SyncLedger, event_id: &str) -> anyhow::Result<Trace> {
    let id = EventId::parse(event_id).map_err(|e| anyhow::anyhow!("event id: {e}"))?;
    let t = ledger.trace(&id).await?;
    Ok(Trace {
        event_id: id.as_str().to_owned(),
        found: !t.attempts.is_empty() || t.recorded.is_some() || t.parked.is_some(),
        outcome: t.recorded.as_ref().map(|r| r.outcome.as_str()),
        replay_count: t.recorded.as_ref().map_or(0, |r| r.replay_count),
        attempts: t.attempts.iter().map(Attempt::from).collect(),
        retry: t.parked.as_ref().map(|p| Retry {
            next_attempt_at: p.next_attempt_at,
            attempts: p.attempts,
            first_failed_at: p.first_failed_at,
            last_error: p.last_error.clone(),
            source: Source::from(&p.source),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::trace;
    use backbone_sync::memory::MemoryLedger;
    use backbone_sync::ports::{AttemptRecord, LedgerBatch, Outcome, Recorded, SourcePosition, SyncLedger};
    use serde_json::json;
    use time::OffsetDateTime;

    fn attempt(n: u32, outcome: Outcome, status: u16) -> AttemptRecord {
        AttemptRecord {
            event_id: Some(backbone_sync::event::EventId::parse("ev-1").expect("id")),
            shipment_id: None,
            client_id: Some("c-1".into()),
            correlation_id: Some("corr-1".into()),
            payload: Some(json!({"secret-ish": "the CRM body"})),
            http_status: Some(status),
            response_excerpt: Some(format!("{status}")),
            outcome,
            attempt: n,
            error: None,
            event_time: None,
            sent_at: OffsetDateTime::from_unix_timestamp(1_893_456_000 + i64::from(n)).expect("time"),
            latency_ms: Some(2.0),
            source: Some(SourcePosition {
                topic: "tracking.events".into(),
                partition: 3,
                offset: 17,
            }),
        }
    }

    #[tokio::test]
    async fn a_trace_lists_the_attempts_in_order_with_the_crm_status_and_leaves_the_bodies_out() {
        let ledger = MemoryLedger::default();
        ledger
            .commit(&LedgerBatch {
                attempts: vec![
                    attempt(1, Outcome::RetryScheduled, 503),
                    attempt(2, Outcome::Success, 200),
                ],
                processed: vec![(
                    backbone_sync::event::EventId::parse("ev-1").expect("id"),
                    Recorded {
                        outcome: Outcome::Success,
                        replay_count: 1,
                    },
                )],
                ..LedgerBatch::default()
            })
            .await
            .expect("commit");
        let t = serde_json::to_value(trace(&ledger, "ev-1").await.expect("trace")).expect("json");
        assert_eq!(t["found"], true);
        assert_eq!(t["outcome"], "success");
        assert_eq!(t["replay_count"], 1);
        assert_eq!(t["attempts"][0]["http_status"], 503);
        assert_eq!(t["attempts"][0]["outcome"], "retry_scheduled");
        assert_eq!(t["attempts"][1]["sent_at"], "2030-01-01T00:00:02Z");
        assert_eq!(
            t["attempts"][1]["source"],
            json!({"topic": "tracking.events", "partition": 3, "offset": 17})
        );
        assert_eq!(t["retry"], serde_json::Value::Null);
        assert!(!t.to_string().contains("the CRM body"), "{t}");

        let unknown = trace(&ledger, "ev-unknown").await.expect("trace");
        assert!(!unknown.found && unknown.attempts.is_empty() && unknown.outcome.is_none());
        assert!(trace(&ledger, "").await.is_err(), "an empty id is refused");
    }
}
