//! The gift-certificate domain: money in minor units, the certificate state machine (Issued,
//! Active, PartiallyRedeemed, Redeemed, Refunded, Cancelled), holds with expiry, and operations
//! that are idempotent by operation id. Pure Rust: no I/O.

pub mod certificate;
pub mod money;

pub use certificate::{
    Action, Certificate, CertificateError, Effect, Hold, HoldStatus, OperationId, SaleLinks, State,
};
pub use money::{Amount, Currency, MoneyError};

#[cfg(test)]
mod tests;
