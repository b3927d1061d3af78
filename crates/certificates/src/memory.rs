//! In-memory adapters of every storage port, for tests and the service's property test. They
//! keep the same contract as the PostgreSQL ones (`crate::contract`): a unit of work takes the
//! store's one write lock at its first read or write and holds it to the end, works on a copy,
//! and publishes the copy on commit; idempotency keys are claimed apart from that lock, so a
//! second claim of a held key is refused at once.

use crate::certificate::{
    Capture, Certificate, CertificateParts, Effect, Hold, HoldStatus, OperationId, SaleLinks, State,
};
use crate::events::{target_of, Outgoing};
use crate::money::Currency;
use crate::ports::{CertificateRef, CodeDigest, IdempotencyClaim, SealedCvc};
use crate::sale::{PaymentRecord, PendingSale, SaleOrder};
use crate::store::*;
use async_trait::async_trait;
use futures::lock::{Mutex as AsyncMutex, OwnedMutexGuard};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone)]
struct Row {
    id: Uuid,
    digest: CodeDigest,
    last4: String,
    currency: Currency,
    nominal: i64,
    balance: i64,
    state: State,
    expires_at: Option<OffsetDateTime>,
    links: SaleLinks,
    batch_id: Option<String>,
    verifier: Vec<u8>,
    sealed: Option<SealedCvc>,
    version: i64,
    holds: BTreeMap<OperationId, (Hold, String)>,
    captures: BTreeMap<OperationId, Capture>,
    applied: BTreeMap<OperationId, Effect>,
    history: Vec<HistoryEntry>,
}

#[derive(Debug, Clone)]
struct SmsRow {
    phone: String,
    status: &'static str,
    attempts: i32,
    next_at: OffsetDateTime,
}

#[derive(Debug, Clone)]
struct JobRow {
    submitted: i64,
    issued: i64,
    duplicates: i64,
    rejected: i64,
    at: OffsetDateTime,
}

#[derive(Debug, Clone, Default)]
struct Data {
    certificates: BTreeMap<Uuid, Row>,
    keys: BTreeMap<(String, String), (StoredResult, OffsetDateTime)>,
    orders: BTreeMap<String, (SaleOrder, bool)>,
    payments: BTreeMap<String, PaymentRecord>,
    sms: BTreeMap<Uuid, SmsRow>,
    outbox: BTreeMap<i64, OutboxRecord>,
    next_outbox_id: i64,
    jobs: BTreeMap<(String, u32), JobRow>,
    audit_rows: usize,
}

impl Data {
    fn by_digest(&self, digest: &CodeDigest) -> Option<&Row> {
        self.certificates.values().find(|r| r.digest == *digest)
    }

    fn push_outbox(&mut self, topic: &str, key: &str, payload: String, headers: Vec<(String, String)>) {
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
struct Shared {
    data: Mutex<Data>,
    write: Arc<AsyncMutex<()>>,
    claims: Mutex<HashSet<(String, String)>>,
    leader: Mutex<bool>,
}

/// Every storage port in memory. Clones share the same data.
#[derive(Clone, Default)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

impl MemoryStore {
    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.shared.data.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Audit rows written so far (issues, operations).
    pub fn audit_rows(&self) -> usize {
        self.data().audit_rows
    }
}

struct MemoryUnit {
    shared: Arc<Shared>,
    claimed: Vec<(String, String)>,
    /// The write lock and the working copy, from the first read or write on.
    working: Option<(OwnedMutexGuard<()>, Data)>,
}

impl MemoryUnit {
    /// Frees the unit's key claims. Only commit and rollback do: a unit dropped without either
    /// keeps them, as an open PostgreSQL transaction keeps its advisory locks until its
    /// rollback runs, so a use case that forgets to end its unit fails the contract here.
    fn release_claims(&mut self) {
        let mut claims = self.shared.claims.lock().unwrap_or_else(PoisonError::into_inner);
        for c in self.claimed.drain(..) {
            claims.remove(&c);
        }
    }

    async fn data(&mut self) -> &mut Data {
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

#[async_trait]
impl KeyClaims for MemoryUnit {
    async fn claim_key(&mut self, channel: &str, key: &str) -> Result<bool, StoreError> {
        let claim = (channel.to_owned(), key.to_owned());
        if self.claimed.contains(&claim) {
            return Ok(true);
        }
        let fresh = self
            .shared
            .claims
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(claim.clone());
        if fresh {
            self.claimed.push(claim);
        }
        Ok(fresh)
    }

    async fn stored_result(&mut self, channel: &str, key: &str) -> Result<Option<StoredResult>, StoreError> {
        let data = self.data().await;
        Ok(data
            .keys
            .get(&(channel.to_owned(), key.to_owned()))
            .map(|(r, _)| r.clone()))
    }

    async fn remember(
        &mut self,
        channel: &str,
        claim: &IdempotencyClaim,
        outcome: KeyOutcome,
        result: serde_json::Value,
    ) -> Result<(), StoreError> {
        let data = self.data().await;
        let key = (channel.to_owned(), claim.key.clone());
        if data.keys.contains_key(&key) {
            return Err(StoreError(format!("idempotency key {} stored twice", claim.key)));
        }
        let stored = StoredResult {
            request_hash: claim.request_hash,
            outcome,
            result,
        };
        data.keys
            .insert(key, (stored, OffsetDateTime::now_utc() + claim.retention));
        Ok(())
    }
}

fn locked_from(
    row: &Row,
    lookup: Lookup<'_>,
    stored: Option<StoredResult>,
) -> Result<LockedCertificate, StoreError> {
    // What PostgreSQL loads: active holds, the hold or capture named, the operation's effect.
    let target = lookup.target;
    let mut parts = CertificateParts {
        currency: Some(row.currency),
        nominal: row.nominal,
        balance: row.balance,
        state: Some(row.state),
        expires_at: row.expires_at,
        links: row.links.clone(),
        ..CertificateParts::default()
    };
    let mut hold_channels = BTreeMap::new();
    for (id, (hold, channel)) in &row.holds {
        let capture = row.captures.iter().find(|(_, c)| c.hold == *id);
        let named = Some(id) == target || capture.is_some_and(|(cid, _)| Some(cid) == target);
        if hold.status != HoldStatus::Active && !named {
            continue;
        }
        parts.holds.insert(id.clone(), hold.clone());
        if let Some((cid, c)) = capture {
            parts.captures.insert(cid.clone(), c.clone());
        }
        hold_channels.insert(id.clone(), channel.clone());
    }
    if let Some(effect) = row.applied.get(lookup.operation) {
        parts.applied.insert(lookup.operation.clone(), effect.clone());
    }
    let certificate = Certificate::from_parts(parts)
        .ok_or_else(|| StoreError("stored certificate is inconsistent".into()))?;
    Ok(LockedCertificate {
        id: row.id,
        code_digest: row.digest,
        code_last4: row.last4.clone(),
        version: row.version,
        cvc_verifier: row.verifier.clone(),
        certificate,
        hold_channels,
        stored,
    })
}

#[async_trait]
impl CertificateRows for MemoryUnit {
    async fn lock(
        &mut self,
        by: CertificateRef,
        lookup: Lookup<'_>,
    ) -> Result<Option<LockedCertificate>, StoreError> {
        let data = self.data().await;
        let row = match by {
            CertificateRef::Code(digest) => data.by_digest(&digest),
            CertificateRef::Id(id) => data.certificates.get(&id),
        };
        let Some(row) = row else { return Ok(None) };
        let stored = lookup
            .key
            .and_then(|(channel, key)| data.keys.get(&(channel.to_owned(), key.to_owned())))
            .map(|(r, _)| r.clone());
        locked_from(row, lookup, stored).map(Some)
    }

    async fn save(&mut self, op: SavedOperation<'_>) -> Result<(), StoreError> {
        let data = self.data().await;
        let row = data
            .certificates
            .get_mut(&op.locked.id)
            .ok_or_else(|| StoreError("certificate vanished under its lock".into()))?;
        if row.version != op.locked.version {
            return Err(StoreError("certificate version changed under a row lock".into()));
        }
        let after = op.after;
        row.balance = after.balance();
        row.state = after.state();
        row.links = after.links().clone();
        row.version += 1;
        for (id, hold) in after.holds() {
            let channel = op
                .locked
                .hold_channels
                .get(id)
                .cloned()
                .unwrap_or_else(|| op.origin.channel.as_str().to_owned());
            row.holds.insert(id.clone(), (hold.clone(), channel));
        }
        for (id, capture) in after.captures() {
            row.captures.insert(id.clone(), capture.clone());
        }
        for e in &op.applied.effects {
            if row.applied.insert(e.operation.clone(), e.clone()).is_some() {
                return Err(StoreError(format!("operation {} stored twice", e.operation)));
            }
            row.history.push(HistoryEntry {
                operation_id: e.operation.to_string(),
                action: e.action.name().to_owned(),
                amount: e.amount,
                target_id: target_of(&e.action),
                balance_before: e.balance_before,
                balance_after: e.balance_after,
                state_before: e.state_before.as_str().to_owned(),
                state_after: e.state_after.as_str().to_owned(),
                channel: op.origin.channel.as_str().to_owned(),
                at: e.at,
            });
        }
        data.audit_rows += op.applied.effects.len();
        for event in op.events {
            data.push_outbox(event.topic, &event.key, event.payload.to_string(), Vec::new());
        }
        if let Some(claim) = op.idempotency {
            let result = serde_json::to_value(op.applied).map_err(|e| StoreError(e.to_string()))?;
            let stored = StoredResult {
                request_hash: claim.request_hash,
                outcome: KeyOutcome::Applied,
                result,
            };
            data.keys.insert(
                (op.origin.channel.as_str().to_owned(), claim.key.clone()),
                (stored, OffsetDateTime::now_utc() + claim.retention),
            );
        }
        Ok(())
    }

    async fn issue(&mut self, batch: &IssueBatch, events: &[Outgoing]) -> Result<IssueOutcome, StoreError> {
        let data = self.data().await;
        let (mut issued, mut already) = (0u64, 0u64);
        for (c, event) in batch.certificates.iter().zip(events) {
            if let Some(existing) = data.by_digest(&c.code_digest) {
                if existing.batch_id.as_deref() == Some(batch.batch_id.as_str()) {
                    already += 1;
                }
                continue;
            }
            data.certificates.insert(
                c.id,
                Row {
                    id: c.id,
                    digest: c.code_digest,
                    last4: c.code_last4.clone(),
                    currency: c.nominal.currency(),
                    nominal: c.nominal.minor(),
                    balance: c.nominal.minor(),
                    state: State::Issued,
                    expires_at: c.expires_at,
                    links: SaleLinks::default(),
                    batch_id: Some(batch.batch_id.clone()),
                    verifier: c.cvc_verifier.to_vec(),
                    sealed: Some(c.sealed_cvc.clone()),
                    version: 0,
                    holds: BTreeMap::new(),
                    captures: BTreeMap::new(),
                    applied: BTreeMap::new(),
                    history: Vec::new(),
                },
            );
            data.push_outbox(event.topic, &event.key, event.payload.to_string(), Vec::new());
            issued += 1;
        }
        data.audit_rows += 1;
        let n = batch.certificates.len() as u64;
        let duplicates = n.saturating_sub(issued + already);
        data.jobs
            .entry((batch.batch_id.clone(), batch.job))
            .or_insert(JobRow {
                submitted: (n + u64::from(batch.rejected)) as i64,
                issued: issued as i64,
                duplicates: duplicates as i64,
                rejected: i64::from(batch.rejected),
                at: OffsetDateTime::now_utc(),
            });
        Ok(IssueOutcome {
            issued,
            already_issued: already,
            duplicates,
            replayed: false,
        })
    }
}

#[async_trait]
impl SaleRecords for MemoryUnit {
    async fn lock_order(&mut self, _order_id: &str) -> Result<(), StoreError> {
        // The unit's write lock serialises every order.
        self.data().await;
        Ok(())
    }

    async fn insert_order(&mut self, order: &SaleOrder) -> Result<bool, StoreError> {
        let data = self.data().await;
        if data.orders.contains_key(&order.order_id) {
            return Ok(false);
        }
        data.orders.insert(order.order_id.clone(), (order.clone(), false));
        Ok(true)
    }

    async fn insert_payment(&mut self, payment: &PaymentRecord) -> Result<bool, StoreError> {
        let data = self.data().await;
        if data.payments.contains_key(&payment.payment_id) {
            return Ok(false);
        }
        data.payments.insert(payment.payment_id.clone(), payment.clone());
        Ok(true)
    }

    async fn pending_sale(&mut self, order_id: &str) -> Result<Option<PendingSale>, StoreError> {
        let data = self.data().await;
        let Some((order, false)) = data.orders.get(order_id) else {
            return Ok(None);
        };
        let payments = data
            .payments
            .values()
            .filter(|p| p.order_id == order_id)
            .map(|p| (p.payment_id.clone(), p.currency.clone(), p.amount_minor))
            .collect();
        Ok(Some(PendingSale {
            order: order.clone(),
            payments,
        }))
    }

    async fn mark_activated(&mut self, order_id: &str) -> Result<(), StoreError> {
        let data = self.data().await;
        if let Some((_, activated)) = data.orders.get_mut(order_id) {
            *activated = true;
        }
        Ok(())
    }
}

#[async_trait]
impl SmsQueueing for MemoryUnit {
    async fn queue_cvc_sms(&mut self, certificate_id: Uuid, phone: &str) -> Result<(), StoreError> {
        let data = self.data().await;
        data.sms.entry(certificate_id).or_insert(SmsRow {
            phone: phone.to_owned(),
            status: "pending",
            attempts: 0,
            next_at: OffsetDateTime::now_utc(),
        });
        Ok(())
    }
}

#[async_trait]
impl CertificateViews for MemoryStore {
    async fn balance(&self, code: &CodeDigest) -> Result<Option<BalanceView>, StoreError> {
        let data = self.data();
        let now = OffsetDateTime::now_utc();
        Ok(data.by_digest(code).map(|r| {
            let held: i64 = r
                .holds
                .values()
                .filter(|(h, _)| h.status == HoldStatus::Active && h.expires_at > now)
                .map(|(h, _)| h.amount)
                .sum();
            BalanceView {
                certificate_id: r.id,
                code_last4: r.last4.clone(),
                currency: r.currency.to_string(),
                balance: r.balance,
                available: r.balance - held,
                state: r.state,
                cvc_verifier: r.verifier.clone(),
            }
        }))
    }

    async fn view(&self, code: &CodeDigest) -> Result<Option<CertificateView>, StoreError> {
        let data = self.data();
        Ok(data.by_digest(code).map(|r| CertificateView {
            certificate_id: r.id,
            code_last4: r.last4.clone(),
            state: r.state,
            currency: r.currency.to_string(),
            nominal: r.nominal,
            balance: r.balance,
            held: r
                .holds
                .values()
                .filter(|(h, _)| h.status == HoldStatus::Active)
                .map(|(h, _)| h.amount)
                .sum(),
            expires_at: r.expires_at,
            client_id: r.links.client_id.clone(),
            order_id: r.links.order_id.clone(),
            payment_id: r.links.payment_id.clone(),
            batch_id: r.batch_id.clone(),
            cvc_pending_delivery: r.sealed.is_some(),
            history: r.history.iter().take(200).cloned().collect(),
        }))
    }

    async fn batch(&self, batch_id: &str) -> Result<Option<BatchView>, StoreError> {
        let data = self.data();
        let jobs: Vec<&JobRow> = data
            .jobs
            .iter()
            .filter(|((b, _), _)| b == batch_id)
            .map(|(_, j)| j)
            .collect();
        if jobs.is_empty() {
            return Ok(None);
        }
        Ok(Some(BatchView {
            batch_id: batch_id.to_owned(),
            jobs: jobs.len() as i64,
            submitted: jobs.iter().map(|j| j.submitted).sum(),
            issued: jobs.iter().map(|j| j.issued).sum(),
            duplicates: jobs.iter().map(|j| j.duplicates).sum(),
            rejected: jobs.iter().map(|j| j.rejected).sum(),
            last_job_at: jobs.iter().map(|j| j.at).max(),
        }))
    }

    async fn with_expired_holds(&self, limit: i64) -> Result<Vec<Uuid>, StoreError> {
        let now = OffsetDateTime::now_utc();
        let data = self.data();
        Ok(data
            .certificates
            .values()
            .filter(|r| {
                r.holds
                    .values()
                    .any(|(h, _)| h.status == HoldStatus::Active && h.expires_at <= now)
            })
            .map(|r| r.id)
            .take(usize::try_from(limit).unwrap_or(0))
            .collect())
    }

    async fn prune_idempotency_keys(&self) -> Result<u64, StoreError> {
        let now = OffsetDateTime::now_utc();
        let mut data = self.data();
        let before = data.keys.len();
        data.keys.retain(|_, (_, expires)| *expires >= now);
        Ok((before - data.keys.len()) as u64)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[async_trait]
impl SmsQueue for MemoryStore {
    async fn claim_sms(&self, limit: i64, lease: time::Duration) -> Result<Vec<SmsJob>, StoreError> {
        let now = OffsetDateTime::now_utc();
        let mut data = self.data();
        let mut due: Vec<(OffsetDateTime, Uuid)> = data
            .sms
            .iter()
            .filter(|(_, s)| s.status == "pending" && s.next_at <= now)
            .map(|(id, s)| (s.next_at, *id))
            .collect();
        due.sort();
        due.truncate(usize::try_from(limit).unwrap_or(0));
        let mut jobs = Vec::with_capacity(due.len());
        for (_, id) in due {
            let Some(row) = data.certificates.get(&id).cloned() else {
                continue;
            };
            let Some(sms) = data.sms.get_mut(&id) else {
                continue;
            };
            sms.next_at = now + lease;
            sms.attempts += 1;
            jobs.push(SmsJob {
                certificate_id: id,
                phone: sms.phone.clone(),
                attempts: sms.attempts,
                code_digest: row.digest,
                code_last4: row.last4.clone(),
                sealed: row.sealed.clone(),
            });
        }
        Ok(jobs)
    }

    async fn finish_sms(
        &self,
        job: &SmsJob,
        outcome: &SmsOutcome,
        letter: Option<&OutboxLetter>,
    ) -> Result<(), StoreError> {
        let mut data = self.data();
        let Some(sms) = data.sms.get_mut(&job.certificate_id) else {
            return Err(StoreError("no such delivery".into()));
        };
        match outcome {
            SmsOutcome::Sent { .. } => {
                sms.status = "sent";
                if let Some(row) = data.certificates.get_mut(&job.certificate_id) {
                    row.sealed = None;
                }
                data.audit_rows += 1;
            }
            SmsOutcome::Retry { next_at, .. } => sms.next_at = *next_at,
            SmsOutcome::Failed { .. } => {
                sms.status = "failed";
                if let Some(l) = letter {
                    data.push_outbox(&l.topic, &l.key, l.payload.to_string(), l.headers.clone());
                }
            }
        }
        Ok(())
    }

    async fn requeue_failed_sms(&self, certificate_id: Option<Uuid>) -> Result<u64, StoreError> {
        let now = OffsetDateTime::now_utc();
        let mut data = self.data();
        let sealed: HashSet<Uuid> = data
            .certificates
            .values()
            .filter(|r| r.sealed.is_some())
            .map(|r| r.id)
            .collect();
        let mut n = 0;
        for (id, sms) in data.sms.iter_mut() {
            if sms.status == "failed" && sealed.contains(id) && certificate_id.is_none_or(|c| c == *id) {
                sms.status = "pending";
                sms.attempts = 0;
                sms.next_at = now;
                n += 1;
            }
        }
        Ok(n)
    }
}

struct MemoryLeadership(Arc<Shared>);

impl Drop for MemoryLeadership {
    fn drop(&mut self) {
        *self.0.leader.lock().unwrap_or_else(PoisonError::into_inner) = false;
    }
}

#[async_trait]
impl Leadership for MemoryLeadership {
    async fn is_alive(&self) -> bool {
        true
    }
}

#[async_trait]
impl Outbox for MemoryStore {
    async fn try_lead(&self) -> Result<Option<Box<dyn Leadership>>, StoreError> {
        let mut leader = self.shared.leader.lock().unwrap_or_else(PoisonError::into_inner);
        if *leader {
            return Ok(None);
        }
        *leader = true;
        Ok(Some(Box::new(MemoryLeadership(self.shared.clone()))))
    }

    async fn next(&self, limit: i64) -> Result<Vec<OutboxRecord>, StoreError> {
        Ok(self
            .data()
            .outbox
            .values()
            .take(usize::try_from(limit).unwrap_or(0))
            .cloned()
            .collect())
    }

    async fn delete(&self, ids: &[i64]) -> Result<(), StoreError> {
        let mut data = self.data();
        for id in ids {
            data.outbox.remove(id);
        }
        Ok(())
    }

    async fn pending(&self) -> Result<i64, StoreError> {
        Ok(self.data().outbox.len() as i64)
    }
}
