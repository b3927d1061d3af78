//! `crm_outbox`: rows written in the changes' transactions, read by one relay at a time (a
//! session advisory lock on a dedicated connection) in id order, deleted once the broker
//! acknowledged them. The relay keeps no "id > last" watermark: a row that commits late behind a
//! higher id is still there on the next read.

use super::err;
use async_trait::async_trait;
use backbone_sync::clients::apply;
use backbone_sync::clients::ports::{Leadership, OutboxRow, StoreError};
use serde::Serialize;
use sqlx::types::Json;
use sqlx::{ConnectOptions, PgConnection, PgPool};
use std::collections::BTreeMap;

const LEADER_LOCK: i64 = 0x6372_6d6f_7574_6278; // "crmoutbx"

/// Queues one row in the caller's transaction, which holds the key's outbox lock; `payload` is
/// given the row's id.
pub(super) async fn insert<P: Serialize>(
    connection: &mut PgConnection,
    topic: &str,
    key: &str,
    request_id: &str,
    payload: impl FnOnce(i64) -> P,
) -> Result<i64, StoreError> {
    let id: i64 = sqlx::query_scalar("SELECT nextval('crm_outbox_id_seq')")
        .fetch_one(&mut *connection)
        .await
        .map_err(err("taking an outbox id"))?;
    sqlx::query("INSERT INTO crm_outbox (id, topic, key, payload, headers) VALUES ($1, $2, $3, $4, $5)")
        .bind(id)
        .bind(topic)
        .bind(key)
        .bind(Json(payload(id)))
        .bind(Json(headers(request_id)))
        .execute(connection)
        .await
        .map_err(err("writing the outbox"))?;
    Ok(id)
}

/// The headers of a row written now. The writer's trace context goes with the row, so the
/// relay's record continues the trace of the API call or webhook that made it.
pub(super) fn headers(request_id: &str) -> BTreeMap<String, String> {
    apply::headers(request_id)
        .into_iter()
        .chain(backbone_telemetry::current_trace_headers())
        .collect()
}

/// Held while this process is the relay; dropping it (or losing the connection) hands over.
struct PgLeadership {
    connection: tokio::sync::Mutex<PgConnection>,
}

#[async_trait]
impl Leadership for PgLeadership {
    async fn is_alive(&self) -> bool {
        let mut connection = self.connection.lock().await;
        sqlx::query("SELECT 1").execute(&mut *connection).await.is_ok()
    }
}

pub(super) async fn try_lead(pool: &PgPool) -> Result<Option<Box<dyn Leadership>>, StoreError> {
    // A connection of its own, outside the pool: the lock lives as long as this session.
    let mut connection = pool
        .connect_options()
        .connect()
        .await
        .map_err(err("connecting the relay"))?;
    let led: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LEADER_LOCK)
        .fetch_one(&mut connection)
        .await
        .map_err(err("taking the relay lock"))?;
    if !led {
        return Ok(None);
    }
    Ok(Some(Box::new(PgLeadership {
        connection: tokio::sync::Mutex::new(connection),
    })))
}

pub(super) async fn next(pool: &PgPool, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
    type Row = (i64, String, String, String, Json<BTreeMap<String, String>>);
    let rows = sqlx::query_as::<_, Row>(
        "SELECT id, topic, key, payload::text, headers FROM crm_outbox ORDER BY id LIMIT $1",
    )
    .bind(limit.max(0))
    .fetch_all(pool)
    .await
    .map_err(err("reading the outbox"))?;
    Ok(rows
        .into_iter()
        .map(|(id, topic, key, payload, headers)| OutboxRow {
            id,
            topic,
            key,
            payload,
            headers: headers.0.into_iter().collect(),
        })
        .collect())
}

pub(super) async fn delete(pool: &PgPool, ids: &[i64]) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM crm_outbox WHERE id = ANY($1)")
        .bind(ids)
        .execute(pool)
        .await
        .map_err(err("deleting from the outbox"))?;
    Ok(())
}

pub(super) async fn depth(pool: &PgPool) -> Result<i64, StoreError> {
    sqlx::query_scalar("SELECT count(*) FROM crm_outbox")
        .fetch_one(pool)
        .await
        .map_err(err("counting the outbox"))
}
