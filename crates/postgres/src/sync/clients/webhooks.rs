//! Webhook intake: verified hints stored once per `(vendor, delivery_id)`, each with its
//! `crm.incoming` outbox row. A delivery repeated while the first is still being stored waits on
//! the unique index and then finds it: one row, one record.
//!
//! One statement stores a hint: it takes the key's outbox lock, inserts the webhook and, only
//! when the webhook is new, its outbox row carrying the webhook's id. A single hint (what the
//! generic, Bitrix24 and Kommo webhooks carry) is that statement alone, its own transaction,
//! committed before it answers; several (a Salesforce message) share one transaction that takes
//! every key's lock first.

use super::{cards, err, OUTBOX_LOCK};
use backbone_sync::clients::apply::{self, TOPIC_INCOMING};
use backbone_sync::clients::ports::{Entity, Hint, Intake, StoreError};
use backbone_sync::clients::records::{IncomingHint, VERSION};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};

/// `$11` is the outbox key; its lock is taken (again, where the transaction holds it already:
/// advisory locks stack) before the webhook's row and the outbox row's id are.
const STORE: &str = "WITH locked AS (
         SELECT pg_advisory_xact_lock($14, hashtext($11))
     ), hook AS (
         INSERT INTO crm_webhook (vendor, delivery_id, entity, crm_id, client_id, event, occurred_at,
             request_id, received_at)
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 FROM locked
         ON CONFLICT (vendor, delivery_id) DO NOTHING
         RETURNING id
     ), queued AS (
         INSERT INTO crm_outbox (topic, key, payload, headers)
         SELECT $10, $11, jsonb_set($12::jsonb, '{webhook_id}', to_jsonb(hook.id)), $13 FROM hook
     )
     SELECT id FROM hook";

async fn store(
    connection: &mut PgConnection,
    record: &IncomingHint,
    key: &str,
    request_id: &str,
) -> Result<Intake, StoreError> {
    let hint = &record.hint;
    let id: Option<i64> = sqlx::query_scalar(STORE)
        .bind(&hint.vendor)
        .bind(&hint.delivery_id)
        .bind(hint.entity.as_str())
        .bind(&hint.crm_id)
        .bind(hint.client_id.as_ref().map(|c| c.as_str()))
        .bind(&hint.event)
        .bind(hint.occurred_at)
        .bind(request_id)
        .bind(record.received_at)
        .bind(TOPIC_INCOMING)
        .bind(key)
        .bind(Json(record))
        .bind(Json(super::outbox::headers(request_id)))
        .bind(OUTBOX_LOCK)
        .fetch_optional(connection)
        .await
        .map_err(err("storing a webhook"))?;
    Ok(id.map_or(Intake::Duplicate, Intake::Stored))
}

pub(super) async fn intake(
    pool: &PgPool,
    hints: &[Hint],
    request_id: &str,
) -> Result<Vec<Intake>, StoreError> {
    if hints.is_empty() {
        return Ok(Vec::new());
    }
    let mut connection = pool.acquire().await.map_err(err("connecting"))?;
    // A contact the webhook names only by the CRM's id belongs to the client linked to it.
    let mut records = Vec::with_capacity(hints.len());
    for hint in hints {
        let mut hint = hint.clone();
        if hint.client_id.is_none() && hint.entity == Entity::Contact {
            hint.client_id = cards::client_of(&mut connection, &hint.crm_id).await?;
        }
        records.push(IncomingHint {
            version: VERSION,
            webhook_id: 0,
            hint,
            request_id: request_id.to_owned(),
            received_at: apply::now(),
        });
    }
    let keys: Vec<String> = records.iter().map(IncomingHint::key).collect();
    if let ([record], [key]) = (records.as_slice(), keys.as_slice()) {
        return Ok(vec![store(&mut connection, record, key, request_id).await?]);
    }
    let mut tx = sqlx::Connection::begin(&mut *connection)
        .await
        .map_err(err("begin"))?;
    // Every key's outbox lock, in one order for every transaction: two batches naming the same
    // clients in other orders cannot deadlock.
    sqlx::query(
        "SELECT pg_advisory_xact_lock($1, h)
         FROM (SELECT DISTINCT hashtext(k) AS h FROM UNNEST($2::text[]) AS k ORDER BY h) AS locks",
    )
    .bind(OUTBOX_LOCK)
    .bind(&keys)
    .execute(&mut *tx)
    .await
    .map_err(err("taking the outbox locks"))?;
    let mut out = Vec::with_capacity(records.len());
    for (record, key) in records.iter().zip(&keys) {
        out.push(store(&mut tx, record, key, request_id).await?);
    }
    tx.commit().await.map_err(err("commit"))?;
    Ok(out)
}
