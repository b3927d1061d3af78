//! The `X-Nonce` values of the generic API's accepted requests, kept while a replay of their
//! request could still pass the timestamp check.

use std::collections::{BTreeMap, HashMap};

/// Most nonces held at once. Pruning keeps the set to the requests of one skew window; this cap
/// only bounds memory under a flood, which is refused instead of remembered.
pub(crate) const MAX_NONCES: usize = 1_000_000;

/// What [`Nonces::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// First use: remembered until its expiry.
    Fresh,
    /// Seen before and not yet expired.
    Replayed,
    /// The set is full of unexpired nonces.
    Full,
}

pub(crate) struct Nonces {
    /// Nonce → the last second (Unix time) at which a replay could pass the timestamp check.
    expiry: HashMap<String, i64>,
    /// The same nonces by expiry, for pruning in order.
    by_expiry: BTreeMap<i64, Vec<String>>,
    capacity: usize,
}

impl Nonces {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            expiry: HashMap::new(),
            by_expiry: BTreeMap::new(),
            capacity,
        }
    }

    /// Forgets the nonces expired at `now`, then remembers `nonce` until `expires` unless it is
    /// already held.
    pub(crate) fn admit(&mut self, nonce: &str, expires: i64, now: i64) -> Admission {
        self.prune(now);
        if self.expiry.contains_key(nonce) {
            return Admission::Replayed;
        }
        if self.expiry.len() >= self.capacity {
            return Admission::Full;
        }
        self.expiry.insert(nonce.to_owned(), expires);
        self.by_expiry.entry(expires).or_default().push(nonce.to_owned());
        Admission::Fresh
    }

    fn prune(&mut self, now: i64) {
        while let Some(entry) = self.by_expiry.first_entry() {
            if *entry.key() >= now {
                break;
            }
            for nonce in entry.remove() {
                self.expiry.remove(&nonce);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.expiry.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_refused_until_it_expires_then_forgotten() {
        let mut n = Nonces::new(10);
        assert_eq!(n.admit("a", 1300, 1000), Admission::Fresh);
        assert_eq!(n.admit("a", 1300, 1000), Admission::Replayed);
        assert_eq!(n.admit("a", 1300, 1300), Admission::Replayed);
        assert_eq!(n.admit("b", 1350, 1300), Admission::Fresh);
        assert_eq!(n.admit("c", 1400, 1301), Admission::Fresh);
        // "a" expired at 1300 and is gone; "b" and "c" are held.
        assert_eq!(n.len(), 2);
        assert_eq!(n.admit("a", 1601, 1301), Admission::Fresh);
        assert_eq!(n.admit("b", 1350, 1350), Admission::Replayed);
    }

    #[test]
    fn memory_is_bounded_by_the_capacity_and_freed_by_expiry() {
        let mut n = Nonces::new(2);
        assert_eq!(n.admit("a", 1300, 1000), Admission::Fresh);
        assert_eq!(n.admit("b", 1310, 1000), Admission::Fresh);
        assert_eq!(n.admit("c", 1320, 1000), Admission::Full);
        assert_eq!(n.admit("a", 1300, 1000), Admission::Replayed);
        assert_eq!(n.len(), 2);
        assert_eq!(n.admit("c", 1320, 1301), Admission::Fresh);
        assert_eq!(n.len(), 2);
    }
}
