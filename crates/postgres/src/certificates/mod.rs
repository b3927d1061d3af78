//! Gift certificates in PostgreSQL. One operation is four statements inside one transaction:
//! an advisory lock on the idempotency key (so a concurrent duplicate gets `InFlight` at once),
//! a row lock on the certificate, one read of what the operation needs, and one write
//! statement that updates the certificate (version-guarded, CHECK-constrained), upserts changed
//! holds, and inserts the operation, audit, outbox and idempotency rows. The statements are
//! public so the benchmark can replay exactly them with pgbench.

use async_trait::async_trait;
use backbone_certificates::certificate::{Capture, CertificateParts, Hold, HoldStatus};
use backbone_certificates::events::{self, target_of};
use backbone_certificates::{
    execute, Applied, ApplyError, Certificate, CertificateRef, CertificateRepository, CodeDigest, Currency,
    Effect, OperationId, OperationRequest, Refusal, SaleLinks, State,
};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres, Row, Transaction};
use std::collections::BTreeMap;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use uuid::Uuid;

mod outbox;
mod queries;
mod sales;
mod sms;

pub use outbox::{OutboxRecord, PgOutbox};
pub use queries::{
    BalanceView, BatchView, CertificateView, HistoryEntry, IssueBatch, IssueOutcome, NewCertificate,
};
pub use sales::{OrderLine, PaymentRecord, SaleActivation, SaleOrder};
pub use sms::{SmsJob, SmsOutcome};

/// Serialises concurrent requests with the same idempotency key; `false` = in flight elsewhere.
pub const LOCK_SQL: &str = "SELECT pg_try_advisory_xact_lock($1)";

/// Locks the certificate's row; a concurrent operation on it waits here.
pub const LOCK_BY_CODE_SQL: &str = "SELECT id FROM gift_certificate WHERE code_digest = $1 FOR UPDATE";
pub const LOCK_BY_ID_SQL: &str = "SELECT id FROM gift_certificate WHERE id = $1 FOR UPDATE";

/// Loads the locked certificate with its active holds, the hold or capture `$2` names, an
/// earlier effect under operation id `$3`, and the idempotency record (`$4`, `$5`). A statement
/// of its own, after the lock: under READ COMMITTED it then reads what the transaction it
/// waited for committed (a lock and a read in one statement would read the holds as of before
/// the wait).
pub const LOAD_SQL: &str =
    "SELECT c.id, c.code_digest, c.code_last4, c.currency, c.nominal, c.balance, c.state, c.expires_at,
       c.client_id, c.order_id, c.payment_id, c.cvc_verifier, c.version,
       (SELECT coalesce(jsonb_agg(to_jsonb(h)), '[]'::jsonb) FROM gift_certificate_hold h
         WHERE h.certificate_id = c.id AND (h.status = 'active' OR h.hold_id = $2 OR h.capture_id = $2)) AS holds,
       (SELECT o.detail FROM gift_certificate_operation o
         WHERE o.certificate_id = c.id AND o.operation_id = $3) AS applied,
       (SELECT jsonb_build_object('hash', encode(k.request_hash, 'hex'), 'outcome', k.outcome, 'result', k.result)
          FROM idempotency_key k WHERE k.channel = $4 AND k.key = $5) AS idempotency
  FROM gift_certificate c WHERE c.id = $1";

/// Everything an operation changed, in one statement. Nothing is written unless the version
/// still matches.
pub const WRITE_SQL: &str = "WITH cert AS (
    UPDATE gift_certificate
       SET balance = $2, held = $3, state = $4, client_id = $5, order_id = $6, payment_id = $7,
           version = version + 1, updated_at = now()
     WHERE id = $1 AND version = $8
 RETURNING id
), holds AS (
    INSERT INTO gift_certificate_hold
           (certificate_id, hold_id, amount, expires_at, status, captured_amount, capture_id, capture_reversed, channel)
    SELECT cert.id, h.hold_id, h.amount, h.expires_at, h.status, h.captured_amount, h.capture_id,
           h.capture_reversed, h.channel
      FROM cert, jsonb_to_recordset($9) AS h(hold_id text, amount bigint, expires_at timestamptz, status text,
           captured_amount bigint, capture_id text, capture_reversed boolean, channel text)
        ON CONFLICT (certificate_id, hold_id) DO UPDATE
       SET status = EXCLUDED.status, captured_amount = EXCLUDED.captured_amount,
           capture_id = EXCLUDED.capture_id, capture_reversed = EXCLUDED.capture_reversed
), ops AS (
    SELECT o.* FROM cert, jsonb_to_recordset($10) AS o(operation_id text, action text, detail jsonb,
           amount bigint, target_id text, balance_before bigint, balance_after bigint, state_before text,
           state_after text, at timestamptz)
), op_rows AS (
    INSERT INTO gift_certificate_operation (certificate_id, operation_id, action, detail, amount, target_id,
           balance_before, balance_after, state_before, state_after, channel, at)
    SELECT $1, operation_id, action, detail, amount, target_id, balance_before, balance_after,
           state_before, state_after, $11, at FROM ops
), audit AS (
    INSERT INTO audit_log (at, action, certificate_id, operation_id, channel, initiator, source_event,
           balance_before, balance_after, details)
    SELECT at, action, $1, operation_id, $11, $12, $13, balance_before, balance_after,
           jsonb_build_object('amount', amount, 'target_id', target_id, 'state_before', state_before,
                              'state_after', state_after)
      FROM ops
), events AS (
    INSERT INTO outbox (topic, key, payload)
    SELECT e.topic, e.key, e.payload
      FROM cert, ROWS FROM (jsonb_to_recordset($14) AS (topic text, key text, payload jsonb))
           WITH ORDINALITY AS e(topic, key, payload, n)
     ORDER BY e.n
), idempotency AS (
    INSERT INTO idempotency_key (channel, key, request_hash, outcome, result, expires_at)
    SELECT $11, $15, $16, 'applied', $17, now() + make_interval(secs => $18) FROM cert WHERE $15 IS NOT NULL
)
SELECT count(*) FROM cert";

/// A refusal is remembered under the key too, so a retry gets the same answer.
pub const REFUSAL_SQL: &str =
    "INSERT INTO idempotency_key (channel, key, request_hash, outcome, result, expires_at)
VALUES ($1, $2, $3, 'refused', $4, now() + make_interval(secs => $5))";

/// gift-certificates' migrations (`migrations/gift-certificates/`), embedded at build time.
/// Databases made before the schemas were split have crm-sync's migration recorded too: it is
/// ignored, never undone.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("../../migrations/gift-certificates")
};

/// Creates the database if needed, connects and applies gift-certificates' pending migrations.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, crate::ConnectError> {
    crate::connect(url, max_connections, &MIGRATOR).await
}

#[derive(Clone)]
pub struct PgCertificates {
    pool: PgPool,
}

impl PgCertificates {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// A hold as stored: the domain's hold and, once captured, its capture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HoldRow {
    hold_id: String,
    amount: i64,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
    status: String,
    captured_amount: Option<i64>,
    capture_id: Option<String>,
    capture_reversed: bool,
    channel: String,
}

#[derive(Deserialize)]
struct StoredKey {
    hash: String,
    outcome: String,
    result: serde_json::Value,
}

#[derive(Serialize)]
struct OpRow<'a> {
    operation_id: &'a str,
    action: &'static str,
    detail: serde_json::Value,
    amount: Option<i64>,
    target_id: Option<String>,
    balance_before: i64,
    balance_after: i64,
    state_before: &'static str,
    state_after: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
}

#[derive(Serialize)]
struct EventRow<'a> {
    topic: &'a str,
    key: &'a str,
    payload: &'a serde_json::Value,
}

fn unavailable(e: impl std::fmt::Display) -> ApplyError {
    ApplyError::Unavailable(e.to_string())
}

pub(crate) fn lock_key(channel: &str, key: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(channel.as_bytes())
        .chain_update([0u8])
        .chain_update(key.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

fn hold_status(row: &HoldRow) -> HoldStatus {
    match (row.status.as_str(), row.captured_amount) {
        ("active", _) => HoldStatus::Active,
        ("captured", Some(amount)) => HoldStatus::Captured { amount },
        ("expired", _) => HoldStatus::Expired,
        _ => HoldStatus::Released,
    }
}

fn status_name(status: HoldStatus) -> &'static str {
    match status {
        HoldStatus::Active => "active",
        HoldStatus::Captured { .. } => "captured",
        HoldStatus::Released => "released",
        HoldStatus::Expired => "expired",
    }
}

/// Rows for the holds and captures of `c`, keyed by hold id.
fn hold_rows(
    c: &Certificate,
    channels: &BTreeMap<String, String>,
    default_channel: &str,
) -> BTreeMap<String, HoldRow> {
    let mut rows: BTreeMap<String, HoldRow> = c
        .holds()
        .iter()
        .map(|(id, h)| {
            let captured_amount = match h.status {
                HoldStatus::Captured { amount } => Some(amount),
                _ => None,
            };
            let row = HoldRow {
                hold_id: id.to_string(),
                amount: h.amount,
                expires_at: h.expires_at,
                status: status_name(h.status).to_owned(),
                captured_amount,
                capture_id: None,
                capture_reversed: false,
                channel: channels
                    .get(id.as_str())
                    .cloned()
                    .unwrap_or_else(|| default_channel.to_owned()),
            };
            (id.to_string(), row)
        })
        .collect();
    for (capture_id, capture) in c.captures() {
        if let Some(row) = rows.get_mut(capture.hold.as_str()) {
            row.capture_id = Some(capture_id.to_string());
            row.capture_reversed = capture.reversed;
        }
    }
    rows
}

struct Loaded {
    id: Uuid,
    digest: Option<CodeDigest>,
    last4: String,
    version: i64,
    verifier: Vec<u8>,
    certificate: Certificate,
    /// Channel of each loaded hold, kept when the hold is rewritten.
    channels: BTreeMap<String, String>,
    stored_key: Option<StoredKey>,
}

fn parse_loaded(row: &sqlx::postgres::PgRow) -> Result<Loaded, ApplyError> {
    let get_err = |e: sqlx::Error| unavailable(format!("unexpected certificate row: {e}"));
    let currency: String = row.try_get("currency").map_err(get_err)?;
    let state: String = row.try_get("state").map_err(get_err)?;
    let holds: serde_json::Value = row.try_get("holds").map_err(get_err)?;
    let holds: Vec<HoldRow> = serde_json::from_value(holds).map_err(unavailable)?;
    let applied: Option<serde_json::Value> = row.try_get("applied").map_err(get_err)?;
    let stored_key: Option<serde_json::Value> = row.try_get("idempotency").map_err(get_err)?;
    let mut parts = CertificateParts {
        currency: Currency::parse(currency.trim()).ok(),
        nominal: row.try_get("nominal").map_err(get_err)?,
        balance: row.try_get("balance").map_err(get_err)?,
        state: State::parse(&state),
        expires_at: row.try_get("expires_at").map_err(get_err)?,
        links: SaleLinks {
            client_id: row.try_get("client_id").map_err(get_err)?,
            order_id: row.try_get("order_id").map_err(get_err)?,
            payment_id: row.try_get("payment_id").map_err(get_err)?,
        },
        ..CertificateParts::default()
    };
    let mut channels = BTreeMap::new();
    for h in &holds {
        let id = OperationId::parse(h.hold_id.clone()).map_err(unavailable)?;
        parts.holds.insert(
            id.clone(),
            Hold {
                amount: h.amount,
                expires_at: h.expires_at,
                status: hold_status(h),
            },
        );
        if let (Some(capture_id), Some(amount)) = (&h.capture_id, h.captured_amount) {
            parts.captures.insert(
                OperationId::parse(capture_id.clone()).map_err(unavailable)?,
                Capture {
                    hold: id,
                    amount,
                    reversed: h.capture_reversed,
                },
            );
        }
        channels.insert(h.hold_id.clone(), h.channel.clone());
    }
    if let Some(applied) = applied {
        let effect: Effect = serde_json::from_value(applied).map_err(unavailable)?;
        parts.applied.insert(effect.operation.clone(), effect);
    }
    let certificate =
        Certificate::from_parts(parts).ok_or_else(|| unavailable("stored certificate is inconsistent"))?;
    let digest: Vec<u8> = row.try_get("code_digest").map_err(get_err)?;
    Ok(Loaded {
        id: row.try_get("id").map_err(get_err)?,
        digest: <[u8; 32]>::try_from(digest.as_slice()).ok().map(CodeDigest),
        last4: row.try_get("code_last4").map_err(get_err)?,
        version: row.try_get("version").map_err(get_err)?,
        verifier: row.try_get("cvc_verifier").map_err(get_err)?,
        certificate,
        channels,
        stored_key: stored_key
            .map(serde_json::from_value)
            .transpose()
            .map_err(unavailable)?,
    })
}

fn summary(loaded: &Loaded, c: &Certificate, effects: Vec<Effect>, now: OffsetDateTime) -> Applied {
    Applied {
        certificate_id: loaded.id,
        code_last4: loaded.last4.clone(),
        effects,
        state: c.state(),
        currency: c.currency().to_string(),
        balance: c.balance(),
        available: c.available(now),
        replayed: false,
        code_digest: loaded.digest,
    }
}

/// What an idempotency record says about a new request with the same key.
fn replay(stored: StoredKey, request_hash: &[u8; 32]) -> Result<Applied, ApplyError> {
    if stored.hash != hex::encode(request_hash) {
        return Err(ApplyError::KeyReused);
    }
    if stored.outcome == "refused" {
        let refusal: Refusal = serde_json::from_value(stored.result).map_err(unavailable)?;
        return Err(ApplyError::Refused(refusal));
    }
    let mut applied: Applied = serde_json::from_value(stored.result).map_err(unavailable)?;
    applied.replayed = true;
    Ok(applied)
}

impl PgCertificates {
    async fn apply_in(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        request: &OperationRequest,
    ) -> Result<Applied, ApplyError> {
        let channel = request.origin.channel.as_str();
        let key = request.idempotency.as_ref().map(|k| k.key.as_str());
        if let Some(key) = key {
            let locked: bool = sqlx::query_scalar(LOCK_SQL)
                .bind(lock_key(channel, key))
                .fetch_one(&mut **tx)
                .await
                .map_err(unavailable)?;
            if !locked {
                return Err(ApplyError::InFlight);
            }
        }
        let target = request.command.target().map(OperationId::as_str);
        let lock = match request.certificate {
            CertificateRef::Code(digest) => sqlx::query_scalar(LOCK_BY_CODE_SQL).bind(digest.0.to_vec()),
            CertificateRef::Id(id) => sqlx::query_scalar(LOCK_BY_ID_SQL).bind(id),
        };
        let id: Uuid = lock
            .fetch_optional(&mut **tx)
            .await
            .map_err(unavailable)?
            .ok_or(ApplyError::NotFound)?;
        let row = sqlx::query(LOAD_SQL)
            .bind(id)
            .bind(target)
            .bind(request.operation.as_str())
            .bind(channel)
            .bind(key)
            .fetch_optional(&mut **tx)
            .await
            .map_err(unavailable)?
            .ok_or(ApplyError::NotFound)?;
        let mut loaded = parse_loaded(&row)?;
        if let (Some(stored), Some(claim)) = (loaded.stored_key.take(), &request.idempotency) {
            return replay(stored, &claim.request_hash);
        }
        if let Some(presented) = &request.cvc_verifier {
            if !bool::from(presented.as_slice().ct_eq(&loaded.verifier)) {
                return Err(ApplyError::WrongCvc);
            }
        }
        let now = OffsetDateTime::now_utc();
        // A deterministic operation id seen before: its effect stands, nothing is written again.
        if let Some(previous) = loaded
            .certificate
            .clone()
            .into_parts()
            .applied
            .get(&request.operation)
        {
            let c = &loaded.certificate;
            let mut applied = summary(&loaded, c, vec![previous.clone()], now);
            applied.replayed = true;
            return Ok(applied);
        }
        let mut after = loaded.certificate.clone();
        let effects = match execute(&mut after, request.operation.clone(), &request.command, now) {
            Ok(effects) => effects,
            Err(refused) => {
                let refusal = Refusal::from(&refused);
                if let Some(claim) = &request.idempotency {
                    sqlx::query(REFUSAL_SQL)
                        .bind(channel)
                        .bind(&claim.key)
                        .bind(claim.request_hash.to_vec())
                        .bind(serde_json::to_value(&refusal).map_err(unavailable)?)
                        .bind(claim.retention.as_seconds_f64())
                        .execute(&mut **tx)
                        .await
                        .map_err(unavailable)?;
                }
                return Err(ApplyError::Refused(refusal));
            }
        };
        let applied = summary(&loaded, &after, effects, now);
        if applied.effects.is_empty() {
            return Ok(applied);
        }
        self.write(tx, &loaded, &after, &applied, request).await?;
        if let Some(phone) = &request.cvc_sms_to {
            sms::enqueue(tx, loaded.id, phone).await?;
        }
        Ok(applied)
    }

    async fn write(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        loaded: &Loaded,
        after: &Certificate,
        applied: &Applied,
        request: &OperationRequest,
    ) -> Result<(), ApplyError> {
        let channel = request.origin.channel.as_str();
        let before_rows = hold_rows(&loaded.certificate, &loaded.channels, channel);
        let changed: Vec<HoldRow> = hold_rows(after, &loaded.channels, channel)
            .into_iter()
            .filter(|(id, row)| before_rows.get(id) != Some(row))
            .map(|(_, row)| row)
            .collect();
        let ops: Vec<OpRow> = applied
            .effects
            .iter()
            .map(|e| OpRow {
                operation_id: e.operation.as_str(),
                action: e.action.name(),
                detail: serde_json::to_value(e).unwrap_or_default(),
                amount: e.amount,
                target_id: target_of(&e.action),
                balance_before: e.balance_before,
                balance_after: e.balance_after,
                state_before: e.state_before.as_str(),
                state_after: e.state_after.as_str(),
                at: e.at,
            })
            .collect();
        let outgoing = events::outgoing(loaded.id, &loaded.last4, after, &applied.effects, &request.origin);
        let event_rows: Vec<EventRow> = outgoing
            .iter()
            .map(|o| EventRow {
                topic: o.topic,
                key: &o.key,
                payload: &o.payload,
            })
            .collect();
        let links = after.links();
        let claim = request.idempotency.as_ref();
        let written: i64 = sqlx::query_scalar(WRITE_SQL)
            .bind(loaded.id)
            .bind(after.balance())
            .bind(after.held_total())
            .bind(after.state().as_str())
            .bind(&links.client_id)
            .bind(&links.order_id)
            .bind(&links.payment_id)
            .bind(loaded.version)
            .bind(serde_json::to_value(&changed).map_err(unavailable)?)
            .bind(serde_json::to_value(&ops).map_err(unavailable)?)
            .bind(channel)
            .bind(&request.origin.initiator)
            .bind(&request.origin.source_event)
            .bind(serde_json::to_value(&event_rows).map_err(unavailable)?)
            .bind(claim.map(|c| c.key.as_str()))
            .bind(claim.map(|c| c.request_hash.to_vec()))
            .bind(serde_json::to_value(applied).map_err(unavailable)?)
            .bind(claim.map(|c| c.retention.as_seconds_f64()).unwrap_or(0.0))
            .fetch_one(&mut **tx)
            .await
            .map_err(unavailable)?;
        if written != 1 {
            // The row is locked, so this means a bug or a manual change: refuse, change nothing.
            return Err(unavailable("certificate version changed under a row lock"));
        }
        Ok(())
    }
}

#[async_trait]
impl CertificateRepository for PgCertificates {
    async fn apply(&self, request: OperationRequest) -> Result<Applied, ApplyError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let result = self.apply_in(&mut tx, &request).await;
        match &result {
            Ok(applied) if !applied.replayed => tx.commit().await.map_err(unavailable)?,
            Err(ApplyError::Refused(_)) if request.idempotency.is_some() => {
                tx.commit().await.map_err(unavailable)?
            }
            _ => tx.rollback().await.map_err(unavailable)?,
        }
        result
    }
}
