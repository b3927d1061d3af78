//! The outbox relay: one leader across instances publishes committed events in id order and
//! deletes them only after the broker acknowledged them. A crash between the acknowledgement and
//! the delete publishes those events again (consumers de-duplicate by `event_id`); nothing is
//! lost, and a certificate's events never overtake each other.
//!
//! A row the broker refuses for good (too large, invalid: [`backbone_kafka::KafkaError::permanent`])
//! is parked in `outbox_parked` with its reason and counted
//! (`gift_certificates_outbox_parked_total{reason}`); the rows after it, of the same certificate
//! too, still go out. Any other failure (the broker away) retries the same rows.

use crate::config::Topics;
use crate::state::AppState;
use backbone_certificates::store::{Outbox, OutboxRecord};
use backbone_kafka::{KafkaPublisher, OutgoingRecord};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const BATCH: i64 = 2000;
const IDLE_POLL: Duration = Duration::from_millis(250);
/// How long the relay keeps publishing once a stop is asked (part of the shutdown budget): rows
/// not acknowledged by then stay in the outbox for the next leader.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// What one pass over the outbox did.
#[derive(Debug, Default)]
pub struct Drained {
    /// Acknowledged by the broker and deleted.
    pub published: usize,
    /// Refused for good and parked: the reason code of each.
    pub parked: Vec<&'static str>,
    /// The failure worth retrying that stopped the pass: the rows from it on go again.
    pub failed: Option<backbone_kafka::KafkaError>,
}

impl Drained {
    /// Nothing was there to publish.
    pub fn is_empty(&self) -> bool {
        self.published == 0 && self.parked.is_empty() && self.failed.is_none()
    }
}

fn record<'a>(topics: &'a Topics, r: &'a OutboxRecord) -> OutgoingRecord<'a> {
    OutgoingRecord {
        topic: topics.out(&r.topic),
        key: Some(r.key.as_bytes()),
        payload: Some(r.payload.as_bytes()),
        headers: std::iter::once(("content-type".to_owned(), "application/json".to_owned()))
            .chain(r.headers.iter().cloned())
            .collect(),
    }
}

/// Publishes what is in the outbox now. Rows acknowledged are deleted and rows refused for good
/// are parked, in id order, up to the first row that failed for a cause worth retrying
/// ([`Drained::failed`]): the same rows from it on are sent again next time. `Err`: PostgreSQL
/// failed.
pub async fn drain_once(
    outbox: &dyn Outbox,
    publisher: &KafkaPublisher,
    topics: &Topics,
) -> anyhow::Result<Drained> {
    let rows = outbox.next(BATCH).await?;
    if rows.is_empty() {
        return Ok(Drained::default());
    }
    let results = publisher
        .send_each(rows.iter().map(|r| record(topics, r)).collect())
        .await;
    let mut drained = Drained::default();
    let mut acknowledged = Vec::with_capacity(rows.len());

    for (row, result) in rows.iter().zip(results) {
        match result {
            Ok(()) => acknowledged.push(row.id),
            Err(e) => match e.permanent() {
                Some(reason_code) => {
                    tracing::error!(outbox_id = row.id, topic = %row.topic, key = %row.key, reason_code, error = %e, "the broker refuses an outbox row for good; parked");
                    outbox.park(row.id, reason_code, &e.message).await?;
                    drained.parked.push(reason_code);
                }
                None => {
                    drained.failed = Some(e);
                    break;
                }
            },
        }
    }
    if !acknowledged.is_empty() {
        outbox.delete(&acknowledged).await?;
    }
    drained.published = acknowledged.len();
    Ok(drained)
}

fn count(state: &AppState, drained: &Drained) {
    state.metrics.outbox_published.inc_by(drained.published as u64);
    for reason in &drained.parked {
        state.metrics.outbox_parked.with_label_values(&[reason]).inc();
    }
}

pub async fn run(publisher: KafkaPublisher, topics: Topics, state: Arc<AppState>, stop: CancellationToken) {
    let outbox = state.store();
    loop {
        let leadership = match outbox.try_lead().await {
            Ok(Some(l)) => l,
            Ok(None) => {
                // Another instance relays; try again later in case it goes away.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    _ = stop.cancelled() => return,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay cannot reach PostgreSQL");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.cancelled() => return,
                }
            }
        };
        tracing::info!("outbox relay leading");
        loop {
            let drained = tokio::select! {
                d = drain_once(outbox, &publisher, &topics) => d,
                () = crate::after_stop(&stop, STOP_GRACE) => {
                    tracing::warn!("outbox relay stopped before the broker acknowledged; the rows stay for the next leader");
                    return;
                }
            };
            let failure = match drained {
                Ok(d) if d.is_empty() => {
                    if stop.is_cancelled() {
                        drop(leadership);
                        return;
                    }
                    tokio::select! {
                        _ = state.outbox_wakeup.notified() => {}
                        _ = tokio::time::sleep(IDLE_POLL) => {}
                        _ = stop.cancelled() => {}
                    }
                    continue;
                }
                Ok(mut d) => {
                    count(&state, &d);
                    match d.failed.take() {
                        None => continue,
                        Some(e) => anyhow::Error::new(e),
                    }
                }
                Err(e) => e,
            };
            tracing::warn!(
                error = format!("{failure:#}"),
                "outbox relay failed; retrying the same events"
            );
            if stop.is_cancelled() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.cancelled() => return,
            }
            if !leadership.is_alive().await {
                tracing::warn!("outbox relay lost its PostgreSQL session; re-electing");
                break;
            }
        }
    }
}
