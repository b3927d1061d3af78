//! Opened upload batches in memory.

use super::MemoryStore;
use crate::channel::Channel;
use crate::store::{OpenedBatch, StoreError, UploadBatches};
use async_trait::async_trait;
use time::OffsetDateTime;

#[async_trait]
impl UploadBatches for MemoryStore {
    async fn open_batch(&self, batch_id: &str, channel: Channel) -> Result<(OpenedBatch, bool), StoreError> {
        let _exclusive = self.exclusive().await;
        let mut data = self.data();
        if let Some(opened) = data.batches.get(batch_id) {
            return Ok((opened.clone(), false));
        }
        let opened = OpenedBatch {
            batch_id: batch_id.to_owned(),
            opened_by: channel,
            opened_at: OffsetDateTime::now_utc(),
        };
        data.batches.insert(batch_id.to_owned(), opened.clone());
        Ok((opened, true))
    }

    async fn opened_batch(&self, batch_id: &str) -> Result<Option<OpenedBatch>, StoreError> {
        Ok(self.data().batches.get(batch_id).cloned())
    }
}
