//! An in-memory CRM behind [`ClientCrm`], for the flows' tests: contacts, tasks and notes with
//! CRM ids, edits "by a CRM user", write counts and injected failures.

use super::model::{Card, ClientId, Field, Interaction, Task, TaskState};
use super::ports::{ClientCrm, CrmContact, CrmTask, WriteContext};
use crate::ports::CrmError;
use async_trait::async_trait;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use time::OffsetDateTime;

#[derive(Debug, Default)]
struct State {
    contacts: BTreeMap<String, CrmContact>,
    tasks: BTreeMap<String, (Task, String)>,
    notes: BTreeMap<String, (Interaction, String)>,
    next_id: u64,
    contact_writes: u64,
    failures: VecDeque<CrmError>,
    /// Contact or task writes that land and then answer with a transient error (a lost reply).
    lost_replies: usize,
    request_ids: Vec<String>,
}

#[derive(Debug, Default)]
pub struct MemoryCrm {
    state: Mutex<State>,
}

impl MemoryCrm {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next calls fail with these errors, one each.
    pub fn fail_next(&self, errors: impl IntoIterator<Item = CrmError>) {
        self.lock().failures.extend(errors);
    }

    /// The next `n` contact or task writes land, and their replies are lost (a timeout): what a crash
    /// between the CRM's write and our commit leaves behind.
    pub fn lose_next_replies(&self, n: usize) {
        self.lock().lost_replies += n;
    }

    fn fail(&self) -> Result<(), CrmError> {
        match self.lock().failures.pop_front() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The contact of our client, as the CRM holds it.
    pub fn contact_of(&self, client: &ClientId) -> Option<CrmContact> {
        self.lock()
            .contacts
            .values()
            .find(|c| c.client_id.as_ref() == Some(client))
            .cloned()
    }

    /// An edit "by a CRM user" at `at`.
    pub fn edit(&self, crm_id: &str, field: Field, value: super::model::Value, at: OffsetDateTime) {
        let mut s = self.lock();
        if let Some(c) = s.contacts.get_mut(crm_id) {
            c.card.set(field, value);
            c.modified_at = Some(at);
        }
    }

    /// A task's state changed "by a CRM user".
    pub fn set_task_state(&self, crm_id: &str, state: TaskState) {
        if let Some((t, _)) = self.lock().tasks.get_mut(crm_id) {
            t.state = state;
        }
    }

    pub fn contact_writes(&self) -> u64 {
        self.lock().contact_writes
    }

    pub fn tasks(&self) -> Vec<(String, Task, String)> {
        self.lock()
            .tasks
            .iter()
            .map(|(id, (t, c))| (id.clone(), t.clone(), c.clone()))
            .collect()
    }

    pub fn notes(&self) -> Vec<(String, Interaction, String)> {
        self.lock()
            .notes
            .iter()
            .map(|(id, (n, c))| (id.clone(), n.clone(), c.clone()))
            .collect()
    }

    /// The request ids the CRM was called with, in order.
    pub fn request_ids(&self) -> Vec<String> {
        self.lock().request_ids.clone()
    }

    fn id(s: &mut State, prefix: &str) -> String {
        s.next_id += 1;
        format!("{prefix}{}", s.next_id)
    }
}

#[async_trait]
impl ClientCrm for MemoryCrm {
    async fn read_contact(&self, client: &ClientId) -> Result<Option<CrmContact>, CrmError> {
        self.fail()?;
        Ok(self.contact_of(client))
    }

    async fn read_contact_by_crm_id(&self, crm_id: &str) -> Result<Option<CrmContact>, CrmError> {
        self.fail()?;
        Ok(self.lock().contacts.get(crm_id).cloned())
    }

    async fn write_contact(
        &self,
        client: &ClientId,
        existing: Option<&str>,
        card: &Card,
        fields: &[Field],
        ctx: WriteContext<'_>,
    ) -> Result<String, CrmError> {
        self.fail()?;
        let mut s = self.lock();
        s.request_ids.push(ctx.request_id.to_owned());
        s.contact_writes += 1;
        let id = match existing {
            Some(id) if s.contacts.contains_key(id) => id.to_owned(),
            Some(_) => return Err(CrmError::from_status(404, None, "no such contact")),
            None => {
                let id = Self::id(&mut s, "ct-");
                s.contacts.insert(
                    id.clone(),
                    CrmContact {
                        crm_id: id.clone(),
                        client_id: Some(client.clone()),
                        card: Card::default(),
                        modified_at: None,
                    },
                );
                id
            }
        };
        let c = s.contacts.get_mut(&id).expect("inserted above");
        for f in fields {
            c.card.set(*f, card.get(*f).clone());
        }
        c.modified_at = Some(OffsetDateTime::now_utc());
        if s.lost_replies > 0 {
            s.lost_replies -= 1;
            return Err(CrmError::transient("timed out waiting for the CRM's reply"));
        }
        Ok(id)
    }

    async fn write_task(
        &self,
        task: &Task,
        contact: &str,
        existing: Option<&str>,
        ctx: WriteContext<'_>,
    ) -> Result<String, CrmError> {
        self.fail()?;
        let mut s = self.lock();
        s.request_ids.push(ctx.request_id.to_owned());
        // Without a known CRM id the task is upserted by our id, as the generic API does.
        let ours = s
            .tasks
            .iter()
            .find(|(_, (t, _))| t.task_id == task.task_id)
            .map(|(id, _)| id.clone());
        let id = match (existing, ours) {
            (Some(id), _) => id.to_owned(),
            (None, Some(id)) => id,
            (None, None) => Self::id(&mut s, "tk-"),
        };
        s.tasks.insert(id.clone(), (task.clone(), contact.to_owned()));
        if s.lost_replies > 0 {
            s.lost_replies -= 1;
            return Err(CrmError::transient("timed out waiting for the CRM's reply"));
        }
        Ok(id)
    }

    async fn read_task(&self, crm_id: &str) -> Result<Option<CrmTask>, CrmError> {
        self.fail()?;
        Ok(self.lock().tasks.get(crm_id).map(|(t, contact)| CrmTask {
            crm_id: crm_id.to_owned(),
            task_id: Some(t.task_id.clone()),
            title: Some(t.title.clone()),
            due_at: t.due_at,
            state: t.state,
            assignee: t.assignee.clone(),
            modified_at: None,
            contact: Some(contact.clone()),
        }))
    }

    async fn add_interaction(
        &self,
        interaction: &Interaction,
        contact: &str,
        ctx: WriteContext<'_>,
    ) -> Result<String, CrmError> {
        self.fail()?;
        let mut s = self.lock();
        s.request_ids.push(ctx.request_id.to_owned());
        let id = Self::id(&mut s, "nt-");
        s.notes
            .insert(id.clone(), (interaction.clone(), contact.to_owned()));
        Ok(id)
    }
}
