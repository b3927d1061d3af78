//! Rows to domain values and back. A stored value this service never writes (an unknown state,
//! hold status or key outcome) is an error, never a guess.

use backbone_certificates::certificate::{Capture, CertificateParts, Hold, HoldStatus};
use backbone_certificates::events::{target_of, Outgoing};
use backbone_certificates::store::{KeyOutcome, LockedCertificate, SavedOperation, StoreError, StoredResult};
use backbone_certificates::{Certificate, CodeDigest, Currency, Effect, OperationId, SaleLinks, State};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgRow;
use sqlx::Row;
use std::collections::BTreeMap;
use time::OffsetDateTime;

pub(crate) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

fn corrupt(what: &str) -> StoreError {
    StoreError(format!("unexpected stored value: {what}"))
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

fn hold_status(row: &HoldRow) -> Result<HoldStatus, StoreError> {
    match (row.status.as_str(), row.captured_amount) {
        ("active", _) => Ok(HoldStatus::Active),
        ("captured", Some(amount)) => Ok(HoldStatus::Captured { amount }),
        ("released", _) => Ok(HoldStatus::Released),
        ("expired", _) => Ok(HoldStatus::Expired),
        _ => Err(corrupt("hold status")),
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

pub(crate) fn state(s: &str) -> Result<State, StoreError> {
    State::parse(s).ok_or_else(|| corrupt("certificate state"))
}

/// Rows for the holds and captures of `c`, keyed by hold id.
pub(crate) fn hold_rows(
    c: &Certificate,
    channels: &BTreeMap<OperationId, String>,
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
                    .get(id)
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

/// The holds that differ between `before` and `after`, as rows to upsert.
pub(crate) fn changed_holds(before: &LockedCertificate, after: &Certificate, channel: &str) -> Vec<HoldRow> {
    let before_rows = hold_rows(&before.certificate, &before.hold_channels, channel);
    hold_rows(after, &before.hold_channels, channel)
        .into_iter()
        .filter(|(id, row)| before_rows.get(id) != Some(row))
        .map(|(_, row)| row)
        .collect()
}

#[derive(Serialize)]
pub(crate) struct OpRow<'a> {
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

pub(crate) fn op_rows(effects: &[Effect]) -> Vec<OpRow<'_>> {
    effects
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
        .collect()
}

#[derive(Serialize)]
pub(crate) struct EventRow<'a> {
    topic: &'a str,
    key: &'a str,
    payload: &'a serde_json::Value,
}

pub(crate) fn event_rows(events: &[Outgoing]) -> Vec<EventRow<'_>> {
    events
        .iter()
        .map(|o| EventRow {
            topic: o.topic,
            key: &o.key,
            payload: &o.payload,
        })
        .collect()
}

/// The JSON parameters of `WRITE_SQL`: the changed holds ($9), the operation rows ($10), the
/// outgoing events ($14) and the result ($17).
pub(crate) fn write_json(op: &SavedOperation<'_>) -> Result<[serde_json::Value; 4], StoreError> {
    let json = |v: serde_json::Result<serde_json::Value>| v.map_err(unavailable);
    Ok([
        json(serde_json::to_value(changed_holds(
            op.locked,
            op.after,
            op.origin.channel.as_str(),
        )))?,
        json(serde_json::to_value(op_rows(&op.applied.effects)))?,
        json(serde_json::to_value(event_rows(op.events)))?,
        json(serde_json::to_value(op.applied))?,
    ])
}

#[derive(Deserialize)]
struct StoredKey {
    hash: String,
    outcome: String,
    result: serde_json::Value,
}

/// `{hash, outcome, result}` as the load and stored-result statements build it.
pub(crate) fn stored_result(json: serde_json::Value) -> Result<StoredResult, StoreError> {
    let stored: StoredKey = serde_json::from_value(json).map_err(unavailable)?;
    let mut request_hash = [0u8; 32];
    hex::decode_to_slice(&stored.hash, &mut request_hash).map_err(|_| corrupt("request hash"))?;
    Ok(StoredResult {
        request_hash,
        outcome: KeyOutcome::parse(&stored.outcome).ok_or_else(|| corrupt("idempotency outcome"))?,
        result: stored.result,
    })
}

pub(crate) fn digest(bytes: &[u8]) -> Result<CodeDigest, StoreError> {
    <[u8; 32]>::try_from(bytes)
        .map(CodeDigest)
        .map_err(|_| corrupt("code digest"))
}

/// A row of `LOAD_SQL` as the locked certificate.
pub(crate) fn locked(row: &PgRow) -> Result<LockedCertificate, StoreError> {
    let get_err = |e: sqlx::Error| unavailable(format!("unexpected certificate row: {e}"));
    let currency: String = row.try_get("currency").map_err(get_err)?;
    let state_name: String = row.try_get("state").map_err(get_err)?;
    let holds: serde_json::Value = row.try_get("holds").map_err(get_err)?;
    let holds: Vec<HoldRow> = serde_json::from_value(holds).map_err(unavailable)?;
    let applied: Option<serde_json::Value> = row.try_get("applied").map_err(get_err)?;
    let stored: Option<serde_json::Value> = row.try_get("idempotency").map_err(get_err)?;
    let mut parts = CertificateParts {
        currency: Some(Currency::parse(currency.trim()).map_err(|_| corrupt("currency"))?),
        nominal: row.try_get("nominal").map_err(get_err)?,
        balance: row.try_get("balance").map_err(get_err)?,
        state: Some(state(&state_name)?),
        expires_at: row.try_get("expires_at").map_err(get_err)?,
        links: SaleLinks {
            client_id: row.try_get("client_id").map_err(get_err)?,
            order_id: row.try_get("order_id").map_err(get_err)?,
            payment_id: row.try_get("payment_id").map_err(get_err)?,
        },
        ..CertificateParts::default()
    };
    let mut hold_channels = BTreeMap::new();
    for h in &holds {
        let id = OperationId::parse(h.hold_id.clone()).map_err(unavailable)?;
        parts.holds.insert(
            id.clone(),
            Hold {
                amount: h.amount,
                expires_at: h.expires_at,
                status: hold_status(h)?,
            },
        );
        if let (Some(capture_id), Some(amount)) = (&h.capture_id, h.captured_amount) {
            parts.captures.insert(
                OperationId::parse(capture_id.clone()).map_err(unavailable)?,
                Capture {
                    hold: id.clone(),
                    amount,
                    reversed: h.capture_reversed,
                },
            );
        }
        hold_channels.insert(id, h.channel.clone());
    }
    if let Some(applied) = applied {
        let effect: Effect = serde_json::from_value(applied).map_err(unavailable)?;
        parts.applied.insert(effect.operation.clone(), effect);
    }
    let certificate = Certificate::from_parts(parts).ok_or_else(|| corrupt("inconsistent certificate"))?;
    let code_digest: Vec<u8> = row.try_get("code_digest").map_err(get_err)?;
    Ok(LockedCertificate {
        id: row.try_get("id").map_err(get_err)?,
        code_digest: digest(&code_digest)?,
        code_last4: row.try_get("code_last4").map_err(get_err)?,
        version: row.try_get("version").map_err(get_err)?,
        cvc_verifier: row.try_get("cvc_verifier").map_err(get_err)?,
        certificate,
        hold_channels,
        stored: stored.map(stored_result).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_hold_status_is_an_error_not_a_release() {
        let row = |status: &str| HoldRow {
            hold_id: "h".into(),
            amount: 1,
            expires_at: OffsetDateTime::UNIX_EPOCH,
            status: status.into(),
            captured_amount: None,
            capture_id: None,
            capture_reversed: false,
            channel: "POS".into(),
        };
        assert_eq!(hold_status(&row("released")), Ok(HoldStatus::Released));
        assert!(hold_status(&row("relesed")).is_err());
        assert!(
            hold_status(&row("captured")).is_err(),
            "a capture without its amount"
        );
        assert!(KeyOutcome::parse("refused ").is_none());
    }
}
