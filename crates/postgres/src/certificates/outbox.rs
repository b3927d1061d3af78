//! The outbox relay's side of the table. One relay leads at a time (a session advisory lock on a
//! dedicated connection), reads rows in id order and deletes them only after the broker
//! acknowledged them, so events are never lost and a certificate's events keep their order. A
//! row the broker refuses for good moves to `outbox_parked` with its reason, until an operator
//! puts it back (`gift-certificates outbox requeue`).

use super::rows::unavailable;
use super::PgCertificates;
use async_trait::async_trait;
use backbone_certificates::store::{Leadership, Outbox, OutboxLetter, OutboxRecord, StoreError};
use sqlx::{ConnectOptions, PgConnection};

const LEADER_LOCK: i64 = 0x6763_6f75_7462_6f78; // "gcoutbox"

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

#[async_trait]
impl Outbox for PgCertificates {
    async fn try_lead(&self) -> Result<Option<Box<dyn Leadership>>, StoreError> {
        // A connection of its own, outside the pool: the lock lives as long as this session.
        let mut connection = self.pool.connect_options().connect().await.map_err(unavailable)?;
        let led: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK)
            .fetch_one(&mut connection)
            .await
            .map_err(unavailable)?;
        if !led {
            return Ok(None);
        }
        Ok(Some(Box::new(PgLeadership {
            connection: tokio::sync::Mutex::new(connection),
        })))
    }

    async fn next(&self, limit: i64) -> Result<Vec<OutboxRecord>, StoreError> {
        type Row = (
            i64,
            String,
            String,
            String,
            sqlx::types::Json<std::collections::BTreeMap<String, String>>,
        );
        sqlx::query_as::<_, Row>(
            "SELECT id, topic, key, payload::text, headers FROM outbox ORDER BY id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map(|rows| {
            rows.into_iter()
                .map(|(id, topic, key, payload, headers)| OutboxRecord {
                    id,
                    topic,
                    key,
                    payload,
                    headers: headers.0.into_iter().collect(),
                })
                .collect()
        })
        .map_err(unavailable)
    }

    async fn delete(&self, ids: &[i64]) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(ids)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn park(&self, id: i64, reason_code: &str, reason: &str) -> Result<(), StoreError> {
        sqlx::query(
            "WITH moved AS (DELETE FROM outbox WHERE id = $1 RETURNING *)
             INSERT INTO outbox_parked (id, topic, key, payload, headers, created_at, reason_code, reason)
             SELECT id, topic, key, payload, headers, created_at, $2, $3 FROM moved
                 ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(reason_code)
        .bind(reason)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn requeue_parked(&self, id: Option<i64>) -> Result<u64, StoreError> {
        // Back at the end of the outbox, in the order they were first committed.
        let done = sqlx::query(
            "WITH moved AS (DELETE FROM outbox_parked WHERE $1::bigint IS NULL OR id = $1 RETURNING *)
             INSERT INTO outbox (topic, key, payload, headers, created_at)
             SELECT topic, key, payload, headers, created_at FROM moved ORDER BY id",
        )
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected())
    }

    async fn pending(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)
    }

    async fn parked(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT count(*) FROM outbox_parked")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)
    }
}

/// Writes `letter` (a dead letter with its headers) to the outbox, in the caller's transaction.
pub(super) async fn insert_letter(
    connection: &mut PgConnection,
    letter: &OutboxLetter,
) -> Result<(), StoreError> {
    let headers: serde_json::Map<String, serde_json::Value> = letter
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    sqlx::query("INSERT INTO outbox (topic, key, payload, headers) VALUES ($1, $2, $3, $4)")
        .bind(&letter.topic)
        .bind(&letter.key)
        .bind(&letter.payload)
        .bind(serde_json::Value::Object(headers))
        .execute(connection)
        .await
        .map_err(unavailable)?;
    Ok(())
}
