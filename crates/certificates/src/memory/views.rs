//! Reads, the SMS queue and the outbox in memory.

use super::{JobRow, MemoryStore, Shared};
use crate::certificate::HoldStatus;
use crate::ports::CodeDigest;
use crate::store::*;
use async_trait::async_trait;
use std::collections::HashSet;
use std::sync::{Arc, PoisonError};
use time::OffsetDateTime;
use uuid::Uuid;
#[async_trait]
impl CertificateViews for MemoryStore {
    async fn balance(&self, code: &CodeDigest) -> Result<Option<BalanceView>, StoreError> {
        let data = self.data();
        let now = OffsetDateTime::now_utc();
        Ok(data.by_digest(code).map(|r| {
            let held: i64 = r
                .holds
                .values()
                .filter(|(h, _)| h.status == HoldStatus::Active && h.expires_at > now)
                .map(|(h, _)| h.amount)
                .sum();
            BalanceView {
                certificate_id: r.id,
                code_last4: r.last4.clone(),
                currency: r.currency.to_string(),
                balance: r.balance,
                available: r.balance - held,
                state: r.state,
                cvc_verifier: r.verifier.clone(),
            }
        }))
    }

    async fn view(&self, code: &CodeDigest) -> Result<Option<CertificateView>, StoreError> {
        let data = self.data();
        Ok(data.by_digest(code).map(|r| CertificateView {
            certificate_id: r.id,
            code_last4: r.last4.clone(),
            state: r.state,
            currency: r.currency.to_string(),
            nominal: r.nominal,
            balance: r.balance,
            held: r
                .holds
                .values()
                .filter(|(h, _)| h.status == HoldStatus::Active)
                .map(|(h, _)| h.amount)
                .sum(),
            expires_at: r.expires_at,
            client_id: r.links.client_id.clone(),
            order_id: r.links.order_id.clone(),
            payment_id: r.links.payment_id.clone(),
            batch_id: r.batch_id.clone(),
            cvc_pending_delivery: r.sealed.is_some(),
            history: r.history.iter().take(200).cloned().collect(),
        }))
    }

    async fn batch(&self, batch_id: &str) -> Result<Option<BatchView>, StoreError> {
        let data = self.data();
        let jobs: Vec<&JobRow> = data
            .jobs
            .iter()
            .filter(|((b, _), _)| b == batch_id)
            .map(|(_, j)| j)
            .collect();
        if jobs.is_empty() {
            return Ok(None);
        }
        Ok(Some(BatchView {
            batch_id: batch_id.to_owned(),
            jobs: jobs.len() as i64,
            submitted: jobs.iter().map(|j| j.submitted).sum(),
            issued: jobs.iter().map(|j| j.issued).sum(),
            duplicates: jobs.iter().map(|j| j.duplicates).sum(),
            rejected: jobs.iter().map(|j| j.rejected).sum(),
            last_job_at: jobs.iter().map(|j| j.at).max(),
        }))
    }

    async fn with_expired_holds(&self, limit: i64) -> Result<Vec<Uuid>, StoreError> {
        let now = OffsetDateTime::now_utc();
        let data = self.data();
        Ok(data
            .certificates
            .values()
            .filter(|r| {
                r.holds
                    .values()
                    .any(|(h, _)| h.status == HoldStatus::Active && h.expires_at <= now)
            })
            .map(|r| r.id)
            .take(usize::try_from(limit).unwrap_or(0))
            .collect())
    }

    async fn prune_idempotency_keys(&self) -> Result<u64, StoreError> {
        let now = OffsetDateTime::now_utc();
        let _exclusive = self.exclusive().await;
        let mut data = self.data();
        let before = data.keys.len();
        data.keys.retain(|_, (_, expires)| *expires >= now);
        Ok((before - data.keys.len()) as u64)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[async_trait]
impl SmsQueue for MemoryStore {
    async fn claim_sms(&self, lease: time::Duration) -> Result<Option<SmsJob>, StoreError> {
        let now = OffsetDateTime::now_utc();
        let _exclusive = self.exclusive().await;
        let mut data = self.data();
        let due = data
            .sms
            .iter()
            .filter(|(_, s)| s.status == "pending" && s.next_at <= now)
            .map(|(id, s)| (s.next_at, *id))
            .min();
        let Some((_, id)) = due else {
            return Ok(None);
        };
        let Some(row) = data.certificates.get(&id).cloned() else {
            return Ok(None);
        };
        let Some(sms) = data.sms.get_mut(&id) else {
            return Ok(None);
        };
        let token = Uuid::new_v4();
        sms.next_at = now + lease;
        sms.attempts += 1;
        sms.lease = Some(token);
        Ok(Some(SmsJob {
            certificate_id: id,
            lease: token,
            phone: sms.phone.clone(),
            phone_last2: sms.phone_last2.clone(),
            attempts: sms.attempts,
            code_digest: row.digest,
            code_last4: row.last4.clone(),
            sealed: row.sealed.clone(),
        }))
    }

    async fn finish_sms(
        &self,
        job: &SmsJob,
        outcome: &SmsOutcome,
        letter: Option<&OutboxLetter>,
    ) -> Result<bool, StoreError> {
        let _exclusive = self.exclusive().await;
        let mut data = self.data();
        let Some(sms) = data.sms.get_mut(&job.certificate_id) else {
            return Err(StoreError("no such delivery".into()));
        };
        if sms.status != "pending" || sms.lease != Some(job.lease) {
            return Ok(false);
        }
        sms.lease = None;
        match outcome {
            SmsOutcome::Sent { .. } => {
                sms.status = "sent";
                sms.phone = None;
                if let Some(row) = data.certificates.get_mut(&job.certificate_id) {
                    row.sealed = None;
                }
                data.audit_rows += 1;
            }
            SmsOutcome::Retry { next_at, .. } => sms.next_at = *next_at,
            SmsOutcome::Failed { .. } => {
                sms.status = "failed";
                if let Some(l) = letter {
                    data.push_outbox(&l.topic, &l.key, l.payload.to_string(), l.headers.clone());
                }
            }
        }
        Ok(true)
    }

    async fn requeue_failed_sms(&self, certificate_id: Option<Uuid>) -> Result<u64, StoreError> {
        let now = OffsetDateTime::now_utc();
        let _exclusive = self.exclusive().await;
        let mut data = self.data();
        let due = requeueable(&data, certificate_id);
        for id in &due {
            if let Some(sms) = data.sms.get_mut(id) {
                sms.status = "pending";
                sms.attempts = 0;
                sms.next_at = now;
            }
        }
        Ok(due.len() as u64)
    }

    async fn requeueable_sms(&self, certificate_id: Option<Uuid>) -> Result<u64, StoreError> {
        Ok(requeueable(&self.data(), certificate_id).len() as u64)
    }

    async fn sms_backlog(&self) -> Result<SmsBacklog, StoreError> {
        let data = self.data();
        let count = |status: &str| data.sms.values().filter(|s| s.status == status).count() as i64;
        Ok(SmsBacklog {
            pending: count("pending"),
            failed: count("failed"),
        })
    }
}

struct MemoryLeadership(Arc<Shared>);

impl Drop for MemoryLeadership {
    fn drop(&mut self) {
        *self.0.leader.lock().unwrap_or_else(PoisonError::into_inner) = false;
    }
}

#[async_trait]
impl Leadership for MemoryLeadership {
    async fn is_alive(&self) -> bool {
        true
    }
}

#[async_trait]
impl Outbox for MemoryStore {
    async fn try_lead(&self) -> Result<Option<Box<dyn Leadership>>, StoreError> {
        let mut leader = self.shared.leader.lock().unwrap_or_else(PoisonError::into_inner);
        if *leader {
            return Ok(None);
        }
        *leader = true;
        Ok(Some(Box::new(MemoryLeadership(self.shared.clone()))))
    }

    async fn next(&self, limit: i64) -> Result<Vec<OutboxRecord>, StoreError> {
        Ok(self
            .data()
            .outbox
            .values()
            .take(usize::try_from(limit).unwrap_or(0))
            .cloned()
            .collect())
    }

    async fn delete(&self, ids: &[i64]) -> Result<(), StoreError> {
        let _exclusive = self.exclusive().await;
        let mut data = self.data();
        for id in ids {
            data.outbox.remove(id);
        }
        Ok(())
    }

    async fn park(&self, id: i64, reason_code: &str, reason: &str) -> Result<(), StoreError> {
        let _exclusive = self.exclusive().await;
        let mut data = self.data();
        if let Some(record) = data.outbox.remove(&id) {
            data.parked
                .insert(id, (record, reason_code.to_owned(), reason.to_owned()));
        }
        Ok(())
    }

    async fn requeue_parked(&self, id: Option<i64>) -> Result<u64, StoreError> {
        let _exclusive = self.exclusive().await;
        let mut data = self.data();
        let ids: Vec<i64> = data
            .parked
            .keys()
            .copied()
            .filter(|p| id.is_none_or(|i| i == *p))
            .collect();
        for p in &ids {
            if let Some((record, _, _)) = data.parked.remove(p) {
                data.push_outbox(&record.topic, &record.key, record.payload, record.headers);
            }
        }
        Ok(ids.len() as u64)
    }

    async fn pending(&self) -> Result<i64, StoreError> {
        Ok(self.data().outbox.len() as i64)
    }

    async fn parked(&self) -> Result<i64, StoreError> {
        Ok(self.data().parked.len() as i64)
    }
}

/// The failed deliveries a requeue takes (one certificate's, or all): those whose CVC and
/// number are still stored, so that they can be sent.
fn requeueable(data: &super::Data, certificate_id: Option<Uuid>) -> Vec<Uuid> {
    let sealed: HashSet<Uuid> = data
        .certificates
        .values()
        .filter(|r| r.sealed.is_some())
        .map(|r| r.id)
        .collect();
    data.sms
        .iter()
        .filter(|(id, sms)| {
            sms.status == "failed"
                && sms.phone.is_some()
                && sealed.contains(id)
                && certificate_id.is_none_or(|c| c == **id)
        })
        .map(|(id, _)| *id)
        .collect()
}
