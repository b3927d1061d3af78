//! The company's copy of client cards, tasks and history in PostgreSQL ([`ClientStore`]): every
//! change with its `crm_outbox` row and its idempotency claim in one transaction.
//!
//! Two advisory locks per client, in separate namespaces: the *outbox lock*, taken by every
//! writer of a client's card or outbox rows before it takes an outbox id (so one client's rows
//! get ids in commit order), held only for the length of a change; and the *sync lock*, held by a
//! [`ClientSession`] for the length of a CRM round trip, which the API never waits for.

mod cards;
mod operator;
mod outbox;
mod session;
mod webhooks;

use async_trait::async_trait;
use backbone_sync::clients::model::{Card, ClientId, Field, Interaction, Stamp, Task};
use backbone_sync::clients::ports::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// The advisory-lock namespace of the outbox lock (`pg_advisory_xact_lock(int, int)`).
const OUTBOX_LOCK: i32 = 0x6f75_7462; // "outb"
/// The advisory-lock namespace of the sync lock.
const SYNC_LOCK: i32 = 0x7379_6e63; // "sync"

#[derive(Clone)]
pub struct PgClients {
    pool: PgPool,
    /// For the notes of CRM writes (`ClientSession::note_writing`), committed while a session
    /// holds a connection of `pool`: with a pool of their own, sessions never wait on each other
    /// for a second connection.
    notes: PgPool,
}

impl PgClients {
    pub fn new(pool: PgPool) -> Self {
        let notes = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect_lazy_with((*pool.connect_options()).clone());
        Self { pool, notes }
    }

    /// Creates the database if needed, connects and applies pending migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, crate::ConnectError> {
        Ok(Self::new(
            crate::connect(url, max_connections, &super::MIGRATOR).await?,
        ))
    }

    /// A cheap round trip, for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(err("ping"))
    }
}

/// A driver error as a port error: the context, never a value.
fn err(context: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| StoreError::Unavailable(format!("{context}: {e}"))
}

/// Whether `e` is a unique violation of `constraint`.
fn violates(e: &sqlx::Error, constraint: &str) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.code().as_deref() == Some("23505") && d.constraint() == Some(constraint))
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Unavailable(format!("a stored {what} does not read back"))
}

/// Takes the client's outbox lock until the transaction ends. `key` is the outbox rows' key.
async fn lock_outbox(connection: &mut PgConnection, key: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(OUTBOX_LOCK)
        .bind(key)
        .execute(connection)
        .await
        .map(|_| ())
        .map_err(err("taking the outbox lock"))
}

/// Claims an idempotency key in the caller's transaction. `None`: the key is new and the change
/// goes ahead. A concurrent claim of the same key waits here until the first one commits.
async fn claim<T: DeserializeOwned>(
    connection: &mut PgConnection,
    claim: Option<&IdempotencyClaim>,
) -> Result<Option<Idempotent<T>>, StoreError> {
    let Some(c) = claim else { return Ok(None) };
    let claimed = sqlx::query(
        "INSERT INTO api_idempotency (scope, key, request_digest) VALUES ($1, $2, $3)
         ON CONFLICT (scope, key) DO NOTHING",
    )
    .bind(&c.scope)
    .bind(&c.key)
    .bind(&c.request_digest)
    .execute(&mut *connection)
    .await
    .map_err(err("claiming the idempotency key"))?;
    if claimed.rows_affected() == 1 {
        return Ok(None);
    }
    let (digest, answer): (String, Option<serde_json::Value>) =
        sqlx::query_as("SELECT request_digest, answer FROM api_idempotency WHERE scope = $1 AND key = $2")
            .bind(&c.scope)
            .bind(&c.key)
            .fetch_one(&mut *connection)
            .await
            .map_err(err("reading the idempotency key"))?;
    if digest != c.request_digest {
        return Ok(Some(Idempotent::KeyReused));
    }
    let answer = answer.ok_or_else(|| corrupt("idempotent answer"))?;
    serde_json::from_value(answer)
        .map(|a| Some(Idempotent::Replayed(a)))
        .map_err(|_| corrupt("idempotent answer"))
}

/// Keeps the first answer with the claimed key, in the same transaction.
async fn keep_answer<T: Serialize>(
    connection: &mut PgConnection,
    claim: Option<&IdempotencyClaim>,
    answer: T,
) -> Result<Idempotent<T>, StoreError> {
    if let Some(c) = claim {
        sqlx::query("UPDATE api_idempotency SET answer = $3 WHERE scope = $1 AND key = $2")
            .bind(&c.scope)
            .bind(&c.key)
            .bind(Json(&answer))
            .execute(connection)
            .await
            .map_err(err("keeping the idempotent answer"))?;
    }
    Ok(Idempotent::Fresh(answer))
}

type CardRow = (
    String,
    Json<Card>,
    Json<BTreeMap<Field, Stamp>>,
    i64,
    Option<String>,
    OffsetDateTime,
);

const CARD_COLUMNS: &str = "client_id, card, stamps, version, crm_id, updated_at";

fn card_of(row: CardRow) -> Result<StoredCard, StoreError> {
    let (client_id, card, stamps, version, crm_id, updated_at) = row;
    Ok(StoredCard {
        client_id: ClientId::parse(client_id).map_err(|_| corrupt("client id"))?,
        card: card.0,
        stamps: stamps.0,
        version,
        crm_id,
        updated_at,
    })
}

async fn read_card(
    connection: &mut PgConnection,
    client: &ClientId,
) -> Result<Option<StoredCard>, StoreError> {
    sqlx::query_as::<_, CardRow>(&format!(
        "SELECT {CARD_COLUMNS} FROM client_card WHERE client_id = $1"
    ))
    .bind(client.as_str())
    .fetch_optional(connection)
    .await
    .map_err(err("reading a card"))?
    .map(card_of)
    .transpose()
}

/// Writes a card: inserted when `created`, updated otherwise.
async fn write_card(
    connection: &mut PgConnection,
    card: &StoredCard,
    created: bool,
) -> Result<(), StoreError> {
    let sql = if created {
        "INSERT INTO client_card (client_id, card, stamps, version, crm_id, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6)"
    } else {
        "UPDATE client_card SET card = $2, stamps = $3, version = $4, crm_id = $5, updated_at = $6
         WHERE client_id = $1"
    };
    sqlx::query(sql)
        .bind(card.client_id.as_str())
        .bind(Json(&card.card))
        .bind(Json(&card.stamps))
        .bind(card.version)
        .bind(&card.crm_id)
        .bind(card.updated_at)
        .execute(connection)
        .await
        .map_err(|e| {
            if violates(&e, "client_card_crm_id_idx") {
                StoreError::CrmIdLinkedElsewhere
            } else {
                err("writing a card")(e)
            }
        })?;
    Ok(())
}

fn empty_card(client: &ClientId, at: OffsetDateTime) -> StoredCard {
    StoredCard {
        client_id: client.clone(),
        card: Card::default(),
        stamps: BTreeMap::new(),
        version: 0,
        crm_id: None,
        updated_at: at,
    }
}

#[async_trait]
impl ClientStore for PgClients {
    async fn change_card(
        &self,
        change: &CardChange,
        idempotency: Option<&IdempotencyClaim>,
    ) -> Result<Idempotent<CardChanged>, StoreError> {
        cards::change_card(&self.pool, change, idempotency).await
    }

    async fn put_task(
        &self,
        task: &Task,
        request_id: &str,
        idempotency: Option<&IdempotencyClaim>,
    ) -> Result<Idempotent<EntityWritten<Task>>, StoreError> {
        cards::put_task(&self.pool, task, request_id, idempotency).await
    }

    async fn put_interaction(
        &self,
        interaction: &Interaction,
        request_id: &str,
        idempotency: Option<&IdempotencyClaim>,
    ) -> Result<Idempotent<EntityWritten<Interaction>>, StoreError> {
        cards::put_interaction(&self.pool, interaction, request_id, idempotency).await
    }

    async fn card(&self, client: &ClientId) -> Result<Option<StoredCard>, StoreError> {
        let mut connection = self.pool.acquire().await.map_err(err("connecting"))?;
        read_card(&mut connection, client).await
    }

    async fn cards_since(
        &self,
        since: OffsetDateTime,
        after: Option<&ClientId>,
        limit: i64,
    ) -> Result<Vec<StoredCard>, StoreError> {
        cards::cards_since(&self.pool, since, after, limit).await
    }

    async fn client_of(&self, crm_id: &str) -> Result<Option<ClientId>, StoreError> {
        let mut connection = self.pool.acquire().await.map_err(err("connecting"))?;
        cards::client_of(&mut connection, crm_id).await
    }

    async fn intake(&self, hints: &[Hint], request_id: &str) -> Result<Vec<Intake>, StoreError> {
        webhooks::intake(&self.pool, hints, request_id).await
    }

    async fn session(&self, client: &ClientId) -> Result<Box<dyn ClientSession>, StoreError> {
        Ok(Box::new(
            session::PgSession::open(&self.pool, &self.notes, client).await?,
        ))
    }

    async fn operator_tasks(
        &self,
        state: Option<OperatorTaskState>,
        limit: i64,
    ) -> Result<Vec<OperatorTask>, StoreError> {
        operator::list(&self.pool, state, limit).await
    }

    async fn operator_task(&self, id: i64) -> Result<Option<OperatorTask>, StoreError> {
        let mut connection = self.pool.acquire().await.map_err(err("connecting"))?;
        operator::read(&mut connection, id, false).await
    }

    async fn resolve(
        &self,
        id: i64,
        choice: &Choice,
        by: &str,
        request_id: &str,
        idempotency: Option<&IdempotencyClaim>,
    ) -> Result<Idempotent<OperatorTask>, StoreError> {
        operator::resolve(&self.pool, id, choice, by, request_id, idempotency).await
    }

    async fn requeue(&self, client: &ClientId, request_id: &str) -> Result<(), StoreError> {
        cards::requeue(&self.pool, client, request_id).await
    }

    async fn try_lead(&self) -> Result<Option<Box<dyn Leadership>>, StoreError> {
        outbox::try_lead(&self.pool).await
    }

    async fn outbox_next(&self, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        outbox::next(&self.pool, limit).await
    }

    async fn outbox_delete(&self, ids: &[i64]) -> Result<(), StoreError> {
        outbox::delete(&self.pool, ids).await
    }

    async fn outbox_depth(&self) -> Result<i64, StoreError> {
        outbox::depth(&self.pool).await
    }
}
