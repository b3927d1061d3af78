//! Key management for certificate codes and CVCs.
//!
//! - [`MasterKey`]: the port of a key service that wraps and unwraps data keys (a cloud KMS, an
//!   HSM); [`LocalKeyRing`] implements it from key files for development.
//! - [`EnvelopeCodeKeys`]: the certificates' [`CodeKeys`](backbone_certificates::ports::CodeKeys)
//!   port. Code digests and CVC verifiers are HMAC-SHA256 under keys derived with HKDF-SHA256 from
//!   one root secret; CVCs are sealed with AES-256-GCM under data keys wrapped by the master key,
//!   with the code digest as associated data.
//!
//! ```text
//! key file ──HKDF──┬─ "wrap"          → wraps data keys (AES-256-GCM)
//!                  ├─ "key-id"        → public fingerprint, the key id
//!                  ├─ "code-lookup"   → HMAC of codes
//!                  └─ "cvc-verifier"  → HMAC of code digest ‖ CVC
//! ```

mod envelope;
mod keyfile;
mod master;

pub use envelope::{DataKeyPolicy, DigestKeys, EnvelopeCodeKeys};
pub use keyfile::{generate_key_file, load_local, read_key_file, KeyFileError, LocalKmsConfig};
pub use master::{DataKey, LocalKeyRing, LocalMasterKey, MasterKey, WrappedKey};

#[cfg(test)]
mod tests;
