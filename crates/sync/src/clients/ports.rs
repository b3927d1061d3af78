//! Ports of the two-way sync: the CRM's contacts, tasks and notes ([`ClientCrm`]), a verified
//! webhook's hint ([`Hint`]), and the company's copy with its outbox ([`ClientStore`]).

use super::merge::{Base, Conflict, Writing};
use super::model::{Card, ClientId, Field, Interaction, Source, Stamp, Task, TaskId, TaskState, Value};
use crate::ports::{AttemptRecord, CrmError};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use time::OffsetDateTime;

/// A CRM entity a webhook can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entity {
    Contact,
    Task,
    Note,
}

impl Entity {
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Contact => "contact",
            Entity::Task => "task",
            Entity::Note => "note",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Entity::Contact, Entity::Task, Entity::Note]
            .into_iter()
            .find(|e| e.as_str() == s)
    }
}

/// The CRM's contact, mapped to our field set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrmContact {
    /// The CRM's own id of the record.
    pub crm_id: String,
    /// Our client id, from the record's external-id field (absent for a contact created in the CRM).
    pub client_id: Option<ClientId>,
    pub card: Card,
    /// When the record last changed, as the CRM says.
    pub modified_at: Option<OffsetDateTime>,
}

/// The CRM's task, mapped to ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrmTask {
    pub crm_id: String,
    pub task_id: Option<TaskId>,
    pub title: Option<String>,
    pub due_at: Option<OffsetDateTime>,
    pub state: TaskState,
    pub assignee: Option<String>,
    pub modified_at: Option<OffsetDateTime>,
    /// The CRM id of the contact the task hangs on, when the CRM says.
    pub contact: Option<String>,
}

/// Carried on every CRM call of one change.
#[derive(Debug, Clone, Copy)]
pub struct WriteContext<'a> {
    /// `X-Request-Id`, sent to the CRM with the request.
    pub request_id: &'a str,
}

/// The CRM's client-facing records: contacts, tasks, notes. Implementations sign, limit, time out
/// and classify errors exactly as for [`crate::ports::CrmGateway`].
#[async_trait]
pub trait ClientCrm: Send + Sync {
    /// The contact for our client, found by our external id; `None` when the CRM has none.
    async fn read_contact(&self, client: &ClientId) -> Result<Option<CrmContact>, CrmError>;

    /// The contact with the CRM's own id (a webhook names it); `None` when it is gone.
    async fn read_contact_by_crm_id(&self, crm_id: &str) -> Result<Option<CrmContact>, CrmError>;

    /// Writes `fields` of `card` (only those; a field set to [`Value::Empty`] is cleared) to the
    /// contact `existing`, or creates it (with our external id) when `None`. Returns its CRM id.
    async fn write_contact(
        &self,
        client: &ClientId,
        existing: Option<&str>,
        card: &Card,
        fields: &[Field],
        ctx: WriteContext<'_>,
    ) -> Result<String, CrmError>;

    /// Creates or updates the task on the contact; returns the task's CRM id.
    async fn write_task(
        &self,
        task: &Task,
        contact: &str,
        existing: Option<&str>,
        ctx: WriteContext<'_>,
    ) -> Result<String, CrmError>;

    /// The task with the CRM's id; `None` when it is gone.
    async fn read_task(&self, crm_id: &str) -> Result<Option<CrmTask>, CrmError>;

    /// Adds the interaction to the contact's timeline (a comment, a note, a completed activity);
    /// returns its CRM id, which is kept. Called again for the same interaction after a crash
    /// between the CRM write and our commit: it must then return the entry it made before.
    async fn add_interaction(
        &self,
        interaction: &Interaction,
        contact: &str,
        ctx: WriteContext<'_>,
    ) -> Result<String, CrmError>;
}

/// What a verified webhook says: which record changed. A hint, not the truth: the processor
/// re-reads the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hint {
    /// `generic`, `bitrix24`, `salesforce`, `kommo`.
    pub vendor: String,
    /// The vendor's identity of this delivery: the same delivery again has the same one.
    pub delivery_id: String,
    pub entity: Entity,
    pub crm_id: String,
    /// Our client id, when the webhook carries it.
    pub client_id: Option<ClientId>,
    /// The vendor's event name (`ONCRMCONTACTUPDATE`, `contacts.update`, …).
    pub event: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub occurred_at: Option<OffsetDateTime>,
}

/// Why a webhook is refused. Nothing of a refused webhook is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookRefusal {
    /// No credential at all: 401.
    #[error("no credential")]
    Unauthenticated,
    /// A credential that does not verify: 403.
    #[error("the credential does not verify")]
    Forbidden,
    /// Verified, but not the vendor's shape: 400. Never repeats the input.
    #[error("malformed: {0}")]
    Malformed(String),
}

// ---------------------------------------------------------------------------------------------
// The company's copy

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such client")]
    ClientNotFound,
    #[error("no such operator task")]
    OperatorTaskNotFound,
    #[error("the operator task is already resolved")]
    OperatorTaskResolved,
    #[error("an interaction with this id exists with other content")]
    InteractionExists,
    #[error("the task belongs to another client")]
    TaskOfAnotherClient,
    /// The CRM record is already linked to another of our clients (two of ours point at one CRM
    /// contact, e.g. after a merge in the CRM): a person must decide, retrying cannot help.
    #[error("the CRM id is linked to another client")]
    CrmIdLinkedElsewhere,
    /// A value an operator chose does not fit the field.
    #[error("{0}")]
    InvalidValue(super::model::Invalid),
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// An `Idempotency-Key` as claimed by one caller for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyClaim {
    pub key: String,
    /// Who and what: the caller's token name and the call (`PUT /v1/clients/c-1`).
    pub scope: String,
    /// A digest of the request body: the same key with another body is refused.
    pub request_digest: String,
}

/// A change's result, first time or replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Idempotent<T> {
    Fresh(T),
    /// The same key and request came before: this is the first answer again.
    Replayed(T),
    /// The key was used for another request.
    KeyReused,
}

/// A change to a card, from the API, `All_Clients` or an operator.
#[derive(Debug, Clone, PartialEq)]
pub struct CardChange {
    pub client_id: ClientId,
    pub fields: BTreeMap<Field, Value>,
    /// `true` (`PUT`, `All_Clients`): fields not given become empty. `false` (`PATCH`).
    pub replace: bool,
    /// `PATCH`: refuse with [`StoreError::ClientNotFound`] when there is no card.
    pub must_exist: bool,
    pub source: Source,
    pub at: OffsetDateTime,
    pub request_id: String,
}

/// A card as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCard {
    pub client_id: ClientId,
    pub card: Card,
    pub stamps: BTreeMap<Field, Stamp>,
    /// Bumped by every change that changed a field.
    pub version: i64,
    /// The CRM's id of the contact, once known.
    pub crm_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// The answer to a card change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardChanged {
    pub card: StoredCard,
    pub created: bool,
    /// Fields this change changed (none: nothing was written and no outbox row was made).
    pub changed: Vec<Field>,
}

/// The answer to a task or interaction write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityWritten<T> {
    pub entity: T,
    pub created: bool,
    pub changed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorTaskState {
    Open,
    Resolved,
}

/// A conflict waiting for (or decided by) a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorTask {
    pub id: i64,
    pub client_id: ClientId,
    pub field: Field,
    pub ours: Value,
    #[serde(with = "time::serde::rfc3339::option")]
    pub ours_at: Option<OffsetDateTime>,
    pub ours_source: Option<Source>,
    pub theirs: Value,
    #[serde(with = "time::serde::rfc3339::option")]
    pub theirs_at: Option<OffsetDateTime>,
    pub theirs_source: Source,
    pub reason: String,
    pub state: OperatorTaskState,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub resolution: Option<Value>,
    pub resolved_by: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub resolved_at: Option<OffsetDateTime>,
}

/// How a person resolves an operator task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Ours,
    Theirs,
    /// A merged or edited value (checked against the field).
    Value(Value),
}

/// A row of `crm_outbox` on its way to a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: i64,
    pub topic: String,
    pub key: String,
    pub payload: String,
    pub headers: Vec<(String, String)>,
}

/// Held while this process is the outbox relay; dropping it hands over.
#[async_trait]
pub trait Leadership: Send + Sync {
    async fn is_alive(&self) -> bool;
}

/// What became of one webhook hint at intake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intake {
    /// Stored with this id, and its `crm.incoming` record queued in the outbox.
    Stored(i64),
    /// The same delivery was stored before: nothing new.
    Duplicate,
}

/// One client's state, read under that client's lock by the dispatcher or the processor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncSnapshot {
    pub card: Option<StoredCard>,
    pub base: Base,
    /// Fields with an open operator task.
    pub pending: BTreeSet<Field>,
    /// Values sent to the CRM by sessions that did not commit after (see
    /// [`ClientSession::note_writing`]).
    pub writing: Writing,
}

/// What the dispatcher or the processor writes back, in the client's transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncWrite {
    /// Values taken from the CRM into our copy (stamped `crm`, bumping the version).
    pub to_ours: BTreeMap<Field, Value>,
    pub at: Option<OffsetDateTime>,
    /// Merged into the stored base (a field left out keeps its base).
    pub base: Base,
    pub crm_id: Option<String>,
    /// Every conflict: logged in `crm_conflict_log`; those with an operator-task resolution
    /// open one task per client and field (an open one is kept).
    pub conflicts: Vec<Conflict>,
    /// CRM ids learnt for tasks and interactions.
    pub task_links: Vec<(TaskId, String)>,
    pub interaction_links: Vec<(super::model::InteractionId, String)>,
    /// A task state taken from the CRM.
    pub task_updates: Vec<(TaskId, TaskState)>,
    /// The task state both sides agree on after this write (written to or taken from the CRM).
    pub task_bases: Vec<(TaskId, TaskState)>,
    /// `integrations_log` rows.
    pub attempts: Vec<AttemptRecord>,
    /// A stored webhook now processed.
    pub webhook_done: Option<i64>,
    pub request_id: String,
}

/// A client's lock and its state; [`ClientSession::commit`] writes and releases, dropping it
/// rolls back and releases.
#[async_trait]
pub trait ClientSession: Send {
    fn snapshot(&self) -> &SyncSnapshot;

    /// The CRM id of a task or an interaction, once known.
    async fn link(&mut self, entity: Entity, our_id: &str) -> Result<Option<String>, StoreError>;

    /// Our task with its CRM id.
    async fn task(&mut self, task: &TaskId) -> Result<Option<Task>, StoreError>;

    /// The task state both sides last agreed on; `None` before the first sync of it.
    async fn task_base(&mut self, task: &TaskId) -> Result<Option<TaskState>, StoreError>;

    /// Our task linked to a CRM task id.
    async fn task_by_crm_id(&mut self, crm_id: &str) -> Result<Option<Task>, StoreError>;

    /// Records durably, before the CRM write of a task and whatever becomes of this session, the
    /// state about to be written: the next session takes that state in the CRM for ours, not for
    /// a change made there. A commit that records the task's base clears them.
    async fn note_task_writing(&mut self, task: &TaskId, state: TaskState) -> Result<(), StoreError>;

    /// The task states noted by [`ClientSession::note_task_writing`] and not yet cleared.
    async fn task_writing(&mut self, task: &TaskId) -> Result<Vec<TaskState>, StoreError>;

    /// Records durably, before the CRM write and whatever becomes of this session, the digests of
    /// the values about to be written ([`add_writing`](super::merge::add_writing) onto the snapshot's `writing`). A
    /// write that lands in the CRM while its session never commits (a crash, a lost reply) is
    /// then recognised as ours by the next session ([`with_our_writes`](super::merge::with_our_writes)), even when
    /// something else changed the client first. [`ClientSession::commit`] clears them.
    async fn note_writing(&mut self, digests: &Base) -> Result<(), StoreError>;

    /// Writes and releases; also clears what [`ClientSession::note_writing`] recorded, the new
    /// base now saying what the CRM holds.
    async fn commit(self: Box<Self>, write: SyncWrite) -> Result<(), StoreError>;
}

/// The company's copy of client cards, tasks and history, its outbox, webhooks and operator tasks.
#[async_trait]
pub trait ClientStore: Send + Sync {
    /// Applies a card change with its outbox row (`crm.outgoing`) in one transaction; a change
    /// that changes nothing writes nothing.
    async fn change_card(
        &self,
        change: &CardChange,
        idempotency: Option<&IdempotencyClaim>,
    ) -> Result<Idempotent<CardChanged>, StoreError>;

    async fn put_task(
        &self,
        task: &Task,
        request_id: &str,
        idempotency: Option<&IdempotencyClaim>,
    ) -> Result<Idempotent<EntityWritten<Task>>, StoreError>;

    async fn put_interaction(
        &self,
        interaction: &Interaction,
        request_id: &str,
        idempotency: Option<&IdempotencyClaim>,
    ) -> Result<Idempotent<EntityWritten<Interaction>>, StoreError>;

    async fn card(&self, client: &ClientId) -> Result<Option<StoredCard>, StoreError>;

    /// Cards changed at or after `since`, by client id after `after`, at most `limit`.
    async fn cards_since(
        &self,
        since: OffsetDateTime,
        after: Option<&ClientId>,
        limit: i64,
    ) -> Result<Vec<StoredCard>, StoreError>;

    /// The client whose contact has this CRM id.
    async fn client_of(&self, crm_id: &str) -> Result<Option<ClientId>, StoreError>;

    /// Stores verified hints (unique on vendor and delivery id) with their `crm.incoming`
    /// outbox rows, one transaction.
    async fn intake(&self, hints: &[Hint], request_id: &str) -> Result<Vec<Intake>, StoreError>;

    /// Takes the client's lock for the length of the session.
    async fn session(&self, client: &ClientId) -> Result<Box<dyn ClientSession>, StoreError>;

    async fn operator_tasks(
        &self,
        state: Option<OperatorTaskState>,
        limit: i64,
    ) -> Result<Vec<OperatorTask>, StoreError>;

    async fn operator_task(&self, id: i64) -> Result<Option<OperatorTask>, StoreError>;

    /// Resolves an open task: our card takes the value (source `operator`), an outbox row sends
    /// it to the CRM as forced, the task is closed and the resolution is logged, one transaction.
    async fn resolve(
        &self,
        id: i64,
        choice: &Choice,
        by: &str,
        request_id: &str,
        idempotency: Option<&IdempotencyClaim>,
    ) -> Result<Idempotent<OperatorTask>, StoreError>;

    /// Queues a change for a client through the outbox (reconciliation's `--repair`).
    async fn requeue(&self, client: &ClientId, request_id: &str) -> Result<(), StoreError>;

    // The relay's side.
    async fn try_lead(&self) -> Result<Option<Box<dyn Leadership>>, StoreError>;
    async fn outbox_next(&self, limit: i64) -> Result<Vec<OutboxRow>, StoreError>;
    async fn outbox_delete(&self, ids: &[i64]) -> Result<(), StoreError>;
    async fn outbox_depth(&self) -> Result<i64, StoreError>;
}
