//! Commands against one certificate, as the service receives them, and `execute`, the single
//! entry point storage adapters call on a loaded certificate.

use crate::certificate::{Certificate, CertificateError, Effect, OperationId, SaleLinks};
use crate::money::Amount;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Activate {
        links: SaleLinks,
        /// What a sale line charged for the certificate (a sale's activation); `None` for an
        /// activation by a channel, which sells nothing.
        #[serde(default)]
        price: Option<Amount>,
    },
    Authorize {
        amount: Amount,
        ttl_seconds: i64,
    },
    Capture {
        hold: OperationId,
        amount: Amount,
    },
    Void {
        target: OperationId,
    },
    Refund,
    Cancel,
    /// Only releases expired holds (the sweeper).
    Sweep,
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Activate { .. } => "activate",
            Command::Authorize { .. } => "authorize",
            Command::Capture { .. } => "capture",
            Command::Void { .. } => "void",
            Command::Refund => "refund",
            Command::Cancel => "cancel",
            Command::Sweep => "sweep",
        }
    }

    /// The hold or capture the command refers to, which storage must load with the certificate.
    pub fn target(&self) -> Option<&OperationId> {
        match self {
            Command::Capture { hold, .. } => Some(hold),
            Command::Void { target } => Some(target),
            _ => None,
        }
    }
}

/// Releases expired holds first (so `held` never counts an expired hold), then runs `command`.
/// Returns every effect in order: expiries, then the command's own (absent for `Sweep`). On a
/// refusal the certificate must be discarded by the caller, expiries included; the sweeper
/// releases them later.
pub fn execute(
    certificate: &mut Certificate,
    op: OperationId,
    command: &Command,
    now: OffsetDateTime,
) -> Result<Vec<Effect>, CertificateError> {
    let mut effects = certificate.expire_holds(now);
    let own = match command {
        Command::Activate { links, price } => certificate.activate(op, links.clone(), *price, now)?,
        Command::Authorize { amount, ttl_seconds } => {
            certificate.authorize(op, *amount, now + Duration::seconds(*ttl_seconds), now)?
        }
        Command::Capture { hold, amount } => certificate.capture(op, hold.clone(), *amount, now)?,
        Command::Void { target } => certificate.void(op, target.clone(), now)?,
        Command::Refund => certificate.refund(op, now)?,
        Command::Cancel => certificate.cancel(op, now)?,
        Command::Sweep => return Ok(effects),
    };
    effects.push(own);
    Ok(effects)
}
