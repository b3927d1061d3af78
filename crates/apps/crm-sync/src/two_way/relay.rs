//! The outbox relay of the two-way sync: one leader across instances publishes the rows of
//! `crm_outbox` (to `crm.outgoing` and `crm.incoming`) oldest id first, keyed by client id, and
//! deletes them only after the broker acknowledged them.
//!
//! It keeps no "id > last" watermark: it reads the rows that are there. A row that commits late
//! behind a higher id is still there on the next poll, so it is never skipped; one client's rows
//! get ids in commit order (every writer takes the client's outbox lock first), so they go out in
//! that order. A crash between the acknowledgement and the delete publishes those rows again
//! (consumers de-duplicate by `change_id` / `webhook_id`). A row the broker refuses for good (too
//! large, invalid) goes to `dead.letters` with its reason instead, so it cannot block the rest.

use backbone_kafka::{DeadLetter, DeadLetterPublisher, KafkaPublisher, OutgoingRecord};
use backbone_sync::clients::{ClientStore, OutboxRow};
use prometheus::IntCounter;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drained {
    pub published: usize,
    pub dead_lettered: usize,
    /// A failure worth retrying stopped the pass; the rows from it on go again.
    pub failed: Option<String>,
}

pub struct Relay {
    /// The topic each row names (`crm.outgoing`, `crm.incoming`) → the configured topic.
    pub topics: std::collections::HashMap<String, String>,
    pub store: Arc<dyn ClientStore>,
    pub publisher: KafkaPublisher,
    pub dead_letters: DeadLetterPublisher,
    pub batch: i64,
    pub idle_poll: Duration,
    pub published: IntCounter,
    /// Down while a pass fails (PostgreSQL or the broker away).
    pub up: super::StageUp,
}

fn record<'a>(
    topics: &'a std::collections::HashMap<String, String>,
    row: &'a OutboxRow,
) -> OutgoingRecord<'a> {
    OutgoingRecord {
        topic: topics.get(&row.topic).map_or(row.topic.as_str(), String::as_str),
        key: Some(row.key.as_bytes()),
        payload: Some(row.payload.as_bytes()),
        headers: std::iter::once(("content-type".to_owned(), "application/json".to_owned()))
            .chain(row.headers.iter().cloned())
            .collect(),
    }
}

impl Relay {
    /// Publishes what is in the outbox now, in id order, up to the first row that failed for a
    /// cause worth retrying. `Err`: PostgreSQL failed.
    pub async fn drain_once(&self) -> Result<Drained, backbone_sync::clients::StoreError> {
        let rows = self.store.outbox_next(self.batch).await?;
        if rows.is_empty() {
            return Ok(Drained::default());
        }
        let results = self
            .publisher
            .send_each(rows.iter().map(|r| record(&self.topics, r)).collect())
            .await;
        let mut drained = Drained::default();
        let mut done = Vec::with_capacity(rows.len());
        for (row, result) in rows.iter().zip(results) {
            match result {
                Ok(()) => {
                    done.push(row.id);
                    drained.published += 1;
                }
                Err(e) => match e.permanent() {
                    Some(code) => {
                        tracing::error!(outbox_id = row.id, topic = %row.topic, reason_code = code, error = %e, "the broker refuses an outbox row for good; dead-lettered");
                        let letter = DeadLetter {
                            source: None,
                            key: Some(row.key.clone().into_bytes()),
                            payload: None,
                            withheld_bytes: Some(row.payload.len()),
                            reason_code: code.to_owned(),
                            reason: format!("crm_outbox row {} for {}: {}", row.id, row.topic, e.message),
                            attempts: 1,
                            replay_count: None,
                            event_id: Some(format!("outbox-{}", row.id)),
                        };
                        if let Err(e) = self.dead_letters.publish(&[letter]).await {
                            drained.failed = Some(e.to_string());
                            break;
                        }
                        done.push(row.id);
                        drained.dead_lettered += 1;
                    }
                    None => {
                        drained.failed = Some(e.to_string());
                        break;
                    }
                },
            }
        }
        if !done.is_empty() {
            self.store.outbox_delete(&done).await?;
        }
        self.published.inc_by(drained.published as u64);
        Ok(drained)
    }

    /// Leads when it can, and relays until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        while !stop.is_cancelled() {
            let leadership = match self.store.try_lead().await {
                Ok(Some(l)) => l,
                Ok(None) => {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        () = stop.cancelled() => return,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "two-way outbox relay cannot reach PostgreSQL");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        () = stop.cancelled() => return,
                    }
                }
            };
            tracing::info!("two-way outbox relay leading");
            let mut idle_checks = 0u32;
            while !stop.is_cancelled() {
                let drained = self.drain_once().await;
                self.up.set(matches!(&drained, Ok(d) if d.failed.is_none()));
                match drained {
                    Ok(d) if d.failed.is_none() && d.published + d.dead_lettered == 0 => {
                        // Idle: check now and then that the lock's session is still there.
                        idle_checks += 1;
                        if idle_checks % 200 == 0 && !leadership.is_alive().await {
                            tracing::warn!("two-way outbox relay lost its lock session; leading again");
                            break;
                        }
                        tokio::select! {
                            () = tokio::time::sleep(self.idle_poll) => {}
                            () = stop.cancelled() => {}
                        }
                    }
                    Ok(d) => {
                        if let Some(e) = d.failed {
                            tracing::warn!(error = %e, "two-way outbox relay: the broker failed; retrying");
                            tokio::select! {
                                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                                () = stop.cancelled() => {}
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "two-way outbox relay: PostgreSQL failed; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_millis(500)) => {}
                            () = stop.cancelled() => {}
                        }
                        if !leadership.is_alive().await {
                            break;
                        }
                    }
                }
            }
        }
    }
}
