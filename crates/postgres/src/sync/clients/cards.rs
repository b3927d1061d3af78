//! Our side's changes: cards, tasks and interactions, each with its `crm.outgoing` row and its
//! idempotency claim in one transaction, under the client's outbox lock.

use super::{card_of, CardRow, CARD_COLUMNS};
use super::{
    claim, corrupt, empty_card, err, keep_answer, lock_outbox, outbox, read_card, violates, write_card,
};
use backbone_sync::clients::apply::{self, TOPIC_OUTGOING};
use backbone_sync::clients::model::{ClientId, Field, Interaction, Source, Stamp, Task};
use backbone_sync::clients::ports::*;
use backbone_sync::clients::records::OutgoingChange;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;

pub(super) async fn change_card(
    pool: &PgPool,
    change: &CardChange,
    idempotency: Option<&IdempotencyClaim>,
) -> Result<Idempotent<CardChanged>, StoreError> {
    let mut tx = pool.begin().await.map_err(err("begin"))?;
    if let Some(done) = claim(&mut tx, idempotency).await? {
        return Ok(done);
    }
    let client = &change.client_id;
    lock_outbox(&mut tx, client.as_str()).await?;
    let current = read_card(&mut tx, client).await?;
    if current.is_none() && change.must_exist {
        return Err(StoreError::ClientNotFound);
    }
    let created = current.is_none();
    let now = apply::now();
    let mut stored = current.unwrap_or_else(|| empty_card(client, now));
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
        write_card(&mut tx, &stored, created).await?;
    }
    if !changed.is_empty() {
        queue_card(
            &mut tx,
            &stored,
            changed.clone(),
            Vec::new(),
            change.source,
            &change.request_id,
            change.at,
        )
        .await?;
    }
    let answer = CardChanged {
        card: stored,
        created,
        changed,
    };
    let answer = keep_answer(&mut tx, idempotency, answer).await?;
    tx.commit().await.map_err(err("commit"))?;
    Ok(answer)
}

/// Queues a card change for the CRM; the caller holds the client's outbox lock.
pub(super) async fn queue_card(
    connection: &mut PgConnection,
    card: &StoredCard,
    fields: Vec<Field>,
    forced: Vec<Field>,
    source: Source,
    request_id: &str,
    at: OffsetDateTime,
) -> Result<i64, StoreError> {
    let client = &card.client_id;
    outbox::insert(connection, TOPIC_OUTGOING, client.as_str(), request_id, |id| {
        OutgoingChange::card(id, client, card.version, fields, forced, source, request_id, at)
    })
    .await
}

async fn card_exists(connection: &mut PgConnection, client: &ClientId) -> Result<bool, StoreError> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM client_card WHERE client_id = $1)")
        .bind(client.as_str())
        .fetch_one(connection)
        .await
        .map_err(err("reading a card"))
}

pub(super) async fn put_task(
    pool: &PgPool,
    task: &Task,
    request_id: &str,
    idempotency: Option<&IdempotencyClaim>,
) -> Result<Idempotent<EntityWritten<Task>>, StoreError> {
    let mut tx = pool.begin().await.map_err(err("begin"))?;
    if let Some(done) = claim(&mut tx, idempotency).await? {
        return Ok(done);
    }
    lock_outbox(&mut tx, task.client_id.as_str()).await?;
    if !card_exists(&mut tx, &task.client_id).await? {
        return Err(StoreError::ClientNotFound);
    }
    let existing: Option<Json<Task>> =
        sqlx::query_scalar("SELECT body FROM crm_task WHERE task_id = $1 FOR UPDATE")
            .bind(task.task_id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(err("reading a task"))?;
    if existing.as_ref().is_some_and(|e| e.0.client_id != task.client_id) {
        return Err(StoreError::TaskOfAnotherClient);
    }
    let created = existing.is_none();
    let changed = existing.is_none_or(|e| e.0 != *task);
    if changed {
        let written = sqlx::query(
            "INSERT INTO crm_task (task_id, client_id, body) VALUES ($1, $2, $3)
             ON CONFLICT (task_id) DO UPDATE SET body = EXCLUDED.body, updated_at = now()
                 WHERE crm_task.client_id = EXCLUDED.client_id",
        )
        .bind(task.task_id.as_str())
        .bind(task.client_id.as_str())
        .bind(Json(task))
        .execute(&mut *tx)
        .await
        .map_err(err("writing a task"))?;
        if written.rows_affected() == 0 {
            // Another client's transaction stored this id since we looked.
            return Err(StoreError::TaskOfAnotherClient);
        }
        let now = apply::now();
        outbox::insert(
            &mut tx,
            TOPIC_OUTGOING,
            task.client_id.as_str(),
            request_id,
            |id| OutgoingChange::task(id, task, request_id, now),
        )
        .await?;
    }
    let answer = EntityWritten {
        entity: task.clone(),
        created,
        changed,
    };
    let answer = keep_answer(&mut tx, idempotency, answer).await?;
    tx.commit().await.map_err(err("commit"))?;
    Ok(answer)
}

pub(super) async fn put_interaction(
    pool: &PgPool,
    interaction: &Interaction,
    request_id: &str,
    idempotency: Option<&IdempotencyClaim>,
) -> Result<Idempotent<EntityWritten<Interaction>>, StoreError> {
    let mut tx = pool.begin().await.map_err(err("begin"))?;
    if let Some(done) = claim(&mut tx, idempotency).await? {
        return Ok(done);
    }
    let client = &interaction.client_id;
    lock_outbox(&mut tx, client.as_str()).await?;
    if !card_exists(&mut tx, client).await? {
        return Err(StoreError::ClientNotFound);
    }
    let existing: Option<Json<Interaction>> =
        sqlx::query_scalar("SELECT body FROM crm_interaction WHERE interaction_id = $1")
            .bind(interaction.interaction_id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(err("reading an interaction"))?;
    let created = match existing {
        Some(e) if e.0 != *interaction => return Err(StoreError::InteractionExists),
        Some(_) => false,
        None => {
            sqlx::query("INSERT INTO crm_interaction (interaction_id, client_id, body) VALUES ($1, $2, $3)")
                .bind(interaction.interaction_id.as_str())
                .bind(client.as_str())
                .bind(Json(interaction))
                .execute(&mut *tx)
                .await
                .map_err(|e| {
                    // Another client's transaction stored this id since we looked.
                    if violates(&e, "crm_interaction_pkey") {
                        StoreError::InteractionExists
                    } else {
                        err("writing an interaction")(e)
                    }
                })?;
            let now = apply::now();
            outbox::insert(&mut tx, TOPIC_OUTGOING, client.as_str(), request_id, |id| {
                OutgoingChange::interaction(id, interaction, request_id, now)
            })
            .await?;
            true
        }
    };
    let answer = EntityWritten {
        entity: interaction.clone(),
        created,
        changed: created,
    };
    let answer = keep_answer(&mut tx, idempotency, answer).await?;
    tx.commit().await.map_err(err("commit"))?;
    Ok(answer)
}

pub(super) async fn cards_since(
    pool: &PgPool,
    since: OffsetDateTime,
    after: Option<&ClientId>,
    limit: i64,
) -> Result<Vec<StoredCard>, StoreError> {
    sqlx::query_as::<_, CardRow>(&format!(
        "SELECT {CARD_COLUMNS} FROM client_card
         WHERE updated_at >= $1 AND ($2::text IS NULL OR client_id > $2)
         ORDER BY client_id LIMIT $3"
    ))
    .bind(since)
    .bind(after.map(ClientId::as_str))
    .bind(limit.max(0))
    .fetch_all(pool)
    .await
    .map_err(err("reading cards"))?
    .into_iter()
    .map(card_of)
    .collect()
}

pub(super) async fn client_of(
    connection: &mut PgConnection,
    crm_id: &str,
) -> Result<Option<ClientId>, StoreError> {
    let client: Option<String> = sqlx::query_scalar("SELECT client_id FROM client_card WHERE crm_id = $1")
        .bind(crm_id)
        .fetch_optional(connection)
        .await
        .map_err(err("reading a card"))?;
    client
        .map(|c| ClientId::parse(c).map_err(|_| corrupt("client id")))
        .transpose()
}

pub(super) async fn requeue(pool: &PgPool, client: &ClientId, request_id: &str) -> Result<(), StoreError> {
    let mut tx = pool.begin().await.map_err(err("begin"))?;
    lock_outbox(&mut tx, client.as_str()).await?;
    let card = read_card(&mut tx, client)
        .await?
        .ok_or(StoreError::ClientNotFound)?;
    queue_card(
        &mut tx,
        &card,
        Field::ALL.to_vec(),
        Vec::new(),
        Source::Operator,
        request_id,
        apply::now(),
    )
    .await?;
    tx.commit().await.map_err(err("commit"))
}
