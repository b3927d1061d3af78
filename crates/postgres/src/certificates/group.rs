//! A group of operations in one transaction (`backbone_certificates::group`): each capability
//! is one statement for the whole round, whatever its size. A round of `n` operations is four
//! statements: the key claims, the locks, the loads and one write (plus one for the refusals it
//! remembers), where `n` single operations are `4 n` statements and `n` commits.

use super::rows::{self, unavailable};
use super::sql::*;
use super::unit::{lock_key, PgUnit};
use async_trait::async_trait;
use backbone_certificates::store::*;
use backbone_certificates::CertificateRef;
use sqlx::Row;
use std::collections::HashMap;
use uuid::Uuid;

#[async_trait]
impl BatchRows for PgUnit {
    async fn claim_keys(&mut self, keys: &[(&str, &str)]) -> Result<Vec<bool>, StoreError> {
        let locks: Vec<i64> = keys.iter().map(|(channel, key)| lock_key(channel, key)).collect();
        let claimed: Vec<bool> = sqlx::query_scalar(LOCK_ALL_SQL)
            .bind(locks)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(unavailable)?;
        if claimed.len() != keys.len() {
            return Err(StoreError("a key claim went unanswered".into()));
        }
        Ok(claimed)
    }

    async fn lock_all(
        &mut self,
        wanted: &[(CertificateRef, Lookup<'_>)],
    ) -> Result<Vec<Option<LockedCertificate>>, StoreError> {
        let (codes, ids): (Vec<Option<Vec<u8>>>, Vec<Option<Uuid>>) = wanted
            .iter()
            .map(|(by, _)| match by {
                CertificateRef::Code(digest) => (Some(digest.0.to_vec()), None),
                CertificateRef::Id(id) => (None, Some(*id)),
            })
            .unzip();
        let found = sqlx::query(LOCK_ALL_BY_REF_SQL)
            .bind(codes)
            .bind(ids)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(unavailable)?;
        // Position (from 1, as ORDINALITY counts) of each request that names a certificate.
        let mut slots: Vec<(i64, Uuid)> = Vec::with_capacity(found.len());
        for row in &found {
            slots.push((
                row.try_get("n").map_err(unavailable)?,
                row.try_get("id").map_err(unavailable)?,
            ));
        }
        let lookups: Vec<&Lookup<'_>> = slots.iter().map(|(n, _)| &wanted[*n as usize - 1].1).collect();
        let rows = sqlx::query(LOAD_ALL_SQL)
            .bind(slots.iter().map(|(_, id)| *id).collect::<Vec<_>>())
            .bind(
                lookups
                    .iter()
                    .map(|l| l.target.map(|t| t.as_str()))
                    .collect::<Vec<_>>(),
            )
            .bind(lookups.iter().map(|l| l.operation.as_str()).collect::<Vec<_>>())
            .bind(lookups.iter().map(|l| l.key.map(|(c, _)| c)).collect::<Vec<_>>())
            .bind(lookups.iter().map(|l| l.key.map(|(_, k)| k)).collect::<Vec<_>>())
            .fetch_all(&mut *self.tx)
            .await
            .map_err(unavailable)?;
        let mut loaded: HashMap<i64, LockedCertificate> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let slot: i64 = row.try_get("n").map_err(unavailable)?;
            let (n, _) = slots
                .get(slot as usize - 1)
                .ok_or_else(|| StoreError("a load answered for no lock".into()))?;
            loaded.insert(*n, rows::locked(row)?);
        }
        Ok((1..=wanted.len() as i64).map(|n| loaded.remove(&n)).collect())
    }

    async fn save_all(&mut self, operations: &[SavedOperation<'_>]) -> Result<(), StoreError> {
        let mut input = WriteColumns::with_capacity(operations.len());
        for op in operations {
            input.push(op)?;
        }
        let written: i64 = input
            .bind(sqlx::query_scalar(WRITE_ALL_SQL))
            .fetch_one(&mut *self.tx)
            .await
            .map_err(unavailable)?;
        if written != operations.len() as i64 {
            // The rows are locked, so this means a bug or a manual change: refuse, change nothing.
            return Err(StoreError("certificate version changed under a row lock".into()));
        }
        Ok(())
    }

    async fn remember_all(&mut self, results: &[Remembered<'_>]) -> Result<(), StoreError> {
        sqlx::query(REMEMBER_ALL_SQL)
            .bind(results.iter().map(|r| r.channel).collect::<Vec<_>>())
            .bind(results.iter().map(|r| r.claim.key.as_str()).collect::<Vec<_>>())
            .bind(
                results
                    .iter()
                    .map(|r| r.claim.request_hash.to_vec())
                    .collect::<Vec<_>>(),
            )
            .bind(results.iter().map(|r| r.outcome.as_str()).collect::<Vec<_>>())
            .bind(results.iter().map(|r| r.result.clone()).collect::<Vec<_>>())
            .bind(
                results
                    .iter()
                    .map(|r| r.claim.retention.as_seconds_f64())
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *self.tx)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

/// The parameters of [`WRITE_ALL_SQL`], a column each.
#[derive(Default)]
struct WriteColumns<'a> {
    id: Vec<Uuid>,
    balance: Vec<i64>,
    held: Vec<i64>,
    state: Vec<&'static str>,
    client_id: Vec<Option<String>>,
    order_id: Vec<Option<String>>,
    payment_id: Vec<Option<String>>,
    version: Vec<i64>,
    holds: Vec<serde_json::Value>,
    operations: Vec<serde_json::Value>,
    channel: Vec<&'static str>,
    initiator: Vec<Option<&'a str>>,
    source_event: Vec<Option<&'a str>>,
    events: Vec<serde_json::Value>,
    key: Vec<Option<&'a str>>,
    request_hash: Vec<Option<Vec<u8>>>,
    result: Vec<serde_json::Value>,
    retention: Vec<f64>,
}

impl<'a> WriteColumns<'a> {
    fn with_capacity(n: usize) -> Self {
        Self {
            id: Vec::with_capacity(n),
            ..Self::default()
        }
    }

    fn push(&mut self, op: &SavedOperation<'a>) -> Result<(), StoreError> {
        let links = op.after.links();
        let claim = op.idempotency;
        let [holds, operations, events, result] = rows::write_json(op)?;
        self.id.push(op.locked.id);
        self.balance.push(op.after.balance());
        self.held.push(op.after.held_total());
        self.state.push(op.after.state().as_str());
        self.client_id.push(links.client_id.clone());
        self.order_id.push(links.order_id.clone());
        self.payment_id.push(links.payment_id.clone());
        self.version.push(op.locked.version);
        self.holds.push(holds);
        self.operations.push(operations);
        self.channel.push(op.origin.channel.as_str());
        self.initiator.push(op.origin.initiator.as_deref());
        self.source_event.push(op.origin.source_event.as_deref());
        self.events.push(events);
        self.key.push(claim.map(|c| c.key.as_str()));
        self.request_hash.push(claim.map(|c| c.request_hash.to_vec()));
        self.result.push(result);
        self.retention
            .push(claim.map(|c| c.retention.as_seconds_f64()).unwrap_or(0.0));
        Ok(())
    }

    fn bind<O>(
        self,
        query: sqlx::query::QueryScalar<'a, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryScalar<'a, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
        query
            .bind(self.id)
            .bind(self.balance)
            .bind(self.held)
            .bind(self.state)
            .bind(self.client_id)
            .bind(self.order_id)
            .bind(self.payment_id)
            .bind(self.version)
            .bind(self.holds)
            .bind(self.operations)
            .bind(self.channel)
            .bind(self.initiator)
            .bind(self.source_event)
            .bind(self.events)
            .bind(self.key)
            .bind(self.request_hash)
            .bind(self.result)
            .bind(self.retention)
    }
}
