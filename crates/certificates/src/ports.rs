//! Ports the certificate service needs from the outside world: key material for codes and CVCs,
//! and an SMS provider.

use crate::code::{Cvc, GiftCode};
use async_trait::async_trait;

/// A keyed digest of a normalised code: how a certificate is found without storing its code.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CodeDigest(pub [u8; 32]);

impl std::fmt::Debug for CodeDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A prefix is enough to correlate log lines.
        write!(
            f,
            "CodeDigest({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// A CVC (or another short secret, see [`CodeKeys::seal_secret`]) sealed with AES-256-GCM under
/// a data key that the KMS wraps. Safe to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedCvc {
    /// Which master key wrapped the data key (for rotation).
    pub key_id: String,
    /// The data key, encrypted by the master key.
    pub wrapped_key: Vec<u8>,
    /// 96-bit nonce followed by ciphertext and tag.
    pub ciphertext: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The sealed value does not open: wrong key, tampered ciphertext or a different certificate.
    #[error("sealed value does not open under the configured keys")]
    Open,
    /// The KMS could not be reached or refused; transient.
    #[error("key service unavailable: {0}")]
    Unavailable(String),
}

/// Keyed digests and envelope encryption for codes and CVCs.
///
/// Digests are deterministic for a given key so they can be looked up; the CVC verifier is bound
/// to the certificate's code digest so a verifier cannot be replayed against another certificate.
pub trait CodeKeys: Send + Sync {
    /// HMAC-SHA256 of the normalised code under the lookup key.
    fn code_digest(&self, code: &GiftCode) -> CodeDigest;
    /// HMAC-SHA256 of `code digest ‖ cvc` under the CVC key.
    fn cvc_verifier(&self, code: &CodeDigest, cvc: &Cvc) -> [u8; 32];
    /// Constant-time comparison of a presented CVC against a stored verifier.
    fn verify_cvc(&self, code: &CodeDigest, cvc: &Cvc, verifier: &[u8]) -> bool;
    /// Encrypts the CVC; the code digest is authenticated data, so the ciphertext only opens for
    /// the certificate it belongs to.
    fn seal_cvc(&self, code: &CodeDigest, cvc: &Cvc) -> Result<SealedCvc, KeyError>;
    /// Returns `Open` when the ciphertext, the key or the code digest do not match.
    fn open_cvc(&self, code: &CodeDigest, sealed: &SealedCvc) -> Result<Cvc, KeyError>;
    /// Encrypts another short secret kept at rest (a phone number) the same way. `context` is
    /// authenticated data naming what the secret is and whose (`sms_delivery.phone:<id>`): the
    /// ciphertext only opens under the same context.
    fn seal_secret(&self, context: &[u8], secret: &str) -> Result<SealedCvc, KeyError>;
    /// Returns `Open` when the ciphertext, the key or the context do not match.
    fn open_secret(&self, context: &[u8], sealed: &SealedCvc) -> Result<String, KeyError>;
}

/// One SMS to send. `Debug` hides the text, which carries the CVC.
#[derive(Clone)]
pub struct SmsMessage {
    /// E.164 phone number, `+` and digits.
    pub to: String,
    pub text: String,
    /// Stable per message: providers that support it de-duplicate on it, and it is our log key.
    pub idempotency_key: String,
}

impl std::fmt::Debug for SmsMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tail = crate::code::visible_tail(&self.to, 2);
        f.debug_struct("SmsMessage")
            .field("to", &format!("***{tail}"))
            .field("text", &"***")
            .field("idempotency_key", &self.idempotency_key)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmsReceipt {
    /// The provider's id for the message.
    pub provider_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmsError {
    /// Worth retrying: timeouts, connection errors, 429 and 5xx.
    #[error("SMS provider unavailable: {0}")]
    Transient(String),
    /// Retrying cannot help: a bad number, a refused sender, a rejected request.
    #[error("SMS refused: {0}")]
    Rejected(String),
}

/// An SMS provider. Implementations must not log the message text.
#[async_trait]
pub trait SmsSender: Send + Sync {
    async fn send(&self, message: &SmsMessage) -> Result<SmsReceipt, SmsError>;
}

// ---------------------------------------------------------------------------------------------
// Certificate storage

use crate::certificate::{Effect, OperationId, State};
use crate::events::Origin;
use crate::operation::Command;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How a request names its certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertificateRef {
    Code(CodeDigest),
    Id(Uuid),
}

/// The caller's idempotency key, scoped by channel (`Origin::channel`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyClaim {
    pub key: String,
    /// Digest of everything that defines the request (route, certificate, body).
    pub request_hash: [u8; 32],
    pub retention: time::Duration,
}

#[derive(Debug, Clone)]
pub struct OperationRequest {
    pub certificate: CertificateRef,
    pub operation: OperationId,
    pub command: Command,
    pub origin: Origin,
    pub idempotency: Option<IdempotencyClaim>,
    /// The verifier of the CVC the caller presented, when the operation requires one.
    pub cvc_verifier: Option<[u8; 32]>,
    /// Queue the CVC SMS to this number in the same transaction (activation).
    pub cvc_sms_to: Option<String>,
    /// Why a person asked for the operation (an operator's reason for a cancel): recorded with
    /// the operation's audit row in the same transaction, never published in an event.
    pub reason: Option<String>,
}

/// The certificate after an operation, and what the operation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub certificate_id: Uuid,
    pub code_last4: String,
    /// Expiries released on the way, then the operation's own effect (last).
    pub effects: Vec<Effect>,
    pub state: State,
    pub currency: String,
    pub balance: i64,
    pub available: i64,
    /// True when this is the stored result of an earlier request with the same key.
    #[serde(default)]
    pub replayed: bool,
    /// The certificate's code digest (for cache invalidation); not part of stored results.
    #[serde(skip)]
    pub code_digest: Option<CodeDigest>,
}

/// A refusal by the domain rules, in a form that can be stored and replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub code: String,
    pub detail: String,
    /// True when this is the stored refusal of an earlier request with the same key.
    #[serde(skip)]
    pub replayed: bool,
}

impl From<&crate::certificate::CertificateError> for Refusal {
    fn from(e: &crate::certificate::CertificateError) -> Self {
        Self {
            code: e.code().to_owned(),
            detail: e.to_string(),
            replayed: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// No certificate with that code or id.
    #[error("certificate not found")]
    NotFound,
    /// The presented CVC does not match. Not stored under the idempotency key.
    #[error("wrong CVC")]
    WrongCvc,
    /// The hold or capture the command names is not on this certificate, or another channel
    /// made it: the same answer either way, not stored under the idempotency key (a stored
    /// answer would tell a retry that the certificate exists).
    #[error("no such hold or capture")]
    UnknownTarget,
    /// The rules refused the operation; stored under the idempotency key and replayed.
    #[error("refused: {}", .0.detail)]
    Refused(Refusal),
    /// Another request with the same key is being processed right now.
    #[error("a request with this idempotency key is in flight")]
    InFlight,
    /// The key was used before for a different request.
    #[error("the idempotency key was used for a different request")]
    KeyReused,
    /// Storage failed; nothing was changed. Transient.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}
