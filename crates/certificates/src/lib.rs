//! The gift-certificate domain: money in minor units, the certificate state machine (Issued,
//! Active, PartiallyRedeemed, Redeemed, Refunded, Cancelled), holds with expiry, and operations
//! that are idempotent by operation id; the service that runs the use cases over the storage
//! ports, an in-memory store and the storage contract suite. Pure Rust: no I/O.

pub mod certificate;
pub mod channel;
pub mod code;
pub mod contract;
pub mod events;
pub mod group;
pub mod ids;
pub mod memory;
pub mod money;
pub mod operation;
pub mod ports;
pub mod reason;
pub mod sale;
pub mod service;
pub mod store;

pub use certificate::{
    Action, Capture, Certificate, CertificateError, CertificateParts, Effect, Hold, HoldStatus, OperationId,
    SaleLinks, State,
};
pub use channel::{Channel, Scope};
pub use code::{CodeError, Cvc, GiftCode};
pub use group::{GroupCommit, GroupSettings};
pub use money::{Amount, Currency, MoneyError};
pub use operation::{execute, Command};
pub use ports::{
    Applied, ApplyError, CertificateRef, CodeDigest, CodeKeys, IdempotencyClaim, KeyError, OperationRequest,
    Refusal, SealedCvc, SmsError, SmsMessage, SmsReceipt, SmsSender,
};
pub use reason::DeadLetterReason;
pub use service::CertificateService;

#[cfg(test)]
mod service_tests;
#[cfg(test)]
mod tests;
