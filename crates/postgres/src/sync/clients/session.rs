//! A client's session: a transaction holding the client's sync lock while the dispatcher or the
//! processor talks to the CRM. Committing writes what it learnt; dropping it rolls back. The API
//! takes the other (outbox) lock, so it is never held up by a CRM call in flight.

use super::{empty_card, err, lock_outbox, operator, read_card, write_card, SYNC_LOCK};
use crate::sync::ledger::insert_attempts;
use async_trait::async_trait;
use backbone_sync::clients::apply;
use backbone_sync::clients::merge::{add_writing, Base, Writing};
use backbone_sync::clients::model::{ClientId, Source, Stamp, Task, TaskId, TaskState};
use backbone_sync::clients::ports::*;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

/// `integrations_log.flow` of the two-way sync's rows.
const FLOW_TWO_WAY: &str = "two_way";

pub(super) struct PgSession {
    tx: Transaction<'static, Postgres>,
    /// For what must be committed before the session ends (`note_writing`).
    notes: PgPool,
    client: ClientId,
    snapshot: SyncSnapshot,
}

impl PgSession {
    pub(super) async fn open(pool: &PgPool, notes: &PgPool, client: &ClientId) -> Result<Self, StoreError> {
        let mut tx = pool.begin().await.map_err(err("begin"))?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(SYNC_LOCK)
            .bind(client.as_str())
            .execute(&mut *tx)
            .await
            .map_err(err("taking the sync lock"))?;
        let card = read_card(&mut tx, client).await?;
        let base: Option<(Json<Base>, Json<Writing>)> =
            sqlx::query_as("SELECT base, writing FROM client_sync_base WHERE client_id = $1")
                .bind(client.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(err("reading the sync base"))?;
        let pending = operator::pending(&mut tx, client).await?;
        let (base, writing) = base.map(|(b, w)| (b.0, w.0)).unwrap_or_default();
        Ok(Self {
            tx,
            notes: notes.clone(),
            client: client.clone(),
            snapshot: SyncSnapshot {
                card,
                base,
                pending,
                writing,
            },
        })
    }
}

async fn task_where(
    connection: &mut PgConnection,
    column: &str,
    value: &str,
) -> Result<Option<Task>, StoreError> {
    let body: Option<Json<Task>> =
        sqlx::query_scalar(&format!("SELECT body FROM crm_task WHERE {column} = $1"))
            .bind(value)
            .fetch_optional(connection)
            .await
            .map_err(err("reading a task"))?;
    Ok(body.map(|b| b.0))
}

#[async_trait]
impl ClientSession for PgSession {
    fn snapshot(&self) -> &SyncSnapshot {
        &self.snapshot
    }

    async fn link(&mut self, entity: Entity, our_id: &str) -> Result<Option<String>, StoreError> {
        let sql = match entity {
            Entity::Contact => "SELECT crm_id FROM client_card WHERE client_id = $1",
            Entity::Task => "SELECT crm_id FROM crm_task WHERE task_id = $1",
            Entity::Note => "SELECT crm_id FROM crm_interaction WHERE interaction_id = $1",
        };
        let found: Option<Option<String>> = sqlx::query_scalar(sql)
            .bind(our_id)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(err("reading a link"))?;
        Ok(found.flatten())
    }

    async fn task(&mut self, task: &TaskId) -> Result<Option<Task>, StoreError> {
        task_where(&mut self.tx, "task_id", task.as_str()).await
    }

    async fn task_base(&mut self, task: &TaskId) -> Result<Option<TaskState>, StoreError> {
        let state: Option<Option<String>> =
            sqlx::query_scalar("SELECT synced_state FROM crm_task WHERE task_id = $1")
                .bind(task.as_str())
                .fetch_optional(&mut *self.tx)
                .await
                .map_err(err("reading a task's base"))?;
        Ok(state.flatten().as_deref().and_then(state_of))
    }

    async fn task_by_crm_id(&mut self, crm_id: &str) -> Result<Option<Task>, StoreError> {
        task_where(&mut self.tx, "crm_id", crm_id).await
    }

    async fn note_task_writing(&mut self, task: &TaskId, state: TaskState) -> Result<(), StoreError> {
        // As `note_writing`: committed now, on a connection of its own.
        sqlx::query(
            "UPDATE crm_task SET writing_states = array_append(array_remove(writing_states, $2), $2)
              WHERE task_id = $1",
        )
        .bind(task.as_str())
        .bind(state_name(state))
        .execute(&self.notes)
        .await
        .map_err(err("noting a CRM task write"))?;
        Ok(())
    }

    async fn task_writing(&mut self, task: &TaskId) -> Result<Vec<TaskState>, StoreError> {
        let states: Option<Vec<String>> =
            sqlx::query_scalar("SELECT writing_states FROM crm_task WHERE task_id = $1")
                .bind(task.as_str())
                .fetch_optional(&mut *self.tx)
                .await
                .map_err(err("reading a task's noted writes"))?;
        Ok(states
            .unwrap_or_default()
            .iter()
            .filter_map(|s| state_of(s))
            .collect())
    }

    async fn note_writing(&mut self, digests: &Base) -> Result<(), StoreError> {
        let writing = add_writing(&self.snapshot.writing, digests);
        // On a connection of its own, committed now: the session's transaction may never commit.
        // The client's sync lock, held by the session, keeps every other session off the row.
        sqlx::query(
            "INSERT INTO client_sync_base (client_id, writing) VALUES ($1, $2)
             ON CONFLICT (client_id) DO UPDATE SET writing = EXCLUDED.writing",
        )
        .bind(self.client.as_str())
        .bind(Json(&writing))
        .execute(&self.notes)
        .await
        .map_err(err("noting a CRM write"))?;
        self.snapshot.writing = writing;
        Ok(())
    }

    async fn commit(self: Box<Self>, write: SyncWrite) -> Result<(), StoreError> {
        let Self {
            mut tx,
            client,
            snapshot,
            ..
        } = *self;
        // The card's writers serialize on the outbox lock; values from the CRM queue no row.
        lock_outbox(&mut tx, client.as_str()).await?;
        let now = apply::now();
        let current = read_card(&mut tx, &client).await?;
        let to_ours = apply::untouched_since(&write.to_ours, snapshot.card.as_ref(), current.as_ref());
        let created = current.is_none();
        let mut card = current.unwrap_or_else(|| empty_card(&client, now));
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
        if !changed.is_empty() || linked {
            write_card(&mut tx, &card, created).await?;
        }
        if !write.base.is_empty() || !snapshot.writing.is_empty() {
            sqlx::query(
                "INSERT INTO client_sync_base (client_id, base) VALUES ($1, $2)
                 ON CONFLICT (client_id) DO UPDATE
                    SET base = client_sync_base.base || EXCLUDED.base, writing = '{}',
                        updated_at = now()",
            )
            .bind(client.as_str())
            .bind(Json(&write.base))
            .execute(&mut *tx)
            .await
            .map_err(err("writing the sync base"))?;
        }
        write_links(&mut tx, &write).await?;
        for conflict in &write.conflicts {
            operator::record_conflict(&mut tx, &client, conflict, &write.request_id).await?;
        }
        if let Some(id) = write.webhook_done {
            sqlx::query("UPDATE crm_webhook SET processed_at = coalesce(processed_at, now()) WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(err("marking a webhook processed"))?;
        }
        insert_attempts(&mut tx, &write.attempts, FLOW_TWO_WAY)
            .await
            .map_err(err("writing integrations_log"))?;
        tx.commit().await.map_err(err("commit"))
    }
}

/// CRM ids learnt for tasks and interactions, and task states taken from the CRM.
async fn write_links(connection: &mut PgConnection, write: &SyncWrite) -> Result<(), StoreError> {
    let pairs = |links: &[(String, String)]| -> (Vec<String>, Vec<String>) { links.iter().cloned().unzip() };
    if !write.task_links.is_empty() {
        let links: Vec<(String, String)> = write
            .task_links
            .iter()
            .map(|(t, c)| (t.to_string(), c.clone()))
            .collect();
        let (ours, theirs) = pairs(&links);
        sqlx::query(
            "UPDATE crm_task SET crm_id = u.crm_id, updated_at = now()
             FROM UNNEST($1::text[], $2::text[]) AS u(task_id, crm_id) WHERE crm_task.task_id = u.task_id",
        )
        .bind(&ours)
        .bind(&theirs)
        .execute(&mut *connection)
        .await
        .map_err(err("linking tasks"))?;
    }
    if !write.interaction_links.is_empty() {
        let links: Vec<(String, String)> = write
            .interaction_links
            .iter()
            .map(|(i, c)| (i.to_string(), c.clone()))
            .collect();
        let (ours, theirs) = pairs(&links);
        sqlx::query(
            "UPDATE crm_interaction SET crm_id = u.crm_id
             FROM UNNEST($1::text[], $2::text[]) AS u(interaction_id, crm_id)
             WHERE crm_interaction.interaction_id = u.interaction_id",
        )
        .bind(&ours)
        .bind(&theirs)
        .execute(&mut *connection)
        .await
        .map_err(err("linking interactions"))?;
    }
    if !write.task_updates.is_empty() {
        let tasks: Vec<String> = write.task_updates.iter().map(|(t, _)| t.to_string()).collect();
        let states: Vec<String> = write
            .task_updates
            .iter()
            .map(|(_, s)| state_name(*s).to_owned())
            .collect();
        sqlx::query(
            "UPDATE crm_task SET body = jsonb_set(body, '{state}', to_jsonb(u.state)), updated_at = now()
             FROM UNNEST($1::text[], $2::text[]) AS u(task_id, state) WHERE crm_task.task_id = u.task_id",
        )
        .bind(&tasks)
        .bind(&states)
        .execute(&mut *connection)
        .await
        .map_err(err("updating task states"))?;
    }
    if !write.task_bases.is_empty() {
        let (tasks, states): (Vec<String>, Vec<String>) = write
            .task_bases
            .iter()
            .map(|(t, s)| (t.to_string(), state_name(*s).to_owned()))
            .unzip();
        sqlx::query(
            "UPDATE crm_task SET synced_state = u.state, writing_states = '{}'
             FROM UNNEST($1::text[], $2::text[]) AS u(task_id, state) WHERE crm_task.task_id = u.task_id",
        )
        .bind(&tasks)
        .bind(&states)
        .execute(connection)
        .await
        .map_err(err("recording task bases"))?;
    }
    Ok(())
}

fn state_of(name: &str) -> Option<TaskState> {
    [TaskState::Open, TaskState::Done, TaskState::Cancelled]
        .into_iter()
        .find(|s| state_name(*s) == name)
}

fn state_name(state: TaskState) -> &'static str {
    match state {
        TaskState::Open => "open",
        TaskState::Done => "done",
        TaskState::Cancelled => "cancelled",
    }
}
