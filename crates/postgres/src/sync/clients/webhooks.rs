//! Webhook intake: verified hints stored once per `(vendor, delivery_id)`, each with its
//! `crm.incoming` outbox row, all in one transaction. A delivery repeated while the first is
//! still being stored waits on the unique index and then finds it: one row, one record.

use super::{cards, err, outbox, OUTBOX_LOCK};
use backbone_sync::clients::apply::{self, TOPIC_INCOMING};
use backbone_sync::clients::ports::{Entity, Hint, Intake, StoreError};
use backbone_sync::clients::records::{IncomingHint, VERSION};
use sqlx::PgPool;

pub(super) async fn intake(
    pool: &PgPool,
    hints: &[Hint],
    request_id: &str,
) -> Result<Vec<Intake>, StoreError> {
    if hints.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = pool.begin().await.map_err(err("begin"))?;
    // A contact the webhook names only by the CRM's id belongs to the client linked to it.
    let mut records = Vec::with_capacity(hints.len());
    for hint in hints {
        let mut hint = hint.clone();
        if hint.client_id.is_none() && hint.entity == Entity::Contact {
            hint.client_id = cards::client_of(&mut tx, &hint.crm_id).await?;
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
    for (mut record, key) in records.into_iter().zip(keys) {
        let hint = &record.hint;
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO crm_webhook (vendor, delivery_id, entity, crm_id, client_id, event, occurred_at,
                 request_id, received_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (vendor, delivery_id) DO NOTHING
             RETURNING id",
        )
        .bind(&hint.vendor)
        .bind(&hint.delivery_id)
        .bind(hint.entity.as_str())
        .bind(&hint.crm_id)
        .bind(hint.client_id.as_ref().map(|c| c.as_str()))
        .bind(&hint.event)
        .bind(hint.occurred_at)
        .bind(request_id)
        .bind(record.received_at)
        .fetch_optional(&mut *tx)
        .await
        .map_err(err("storing a webhook"))?;
        let Some(id) = id else {
            out.push(Intake::Duplicate);
            continue;
        };
        record.webhook_id = id;
        outbox::insert(&mut tx, TOPIC_INCOMING, &key, request_id, |_| &record).await?;
        out.push(Intake::Stored(id));
    }
    tx.commit().await.map_err(err("commit"))?;
    Ok(out)
}
