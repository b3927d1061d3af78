//! A client's session in memory: its async lock held, the write applied at commit.

use super::{empty_card, lock, Inner, LoggedConflict};
use crate::clients::apply;
use crate::clients::merge::{add_writing, Base, Resolution};
use crate::clients::model::{ClientId, Source, Stamp, Task, TaskId, TaskState};
use crate::clients::ports::*;
use async_trait::async_trait;
use std::sync::{Arc, Mutex};

pub(super) struct MemorySession {
    pub(super) inner: Arc<Mutex<Inner>>,
    pub(super) client: ClientId,
    pub(super) snapshot: SyncSnapshot,
    pub(super) _guard: futures::lock::OwnedMutexGuard<()>,
}

#[async_trait]
impl ClientSession for MemorySession {
    fn snapshot(&self) -> &SyncSnapshot {
        &self.snapshot
    }

    async fn link(&mut self, entity: Entity, our_id: &str) -> Result<Option<String>, StoreError> {
        let inner = lock(&self.inner);
        Ok(match entity {
            Entity::Contact => inner
                .cards
                .values()
                .find(|c| c.client_id.as_str() == our_id)
                .and_then(|c| c.crm_id.clone()),
            Entity::Task => inner
                .tasks
                .values()
                .find(|t| t.entity.task_id.as_str() == our_id)
                .and_then(|t| t.crm_id.clone()),
            Entity::Note => inner
                .interactions
                .values()
                .find(|i| i.entity.interaction_id.as_str() == our_id)
                .and_then(|i| i.crm_id.clone()),
        })
    }

    async fn task(&mut self, task: &TaskId) -> Result<Option<Task>, StoreError> {
        Ok(lock(&self.inner).tasks.get(task).map(|t| t.entity.clone()))
    }

    async fn task_base(&mut self, task: &TaskId) -> Result<Option<TaskState>, StoreError> {
        Ok(lock(&self.inner).task_bases.get(task).copied())
    }

    async fn task_by_crm_id(&mut self, crm_id: &str) -> Result<Option<Task>, StoreError> {
        Ok(lock(&self.inner)
            .tasks
            .values()
            .find(|t| t.crm_id.as_deref() == Some(crm_id))
            .map(|t| t.entity.clone()))
    }

    async fn note_task_writing(&mut self, task: &TaskId, state: TaskState) -> Result<(), StoreError> {
        let mut inner = lock(&self.inner);
        let noted = inner.task_writing.entry(task.clone()).or_default();
        if !noted.contains(&state) {
            noted.push(state);
        }
        Ok(())
    }

    async fn task_writing(&mut self, task: &TaskId) -> Result<Vec<TaskState>, StoreError> {
        Ok(lock(&self.inner)
            .task_writing
            .get(task)
            .cloned()
            .unwrap_or_default())
    }

    async fn note_writing(&mut self, digests: &Base) -> Result<(), StoreError> {
        let writing = add_writing(&self.snapshot.writing, digests);
        lock(&self.inner)
            .writing
            .insert(self.client.clone(), writing.clone());
        self.snapshot.writing = writing;
        Ok(())
    }

    async fn commit(self: Box<Self>, write: SyncWrite) -> Result<(), StoreError> {
        let mut inner = lock(&self.inner);
        if let Some(crm_id) = &write.crm_id {
            if inner.linked_elsewhere(&self.client, crm_id) {
                return Err(StoreError::CrmIdLinkedElsewhere);
            }
        }
        inner.writing.remove(&self.client);
        let now = apply::now();
        let current = inner.cards.get(&self.client).cloned();
        // A value changed on our side while the session was open stays: its own outbox row
        // takes it to the CRM.
        let to_ours = apply::untouched_since(&write.to_ours, self.snapshot.card.as_ref(), current.as_ref());
        let created = current.is_none();
        let mut card = current.unwrap_or_else(|| empty_card(&self.client, now));
        let stamp = Stamp {
            at: write.at.unwrap_or(now),
            source: Source::Crm,
        };
        let changed = apply::set_fields(&mut card.card, &mut card.stamps, &to_ours, &stamp);
        let linked = write.crm_id.is_some() && write.crm_id != card.crm_id;
        if !changed.is_empty() || (created && linked) {
            card.version += 1;
            card.updated_at = now;
        }
        if linked {
            card.crm_id = write.crm_id.clone();
        }
        if !created || !changed.is_empty() || linked {
            inner.cards.insert(self.client.clone(), card);
        }
        if !write.base.is_empty() {
            inner
                .bases
                .entry(self.client.clone())
                .or_default()
                .extend(write.base.clone());
        }
        for (task, crm_id) in &write.task_links {
            if let Some(t) = inner.tasks.get_mut(task) {
                t.crm_id = Some(crm_id.clone());
            }
        }
        for (interaction, crm_id) in &write.interaction_links {
            if let Some(i) = inner.interactions.get_mut(interaction) {
                i.crm_id = Some(crm_id.clone());
            }
        }
        for (task, state) in &write.task_updates {
            if let Some(t) = inner.tasks.get_mut(task) {
                t.entity.state = *state;
            }
        }
        for (task, state) in &write.task_bases {
            if inner.tasks.contains_key(task) {
                inner.task_bases.insert(task.clone(), *state);
                inner.task_writing.remove(task);
            }
        }
        for conflict in &write.conflicts {
            let mut operator_task = None;
            if conflict.resolution == Resolution::OperatorTask {
                let id = match inner.open_task_for(&self.client, conflict.field) {
                    Some(id) => id,
                    None => {
                        let id = inner.next_operator_task_id();
                        inner.operator_tasks.insert(
                            id,
                            OperatorTask {
                                id,
                                client_id: self.client.clone(),
                                field: conflict.field,
                                ours: conflict.ours.clone(),
                                ours_at: conflict.ours_at,
                                ours_source: conflict.ours_source,
                                theirs: conflict.theirs.clone(),
                                theirs_at: conflict.theirs_at,
                                theirs_source: Source::Crm,
                                reason: conflict.reason.clone(),
                                state: OperatorTaskState::Open,
                                created_at: now,
                                resolution: None,
                                resolved_by: None,
                                resolved_at: None,
                            },
                        );
                        id
                    }
                };
                operator_task = Some(id);
            }
            inner.conflicts.push(LoggedConflict {
                client_id: self.client.clone(),
                field: conflict.field,
                ours: conflict.ours.clone(),
                theirs: conflict.theirs.clone(),
                rule: conflict.rule.as_str().to_owned(),
                resolution: conflict.resolution.as_str().to_owned(),
                reason: conflict.reason.clone(),
                operator_task,
                chosen: None,
                decided_by: None,
                request_id: write.request_id.clone(),
            });
        }
        if let Some(id) = write.webhook_done {
            if let Some(w) = inner.webhooks.get_mut(&id) {
                w.processed_at.get_or_insert(now);
            }
        }
        inner.attempts.extend(write.attempts);
        Ok(())
    }
}
