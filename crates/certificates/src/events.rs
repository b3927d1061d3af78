//! Outgoing event contracts (JSON, `version` 1), keyed by certificate id so each certificate's
//! events keep their order. Documented in `docs/events/gift-certificates-out-v1.md`.

use crate::certificate::{Action, Certificate, Effect, State};
use crate::channel::Channel;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

pub const STATE_TOPIC: &str = "GiftCertificateState";
pub const TRANSACTION_TOPIC: &str = "GiftCertificateTransaction";
pub const BI_TOPIC: &str = "GiftCertificateBI";

/// Who asked for an operation: recorded in the audit log and the transaction event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub channel: Channel,
    /// A person or system id the caller names, if any.
    pub initiator: Option<String>,
    /// The Kafka event or request that caused the operation.
    pub source_event: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateEvent {
    pub version: u16,
    pub event_id: Uuid,
    pub certificate_id: Uuid,
    pub code_last4: String,
    pub state: State,
    pub previous_state: Option<State>,
    pub balance_minor: i64,
    pub currency: String,
    pub operation_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionEvent {
    pub version: u16,
    pub event_id: Uuid,
    pub certificate_id: Uuid,
    pub code_last4: String,
    /// `activate`, `authorize`, `capture`, `void`, `refund`, `cancel` or `expire`.
    #[serde(rename = "type")]
    pub kind: String,
    pub operation_id: String,
    /// The hold a capture or expiry refers to, or what a void released or reversed.
    pub target_id: Option<String>,
    pub amount_minor: Option<i64>,
    pub currency: String,
    pub balance_before: i64,
    pub balance_after: i64,
    pub state_before: State,
    pub state_after: State,
    pub channel: String,
    pub initiator: Option<String>,
    pub source_event: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BiEvent {
    pub version: u16,
    pub event_id: Uuid,
    pub certificate_id: Uuid,
    pub code_last4: String,
    pub state: State,
    pub nominal_minor: i64,
    pub balance_minor: i64,
    pub held_minor: i64,
    pub currency: String,
    pub client_id: Option<String>,
    pub order_id: Option<String>,
    pub payment_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// One record for the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub topic: &'static str,
    pub key: String,
    pub payload: serde_json::Value,
}

pub fn target_of(action: &Action) -> Option<String> {
    match action {
        Action::Capture { hold, .. } | Action::Expire { hold } => Some(hold.to_string()),
        Action::Void { target } => Some(target.to_string()),
        _ => None,
    }
}

/// The events for `effects` applied to a certificate now in state `after`: a transaction event
/// per effect, a state event per state change, and one BI snapshot.
pub fn outgoing(
    certificate_id: Uuid,
    code_last4: &str,
    after: &Certificate,
    effects: &[Effect],
    origin: &Origin,
) -> Vec<Outgoing> {
    let key = certificate_id.to_string();
    let currency = after.currency().to_string();
    let mut out = Vec::with_capacity(effects.len() * 2 + 1);
    let mut push = |topic, payload: serde_json::Result<serde_json::Value>| {
        // These structs always serialise; a failure would be a programming error caught in tests.
        if let Ok(payload) = payload {
            out.push(Outgoing {
                topic,
                key: key.clone(),
                payload,
            });
        }
    };
    let mut last_at = None;
    for e in effects {
        last_at = Some(e.at);
        push(
            TRANSACTION_TOPIC,
            serde_json::to_value(TransactionEvent {
                version: 1,
                event_id: Uuid::now_v7(),
                certificate_id,
                code_last4: code_last4.to_owned(),
                kind: e.action.name().to_owned(),
                operation_id: e.operation.to_string(),
                target_id: target_of(&e.action),
                amount_minor: e.amount,
                currency: currency.clone(),
                balance_before: e.balance_before,
                balance_after: e.balance_after,
                state_before: e.state_before,
                state_after: e.state_after,
                channel: origin.channel.as_str().to_owned(),
                initiator: origin.initiator.clone(),
                source_event: origin.source_event.clone(),
                occurred_at: e.at,
            }),
        );
        if e.state_after != e.state_before {
            push(
                STATE_TOPIC,
                serde_json::to_value(StateEvent {
                    version: 1,
                    event_id: Uuid::now_v7(),
                    certificate_id,
                    code_last4: code_last4.to_owned(),
                    state: e.state_after,
                    previous_state: Some(e.state_before),
                    balance_minor: e.balance_after,
                    currency: currency.clone(),
                    operation_id: e.operation.to_string(),
                    occurred_at: e.at,
                }),
            );
        }
    }
    if let Some(at) = last_at {
        push(
            BI_TOPIC,
            serde_json::to_value(bi(certificate_id, code_last4, after, at)),
        );
    }
    out
}

pub fn bi(certificate_id: Uuid, code_last4: &str, c: &Certificate, at: OffsetDateTime) -> BiEvent {
    BiEvent {
        version: 1,
        event_id: Uuid::now_v7(),
        certificate_id,
        code_last4: code_last4.to_owned(),
        state: c.state(),
        nominal_minor: c.nominal(),
        balance_minor: c.balance(),
        held_minor: c.held_total(),
        currency: c.currency().to_string(),
        client_id: c.links().client_id.clone(),
        order_id: c.links().order_id.clone(),
        payment_id: c.links().payment_id.clone(),
        updated_at: at,
    }
}

/// The `Issued` state event for a newly uploaded certificate.
pub fn issued(certificate_id: Uuid, code_last4: &str, c: &Certificate, at: OffsetDateTime) -> Outgoing {
    let payload = serde_json::to_value(StateEvent {
        version: 1,
        event_id: Uuid::now_v7(),
        certificate_id,
        code_last4: code_last4.to_owned(),
        state: c.state(),
        previous_state: None,
        balance_minor: c.balance(),
        currency: c.currency().to_string(),
        operation_id: format!("issue:{certificate_id}"),
        occurred_at: at,
    })
    .unwrap_or_default();
    Outgoing {
        topic: STATE_TOPIC,
        key: certificate_id.to_string(),
        payload,
    }
}
