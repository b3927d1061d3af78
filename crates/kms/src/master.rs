//! The master-key port and its local adapter.
//!
//! A master key never encrypts data: it wraps data keys (envelope encryption). A cloud KMS, an HSM
//! or the local key file implement [`MasterKey`]; the rest of this crate does not care which.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use backbone_certificates::ports::KeyError;
use hkdf::Hkdf;
use rand::rngs::OsRng;
use rand::TryRngCore;
use sha2::Sha256;
use std::fmt;
use zeroize::Zeroizing;

pub(crate) const NONCE_LEN: usize = 12;
pub(crate) const TAG_LEN: usize = 16;

/// HKDF salt: fixed, so that one master key always derives the same subkeys.
const HKDF_SALT: &[u8] = b"backbone-kms/v1";
/// HKDF info labels, one per use; a subkey for one use is useless for another.
pub(crate) const LABEL_KEY_ID: &[u8] = b"backbone-kms/v1/key-id";
pub(crate) const LABEL_WRAP: &[u8] = b"backbone-kms/v1/wrap";
pub(crate) const LABEL_LOOKUP: &[u8] = b"backbone-kms/v1/code-lookup";
pub(crate) const LABEL_CVC_VERIFIER: &[u8] = b"backbone-kms/v1/cvc-verifier";
/// Associated data of a wrapped data key, followed by the wrapping key's id.
const AAD_WRAP: &[u8] = b"backbone-kms/v1/data-key:";

/// A 256-bit data key. Zeroed when dropped; `Debug` prints nothing of it.
pub struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    /// A fresh key from the operating system's CSPRNG. `Unavailable` if the OS refuses.
    pub fn generate() -> Result<Self, KeyError> {
        let mut key = Zeroizing::new([0u8; 32]);
        fill_random(key.as_mut())?;
        Ok(Self(key))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub(crate) fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(***)")
    }
}

/// A data key encrypted by a master key, with the id of that master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    pub key_id: String,
    pub bytes: Vec<u8>,
}

/// A master key held by a key service: wraps and unwraps data keys, never reveals itself.
///
/// Several master keys may be live at once during a rotation: new data keys are wrapped under the
/// current one, and data keys wrapped under a retired one still unwrap until it is destroyed.
pub trait MasterKey: Send + Sync + fmt::Debug {
    /// The id that [`MasterKey::wrap`] writes into new wrapped keys.
    fn current_key_id(&self) -> &str;
    /// Wraps a data key under the current master key. Returns `Unavailable` when the key service
    /// cannot be reached or refuses.
    fn wrap(&self, key: &DataKey) -> Result<WrappedKey, KeyError>;
    /// Unwraps a data key. Returns `Open` when no master key has `key_id` or the bytes do not
    /// open under it (tampered, or wrapped by someone else), `Unavailable` when the key service
    /// cannot be reached.
    fn unwrap(&self, key_id: &str, wrapped: &[u8]) -> Result<DataKey, KeyError>;
}

pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), KeyError> {
    OsRng
        .try_fill_bytes(buf)
        .map_err(|e| KeyError::Unavailable(format!("operating system random source: {e}")))
}

/// HKDF-SHA256 of `ikm` with this crate's salt and `label` as info.
pub(crate) fn derive(ikm: &[u8], label: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's limit of 255 * 32, so expand cannot fail.
    let _ = Hkdf::<Sha256>::new(Some(HKDF_SALT), ikm).expand(label, out.as_mut());
    out
}

/// One 32-byte master key from a local key file. The raw key only feeds HKDF: wrapping, the key
/// id and the digest keys each use their own derived subkey.
pub struct LocalMasterKey {
    id: String,
    wrap_key: Zeroizing<[u8; 32]>,
    root: Zeroizing<[u8; 32]>,
}

impl LocalMasterKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        let fingerprint = derive(bytes, LABEL_KEY_ID);
        Self {
            // A fingerprint of the key, not a name: a renamed file keeps its id, and the id
            // reveals nothing of the key.
            id: format!("local-{}", hex::encode(&fingerprint[..8])),
            wrap_key: derive(bytes, LABEL_WRAP),
            root: Zeroizing::new(*bytes),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The code-lookup and CVC-verifier keys derived from this master key.
    pub fn digest_keys(&self) -> crate::DigestKeys {
        crate::DigestKeys::derive(self.root.as_ref())
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(self.wrap_key.as_ref()))
    }

    fn aad(&self) -> Vec<u8> {
        [AAD_WRAP, self.id.as_bytes()].concat()
    }

    fn wrap(&self, key: &DataKey) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        let sealed = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: key.expose(),
                    aad: &self.aad(),
                },
            )
            .map_err(|_| KeyError::Unavailable("data key could not be wrapped".into()))?;
        Ok([nonce.as_slice(), &sealed].concat())
    }

    fn unwrap(&self, wrapped: &[u8]) -> Result<DataKey, KeyError> {
        if wrapped.len() != NONCE_LEN + 32 + TAG_LEN {
            return Err(KeyError::Open);
        }
        let (nonce, sealed) = wrapped.split_at(NONCE_LEN);
        let plain = Zeroizing::new(
            self.cipher()
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: sealed,
                        aad: &self.aad(),
                    },
                )
                .map_err(|_| KeyError::Open)?,
        );
        let bytes: [u8; 32] = plain.as_slice().try_into().map_err(|_| KeyError::Open)?;
        Ok(DataKey::from_bytes(bytes))
    }
}

impl fmt::Debug for LocalMasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalMasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Local master keys for development: the current one wraps, retired ones only unwrap.
pub struct LocalKeyRing {
    current: LocalMasterKey,
    retired: Vec<LocalMasterKey>,
}

impl LocalKeyRing {
    pub fn new(current: LocalMasterKey, retired: Vec<LocalMasterKey>) -> Self {
        Self { current, retired }
    }

    pub fn current(&self) -> &LocalMasterKey {
        &self.current
    }

    /// The key with this id, current or retired.
    pub fn key(&self, key_id: &str) -> Option<&LocalMasterKey> {
        std::iter::once(&self.current)
            .chain(&self.retired)
            .find(|k| k.id == key_id)
    }
}

impl fmt::Debug for LocalKeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKeyRing")
            .field("current", &self.current.id)
            .field("retired", &self.retired.iter().map(|k| &k.id).collect::<Vec<_>>())
            .finish()
    }
}

impl MasterKey for LocalKeyRing {
    fn current_key_id(&self) -> &str {
        &self.current.id
    }

    fn wrap(&self, key: &DataKey) -> Result<WrappedKey, KeyError> {
        Ok(WrappedKey {
            key_id: self.current.id.clone(),
            bytes: self.current.wrap(key)?,
        })
    }

    fn unwrap(&self, key_id: &str, wrapped: &[u8]) -> Result<DataKey, KeyError> {
        self.key(key_id).ok_or(KeyError::Open)?.unwrap(wrapped)
    }
}
