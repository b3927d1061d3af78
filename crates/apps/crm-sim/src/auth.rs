//! Tokens a vendor dialect has issued: access tokens with an expiry, and single-use refresh
//! tokens that rotate on every refresh (Bitrix24 and Kommo OAuth).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

#[derive(Default)]
pub(crate) struct Grants {
    access: HashMap<String, Instant>,
    refresh: HashSet<String>,
    /// The configured (install-time) refresh token was redeemed: it is spent, like any other.
    initial_spent: bool,
    /// Tokens issued so far (grants and refreshes).
    pub issued: u64,
}

pub(crate) fn random_token(prefix: &str, len: usize) -> String {
    use rand::distr::{Alphanumeric, SampleString};
    format!("{prefix}{}", Alphanumeric.sample_string(&mut rand::rng(), len))
}

impl Grants {
    pub fn issue_access(&mut self, prefix: &str, ttl: Duration) -> String {
        let now = Instant::now();
        self.access.retain(|_, until| *until > now);
        let token = random_token(prefix, 40);
        self.access.insert(token.clone(), now + ttl);
        self.issued += 1;
        token
    }

    pub fn access_valid(&self, token: &str) -> bool {
        self.access
            .get(token)
            .is_some_and(|until| Instant::now() < *until)
    }

    pub fn issue_refresh(&mut self) -> String {
        let token = random_token("", 48);
        self.refresh.insert(token.clone());
        token
    }

    /// Spends a refresh token: the configured one once, or one this dialect issued and has not
    /// seen back yet.
    pub fn redeem_refresh(&mut self, presented: &str, initial: &str) -> bool {
        if self.refresh.remove(presented) {
            return true;
        }
        if !self.initial_spent && !initial.is_empty() && crate::same(presented, initial) {
            self.initial_spent = true;
            return true;
        }
        false
    }

    /// Every access token stops working now (the vendor expired or revoked the sessions).
    pub fn expire_access(&mut self) {
        self.access.clear();
    }
}
