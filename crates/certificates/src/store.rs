//! Storage ports of the certificate service. One unit of work ([`UnitOfWork`]) holds the locks
//! and the writes of one use case (an operation, a sale, an issue) until it commits or rolls
//! back; its capabilities are small traits of their own. Reads that need no lock
//! ([`CertificateViews`]), the SMS queue ([`SmsQueue`]) and the outbox ([`Outbox`]) are ports of
//! their own. Every method's errors are [`StoreError`]: storage failed and nothing of the unit
//! is kept, so the caller may retry.
//!
//! Contract: `crate::contract::store_contract`, run against the in-memory store here and the
//! PostgreSQL store in its crate.

use crate::certificate::{Certificate, OperationId, State};
use crate::channel::Channel;
use crate::events::{Origin, Outgoing};
use crate::money::Amount;
use crate::ports::{Applied, CertificateRef, CodeDigest, IdempotencyClaim, SealedCvc};
use crate::sale::{PaymentRecord, PendingSale, SaleOrder};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use uuid::Uuid;

/// Storage failed or is unreachable; nothing of the unit of work was kept. Transient.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("storage unavailable: {0}")]
pub struct StoreError(pub String);

/// A certificate locked for one operation, with what the operation needs loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedCertificate {
    pub id: Uuid,
    pub code_digest: CodeDigest,
    pub code_last4: String,
    /// Changes on every save; a save against an older version is refused.
    pub version: i64,
    pub cvc_verifier: Vec<u8>,
    /// Its active holds, the hold or capture the operation names, and an earlier effect under the
    /// operation's id.
    pub certificate: Certificate,
    /// The channel that made each loaded hold; kept when the hold is rewritten.
    pub hold_channels: BTreeMap<OperationId, String>,
    /// The stored result under [`Lookup::key`], read after the lock.
    pub stored: Option<StoredResult>,
}

/// What [`CertificateRows::lock`] loads with the certificate.
#[derive(Debug, Clone, Copy)]
pub struct Lookup<'a> {
    /// The hold or capture the command refers to.
    pub target: Option<&'a OperationId>,
    /// An earlier effect under this id is loaded into the certificate's applied operations.
    pub operation: &'a OperationId,
    /// `(channel, key)`: the stored result of an earlier request under this key is loaded too.
    pub key: Option<(&'a str, &'a str)>,
}

/// How an idempotency key's request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyOutcome {
    Applied,
    Refused,
}

impl KeyOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyOutcome::Applied => "applied",
            KeyOutcome::Refused => "refused",
        }
    }

    /// Fails on any value this service never writes.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "applied" => Some(KeyOutcome::Applied),
            "refused" => Some(KeyOutcome::Refused),
            _ => None,
        }
    }
}

/// The stored result of an earlier request under an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResult {
    pub request_hash: [u8; 32],
    pub outcome: KeyOutcome,
    /// The answer to replay ([`Applied`], [`crate::Refusal`] or [`IssueOutcome`], as JSON).
    pub result: serde_json::Value,
}

/// Everything one operation changed, saved in its unit of work.
#[derive(Debug, Clone, Copy)]
pub struct SavedOperation<'a> {
    pub locked: &'a LockedCertificate,
    pub after: &'a Certificate,
    pub applied: &'a Applied,
    pub origin: &'a Origin,
    /// Remembered with the result, for replay.
    pub idempotency: Option<&'a IdempotencyClaim>,
    /// The outgoing events, in order.
    pub events: &'a [Outgoing],
}

/// A certificate to issue. The CVC arrives sealed; its verifier is computed by the caller.
#[derive(Debug, Clone)]
pub struct NewCertificate {
    pub id: Uuid,
    pub code_digest: CodeDigest,
    pub code_last4: String,
    pub nominal: Amount,
    pub expires_at: Option<OffsetDateTime>,
    pub cvc_verifier: [u8; 32],
    pub sealed_cvc: SealedCvc,
}

/// One job of an upload batch.
#[derive(Debug, Clone)]
pub struct IssueBatch {
    pub batch_id: String,
    /// Job number within the batch: a re-sent job is recognised and counted once.
    pub job: u32,
    /// Rows of this job the caller refused before storage (counted in the batch record).
    pub rejected: u32,
    pub certificates: Vec<NewCertificate>,
    pub channel: Channel,
    pub initiator: Option<String>,
    pub source_event: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueOutcome {
    /// Newly issued now.
    pub issued: u64,
    /// Issued earlier by this same batch (a re-sent job).
    pub already_issued: u64,
    /// Codes that exist in another batch, or twice in this request: never overwritten.
    pub duplicates: u64,
    /// The stored outcome of an earlier request with the same idempotency key.
    #[serde(default)]
    pub replayed: bool,
}

/// Idempotency keys, scoped by channel.
#[async_trait]
pub trait KeyClaims: Send {
    /// Takes `key` for this unit of work. `false` when another unit holds it right now.
    async fn claim_key(&mut self, channel: &str, key: &str) -> Result<bool, StoreError>;
    /// The stored result under `key`, if a request with it finished before.
    async fn stored_result(&mut self, channel: &str, key: &str) -> Result<Option<StoredResult>, StoreError>;
    /// Stores the result under the claim's key, kept for its retention.
    async fn remember(
        &mut self,
        channel: &str,
        claim: &IdempotencyClaim,
        outcome: KeyOutcome,
        result: serde_json::Value,
    ) -> Result<(), StoreError>;
}

/// Certificates, one at a time, and issued in bulk.
#[async_trait]
pub trait CertificateRows: Send {
    /// Locks the certificate until the unit ends (another unit locking it waits) and loads it;
    /// `None` when none has that code or id.
    async fn lock(
        &mut self,
        by: CertificateRef,
        lookup: Lookup<'_>,
    ) -> Result<Option<LockedCertificate>, StoreError>;
    /// Writes the certificate, its changed holds, the operation and audit rows, the events and,
    /// with a claim, the result under its key. Refused (an error) when the certificate's version
    /// is no longer `locked.version`.
    async fn save(&mut self, operation: SavedOperation<'_>) -> Result<(), StoreError>;
    /// Adds `reason` to the audit row of `operation` on `certificate`, saved earlier in this
    /// unit. An error when there is no such row.
    async fn record_reason(
        &mut self,
        certificate: Uuid,
        operation: &OperationId,
        reason: &str,
    ) -> Result<(), StoreError>;
    /// Issues the batch's certificates; a code that exists already is left untouched. Each new
    /// certificate's `Issued` event (from `issued_event`) goes out with it; the job is counted
    /// in the batch record once.
    async fn issue(&mut self, batch: &IssueBatch, events: &[Outgoing]) -> Result<IssueOutcome, StoreError>;
}

/// Orders and payments of certificate sales.
#[async_trait]
pub trait SaleRecords: Send {
    /// Serialises the order's events across instances until the unit ends.
    async fn lock_order(&mut self, order_id: &str) -> Result<(), StoreError>;
    /// `false` when the order was recorded before (it is not changed).
    async fn insert_order(&mut self, order: &SaleOrder) -> Result<bool, StoreError>;
    /// `false` when the payment was recorded before (it is not changed).
    async fn insert_payment(&mut self, payment: &PaymentRecord) -> Result<bool, StoreError>;
    /// The order with its payments, if it is recorded and not activated yet.
    async fn pending_sale(&mut self, order_id: &str) -> Result<Option<PendingSale>, StoreError>;
    async fn mark_activated(&mut self, order_id: &str) -> Result<(), StoreError>;
    /// Writes a dead letter to the outbox with the sale (a paid order's refused lines).
    async fn queue_letter(&mut self, letter: &OutboxLetter) -> Result<(), StoreError>;
}

/// The CVC SMS, queued with the activation that makes it due.
#[async_trait]
pub trait SmsQueueing: Send {
    /// Queues the certificate's CVC for `phone`; a certificate is queued once.
    async fn queue_cvc_sms(&mut self, certificate_id: Uuid, phone: &str) -> Result<(), StoreError>;
}

/// A key to claim, with where its result goes: the claims and rows of a group of operations
/// (see `crate::group`), each capability set-based in one call. The defaults run the single
/// calls one after another; a store overrides them to make each one statement.
#[async_trait]
pub trait BatchRows: KeyClaims + CertificateRows {
    /// [`KeyClaims::claim_key`] for each `(channel, key)`, answers in the same order.
    async fn claim_keys(&mut self, keys: &[(&str, &str)]) -> Result<Vec<bool>, StoreError> {
        let mut claimed = Vec::with_capacity(keys.len());
        for (channel, key) in keys {
            claimed.push(self.claim_key(channel, key).await?);
        }
        Ok(claimed)
    }

    /// [`CertificateRows::lock`] for each request, answers in the same order. Rows are locked
    /// in one order whatever the order asked (by id), so two groups never deadlock.
    async fn lock_all(
        &mut self,
        wanted: &[(CertificateRef, Lookup<'_>)],
    ) -> Result<Vec<Option<LockedCertificate>>, StoreError> {
        let mut locked = Vec::with_capacity(wanted.len());
        for (by, lookup) in wanted {
            locked.push(self.lock(*by, *lookup).await?);
        }
        Ok(locked)
    }

    /// [`CertificateRows::save`] for operations on distinct certificates; their events go out
    /// in the order given. Refused (an error) when any version changed.
    async fn save_all(&mut self, operations: &[SavedOperation<'_>]) -> Result<(), StoreError> {
        for operation in operations {
            self.save(*operation).await?;
        }
        Ok(())
    }

    /// [`KeyClaims::remember`] for distinct keys.
    async fn remember_all(&mut self, results: &[Remembered<'_>]) -> Result<(), StoreError> {
        for r in results {
            self.remember(r.channel, r.claim, r.outcome, r.result.clone())
                .await?;
        }
        Ok(())
    }
}

/// A result to remember under its key (see [`BatchRows::remember_all`]).
#[derive(Debug, Clone)]
pub struct Remembered<'a> {
    pub channel: &'a str,
    pub claim: &'a IdempotencyClaim,
    pub outcome: KeyOutcome,
    pub result: serde_json::Value,
}

/// One use case's locks and writes: all of it commits, or none of it.
#[async_trait]
pub trait UnitOfWork: KeyClaims + CertificateRows + BatchRows + SaleRecords + SmsQueueing {
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
    /// Also what dropping the unit does, without waiting.
    async fn rollback(self: Box<Self>) -> Result<(), StoreError>;
}

/// Where units of work come from.
#[async_trait]
pub trait CertificateStore: Send + Sync {
    async fn begin(&self) -> Result<Box<dyn UnitOfWork>, StoreError>;
}

// ---------------------------------------------------------------------------------------------
// Reads

/// What a balance check needs, including the CVC verifier to check against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceView {
    pub certificate_id: Uuid,
    pub code_last4: String,
    pub currency: String,
    pub balance: i64,
    /// Balance less active holds that have not expired.
    pub available: i64,
    pub state: State,
    pub cvc_verifier: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchView {
    pub batch_id: String,
    pub jobs: i64,
    pub submitted: i64,
    pub issued: i64,
    pub duplicates: i64,
    pub rejected: i64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_job_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    pub operation_id: String,
    pub action: String,
    pub amount: Option<i64>,
    pub target_id: Option<String>,
    pub balance_before: i64,
    pub balance_after: i64,
    pub state_before: String,
    pub state_after: String,
    pub channel: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateView {
    pub certificate_id: Uuid,
    pub code_last4: String,
    pub state: State,
    pub currency: String,
    pub nominal: i64,
    pub balance: i64,
    pub held: i64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    pub client_id: Option<String>,
    pub order_id: Option<String>,
    pub payment_id: Option<String>,
    pub batch_id: Option<String>,
    /// Whether the CVC ciphertext is still stored (it is erased once the SMS is delivered).
    pub cvc_pending_delivery: bool,
    /// Oldest first, at most 200.
    pub history: Vec<HistoryEntry>,
}

/// Reads that take no lock.
#[async_trait]
pub trait CertificateViews: Send + Sync {
    async fn balance(&self, code: &CodeDigest) -> Result<Option<BalanceView>, StoreError>;
    async fn view(&self, code: &CodeDigest) -> Result<Option<CertificateView>, StoreError>;
    /// Totals of an upload batch over the jobs received so far; `None` before its first job.
    async fn batch(&self, batch_id: &str) -> Result<Option<BatchView>, StoreError>;
    /// Certificates with active holds past their expiry, at most `limit`.
    async fn with_expired_holds(&self, limit: i64) -> Result<Vec<Uuid>, StoreError>;
    /// Deletes idempotency records past their retention; returns how many.
    async fn prune_idempotency_keys(&self) -> Result<u64, StoreError>;
    /// A cheap round trip, for readiness.
    async fn ping(&self) -> Result<(), StoreError>;
}

// ---------------------------------------------------------------------------------------------
// Upload batches

/// An upload batch opened over the authenticated API: who opened it, when. Jobs from the
/// upload topic are taken only for an opened batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenedBatch {
    pub batch_id: String,
    pub opened_by: Channel,
    #[serde(with = "time::serde::rfc3339")]
    pub opened_at: OffsetDateTime,
}

/// Opened batches. Opening is idempotent and never undone.
#[async_trait]
pub trait UploadBatches: Send + Sync {
    /// Opens the batch for `channel` unless it is open; returns it as recorded (the first
    /// opener and time) and whether this call opened it.
    async fn open_batch(&self, batch_id: &str, channel: Channel) -> Result<(OpenedBatch, bool), StoreError>;
    /// The batch, if it was opened.
    async fn opened_batch(&self, batch_id: &str) -> Result<Option<OpenedBatch>, StoreError>;
}

// ---------------------------------------------------------------------------------------------
// The SMS queue

/// A claimed delivery. `sealed` is `None` when the CVC was already erased (delivered before).
#[derive(Debug, Clone)]
pub struct SmsJob {
    pub certificate_id: Uuid,
    /// The claim: finishing the job needs it, so a sender whose lease ran out (another sender
    /// took the job over) cannot record an outcome.
    pub lease: Uuid,
    /// The number, opened from its sealed copy; `None` when that copy no longer opens.
    pub phone: Option<String>,
    /// What stays of the number once delivered, for operators and dead letters.
    pub phone_last2: String,
    pub attempts: i32,
    pub code_digest: CodeDigest,
    pub code_last4: String,
    pub sealed: Option<SealedCvc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmsOutcome {
    Sent {
        provider_id: String,
    },
    /// Try again at `next_at`.
    Retry {
        error: String,
        next_at: OffsetDateTime,
    },
    /// Give up: the job is parked as failed and its dead letter goes out through the outbox.
    Failed {
        error: String,
    },
}

/// A dead letter to write through the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxLetter {
    pub topic: String,
    pub key: String,
    pub payload: serde_json::Value,
    pub headers: Vec<(String, String)>,
}

/// How many deliveries wait, and how many failed for good.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SmsBacklog {
    pub pending: i64,
    pub failed: i64,
}

/// CVC deliveries: one per certificate, claimed one at a time with a lease of its own, so a
/// crashed sender's job is taken over and a slow one's is not.
#[async_trait]
pub trait SmsQueue: Send + Sync {
    /// Claims the most overdue delivery for `lease` (a new lease token), counting an attempt.
    async fn claim_sms(&self, lease: time::Duration) -> Result<Option<SmsJob>, StoreError>;
    /// Records one attempt's outcome, only while `job.lease` is still the job's lease: `false`
    /// (nothing recorded) when another sender has claimed the job since. `Sent` erases the CVC
    /// ciphertext and the phone number (all but its last two digits) in the same transaction;
    /// `Failed` parks the job, keeping the sealed number for a requeue, and writes `letter` to
    /// the outbox.
    async fn finish_sms(
        &self,
        job: &SmsJob,
        outcome: &SmsOutcome,
        letter: Option<&OutboxLetter>,
    ) -> Result<bool, StoreError>;
    /// Puts failed deliveries whose CVC is still stored back in the queue (one certificate's, or
    /// all); returns how many.
    async fn requeue_failed_sms(&self, certificate_id: Option<Uuid>) -> Result<u64, StoreError>;
    /// How many deliveries [`SmsQueue::requeue_failed_sms`] would put back right now, changing
    /// nothing (a dry run).
    async fn requeueable_sms(&self, certificate_id: Option<Uuid>) -> Result<u64, StoreError>;
    /// Pending and failed deliveries, for the gauges.
    async fn sms_backlog(&self) -> Result<SmsBacklog, StoreError>;
}

// ---------------------------------------------------------------------------------------------
// The outbox

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRecord {
    pub id: i64,
    pub topic: String,
    pub key: String,
    pub payload: String,
    pub headers: Vec<(String, String)>,
}

/// Held while this process relays; dropping it hands over.
#[async_trait]
pub trait Leadership: Send + Sync {
    /// Whether the lock is still held.
    async fn is_alive(&self) -> bool;
}

/// Committed events waiting for the broker, oldest first.
#[async_trait]
pub trait Outbox: Send + Sync {
    /// `Some` when this process became the only relay.
    async fn try_lead(&self) -> Result<Option<Box<dyn Leadership>>, StoreError>;
    /// The oldest `limit` records, in commit order.
    async fn next(&self, limit: i64) -> Result<Vec<OutboxRecord>, StoreError>;
    /// Deletes records the broker acknowledged.
    async fn delete(&self, ids: &[i64]) -> Result<(), StoreError>;
    /// Moves a record the broker refuses for good out of the way (into the parked records),
    /// with a reason code and a reason for operators; later records go out without it.
    async fn park(&self, id: i64, reason_code: &str, reason: &str) -> Result<(), StoreError>;
    /// Puts parked records back at the end of the outbox (one, or all); returns how many.
    async fn requeue_parked(&self, id: Option<i64>) -> Result<u64, StoreError>;
    /// How many records wait.
    async fn pending(&self) -> Result<i64, StoreError>;
    /// How many records are parked.
    async fn parked(&self) -> Result<i64, StoreError>;
}

#[async_trait]
impl<T: CertificateStore + ?Sized> CertificateStore for &T {
    async fn begin(&self) -> Result<Box<dyn UnitOfWork>, StoreError> {
        (**self).begin().await
    }
}

#[async_trait]
impl<T: CertificateStore + ?Sized> CertificateStore for std::sync::Arc<T> {
    async fn begin(&self) -> Result<Box<dyn UnitOfWork>, StoreError> {
        (**self).begin().await
    }
}
