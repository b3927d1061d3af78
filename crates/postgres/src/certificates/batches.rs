//! Opened upload batches (`certificate_batch`).

use super::rows::unavailable;
use super::PgCertificates;
use async_trait::async_trait;
use backbone_certificates::store::{OpenedBatch, StoreError, UploadBatches};
use backbone_certificates::Channel;
use sqlx::postgres::PgRow;
use sqlx::Row;

fn opened(row: &PgRow) -> Result<OpenedBatch, StoreError> {
    let by: String = row.try_get("opened_by").map_err(unavailable)?;
    Ok(OpenedBatch {
        batch_id: row.try_get("batch_id").map_err(unavailable)?,
        opened_by: serde_json::from_value(serde_json::Value::String(by))
            .map_err(|_| StoreError("certificate_batch.opened_by is not a channel".into()))?,
        opened_at: row.try_get("opened_at").map_err(unavailable)?,
    })
}

#[async_trait]
impl UploadBatches for PgCertificates {
    async fn open_batch(&self, batch_id: &str, channel: Channel) -> Result<(OpenedBatch, bool), StoreError> {
        // One statement: the insert, or the row another opener wrote first.
        let row = sqlx::query(
            "WITH inserted AS (
                 INSERT INTO certificate_batch (batch_id, opened_by) VALUES ($1, $2)
                 ON CONFLICT (batch_id) DO NOTHING
                 RETURNING batch_id, opened_by, opened_at)
             SELECT batch_id, opened_by, opened_at, true AS opened FROM inserted
             UNION ALL
             SELECT batch_id, opened_by, opened_at, false FROM certificate_batch
              WHERE batch_id = $1 AND NOT EXISTS (SELECT 1 FROM inserted)",
        )
        .bind(batch_id)
        .bind(channel.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        match row {
            Some(row) => Ok((opened(&row)?, row.try_get("opened").map_err(unavailable)?)),
            // The conflicting row was not visible to this statement's snapshot yet (a concurrent
            // opener committed in between): read it again.
            None => self
                .opened_batch(batch_id)
                .await?
                .map(|b| (b, false))
                .ok_or_else(|| StoreError("the batch was neither opened nor found".into())),
        }
    }

    async fn opened_batch(&self, batch_id: &str) -> Result<Option<OpenedBatch>, StoreError> {
        sqlx::query("SELECT batch_id, opened_by, opened_at FROM certificate_batch WHERE batch_id = $1")
            .bind(batch_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
            .as_ref()
            .map(opened)
            .transpose()
    }
}
