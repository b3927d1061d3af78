//! The nonces of accepted generic webhooks, remembered for as long as their signed timestamp
//! would still be accepted, so that a verbatim replay is refused.
//!
//! Bounded: at most `capacity` nonces. A request is only accepted while its timestamp is within
//! [`crate::signing::MAX_SKEW_SECS`] of the clock, so a nonce can be forgotten once that window
//! has passed for it. When the cache is full of nonces still inside their window, new
//! deliveries are refused (fail closed) rather than forgetting one that could then be replayed;
//! the sender retries later with a fresh nonce.

use std::collections::{BTreeSet, HashMap};

/// What became of a nonce presented to [`NonceCache::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Not seen before; now remembered.
    Fresh,
    /// Seen before, within its window: a replay.
    Replayed,
    /// The cache is full of live nonces: refused without remembering it.
    Full,
}

#[derive(Debug)]
pub(crate) struct NonceCache {
    /// Nonce → the Unix second after which it is forgotten.
    seen: HashMap<String, i64>,
    /// The same entries ordered by expiry, to forget the oldest first.
    by_expiry: BTreeSet<(i64, String)>,
    capacity: usize,
}

impl NonceCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: HashMap::new(),
            by_expiry: BTreeSet::new(),
            capacity,
        }
    }

    /// Remembers `nonce` until `expires_at` (Unix seconds) unless it is already remembered;
    /// first forgets every nonce whose window closed before `now`.
    pub fn admit(&mut self, nonce: &str, expires_at: i64, now: i64) -> Admission {
        self.forget_before(now);
        if self.seen.contains_key(nonce) {
            return Admission::Replayed;
        }
        if self.seen.len() >= self.capacity {
            return Admission::Full;
        }
        self.seen.insert(nonce.to_owned(), expires_at);
        self.by_expiry.insert((expires_at, nonce.to_owned()));
        Admission::Fresh
    }

    fn forget_before(&mut self, now: i64) {
        while let Some((expiry, _)) = self.by_expiry.first() {
            if *expiry >= now {
                break;
            }
            if let Some((_, nonce)) = self.by_expiry.pop_first() {
                self.seen.remove(&nonce);
            }
        }
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
    fn a_nonce_is_fresh_once_and_replayed_until_its_window_closes() {
        let mut c = NonceCache::new(10);
        assert_eq!(c.admit("n1", 1300, 1000), Admission::Fresh);
        assert_eq!(c.admit("n1", 1300, 1001), Admission::Replayed);
        assert_eq!(c.admit("n1", 1300, 1300), Admission::Replayed);
        // Past its window the nonce is forgotten (the skew check refuses such a request anyway).
        assert_eq!(c.admit("n2", 1700, 1301), Admission::Fresh);
        assert_eq!(c.len(), 1);
        assert_eq!(c.admit("n1", 1601, 1301), Admission::Fresh);
    }

    #[test]
    fn a_full_cache_refuses_rather_than_forgetting_a_live_nonce() {
        let mut c = NonceCache::new(2);
        assert_eq!(c.admit("a", 1300, 1000), Admission::Fresh);
        assert_eq!(c.admit("b", 1200, 1000), Admission::Fresh);
        assert_eq!(c.admit("c", 1300, 1000), Admission::Full);
        // Neither live nonce was dropped to make room.
        assert_eq!(c.admit("a", 1300, 1000), Admission::Replayed);
        assert_eq!(c.admit("b", 1300, 1000), Admission::Replayed);
        // Once "b"'s window has closed there is room again, and "a" is still remembered.
        assert_eq!(c.admit("c", 1500, 1201), Admission::Fresh);
        assert_eq!(c.admit("a", 1300, 1201), Admission::Replayed);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn expiry_order_not_arrival_order_decides_what_is_forgotten() {
        let mut c = NonceCache::new(10);
        assert_eq!(c.admit("late", 2000, 1000), Admission::Fresh);
        assert_eq!(c.admit("early", 1100, 1000), Admission::Fresh);
        assert_eq!(c.admit("x", 1500, 1101), Admission::Fresh);
        assert_eq!(c.admit("late", 2000, 1101), Admission::Replayed);
        assert_eq!(c.admit("early", 1400, 1101), Admission::Fresh);
    }
}
