//! The outbox relay ([`backbone_kafka::OutboxRelay`]) over the certificates' outbox: one leader
//! across instances publishes committed events in id order and deletes them only after the broker
//! acknowledged them. A crash between the acknowledgement and the delete publishes those events
//! again (consumers de-duplicate by `event_id`); nothing is lost, and a certificate's events
//! never overtake each other.
//!
//! A row the broker refuses for good (too large, invalid: [`backbone_kafka::KafkaError::permanent`])
//! is parked in `outbox_parked` with its reason and counted
//! (`gift_certificates_outbox_parked_total{reason}`); the rows after it, of the same certificate
//! too, still go out. Any other failure (the broker away) retries the same rows.

use crate::config::Topics;
use crate::state::AppState;
use async_trait::async_trait;
use backbone_certificates::store::{Leadership, Outbox, OutboxRecord};
use backbone_kafka::{Drained, KafkaPublisher, Lease, OutboxRelay, OutgoingRecord, RelayObserver};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const BATCH: i64 = 2000;
const IDLE_POLL: Duration = Duration::from_millis(250);
/// How long the relay keeps publishing once a stop is asked (part of the shutdown budget): rows
/// not acknowledged by then stay in the outbox for the next leader.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// The certificates' outbox as the relay sees it.
pub struct Certificates<'a> {
    pub outbox: &'a dyn Outbox,
    pub topics: &'a Topics,
}

struct Held(Box<dyn Leadership>);

#[async_trait]
impl Lease for Held {
    async fn is_alive(&self) -> bool {
        self.0.is_alive().await
    }
}

#[async_trait]
impl backbone_kafka::Outbox for Certificates<'_> {
    type Row = OutboxRecord;

    async fn try_lead(&self) -> Result<Option<Box<dyn Lease>>, String> {
        let lease = self.outbox.try_lead().await.map_err(|e| e.to_string())?;
        Ok(lease.map(|l| Box::new(Held(l)) as Box<dyn Lease>))
    }

    async fn next(&self, limit: i64) -> Result<Vec<OutboxRecord>, String> {
        self.outbox.next(limit).await.map_err(|e| e.to_string())
    }

    fn id(row: &OutboxRecord) -> i64 {
        row.id
    }

    fn record<'a>(&'a self, r: &'a OutboxRecord) -> OutgoingRecord<'a> {
        OutgoingRecord::json(self.topics.out(&r.topic), &r.key, &r.payload, &r.headers)
    }

    async fn delete(&self, ids: &[i64]) -> Result<(), String> {
        self.outbox.delete(ids).await.map_err(|e| e.to_string())
    }

    async fn set_aside(
        &self,
        row: &OutboxRecord,
        reason_code: &'static str,
        reason: &str,
    ) -> Result<(), String> {
        self.outbox
            .park(row.id, reason_code, reason)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Counts what each pass published and parked, and shows whether this instance leads.
struct Counted<'a>(&'a AppState);

impl RelayObserver for Counted<'_> {
    fn pass(&self, outcome: Result<&Drained, &str>) {
        if let Ok(d) = outcome {
            self.0.metrics.outbox_published.inc_by(d.published as u64);
            for reason in &d.set_aside {
                self.0.metrics.outbox_parked.with_label_values(&[reason]).inc();
            }
        }
    }

    fn leading(&self, leading: bool) {
        self.0.metrics.outbox_leader.set(i64::from(leading));
    }
}

/// The relay this service runs.
pub fn relay(publisher: KafkaPublisher, state: &AppState) -> OutboxRelay {
    let mut relay = OutboxRelay::new(publisher);
    relay.batch = BATCH;
    relay.idle_poll = IDLE_POLL;
    relay.stop_grace = STOP_GRACE;
    relay.wakeup = Some(state.outbox_wakeup.clone());
    relay
}

pub async fn run(publisher: KafkaPublisher, topics: Topics, state: Arc<AppState>, stop: CancellationToken) {
    let outbox = Certificates {
        outbox: state.store(),
        topics: &topics,
    };
    relay(publisher, &state)
        .run(&outbox, &Counted(&state), "certificates", &stop)
        .await;
}
