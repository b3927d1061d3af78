//! The values a certificate is made of and speaks in: states, actions, operation ids, holds,
//! captures, effects, sale links, and why an operation is refused.

use crate::money::Currency;
use serde::{Deserialize, Serialize};
use std::fmt;
use time::OffsetDateTime;

/// Lifecycle states. `Active`, `PartiallyRedeemed` and `Redeemed` follow from the balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum State {
    Issued,
    Active,
    PartiallyRedeemed,
    Redeemed,
    Refunded,
    Cancelled,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Issued,
        State::Active,
        State::PartiallyRedeemed,
        State::Redeemed,
        State::Refunded,
        State::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Issued => "Issued",
            State::Active => "Active",
            State::PartiallyRedeemed => "PartiallyRedeemed",
            State::Redeemed => "Redeemed",
            State::Refunded => "Refunded",
            State::Cancelled => "Cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, State::Refunded | State::Cancelled)
    }
}

/// What an operation asks for; used for idempotency (same id, same request) and audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    Activate,
    Authorize {
        amount: i64,
        expires_at: OffsetDateTime,
    },
    Capture {
        hold: OperationId,
        amount: i64,
    },
    /// Releases an active hold, or reverses (refunds) a capture.
    Void {
        target: OperationId,
    },
    /// Refund of the sale itself: only while nothing was spent.
    Refund,
    Cancel,
    /// A hold that ran out, released by the sweeper.
    Expire {
        hold: OperationId,
    },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Activate => "activate",
            Action::Authorize { .. } => "authorize",
            Action::Capture { .. } => "capture",
            Action::Void { .. } => "void",
            Action::Refund => "refund",
            Action::Cancel => "cancel",
            Action::Expire { .. } => "expire",
        }
    }
}

/// Caller-chosen id of one operation (the HTTP `Idempotency-Key`, or a source event id). The
/// field is open to this crate for the ids it derives itself (`expire:<hold>`), which may be
/// longer than a caller may choose.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OperationId(pub(crate) String);

impl OperationId {
    pub fn parse(raw: impl Into<String>) -> Result<Self, CertificateError> {
        let raw = raw.into();
        if raw.is_empty() || raw.len() > 128 || raw.chars().any(char::is_control) {
            return Err(CertificateError::BadOperationId);
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Times in refusals are RFC 3339, as everywhere else in the API.
fn rfc3339(at: &OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

/// Why the rules refuse an operation. The texts name only the certificate's side (its state,
/// balance, currency, expiry), never a value the caller sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("operation id must be 1..=128 printable characters")]
    BadOperationId,
    #[error("{action} is not allowed in state {state:?}")]
    InvalidTransition { state: State, action: &'static str },
    #[error("the currency is not the certificate's ({expected})")]
    CurrencyMismatch { expected: Currency, got: Currency },
    #[error("insufficient funds: {available} available")]
    InsufficientFunds { available: i64, requested: i64 },
    #[error("no such hold or capture on this certificate")]
    UnknownOperation(OperationId),
    #[error("the hold has expired")]
    HoldExpired(OperationId),
    #[error("the hold is no longer active")]
    HoldNotActive(OperationId),
    #[error("a capture cannot exceed its hold of {held}")]
    CaptureExceedsHold { held: i64, requested: i64 },
    #[error("the capture was already reversed")]
    AlreadyReversed(OperationId),
    #[error("a hold must expire in the future")]
    HoldExpiryInPast,
    #[error("the certificate expired at {}", rfc3339(.0))]
    CertificateExpired(OffsetDateTime),
    #[error("the certificate has been spent from or has active holds")]
    InUse,
    #[error("the operation id was already used for a different request")]
    IdempotencyConflict(OperationId),
    /// A sale line's amount is not the certificate's nominal: a certificate is sold for what it
    /// is worth, not activated by any order that happens to be paid.
    #[error("the sale line's amount differs from the certificate's nominal")]
    NominalMismatch,
}

impl CertificateError {
    /// A stable, machine-readable code for the refusal (the problem type of the HTTP API).
    pub fn code(&self) -> &'static str {
        match self {
            CertificateError::BadOperationId => "bad-operation-id",
            CertificateError::InvalidTransition { .. } => "wrong-state",
            CertificateError::CurrencyMismatch { .. } => "currency-mismatch",
            CertificateError::InsufficientFunds { .. } => "insufficient-funds",
            CertificateError::UnknownOperation(_) => "unknown-hold",
            CertificateError::HoldExpired(_) => "hold-expired",
            CertificateError::HoldNotActive(_) => "hold-not-active",
            CertificateError::CaptureExceedsHold { .. } => "capture-exceeds-hold",
            CertificateError::AlreadyReversed(_) => "already-reversed",
            CertificateError::HoldExpiryInPast => "bad-hold-expiry",
            CertificateError::CertificateExpired(_) => "certificate-expired",
            CertificateError::InUse => "certificate-in-use",
            CertificateError::IdempotencyConflict(_) => "operation-id-reused",
            CertificateError::NominalMismatch => "nominal-mismatch",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HoldStatus {
    Active,
    Captured { amount: i64 },
    Released,
    Expired,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub amount: i64,
    pub expires_at: OffsetDateTime,
    pub status: HoldStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capture {
    pub hold: OperationId,
    pub amount: i64,
    pub reversed: bool,
}

/// What one operation did: the basis of the audit row and the transaction event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effect {
    pub operation: OperationId,
    pub action: Action,
    /// Money moved by this operation (held, captured, released or returned), if any.
    pub amount: Option<i64>,
    pub balance_before: i64,
    pub balance_after: i64,
    pub state_before: State,
    pub state_after: State,
    pub at: OffsetDateTime,
}

/// Links to the sale that activated the certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaleLinks {
    pub client_id: Option<String>,
    pub order_id: Option<String>,
    pub payment_id: Option<String>,
}
