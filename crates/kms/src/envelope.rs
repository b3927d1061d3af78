//! [`CodeKeys`] over a [`MasterKey`]: keyed digests for lookup and CVC verification, and CVCs
//! sealed with AES-256-GCM under data keys that the master key wraps.
//!
//! Data keys are cached per process and rotated (see [`DataKeyPolicy`]) rather than drawn fresh for
//! every CVC: with a remote KMS a wrap is a network call, and a batch of a million certificates
//! must not make a million of them. Every sealed CVC still carries its wrapped data key, so any
//! process with access to the master key opens it. Nonces are random; the use limit keeps the
//! chance of a repeated nonce under one data key negligible (10^6 uses: about 2^-57).

use crate::master::{derive, fill_random, DataKey, MasterKey, WrappedKey, NONCE_LEN, TAG_LEN};
use crate::master::{LABEL_CVC_VERIFIER, LABEL_LOOKUP};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use backbone_certificates::code::{Cvc, GiftCode};
use backbone_certificates::ports::{CodeDigest, CodeKeys, KeyError, SealedCvc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Associated data of a sealed CVC, followed by the certificate's code digest.
const AAD_CVC: &[u8] = b"backbone-kms/v1/cvc:";
/// Associated data of another sealed secret, followed by its context.
const AAD_SECRET: &[u8] = b"backbone-kms/v1/secret:";
/// Unwrapped data keys kept for `open_cvc`; sealed CVCs of one batch share a data key.
const OPENED_KEYS_CAPACITY: usize = 64;

/// The lookup and CVC-verifier keys. They must stay the same for the life of a database: changing
/// them changes every stored code digest and verifier. Zeroed when dropped.
pub struct DigestKeys {
    lookup: Zeroizing<[u8; 32]>,
    cvc: Zeroizing<[u8; 32]>,
}

impl DigestKeys {
    /// Derives both keys from one root secret with HKDF-SHA256 and distinct labels.
    pub fn derive(root: &[u8]) -> Self {
        Self {
            lookup: derive(root, LABEL_LOOKUP),
            cvc: derive(root, LABEL_CVC_VERIFIER),
        }
    }
}

impl fmt::Debug for DigestKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DigestKeys(***)")
    }
}

/// When the cached data key is replaced by a fresh one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataKeyPolicy {
    /// CVCs sealed under one data key at most.
    pub max_uses: u64,
    /// Age after which a data key is no longer used to seal (`"10m"`).
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for DataKeyPolicy {
    fn default() -> Self {
        Self {
            max_uses: 100_000,
            max_age: Duration::from_secs(600),
        }
    }
}

/// Unwrapped data keys by (master key id, wrapped bytes).
type OpenedKeys = HashMap<(String, Vec<u8>), Arc<DataKey>>;

struct ActiveDataKey {
    key: DataKey,
    wrapped: WrappedKey,
    uses: u64,
    created: Instant,
}

/// The production [`CodeKeys`]: any [`MasterKey`] plus the digest keys.
pub struct EnvelopeCodeKeys {
    master: Arc<dyn MasterKey>,
    digests: DigestKeys,
    policy: DataKeyPolicy,
    active: Mutex<Option<ActiveDataKey>>,
    opened: Mutex<OpenedKeys>,
}

impl fmt::Debug for EnvelopeCodeKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvelopeCodeKeys")
            .field("master", &self.master)
            .field("digests", &self.digests)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values are replaced whole, so a panic elsewhere cannot leave them half-written.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn cipher(key: &DataKey) -> Aes256Gcm {
    Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key.expose()))
}

fn cvc_aad(code: &CodeDigest) -> Vec<u8> {
    [AAD_CVC, code.0.as_slice()].concat()
}

impl EnvelopeCodeKeys {
    pub fn new(master: Arc<dyn MasterKey>, digests: DigestKeys, policy: DataKeyPolicy) -> Self {
        Self {
            master,
            digests,
            policy,
            active: Mutex::new(None),
            opened: Mutex::new(HashMap::new()),
        }
    }

    /// Forgets the cached data key: the next seal draws and wraps a new one.
    pub fn rotate_data_key(&self) {
        *lock(&self.active) = None;
    }

    fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }

    fn unwrap_cached(&self, sealed: &SealedCvc) -> Result<Arc<DataKey>, KeyError> {
        let cache_key = (sealed.key_id.clone(), sealed.wrapped_key.clone());
        if let Some(key) = lock(&self.opened).get(&cache_key) {
            return Ok(key.clone());
        }
        let key = Arc::new(self.master.unwrap(&sealed.key_id, &sealed.wrapped_key)?);
        let mut opened = lock(&self.opened);
        if opened.len() >= OPENED_KEYS_CAPACITY {
            opened.clear();
        }
        opened.insert(cache_key, key.clone());
        Ok(key)
    }
}

impl CodeKeys for EnvelopeCodeKeys {
    fn code_digest(&self, code: &GiftCode) -> CodeDigest {
        CodeDigest(Self::hmac(&self.digests.lookup, &[code.expose().as_bytes()]))
    }

    fn cvc_verifier(&self, code: &CodeDigest, cvc: &Cvc) -> [u8; 32] {
        // The digest has a fixed length, so `digest ‖ cvc` is unambiguous.
        Self::hmac(&self.digests.cvc, &[&code.0, cvc.expose().as_bytes()])
    }

    fn verify_cvc(&self, code: &CodeDigest, cvc: &Cvc, verifier: &[u8]) -> bool {
        let expected = self.cvc_verifier(code, cvc);
        // A verifier's length is public; only its content is compared in constant time.
        verifier.len() == expected.len() && bool::from(expected.ct_eq(verifier))
    }

    fn seal_cvc(&self, code: &CodeDigest, cvc: &Cvc) -> Result<SealedCvc, KeyError> {
        self.seal(&cvc_aad(code), cvc.expose().as_bytes())
    }

    fn open_cvc(&self, code: &CodeDigest, sealed: &SealedCvc) -> Result<Cvc, KeyError> {
        let plain = self.open(&cvc_aad(code), sealed)?;
        let text = std::str::from_utf8(&plain).map_err(|_| KeyError::Open)?;
        Cvc::parse(text).map_err(|_| KeyError::Open)
    }

    fn seal_secret(&self, context: &[u8], secret: &str) -> Result<SealedCvc, KeyError> {
        self.seal(&[AAD_SECRET, context].concat(), secret.as_bytes())
    }

    fn open_secret(&self, context: &[u8], sealed: &SealedCvc) -> Result<String, KeyError> {
        let plain = self.open(&[AAD_SECRET, context].concat(), sealed)?;
        std::str::from_utf8(&plain)
            .map(str::to_owned)
            .map_err(|_| KeyError::Open)
    }
}

impl EnvelopeCodeKeys {
    /// AES-256-GCM under the cached data key, with `aad` authenticated.
    fn seal(&self, aad: &[u8], msg: &[u8]) -> Result<SealedCvc, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        let mut active = lock(&self.active);
        let stale = active.as_ref().is_none_or(|a| {
            a.uses >= self.policy.max_uses
                || a.created.elapsed() >= self.policy.max_age
                || a.wrapped.key_id != self.master.current_key_id()
        });
        if stale {
            let key = DataKey::generate()?;
            let wrapped = self.master.wrap(&key)?;
            tracing::debug!(key_id = %wrapped.key_id, "new data key for sealing");
            *active = Some(ActiveDataKey {
                key,
                wrapped,
                uses: 0,
                created: Instant::now(),
            });
        }
        let Some(a) = active.as_mut() else {
            return Err(KeyError::Unavailable("no data key".into()));
        };
        a.uses += 1;
        let sealed = cipher(&a.key)
            .encrypt(Nonce::from_slice(&nonce), Payload { msg, aad })
            .map_err(|_| KeyError::Unavailable("the value could not be sealed".into()))?;
        Ok(SealedCvc {
            key_id: a.wrapped.key_id.clone(),
            wrapped_key: a.wrapped.bytes.clone(),
            ciphertext: [nonce.as_slice(), &sealed].concat(),
        })
    }

    fn open(&self, aad: &[u8], sealed: &SealedCvc) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        if sealed.ciphertext.len() < NONCE_LEN + TAG_LEN {
            return Err(KeyError::Open);
        }
        let key = self.unwrap_cached(sealed)?;
        let (nonce, body) = sealed.ciphertext.split_at(NONCE_LEN);
        cipher(&key)
            .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad })
            .map(Zeroizing::new)
            .map_err(|_| KeyError::Open)
    }
}
