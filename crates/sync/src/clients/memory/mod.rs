//! An in-memory [`ClientStore`]: for domain and HTTP tests and the contract suite. One mutex
//! guards the whole copy, so every call is one atomic step, as a transaction is in PostgreSQL;
//! a session holds its client's async lock until it is committed or dropped.

use super::apply::{self, TOPIC_INCOMING, TOPIC_OUTGOING};
use super::merge::Base;
use super::model::{ClientId, Field, Interaction, InteractionId, Source, Stamp, Task, TaskId, Value};
use super::ports::*;
use super::records::{IncomingHint, OutgoingChange, VERSION};
use crate::ports::AttemptRecord;
use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use time::OffsetDateTime;

mod session;
#[cfg(test)]
mod tests;

use session::MemorySession;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One `crm_conflict_log` row: a conflict's outcome, or an operator's resolution.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedConflict {
    pub client_id: ClientId,
    pub field: Field,
    pub ours: Value,
    pub theirs: Value,
    /// The owner rule (`crm`, `ours`, `newest`, `ask`), or `operator` for a resolution.
    pub rule: String,
    /// `crm_wins`, `ours_wins`, `operator_task`, or `resolved_ours|theirs|value`.
    pub resolution: String,
    pub reason: String,
    pub operator_task: Option<i64>,
    /// The value an operator chose.
    pub chosen: Option<Value>,
    pub decided_by: Option<String>,
    pub request_id: String,
}

/// A stored webhook hint.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredWebhook {
    pub id: i64,
    pub hint: Hint,
    pub request_id: String,
    pub received_at: OffsetDateTime,
    pub processed_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone)]
struct Linked<T> {
    entity: T,
    crm_id: Option<String>,
}

#[derive(Default)]
struct Inner {
    cards: BTreeMap<ClientId, StoredCard>,
    bases: HashMap<ClientId, Base>,
    /// What sessions noted before their CRM writes, until a commit of the client.
    writing: HashMap<ClientId, super::merge::Writing>,
    tasks: BTreeMap<TaskId, Linked<Task>>,
    task_bases: HashMap<TaskId, super::model::TaskState>,
    /// Task states noted before their CRM writes, until a commit records the task's base.
    pub(super) task_writing: HashMap<TaskId, Vec<super::model::TaskState>>,
    interactions: BTreeMap<InteractionId, Linked<Interaction>>,
    outbox: BTreeMap<i64, OutboxRow>,
    last_outbox_id: i64,
    /// (scope, key) → (request digest, the first answer).
    idempotency: HashMap<(String, String), (String, serde_json::Value)>,
    webhooks: BTreeMap<i64, StoredWebhook>,
    deliveries: HashSet<(String, String)>,
    operator_tasks: BTreeMap<i64, OperatorTask>,
    conflicts: Vec<LoggedConflict>,
    attempts: Vec<AttemptRecord>,
}

/// What an idempotency claim found.
enum Claim<T> {
    New,
    Done(Idempotent<T>),
}

impl Inner {
    fn claim<T: DeserializeOwned>(&self, claim: Option<&IdempotencyClaim>) -> Result<Claim<T>, StoreError> {
        let Some(c) = claim else { return Ok(Claim::New) };
        match self.idempotency.get(&(c.scope.clone(), c.key.clone())) {
            None => Ok(Claim::New),
            Some((digest, _)) if *digest != c.request_digest => Ok(Claim::Done(Idempotent::KeyReused)),
            Some((_, answer)) => serde_json::from_value(answer.clone())
                .map(|a| Claim::Done(Idempotent::Replayed(a)))
                .map_err(|e| StoreError::Unavailable(format!("a stored answer does not read back: {e}"))),
        }
    }

    fn answer<T: Serialize>(&mut self, claim: Option<&IdempotencyClaim>, answer: T) -> Idempotent<T> {
        if let Some(c) = claim {
            let json = serde_json::to_value(&answer).unwrap_or_default();
            self.idempotency
                .insert((c.scope.clone(), c.key.clone()), (c.request_digest.clone(), json));
        }
        Idempotent::Fresh(answer)
    }

    fn push_outbox(
        &mut self,
        topic: &str,
        key: String,
        request_id: &str,
        payload: impl FnOnce(i64) -> String,
    ) -> i64 {
        self.last_outbox_id += 1;
        let id = self.last_outbox_id;
        self.outbox.insert(
            id,
            OutboxRow {
                id,
                topic: topic.to_owned(),
                key,
                payload: payload(id),
                headers: apply::headers(request_id),
            },
        );
        id
    }

    fn push_card_change(
        &mut self,
        card: &StoredCard,
        fields: Vec<Field>,
        forced: Vec<Field>,
        source: Source,
        request_id: &str,
        at: OffsetDateTime,
    ) {
        self.push_outbox(TOPIC_OUTGOING, card.client_id.to_string(), request_id, |id| {
            OutgoingChange::card(
                id,
                &card.client_id,
                card.version,
                fields,
                forced,
                source,
                request_id,
                at,
            )
            .to_json()
        });
    }

    fn linked_elsewhere(&self, client: &ClientId, crm_id: &str) -> bool {
        self.cards
            .values()
            .any(|c| c.client_id != *client && c.crm_id.as_deref() == Some(crm_id))
    }

    fn open_task_for(&self, client: &ClientId, field: Field) -> Option<i64> {
        self.operator_tasks
            .values()
            .find(|t| t.client_id == *client && t.field == field && t.state == OperatorTaskState::Open)
            .map(|t| t.id)
    }

    fn next_operator_task_id(&self) -> i64 {
        self.operator_tasks.keys().next_back().map_or(1, |id| id + 1)
    }
}

fn empty_card(client: &ClientId, at: OffsetDateTime) -> StoredCard {
    StoredCard {
        client_id: client.clone(),
        card: Default::default(),
        stamps: BTreeMap::new(),
        version: 0,
        crm_id: None,
        updated_at: at,
    }
}

/// The company's copy, in memory. Clones share it.
#[derive(Clone, Default)]
pub struct MemoryClients {
    inner: Arc<Mutex<Inner>>,
    sync_locks: Arc<Mutex<HashMap<ClientId, Arc<futures::lock::Mutex<()>>>>>,
    leader: Arc<AtomicBool>,
}

impl MemoryClients {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every `crm_conflict_log` row, oldest first.
    pub fn conflict_log(&self) -> Vec<LoggedConflict> {
        lock(&self.inner).conflicts.clone()
    }

    /// `integrations_log` rows of the two-way flow, oldest first.
    pub fn attempts(&self) -> Vec<AttemptRecord> {
        lock(&self.inner).attempts.clone()
    }

    pub fn webhook(&self, id: i64) -> Option<StoredWebhook> {
        lock(&self.inner).webhooks.get(&id).cloned()
    }

    /// The stored sync base of a client.
    pub fn base(&self, client: &ClientId) -> Base {
        lock(&self.inner).bases.get(client).cloned().unwrap_or_default()
    }

    fn sync_lock(&self, client: &ClientId) -> Arc<futures::lock::Mutex<()>> {
        lock(&self.sync_locks).entry(client.clone()).or_default().clone()
    }
}

#[async_trait]
impl ClientStore for MemoryClients {
    async fn change_card(
        &self,
        change: &CardChange,
        idempotency: Option<&IdempotencyClaim>,
    ) -> Result<Idempotent<CardChanged>, StoreError> {
        let mut inner = lock(&self.inner);
        if let Claim::Done(done) = inner.claim(idempotency)? {
            return Ok(done);
        }
        let current = inner.cards.get(&change.client_id).cloned();
        if current.is_none() && change.must_exist {
            return Err(StoreError::ClientNotFound);
        }
        let created = current.is_none();
        let now = apply::now();
        let mut stored = current.unwrap_or_else(|| empty_card(&change.client_id, now));
        let stamp = Stamp {
            at: change.at,
            source: change.source,
        };
        let changed = apply::set_fields(
            &mut stored.card,
            &mut stored.stamps,
            &apply::change_values(change),
            &stamp,
        );
        if created || !changed.is_empty() {
            stored.version += 1;
            stored.updated_at = now;
            inner.cards.insert(change.client_id.clone(), stored.clone());
        }
        if !changed.is_empty() {
            inner.push_card_change(
                &stored,
                changed.clone(),
                Vec::new(),
                change.source,
                &change.request_id,
                change.at,
            );
        }
        let answer = CardChanged {
            card: stored,
            created,
            changed,
        };
        Ok(inner.answer(idempotency, answer))
    }

    async fn put_task(
        &self,
        task: &Task,
        request_id: &str,
        idempotency: Option<&IdempotencyClaim>,
    ) -> Result<Idempotent<EntityWritten<Task>>, StoreError> {
        let mut inner = lock(&self.inner);
        if let Claim::Done(done) = inner.claim(idempotency)? {
            return Ok(done);
        }
        if !inner.cards.contains_key(&task.client_id) {
            return Err(StoreError::ClientNotFound);
        }
        let existing = inner.tasks.get(&task.task_id).cloned();
        if let Some(e) = &existing {
            if e.entity.client_id != task.client_id {
                return Err(StoreError::TaskOfAnotherClient);
            }
        }
        let created = existing.is_none();
        let changed = existing.as_ref().is_none_or(|e| e.entity != *task);
        if changed {
            let crm_id = existing.and_then(|e| e.crm_id);
            inner.tasks.insert(
                task.task_id.clone(),
                Linked {
                    entity: task.clone(),
                    crm_id,
                },
            );
            let now = apply::now();
            inner.push_outbox(TOPIC_OUTGOING, task.client_id.to_string(), request_id, |id| {
                OutgoingChange::task(id, task, request_id, now).to_json()
            });
        }
        let answer = EntityWritten {
            entity: task.clone(),
            created,
            changed,
        };
        Ok(inner.answer(idempotency, answer))
    }

    async fn put_interaction(
        &self,
        interaction: &Interaction,
        request_id: &str,
        idempotency: Option<&IdempotencyClaim>,
    ) -> Result<Idempotent<EntityWritten<Interaction>>, StoreError> {
        let mut inner = lock(&self.inner);
        if let Claim::Done(done) = inner.claim(idempotency)? {
            return Ok(done);
        }
        if !inner.cards.contains_key(&interaction.client_id) {
            return Err(StoreError::ClientNotFound);
        }
        let created = match inner.interactions.get(&interaction.interaction_id) {
            Some(e) if e.entity != *interaction => return Err(StoreError::InteractionExists),
            Some(_) => false,
            None => {
                inner.interactions.insert(
                    interaction.interaction_id.clone(),
                    Linked {
                        entity: interaction.clone(),
                        crm_id: None,
                    },
                );
                let now = apply::now();
                inner.push_outbox(
                    TOPIC_OUTGOING,
                    interaction.client_id.to_string(),
                    request_id,
                    |id| OutgoingChange::interaction(id, interaction, request_id, now).to_json(),
                );
                true
            }
        };
        let answer = EntityWritten {
            entity: interaction.clone(),
            created,
            changed: created,
        };
        Ok(inner.answer(idempotency, answer))
    }

    async fn card(&self, client: &ClientId) -> Result<Option<StoredCard>, StoreError> {
        Ok(lock(&self.inner).cards.get(client).cloned())
    }

    async fn cards_since(
        &self,
        since: OffsetDateTime,
        after: Option<&ClientId>,
        limit: i64,
    ) -> Result<Vec<StoredCard>, StoreError> {
        let limit = usize::try_from(limit.max(0)).unwrap_or(usize::MAX);
        Ok(lock(&self.inner)
            .cards
            .values()
            .filter(|c| c.updated_at >= since && after.is_none_or(|a| c.client_id > *a))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn client_of(&self, crm_id: &str) -> Result<Option<ClientId>, StoreError> {
        Ok(lock(&self.inner)
            .cards
            .values()
            .find(|c| c.crm_id.as_deref() == Some(crm_id))
            .map(|c| c.client_id.clone()))
    }

    async fn intake(&self, hints: &[Hint], request_id: &str) -> Result<Vec<Intake>, StoreError> {
        let mut inner = lock(&self.inner);
        let mut out = Vec::with_capacity(hints.len());
        for hint in hints {
            if !inner
                .deliveries
                .insert((hint.vendor.clone(), hint.delivery_id.clone()))
            {
                out.push(Intake::Duplicate);
                continue;
            }
            let mut hint = hint.clone();
            if hint.client_id.is_none() && hint.entity == Entity::Contact {
                hint.client_id = inner
                    .cards
                    .values()
                    .find(|c| c.crm_id.as_deref() == Some(hint.crm_id.as_str()))
                    .map(|c| c.client_id.clone());
            }
            let id = inner.webhooks.keys().next_back().map_or(1, |id| id + 1);
            let record = IncomingHint {
                version: VERSION,
                webhook_id: id,
                hint: hint.clone(),
                request_id: request_id.to_owned(),
                received_at: apply::now(),
            };
            let payload = serde_json::to_string(&record).unwrap_or_default();
            inner.push_outbox(TOPIC_INCOMING, record.key(), request_id, |_| payload);
            inner.webhooks.insert(
                id,
                StoredWebhook {
                    id,
                    hint,
                    request_id: request_id.to_owned(),
                    received_at: record.received_at,
                    processed_at: None,
                },
            );
            out.push(Intake::Stored(id));
        }
        Ok(out)
    }

    async fn session(&self, client: &ClientId) -> Result<Box<dyn ClientSession>, StoreError> {
        let guard = self.sync_lock(client).lock_owned().await;
        let snapshot = {
            let inner = lock(&self.inner);
            SyncSnapshot {
                card: inner.cards.get(client).cloned(),
                base: inner.bases.get(client).cloned().unwrap_or_default(),
                writing: inner.writing.get(client).cloned().unwrap_or_default(),
                pending: inner
                    .operator_tasks
                    .values()
                    .filter(|t| t.client_id == *client && t.state == OperatorTaskState::Open)
                    .map(|t| t.field)
                    .collect(),
            }
        };
        Ok(Box::new(MemorySession {
            inner: self.inner.clone(),
            client: client.clone(),
            snapshot,
            _guard: guard,
        }))
    }

    async fn operator_tasks(
        &self,
        state: Option<OperatorTaskState>,
        limit: i64,
    ) -> Result<Vec<OperatorTask>, StoreError> {
        let limit = usize::try_from(limit.max(0)).unwrap_or(usize::MAX);
        Ok(lock(&self.inner)
            .operator_tasks
            .values()
            .filter(|t| state.is_none_or(|s| t.state == s))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn operator_task(&self, id: i64) -> Result<Option<OperatorTask>, StoreError> {
        Ok(lock(&self.inner).operator_tasks.get(&id).cloned())
    }

    async fn resolve(
        &self,
        id: i64,
        choice: &Choice,
        by: &str,
        request_id: &str,
        idempotency: Option<&IdempotencyClaim>,
    ) -> Result<Idempotent<OperatorTask>, StoreError> {
        let mut inner = lock(&self.inner);
        if let Claim::Done(done) = inner.claim(idempotency)? {
            return Ok(done);
        }
        let mut task = inner
            .operator_tasks
            .get(&id)
            .cloned()
            .ok_or(StoreError::OperatorTaskNotFound)?;
        if task.state != OperatorTaskState::Open {
            return Err(StoreError::OperatorTaskResolved);
        }
        let value = apply::chosen_value(&task, choice).map_err(StoreError::InvalidValue)?;
        let now = apply::now();
        let mut card = inner
            .cards
            .get(&task.client_id)
            .cloned()
            .unwrap_or_else(|| empty_card(&task.client_id, now));
        card.card.set(task.field, value.clone());
        card.stamps.insert(
            task.field,
            Stamp {
                at: now,
                source: Source::Operator,
            },
        );
        card.version += 1;
        card.updated_at = now;
        inner.cards.insert(task.client_id.clone(), card.clone());
        inner.push_card_change(
            &card,
            vec![task.field],
            vec![task.field],
            Source::Operator,
            request_id,
            now,
        );
        task.state = OperatorTaskState::Resolved;
        task.resolution = Some(value.clone());
        task.resolved_by = Some(by.to_owned());
        task.resolved_at = Some(now);
        inner.operator_tasks.insert(id, task.clone());
        inner.conflicts.push(LoggedConflict {
            client_id: task.client_id.clone(),
            field: task.field,
            ours: task.ours.clone(),
            theirs: task.theirs.clone(),
            rule: apply::RULE_OPERATOR.to_owned(),
            resolution: apply::resolution_name(choice).to_owned(),
            reason: task.reason.clone(),
            operator_task: Some(id),
            chosen: Some(value),
            decided_by: Some(by.to_owned()),
            request_id: request_id.to_owned(),
        });
        Ok(inner.answer(idempotency, task))
    }

    async fn requeue(&self, client: &ClientId, request_id: &str) -> Result<(), StoreError> {
        let mut inner = lock(&self.inner);
        let card = inner
            .cards
            .get(client)
            .cloned()
            .ok_or(StoreError::ClientNotFound)?;
        inner.push_card_change(
            &card,
            Field::ALL.to_vec(),
            Vec::new(),
            Source::Operator,
            request_id,
            apply::now(),
        );
        Ok(())
    }

    async fn try_lead(&self) -> Result<Option<Box<dyn Leadership>>, StoreError> {
        if self
            .leader
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Ok(None);
        }
        Ok(Some(Box::new(MemoryLeadership(self.leader.clone()))))
    }

    async fn outbox_next(&self, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        let limit = usize::try_from(limit.max(0)).unwrap_or(usize::MAX);
        Ok(lock(&self.inner).outbox.values().take(limit).cloned().collect())
    }

    async fn outbox_delete(&self, ids: &[i64]) -> Result<(), StoreError> {
        let mut inner = lock(&self.inner);
        for id in ids {
            inner.outbox.remove(id);
        }
        Ok(())
    }

    async fn outbox_depth(&self) -> Result<i64, StoreError> {
        Ok(i64::try_from(lock(&self.inner).outbox.len()).unwrap_or(i64::MAX))
    }
}

struct MemoryLeadership(Arc<AtomicBool>);

#[async_trait]
impl Leadership for MemoryLeadership {
    async fn is_alive(&self) -> bool {
        true
    }
}

impl Drop for MemoryLeadership {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
