//! A gift certificate: its state machine, balance and holds. Every operation carries an
//! operation id; repeating an id replays the first result and changes nothing.

mod values;

pub use values::*;

use crate::money::{Amount, Currency};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    currency: Currency,
    nominal: i64,
    balance: i64,
    state: State,
    expires_at: Option<OffsetDateTime>,
    links: SaleLinks,
    holds: BTreeMap<OperationId, Hold>,
    captures: BTreeMap<OperationId, Capture>,
    /// Every applied operation, for replay.
    applied: BTreeMap<OperationId, Effect>,
}

/// Everything a certificate is made of, for storage adapters: they load the parts an operation
/// needs (the row, its active holds, the hold or capture it targets, an earlier effect under the
/// same operation id) and persist what changed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CertificateParts {
    pub currency: Option<Currency>,
    pub nominal: i64,
    pub balance: i64,
    pub state: Option<State>,
    pub expires_at: Option<OffsetDateTime>,
    pub links: SaleLinks,
    pub holds: BTreeMap<OperationId, Hold>,
    pub captures: BTreeMap<OperationId, Capture>,
    pub applied: BTreeMap<OperationId, Effect>,
}

impl Certificate {
    /// Rebuilds a certificate from stored parts; `None` if a required part is missing or the
    /// balance is outside `0..=nominal`.
    pub fn from_parts(p: CertificateParts) -> Option<Self> {
        if p.nominal <= 0 || p.balance < 0 || p.balance > p.nominal {
            return None;
        }
        Some(Self {
            currency: p.currency?,
            nominal: p.nominal,
            balance: p.balance,
            state: p.state?,
            expires_at: p.expires_at,
            links: p.links,
            holds: p.holds,
            captures: p.captures,
            applied: p.applied,
        })
    }

    pub fn into_parts(self) -> CertificateParts {
        CertificateParts {
            currency: Some(self.currency),
            nominal: self.nominal,
            balance: self.balance,
            state: Some(self.state),
            expires_at: self.expires_at,
            links: self.links,
            holds: self.holds,
            captures: self.captures,
            applied: self.applied,
        }
    }

    pub fn expires_at(&self) -> Option<OffsetDateTime> {
        self.expires_at
    }

    /// Sum of active holds, expired or not: what storage keeps as `held`.
    pub fn held_total(&self) -> i64 {
        self.holds
            .values()
            .filter(|h| h.status == HoldStatus::Active)
            .map(|h| h.amount)
            .sum()
    }

    /// A newly issued certificate worth `nominal`.
    pub fn issue(nominal: Amount, expires_at: Option<OffsetDateTime>) -> Self {
        Self {
            currency: nominal.currency(),
            nominal: nominal.minor(),
            balance: nominal.minor(),
            state: State::Issued,
            expires_at,
            links: SaleLinks::default(),
            holds: BTreeMap::new(),
            captures: BTreeMap::new(),
            applied: BTreeMap::new(),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    pub fn nominal(&self) -> i64 {
        self.nominal
    }

    pub fn balance(&self) -> i64 {
        self.balance
    }

    pub fn links(&self) -> &SaleLinks {
        &self.links
    }

    pub fn holds(&self) -> &BTreeMap<OperationId, Hold> {
        &self.holds
    }

    pub fn captures(&self) -> &BTreeMap<OperationId, Capture> {
        &self.captures
    }

    /// The effect of an operation applied before under `op`, if it was loaded.
    pub fn applied(&self, op: &OperationId) -> Option<&Effect> {
        self.applied.get(op)
    }

    /// Balance less active holds that have not expired at `now`.
    pub fn available(&self, now: OffsetDateTime) -> i64 {
        self.balance - self.held(now)
    }

    fn held(&self, now: OffsetDateTime) -> i64 {
        self.holds
            .values()
            .filter(|h| h.status == HoldStatus::Active && h.expires_at > now)
            .map(|h| h.amount)
            .sum()
    }

    /// Activates an issued certificate. `price`, when the activation is a sale's, is what the
    /// sale line charged: it must be the nominal, in the certificate's currency.
    pub fn activate(
        &mut self,
        op: OperationId,
        links: SaleLinks,
        price: Option<Amount>,
        now: OffsetDateTime,
    ) -> Result<Effect, CertificateError> {
        self.apply(op, Action::Activate, now, |c| {
            c.require(&[State::Issued], "activate")?;
            c.require_not_expired(now)?;
            if let Some(price) = price {
                c.require_currency(price.currency())?;
                if price.minor() != c.nominal {
                    return Err(CertificateError::NominalMismatch);
                }
            }
            c.links = links;
            c.state = State::Active;
            Ok(None)
        })
    }

    pub fn authorize(
        &mut self,
        op: OperationId,
        amount: Amount,
        expires_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Effect, CertificateError> {
        let action = Action::Authorize {
            amount: amount.minor(),
            expires_at,
        };
        self.apply(op.clone(), action, now, |c| {
            c.require(&[State::Active, State::PartiallyRedeemed], "authorize")?;
            c.require_not_expired(now)?;
            c.require_currency(amount.currency())?;
            if expires_at <= now {
                return Err(CertificateError::HoldExpiryInPast);
            }
            let available = c.available(now);
            if amount.minor() > available {
                return Err(CertificateError::InsufficientFunds {
                    available,
                    requested: amount.minor(),
                });
            }
            c.holds.insert(
                op,
                Hold {
                    amount: amount.minor(),
                    expires_at,
                    status: HoldStatus::Active,
                },
            );
            Ok(Some(amount.minor()))
        })
    }

    /// Debits up to the held amount; the rest of the hold is released.
    pub fn capture(
        &mut self,
        op: OperationId,
        hold: OperationId,
        amount: Amount,
        now: OffsetDateTime,
    ) -> Result<Effect, CertificateError> {
        let action = Action::Capture {
            hold: hold.clone(),
            amount: amount.minor(),
        };
        self.apply(op.clone(), action, now, |c| {
            c.require(&[State::Active, State::PartiallyRedeemed], "capture")?;
            c.require_currency(amount.currency())?;
            let h = c
                .holds
                .get_mut(&hold)
                .ok_or_else(|| CertificateError::UnknownOperation(hold.clone()))?;
            match h.status {
                HoldStatus::Active => {}
                HoldStatus::Expired => return Err(CertificateError::HoldExpired(hold.clone())),
                _ => return Err(CertificateError::HoldNotActive(hold.clone())),
            }
            if h.expires_at <= now {
                return Err(CertificateError::HoldExpired(hold.clone()));
            }
            if amount.minor() > h.amount {
                return Err(CertificateError::CaptureExceedsHold {
                    held: h.amount,
                    requested: amount.minor(),
                });
            }
            h.status = HoldStatus::Captured {
                amount: amount.minor(),
            };
            c.balance -= amount.minor();
            c.captures.insert(
                op,
                Capture {
                    hold,
                    amount: amount.minor(),
                    reversed: false,
                },
            );
            c.state = c.state_for_balance();
            Ok(Some(amount.minor()))
        })
    }

    /// Releases an active hold, or reverses a capture (the money returns to the balance).
    pub fn void(
        &mut self,
        op: OperationId,
        target: OperationId,
        now: OffsetDateTime,
    ) -> Result<Effect, CertificateError> {
        self.apply(
            op,
            Action::Void {
                target: target.clone(),
            },
            now,
            |c| {
                c.require(
                    &[State::Active, State::PartiallyRedeemed, State::Redeemed],
                    "void",
                )?;
                if let Some(h) = c.holds.get_mut(&target) {
                    if h.status != HoldStatus::Active {
                        return Err(CertificateError::HoldNotActive(target.clone()));
                    }
                    h.status = HoldStatus::Released;
                    return Ok(Some(h.amount));
                }
                let capture = c
                    .captures
                    .get_mut(&target)
                    .ok_or_else(|| CertificateError::UnknownOperation(target.clone()))?;
                if capture.reversed {
                    return Err(CertificateError::AlreadyReversed(target.clone()));
                }
                capture.reversed = true;
                let amount = capture.amount;
                c.balance += amount;
                c.state = c.state_for_balance();
                Ok(Some(amount))
            },
        )
    }

    /// Refunds the sale of a certificate that was never spent from.
    pub fn refund(&mut self, op: OperationId, now: OffsetDateTime) -> Result<Effect, CertificateError> {
        self.apply(op, Action::Refund, now, |c| {
            c.require(&[State::Active], "refund")?;
            if c.held(now) > 0 || c.balance != c.nominal {
                return Err(CertificateError::InUse);
            }
            c.state = State::Refunded;
            Ok(Some(c.nominal))
        })
    }

    /// Ends the certificate; active holds are released.
    pub fn cancel(&mut self, op: OperationId, now: OffsetDateTime) -> Result<Effect, CertificateError> {
        self.apply(op, Action::Cancel, now, |c| {
            if c.state.is_terminal() {
                return Err(CertificateError::InvalidTransition {
                    state: c.state,
                    action: "cancel",
                });
            }
            for h in c.holds.values_mut().filter(|h| h.status == HoldStatus::Active) {
                h.status = HoldStatus::Released;
            }
            c.state = State::Cancelled;
            Ok(None)
        })
    }

    /// Releases every active hold that has expired at `now`; one effect per hold, under an
    /// operation id derived from the hold (`expire:<hold>`), so a second sweep is a replay.
    pub fn expire_holds(&mut self, now: OffsetDateTime) -> Vec<Effect> {
        let due: Vec<OperationId> = self
            .holds
            .iter()
            .filter(|(_, h)| h.status == HoldStatus::Active && h.expires_at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        due.into_iter()
            .filter_map(|hold| {
                let op = OperationId(format!("expire:{}", hold.as_str()));
                self.apply(op, Action::Expire { hold: hold.clone() }, now, |c| {
                    let h = c
                        .holds
                        .get_mut(&hold)
                        .ok_or_else(|| CertificateError::UnknownOperation(hold.clone()))?;
                    h.status = HoldStatus::Expired;
                    Ok(Some(h.amount))
                })
                .ok()
            })
            .collect()
    }

    /// Runs `change` on a copy, so a refused operation leaves no trace, and records the effect.
    fn apply(
        &mut self,
        op: OperationId,
        action: Action,
        now: OffsetDateTime,
        change: impl FnOnce(&mut Self) -> Result<Option<i64>, CertificateError>,
    ) -> Result<Effect, CertificateError> {
        if let Some(previous) = self.applied.get(&op) {
            return if previous.action == action {
                Ok(previous.clone())
            } else {
                Err(CertificateError::IdempotencyConflict(op))
            };
        }
        let mut next = self.clone();
        let amount = change(&mut next)?;
        let effect = Effect {
            operation: op.clone(),
            action,
            amount,
            balance_before: self.balance,
            balance_after: next.balance,
            state_before: self.state,
            state_after: next.state,
            at: now,
        };
        next.applied.insert(op, effect.clone());
        *self = next;
        Ok(effect)
    }

    fn require(&self, states: &[State], action: &'static str) -> Result<(), CertificateError> {
        if states.contains(&self.state) {
            Ok(())
        } else {
            Err(CertificateError::InvalidTransition {
                state: self.state,
                action,
            })
        }
    }

    fn require_currency(&self, got: Currency) -> Result<(), CertificateError> {
        if got == self.currency {
            Ok(())
        } else {
            Err(CertificateError::CurrencyMismatch {
                expected: self.currency,
                got,
            })
        }
    }

    fn require_not_expired(&self, now: OffsetDateTime) -> Result<(), CertificateError> {
        match self.expires_at {
            Some(at) if at <= now => Err(CertificateError::CertificateExpired(at)),
            _ => Ok(()),
        }
    }

    fn state_for_balance(&self) -> State {
        match self.balance {
            0 => State::Redeemed,
            b if b == self.nominal => State::Active,
            _ => State::PartiallyRedeemed,
        }
    }
}
