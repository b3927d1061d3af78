//! The outbox relay ([`backbone_kafka::OutboxRelay`]) over the two-way sync's `crm_outbox`: one
//! leader across instances publishes its rows (to `crm.outgoing` and `crm.incoming`) oldest id
//! first, keyed by client id, and deletes them only after the broker acknowledged them.
//!
//! One client's rows get ids in commit order (every writer takes the client's outbox lock first),
//! so they go out in that order; a row that commits late behind a higher id is still there on the
//! next pass, never skipped. A crash between the acknowledgement and the delete publishes those
//! rows again (consumers de-duplicate by `change_id` / `webhook_id`). A row the broker refuses for
//! good (too large, invalid) goes to `dead.letters` with its reason instead, so it cannot block
//! the rest.

use async_trait::async_trait;
use backbone_kafka::{DeadLetter, DeadLetterPublisher, Drained, Lease, OutgoingRecord, RelayObserver};
use backbone_sync::clients::{ClientStore, Leadership, OutboxRow};
use prometheus::IntCounter;
use std::collections::HashMap;
use std::sync::Arc;

/// `crm_outbox` as the relay sees it.
pub struct ClientOutbox {
    /// The topic each row names (`crm.outgoing`, `crm.incoming`) → the configured topic.
    pub topics: HashMap<String, String>,
    pub store: Arc<dyn ClientStore>,
    pub dead_letters: DeadLetterPublisher,
}

struct Held(Box<dyn Leadership>);

#[async_trait]
impl Lease for Held {
    async fn is_alive(&self) -> bool {
        self.0.is_alive().await
    }
}

#[async_trait]
impl backbone_kafka::Outbox for ClientOutbox {
    type Row = OutboxRow;

    async fn try_lead(&self) -> Result<Option<Box<dyn Lease>>, String> {
        let lease = self.store.try_lead().await.map_err(|e| e.to_string())?;
        Ok(lease.map(|l| Box::new(Held(l)) as Box<dyn Lease>))
    }

    async fn next(&self, limit: i64) -> Result<Vec<OutboxRow>, String> {
        self.store.outbox_next(limit).await.map_err(|e| e.to_string())
    }

    fn id(row: &OutboxRow) -> i64 {
        row.id
    }

    fn record<'a>(&'a self, row: &'a OutboxRow) -> OutgoingRecord<'a> {
        let topic = self
            .topics
            .get(&row.topic)
            .map_or(row.topic.as_str(), String::as_str);
        OutgoingRecord::json(topic, &row.key, &row.payload, &row.headers)
    }

    async fn delete(&self, ids: &[i64]) -> Result<(), String> {
        self.store.outbox_delete(ids).await.map_err(|e| e.to_string())
    }

    /// The row's dead letter: its key, without its value (only its size), and where it came from.
    async fn set_aside(
        &self,
        row: &OutboxRow,
        reason_code: &'static str,
        reason: &str,
    ) -> Result<(), String> {
        let letter = DeadLetter {
            source: None,
            key: Some(row.key.clone().into_bytes()),
            payload: None,
            withheld_bytes: Some(row.payload.len()),
            reason_code: reason_code.to_owned(),
            reason: format!("crm_outbox row {} for {}: {reason}", row.id, row.topic),
            attempts: 1,
            replay_count: None,
            event_id: Some(format!("outbox-{}", row.id)),
        };
        self.dead_letters
            .publish(&[letter])
            .await
            .map_err(|e| e.to_string())
    }
}

/// Counts what the relay published, and keeps the stage's readiness: down while a pass fails
/// (PostgreSQL or the broker away).
pub struct Observed {
    pub published: IntCounter,
    pub up: super::StageUp,
}

impl RelayObserver for Observed {
    fn pass(&self, outcome: Result<&Drained, &str>) {
        self.up.set(matches!(outcome, Ok(d) if d.failed.is_none()));
        if let Ok(d) = outcome {
            self.published.inc_by(d.published as u64);
        }
    }
}
