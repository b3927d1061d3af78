//! The outbox relay: one leader across instances publishes committed events in id order and
//! deletes them only after the broker acknowledged them. A crash between the acknowledgement and
//! the delete publishes those events again (consumers de-duplicate by `event_id`); nothing is
//! lost, and a certificate's events never overtake each other.

use crate::config::Topics;
use crate::state::AppState;
use backbone_certificates::store::Outbox;
use backbone_kafka::{KafkaPublisher, OutgoingRecord};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const BATCH: i64 = 2000;
const IDLE_POLL: Duration = Duration::from_millis(250);

/// Publishes what is in the outbox now; returns how many events went out.
pub async fn drain_once(
    outbox: &dyn Outbox,
    publisher: &KafkaPublisher,
    topics: &Topics,
) -> anyhow::Result<usize> {
    let rows = outbox.next(BATCH).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let records = rows
        .iter()
        .map(|r| OutgoingRecord {
            topic: topics.out(&r.topic),
            key: Some(r.key.as_bytes()),
            payload: Some(r.payload.as_bytes()),
            headers: std::iter::once(("content-type".to_owned(), "application/json".to_owned()))
                .chain(r.headers.iter().cloned())
                .collect(),
        })
        .collect();
    publisher.send_all(records).await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    outbox.delete(&ids).await?;
    Ok(ids.len())
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
            match drain_once(outbox, &publisher, &topics).await {
                Ok(0) => {
                    if stop.is_cancelled() {
                        drop(leadership);
                        return;
                    }
                    tokio::select! {
                        _ = state.outbox_wakeup.notified() => {}
                        _ = tokio::time::sleep(IDLE_POLL) => {}
                        _ = stop.cancelled() => {}
                    }
                }
                Ok(n) => state.metrics.outbox_published.inc_by(n as u64),
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "outbox relay failed; retrying the same events"
                    );
                    if stop.is_cancelled() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if !leadership.is_alive().await {
                        tracing::warn!("outbox relay lost its PostgreSQL session; re-electing");
                        break;
                    }
                }
            }
        }
    }
}
