//! The unit of work in memory: key claims, certificate rows, sales and the SMS queueing.

use super::{JobRow, MemoryUnit, Row, SmsRow};
use crate::certificate::{Certificate, CertificateParts, HoldStatus, SaleLinks, State};
use crate::events::{target_of, Outgoing};
use crate::ports::{CertificateRef, IdempotencyClaim};
use crate::sale::{PaymentRecord, PendingSale, SaleOrder};
use crate::store::*;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::PoisonError;
use time::OffsetDateTime;
use uuid::Uuid;
#[async_trait]
impl KeyClaims for MemoryUnit {
    async fn claim_key(&mut self, channel: &str, key: &str) -> Result<bool, StoreError> {
        let claim = (channel.to_owned(), key.to_owned());
        if self.claimed.contains(&claim) {
            return Ok(true);
        }
        let fresh = self
            .shared
            .claims
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(claim.clone());
        if fresh {
            self.claimed.push(claim);
        }
        Ok(fresh)
    }

    async fn stored_result(&mut self, channel: &str, key: &str) -> Result<Option<StoredResult>, StoreError> {
        let data = self.data().await;
        Ok(data
            .keys
            .get(&(channel.to_owned(), key.to_owned()))
            .map(|(r, _)| r.clone()))
    }

    async fn remember(
        &mut self,
        channel: &str,
        claim: &IdempotencyClaim,
        outcome: KeyOutcome,
        result: serde_json::Value,
    ) -> Result<(), StoreError> {
        let data = self.data().await;
        let key = (channel.to_owned(), claim.key.clone());
        if data.keys.contains_key(&key) {
            return Err(StoreError(format!("idempotency key {} stored twice", claim.key)));
        }
        let stored = StoredResult {
            request_hash: claim.request_hash,
            outcome,
            result,
        };
        data.keys
            .insert(key, (stored, OffsetDateTime::now_utc() + claim.retention));
        Ok(())
    }
}

fn locked_from(
    row: &Row,
    lookup: Lookup<'_>,
    stored: Option<StoredResult>,
) -> Result<LockedCertificate, StoreError> {
    // What PostgreSQL loads: active holds, the hold or capture named, the operation's effect.
    let target = lookup.target;
    let mut parts = CertificateParts {
        currency: Some(row.currency),
        nominal: row.nominal,
        balance: row.balance,
        state: Some(row.state),
        expires_at: row.expires_at,
        links: row.links.clone(),
        ..CertificateParts::default()
    };
    let mut hold_channels = BTreeMap::new();
    for (id, (hold, channel)) in &row.holds {
        let capture = row.captures.iter().find(|(_, c)| c.hold == *id);
        let named = Some(id) == target || capture.is_some_and(|(cid, _)| Some(cid) == target);
        if hold.status != HoldStatus::Active && !named {
            continue;
        }
        parts.holds.insert(id.clone(), hold.clone());
        if let Some((cid, c)) = capture {
            parts.captures.insert(cid.clone(), c.clone());
        }
        hold_channels.insert(id.clone(), channel.clone());
    }
    if let Some(effect) = row.applied.get(lookup.operation) {
        parts.applied.insert(lookup.operation.clone(), effect.clone());
    }
    let certificate = Certificate::from_parts(parts)
        .ok_or_else(|| StoreError("stored certificate is inconsistent".into()))?;
    Ok(LockedCertificate {
        id: row.id,
        code_digest: row.digest,
        code_last4: row.last4.clone(),
        version: row.version,
        cvc_verifier: row.verifier.clone(),
        certificate,
        hold_channels,
        stored,
    })
}

#[async_trait]
impl CertificateRows for MemoryUnit {
    async fn lock(
        &mut self,
        by: CertificateRef,
        lookup: Lookup<'_>,
    ) -> Result<Option<LockedCertificate>, StoreError> {
        let data = self.data().await;
        let row = match by {
            CertificateRef::Code(digest) => data.by_digest(&digest),
            CertificateRef::Id(id) => data.certificates.get(&id),
        };
        let Some(row) = row else { return Ok(None) };
        let stored = lookup
            .key
            .and_then(|(channel, key)| data.keys.get(&(channel.to_owned(), key.to_owned())))
            .map(|(r, _)| r.clone());
        locked_from(row, lookup, stored).map(Some)
    }

    async fn save(&mut self, op: SavedOperation<'_>) -> Result<(), StoreError> {
        let data = self.data().await;
        let row = data
            .certificates
            .get_mut(&op.locked.id)
            .ok_or_else(|| StoreError("certificate vanished under its lock".into()))?;
        if row.version != op.locked.version {
            return Err(StoreError("certificate version changed under a row lock".into()));
        }
        let after = op.after;
        row.balance = after.balance();
        row.state = after.state();
        row.links = after.links().clone();
        row.version += 1;
        for (id, hold) in after.holds() {
            let channel = op
                .locked
                .hold_channels
                .get(id)
                .cloned()
                .unwrap_or_else(|| op.origin.channel.as_str().to_owned());
            row.holds.insert(id.clone(), (hold.clone(), channel));
        }
        for (id, capture) in after.captures() {
            row.captures.insert(id.clone(), capture.clone());
        }
        for e in &op.applied.effects {
            if row.applied.insert(e.operation.clone(), e.clone()).is_some() {
                return Err(StoreError(format!("operation {} stored twice", e.operation)));
            }
            row.history.push(HistoryEntry {
                operation_id: e.operation.to_string(),
                action: e.action.name().to_owned(),
                amount: e.amount,
                target_id: target_of(&e.action),
                balance_before: e.balance_before,
                balance_after: e.balance_after,
                state_before: e.state_before.as_str().to_owned(),
                state_after: e.state_after.as_str().to_owned(),
                channel: op.origin.channel.as_str().to_owned(),
                at: e.at,
            });
        }
        data.audit_rows += op.applied.effects.len();
        for event in op.events {
            data.push_outbox(event.topic, &event.key, event.payload.to_string(), Vec::new());
        }
        if let Some(claim) = op.idempotency {
            let result = serde_json::to_value(op.applied).map_err(|e| StoreError(e.to_string()))?;
            let stored = StoredResult {
                request_hash: claim.request_hash,
                outcome: KeyOutcome::Applied,
                result,
            };
            let key = (op.origin.channel.as_str().to_owned(), claim.key.clone());
            if data.keys.contains_key(&key) {
                return Err(StoreError(format!("idempotency key {} stored twice", claim.key)));
            }
            data.keys
                .insert(key, (stored, OffsetDateTime::now_utc() + claim.retention));
        }
        Ok(())
    }

    async fn record_reason(
        &mut self,
        certificate: Uuid,
        operation: &crate::certificate::OperationId,
        reason: &str,
    ) -> Result<(), StoreError> {
        let data = self.data().await;
        let saved = data
            .certificates
            .get(&certificate)
            .is_some_and(|row| row.applied.contains_key(operation));
        if !saved {
            return Err(StoreError(format!("no audit row of operation {operation}")));
        }
        data.audit_reasons
            .insert((certificate, operation.clone()), reason.to_owned());
        Ok(())
    }

    async fn issue(&mut self, batch: &IssueBatch, events: &[Outgoing]) -> Result<IssueOutcome, StoreError> {
        let data = self.data().await;
        let (mut issued, mut already) = (0u64, 0u64);
        // What this job inserts is not "issued before by this batch": a code twice in one job
        // is a duplicate, as in PostgreSQL, whose statement does not see its own inserts.
        let mut inserted = std::collections::HashSet::new();
        for (c, event) in batch.certificates.iter().zip(events) {
            if let Some(existing) = data.by_digest(&c.code_digest) {
                let earlier_job = !inserted.contains(&existing.id);
                if earlier_job && existing.batch_id.as_deref() == Some(batch.batch_id.as_str()) {
                    already += 1;
                }
                continue;
            }
            if data.certificates.contains_key(&c.id) {
                return Err(StoreError(format!("certificate id {} issued twice", c.id)));
            }
            inserted.insert(c.id);
            data.certificates.insert(
                c.id,
                Row {
                    id: c.id,
                    digest: c.code_digest,
                    last4: c.code_last4.clone(),
                    currency: c.nominal.currency(),
                    nominal: c.nominal.minor(),
                    balance: c.nominal.minor(),
                    state: State::Issued,
                    expires_at: c.expires_at,
                    links: SaleLinks::default(),
                    batch_id: Some(batch.batch_id.clone()),
                    verifier: c.cvc_verifier.to_vec(),
                    sealed: Some(c.sealed_cvc.clone()),
                    version: 0,
                    holds: BTreeMap::new(),
                    captures: BTreeMap::new(),
                    applied: BTreeMap::new(),
                    history: Vec::new(),
                },
            );
            data.push_outbox(event.topic, &event.key, event.payload.to_string(), Vec::new());
            issued += 1;
        }
        data.audit_rows += 1;
        let n = batch.certificates.len() as u64;
        let duplicates = n.saturating_sub(issued + already);
        data.jobs
            .entry((batch.batch_id.clone(), batch.job))
            .or_insert(JobRow {
                submitted: (n + u64::from(batch.rejected)) as i64,
                issued: issued as i64,
                duplicates: duplicates as i64,
                rejected: i64::from(batch.rejected),
                at: OffsetDateTime::now_utc(),
            });
        Ok(IssueOutcome {
            issued,
            already_issued: already,
            duplicates,
            replayed: false,
        })
    }
}

#[async_trait]
impl SaleRecords for MemoryUnit {
    async fn lock_order(&mut self, _order_id: &str) -> Result<(), StoreError> {
        // The unit's write lock serialises every order.
        self.data().await;
        Ok(())
    }

    async fn insert_order(&mut self, order: &SaleOrder) -> Result<bool, StoreError> {
        let data = self.data().await;
        if data.orders.contains_key(&order.order_id) {
            return Ok(false);
        }
        data.orders.insert(order.order_id.clone(), (order.clone(), false));
        Ok(true)
    }

    async fn insert_payment(&mut self, payment: &PaymentRecord) -> Result<bool, StoreError> {
        let data = self.data().await;
        if data.payments.contains_key(&payment.payment_id) {
            return Ok(false);
        }
        data.payments.insert(payment.payment_id.clone(), payment.clone());
        Ok(true)
    }

    async fn pending_sale(&mut self, order_id: &str) -> Result<Option<PendingSale>, StoreError> {
        let data = self.data().await;
        let Some((order, false)) = data.orders.get(order_id) else {
            return Ok(None);
        };
        let payments = data
            .payments
            .values()
            .filter(|p| p.order_id == order_id)
            .map(|p| (p.payment_id.clone(), p.currency.clone(), p.amount_minor))
            .collect();
        Ok(Some(PendingSale {
            order: order.clone(),
            payments,
        }))
    }

    async fn mark_activated(&mut self, order_id: &str) -> Result<(), StoreError> {
        let data = self.data().await;
        if let Some((_, activated)) = data.orders.get_mut(order_id) {
            *activated = true;
        }
        Ok(())
    }

    async fn queue_letter(&mut self, letter: &OutboxLetter) -> Result<(), StoreError> {
        let data = self.data().await;
        data.push_outbox(
            &letter.topic,
            &letter.key,
            letter.payload.to_string(),
            letter.headers.clone(),
        );
        Ok(())
    }
}

#[async_trait]
impl SmsQueueing for MemoryUnit {
    async fn queue_cvc_sms(&mut self, certificate_id: Uuid, phone: &str) -> Result<(), StoreError> {
        let data = self.data().await;
        data.sms.entry(certificate_id).or_insert(SmsRow {
            phone: Some(phone.to_owned()),
            phone_last2: crate::code::visible_tail(phone, 2).to_owned(),
            lease: None,
            status: "pending",
            attempts: 0,
            next_at: OffsetDateTime::now_utc(),
        });
        Ok(())
    }
}
