//! The gift-certificate domain: money in minor units, the certificate state machine (Issued,
//! Active, PartiallyRedeemed, Redeemed, Refunded, Cancelled), holds with expiry, and operations
//! that are idempotent by operation id. Pure Rust: no I/O.

pub mod certificate;
pub mod code;
pub mod events;
pub mod money;
pub mod operation;
pub mod ports;

pub use certificate::{
    Action, Capture, Certificate, CertificateError, CertificateParts, Effect, Hold, HoldStatus, OperationId,
    SaleLinks, State,
};
pub use code::{CodeError, Cvc, GiftCode};
pub use money::{Amount, Currency, MoneyError};
pub use operation::{execute, Command};
pub use ports::{
    Applied, ApplyError, CertificateRef, CertificateRepository, CodeDigest, CodeKeys, IdempotencyClaim,
    KeyError, OperationRequest, Refusal, SealedCvc, SmsError, SmsMessage, SmsReceipt, SmsSender,
};

#[cfg(test)]
mod tests;
