//! In-memory adapters of every storage port, for tests and the service's property test. They
//! keep the same contract as the PostgreSQL ones (`crate::contract`): a unit of work takes the
//! store's one write lock at its first read or write and holds it to the end, works on a copy,
//! and publishes the copy on commit; idempotency keys are claimed apart from that lock, so a
//! second claim of a held key is refused at once.

mod batches;
mod unit;
mod views;

use crate::certificate::{Capture, Effect, Hold, OperationId, SaleLinks, State};
use crate::money::Currency;
use crate::ports::{CodeDigest, SealedCvc};
use crate::sale::{PaymentRecord, SaleOrder};
use crate::store::*;
use async_trait::async_trait;
use futures::lock::{Mutex as AsyncMutex, OwnedMutexGuard};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use time::OffsetDateTime;
use uuid::Uuid;
#[derive(Debug, Clone)]
pub(super) struct Row {
    pub(super) id: Uuid,
    pub(super) digest: CodeDigest,
    last4: String,
    pub(super) currency: Currency,
    pub(super) nominal: i64,
    pub(super) balance: i64,
    pub(super) state: State,
    pub(super) expires_at: Option<OffsetDateTime>,
    pub(super) links: SaleLinks,
    pub(super) batch_id: Option<String>,
    pub(super) verifier: Vec<u8>,
    pub(super) sealed: Option<SealedCvc>,
    pub(super) version: i64,
    pub(super) holds: BTreeMap<OperationId, (Hold, String)>,
    pub(super) captures: BTreeMap<OperationId, Capture>,
    pub(super) applied: BTreeMap<OperationId, Effect>,
    pub(super) history: Vec<HistoryEntry>,
}

#[derive(Debug, Clone)]
pub(super) struct SmsRow {
    /// Nothing is at rest here, so the number is kept as it came, until delivered.
    pub(super) phone: Option<String>,
    pub(super) phone_last2: String,
    pub(super) lease: Option<Uuid>,
    pub(super) status: &'static str,
    pub(super) attempts: i32,
    pub(super) next_at: OffsetDateTime,
}

#[derive(Debug, Clone)]
pub(super) struct JobRow {
    pub(super) submitted: i64,
    pub(super) issued: i64,
    pub(super) duplicates: i64,
    pub(super) rejected: i64,
    pub(super) at: OffsetDateTime,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Data {
    pub(super) certificates: BTreeMap<Uuid, Row>,
    pub(super) keys: BTreeMap<(String, String), (StoredResult, OffsetDateTime)>,
    pub(super) orders: BTreeMap<String, (SaleOrder, bool)>,
    pub(super) payments: BTreeMap<String, PaymentRecord>,
    pub(super) sms: BTreeMap<Uuid, SmsRow>,
    pub(super) outbox: BTreeMap<i64, OutboxRecord>,
    /// Parked outbox records by id, with their reason code and reason.
    pub(super) parked: BTreeMap<i64, (OutboxRecord, String, String)>,
    pub(super) next_outbox_id: i64,
    pub(super) jobs: BTreeMap<(String, u32), JobRow>,
    pub(super) batches: BTreeMap<String, OpenedBatch>,
    pub(super) audit_rows: usize,
    /// The reasons recorded with audit rows, by certificate and operation.
    pub(super) audit_reasons: BTreeMap<(Uuid, OperationId), String>,
}

impl Data {
    pub(super) fn by_digest(&self, digest: &CodeDigest) -> Option<&Row> {
        self.certificates.values().find(|r| r.digest == *digest)
    }

    pub(super) fn push_outbox(
        &mut self,
        topic: &str,
        key: &str,
        payload: String,
        headers: Vec<(String, String)>,
    ) {
        self.next_outbox_id += 1;
        let id = self.next_outbox_id;
        self.outbox.insert(
            id,
            OutboxRecord {
                id,
                topic: topic.to_owned(),
                key: key.to_owned(),
                payload,
                headers,
            },
        );
    }
}

#[derive(Default)]
pub(super) struct Shared {
    pub(super) data: Mutex<Data>,
    pub(super) write: Arc<AsyncMutex<()>>,
    pub(super) claims: Mutex<HashSet<(String, String)>>,
    pub(super) leader: Mutex<bool>,
}

/// Every storage port in memory. Clones share the same data.
#[derive(Clone, Default)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

impl MemoryStore {
    pub(super) fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.shared.data.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The write lock, for a write outside a unit of work: an open unit publishes its whole
    /// working copy on commit, which would undo a write made beside it.
    pub(super) async fn exclusive(&self) -> OwnedMutexGuard<()> {
        self.shared.write.clone().lock_owned().await
    }
}

pub(super) struct MemoryUnit {
    pub(super) shared: Arc<Shared>,
    pub(super) claimed: Vec<(String, String)>,
    /// The write lock and the working copy, from the first read or write on.
    pub(super) working: Option<(OwnedMutexGuard<()>, Data)>,
}

impl MemoryUnit {
    /// Frees the unit's key claims. Only commit and rollback do: a unit dropped without either
    /// keeps them, as an open PostgreSQL transaction keeps its advisory locks until its
    /// rollback runs, so a use case that forgets to end its unit fails the contract here.
    pub(super) fn release_claims(&mut self) {
        let mut claims = self.shared.claims.lock().unwrap_or_else(PoisonError::into_inner);
        for c in self.claimed.drain(..) {
            claims.remove(&c);
        }
    }

    pub(super) async fn data(&mut self) -> &mut Data {
        if self.working.is_none() {
            let guard = self.shared.write.clone().lock_owned().await;
            let copy = self
                .shared
                .data
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            self.working = Some((guard, copy));
        }
        match &mut self.working {
            Some((_, data)) => data,
            None => unreachable!("set above"),
        }
    }
}

#[async_trait]
impl CertificateStore for MemoryStore {
    async fn begin(&self) -> Result<Box<dyn UnitOfWork>, StoreError> {
        Ok(Box::new(MemoryUnit {
            shared: self.shared.clone(),
            claimed: Vec::new(),
            working: None,
        }))
    }
}

/// One call after another: the memory store has one write lock, so the order cannot deadlock.
impl BatchRows for MemoryUnit {}

#[async_trait]
impl UnitOfWork for MemoryUnit {
    async fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        if let Some((_guard, data)) = self.working.take() {
            *self.shared.data.lock().unwrap_or_else(PoisonError::into_inner) = data;
        }
        self.release_claims();
        Ok(())
    }

    async fn rollback(mut self: Box<Self>) -> Result<(), StoreError> {
        self.release_claims();
        Ok(())
    }
}
