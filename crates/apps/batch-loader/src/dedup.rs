//! Duplicate codes within one file, in bounded memory.
//!
//! Each normalised code is kept as a 16-byte HMAC-SHA256 under a key drawn for this run: about
//! 34 MB for a million codes (hash-table slack included), a false duplicate needs a 128-bit
//! collision, and the table holds nothing from which a code could be read back. The digests are
//! already uniform, so the table uses their first 8 bytes as the hash instead of hashing again.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

#[derive(Default)]
struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 16]` hashes as its bytes in one call; take the first eight.
        let mut prefix = [0u8; 8];
        let n = bytes.len().min(8);
        prefix[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(prefix);
    }
}

pub struct SeenCodes {
    key: [u8; 32],
    seen: HashSet<[u8; 16], BuildHasherDefault<PrefixHasher>>,
}

impl SeenCodes {
    pub fn new() -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Self {
            key,
            seen: HashSet::default(),
        }
    }

    /// True the first time a code is seen.
    pub fn insert(&mut self, normalised_code: &str) -> bool {
        // HMAC takes keys of any length.
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(&self.key) else {
            unreachable!()
        };
        mac.update(normalised_code.as_bytes());
        let full = mac.finalize().into_bytes();
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&full[..16]);
        self.seen.insert(digest)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_sighting_is_a_duplicate() {
        let mut seen = SeenCodes::new();
        assert!(seen.insert("ABCDEFGHJKLMNPQR"));
        assert!(seen.insert("ABCDEFGHJKLMNPQS"));
        assert!(!seen.insert("ABCDEFGHJKLMNPQR"));
        assert_eq!(seen.len(), 2);
        for i in 0..10_000 {
            assert!(seen.insert(&format!("{i:016}")));
        }
        assert!(!seen.insert(&format!("{:016}", 4_321)));
    }
}
