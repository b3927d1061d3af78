//! The outbox relay every service uses: one leader across instances publishes the rows its
//! [`Outbox`] holds, oldest id first, and deletes them only after the broker acknowledged them.
//!
//! It keeps no "id > last" watermark: each pass reads the rows that are there, so a row that
//! commits late behind a higher id is still there on the next pass and is never skipped. What a
//! crash between two steps does:
//! 1. rows read, records sent, not yet acknowledged: nothing changed; the next leader sends them;
//! 2. acknowledged, not yet deleted: the next leader sends them again (consumers de-duplicate by
//!    the event id their payload carries): nothing lost, a duplicate at most;
//! 3. deleted: done.
//!
//! A row the broker refuses for good ([`crate::KafkaError::permanent`]: too large, invalid) is handed
//! to [`Outbox::set_aside`] (parked in a table, or dead-lettered) with its reason code, so it
//! cannot block the rows after it. Any other failure stops the pass at that row: it and the rows
//! after it go again on the next pass, so one key's rows never overtake each other.

use crate::{KafkaPublisher, OutgoingRecord};
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Held while this process relays; dropping it hands over.
#[async_trait]
pub trait Lease: Send + Sync {
    /// Whether the lock behind it is still held.
    async fn is_alive(&self) -> bool;
}

/// Where a service's outbox rows are kept.
#[async_trait]
pub trait Outbox: Send + Sync {
    type Row: Send + Sync;

    /// `Some` when this process became the only relay.
    async fn try_lead(&self) -> Result<Option<Box<dyn Lease>>, String>;
    /// The oldest `limit` rows, in commit order.
    async fn next(&self, limit: i64) -> Result<Vec<Self::Row>, String>;
    /// The row's id, for [`Outbox::delete`].
    fn id(row: &Self::Row) -> i64;
    /// The record the row becomes.
    fn record<'a>(&'a self, row: &'a Self::Row) -> OutgoingRecord<'a>;
    /// Deletes rows the broker acknowledged.
    async fn delete(&self, ids: &[i64]) -> Result<(), String>;
    /// Moves a row the broker refuses for good out of the way, with a reason code and a reason
    /// for operators; rows after it go out without it. An error stops the pass at this row.
    async fn set_aside(&self, row: &Self::Row, reason_code: &'static str, reason: &str)
        -> Result<(), String>;
}

/// What one pass over the outbox did.
#[derive(Debug, Default)]
pub struct Drained {
    /// Acknowledged by the broker and deleted.
    pub published: usize,
    /// Refused for good and set aside: the reason code of each.
    pub set_aside: Vec<&'static str>,
    /// The failure worth retrying that stopped the pass: the rows from it on go again.
    pub failed: Option<String>,
}

impl Drained {
    /// Nothing was there to publish.
    pub fn is_empty(&self) -> bool {
        self.published == 0 && self.set_aside.is_empty() && self.failed.is_none()
    }
}

/// Told of every pass, for metrics and readiness.
pub trait RelayObserver: Send + Sync {
    /// What a pass did, or `Err` with why the outbox's store failed.
    fn pass(&self, outcome: Result<&Drained, &str>);
    /// This process became the relay (`true`), or stopped being it (`false`: the lock's session
    /// was lost, or the relay stopped).
    fn leading(&self, _leading: bool) {}
}

impl RelayObserver for () {
    fn pass(&self, _outcome: Result<&Drained, &str>) {}
}

pub struct OutboxRelay {
    publisher: KafkaPublisher,
    /// Rows per pass.
    pub batch: i64,
    /// How long an idle relay waits before it looks again (unless woken).
    pub idle_poll: Duration,
    /// How long a pass may go on once a stop is asked: rows not acknowledged by then stay for
    /// the next leader.
    pub stop_grace: Duration,
    /// Pause after a failed pass, and between attempts to lead.
    pub retry_after: Duration,
    /// Rung by writers after a commit, so an idle relay need not wait out `idle_poll`.
    pub wakeup: Option<Arc<Notify>>,
}

/// Idle passes between two checks that the lease is still held.
const IDLE_PASSES_PER_LEASE_CHECK: u32 = 200;

impl OutboxRelay {
    pub fn new(publisher: KafkaPublisher) -> Self {
        Self {
            publisher,
            batch: 1000,
            idle_poll: Duration::from_millis(250),
            stop_grace: Duration::from_secs(3),
            retry_after: Duration::from_millis(500),
            wakeup: None,
        }
    }

    /// Publishes what is in the outbox now, in id order, up to the first row that failed for a
    /// cause worth retrying ([`Drained::failed`]). `Err`: the outbox's store failed.
    pub async fn drain_once<O: Outbox>(&self, outbox: &O) -> Result<Drained, String> {
        let rows = outbox.next(self.batch).await?;
        if rows.is_empty() {
            return Ok(Drained::default());
        }
        let results = self
            .publisher
            .send_each(rows.iter().map(|r| outbox.record(r)).collect())
            .await;
        let mut drained = Drained::default();
        let mut done = Vec::with_capacity(rows.len());
        for (row, result) in rows.iter().zip(results) {
            match result {
                Ok(()) => {
                    done.push(O::id(row));
                    drained.published += 1;
                }
                Err(e) => match e.permanent() {
                    Some(code) => {
                        let record = outbox.record(row);
                        tracing::error!(outbox_id = O::id(row), topic = %record.topic, reason_code = code, error = %e, "the broker refuses an outbox row for good; set aside");
                        if let Err(failed) = outbox.set_aside(row, code, &e.message).await {
                            drained.failed = Some(failed);
                            break;
                        }
                        done.push(O::id(row));
                        drained.set_aside.push(code);
                    }
                    None => {
                        drained.failed = Some(e.to_string());
                        break;
                    }
                },
            }
        }
        if drained.published > 0 || !drained.set_aside.is_empty() {
            outbox.delete(&done).await?;
        }
        Ok(drained)
    }

    /// Leads when it can and relays until `stop`, then for at most `stop_grace` more.
    pub async fn run<O: Outbox>(
        &self,
        outbox: &O,
        observer: &dyn RelayObserver,
        name: &str,
        stop: &CancellationToken,
    ) {
        while !stop.is_cancelled() {
            let lease = match outbox.try_lead().await {
                Ok(Some(l)) => l,
                Ok(None) => {
                    // Another instance relays; try again later in case it goes away.
                    if !self
                        .pause(self.retry_after.max(Duration::from_secs(1)), stop)
                        .await
                    {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(relay = name, error = %e, "outbox relay cannot reach its store");
                    if !self
                        .pause(self.retry_after.max(Duration::from_secs(1)), stop)
                        .await
                    {
                        return;
                    }
                    continue;
                }
            };
            tracing::info!(relay = name, "outbox relay leading");
            observer.leading(true);
            let go_on = self.lead(outbox, lease.as_ref(), observer, name, stop).await;
            drop(lease);
            observer.leading(false);
            if !go_on {
                return;
            }
        }
    }

    /// Relays while the lease holds; `false` when stopped.
    async fn lead<O: Outbox>(
        &self,
        outbox: &O,
        lease: &dyn Lease,
        observer: &dyn RelayObserver,
        name: &str,
        stop: &CancellationToken,
    ) -> bool {
        let mut idle_passes = 0u32;
        loop {
            let drained = tokio::select! {
                d = self.drain_once(outbox) => d,
                () = after(stop, self.stop_grace) => {
                    tracing::warn!(relay = name, "outbox relay stopped before the broker acknowledged; the rows stay for the next leader");
                    return false;
                }
            };
            observer.pass(drained.as_ref().map_err(String::as_str));
            let failure = match drained {
                Ok(d) if d.is_empty() => {
                    if stop.is_cancelled() {
                        return false;
                    }
                    idle_passes += 1;
                    if idle_passes % IDLE_PASSES_PER_LEASE_CHECK == 0 && !lease.is_alive().await {
                        tracing::warn!(relay = name, "outbox relay lost its lock session; leading again");
                        return true;
                    }
                    let woken = async {
                        match &self.wakeup {
                            Some(n) => n.notified().await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        () = woken => {}
                        () = tokio::time::sleep(self.idle_poll) => {}
                        () = stop.cancelled() => {}
                    }
                    continue;
                }
                Ok(d) => match d.failed {
                    None => continue,
                    Some(e) => format!("the broker failed: {e}"),
                },
                Err(e) => format!("the store failed: {e}"),
            };
            tracing::warn!(relay = name, error = %failure, "outbox relay: retrying the same rows");
            if !self.pause(self.retry_after, stop).await {
                return false;
            }
            if !lease.is_alive().await {
                tracing::warn!(relay = name, "outbox relay lost its lock session; leading again");
                return true;
            }
        }
    }

    /// Sleeps `d`; `false` when stopped first.
    async fn pause(&self, d: Duration, stop: &CancellationToken) -> bool {
        tokio::select! {
            () = tokio::time::sleep(d) => true,
            () = stop.cancelled() => false,
        }
    }
}

async fn after(stop: &CancellationToken, grace: Duration) {
    stop.cancelled().await;
    tokio::time::sleep(grace).await;
}
