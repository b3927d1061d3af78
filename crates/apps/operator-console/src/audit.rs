//! Every action taken in the console, with who took it: written to the log as an `audit` event
//! (JSON, kept wherever the logs are kept) and the latest ones kept here for the Activity page.
//! The services record the same person in their own audit (`X-Operator`, `by`).

use std::collections::VecDeque;
use std::sync::Mutex;
use time::OffsetDateTime;

/// Actions kept for the Activity page.
pub const KEPT: usize = 500;

#[derive(Debug, Clone)]
pub struct Entry {
    pub at: OffsetDateTime,
    pub user: String,
    pub role: &'static str,
    /// `login`, `dead_letters.replay`, `conflict.resolve`, `certificate.cancel`, ...
    pub action: &'static str,
    /// What it acted on, masked where it names a secret (a certificate code).
    pub target: String,
    /// `ok`, `dry_run`, `refused`, or the failure.
    pub outcome: String,
}

#[derive(Default)]
pub struct AuditLog {
    entries: Mutex<VecDeque<Entry>>,
}

impl AuditLog {
    pub fn record(&self, entry: Entry) {
        tracing::info!(
            target: "audit",
            user = %entry.user,
            role = entry.role,
            action = entry.action,
            target_of = %entry.target,
            outcome = %entry.outcome,
            "console action"
        );
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= KEPT {
            entries.pop_back();
        }
        entries.push_front(entry);
    }

    /// Newest first.
    pub fn latest(&self) -> Vec<Entry> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: usize) -> Entry {
        Entry {
            at: OffsetDateTime::UNIX_EPOCH,
            user: format!("u{n}"),
            role: "operator",
            action: "dead_letters.replay",
            target: String::new(),
            outcome: "ok".into(),
        }
    }

    #[test]
    fn the_newest_come_first_and_the_oldest_go_past_the_limit() {
        let log = AuditLog::default();
        for n in 0..KEPT + 3 {
            log.record(entry(n));
        }
        let latest = log.latest();
        assert_eq!(latest.len(), KEPT);
        assert_eq!(latest[0].user, format!("u{}", KEPT + 2));
        assert_eq!(latest[KEPT - 1].user, "u3");
    }
}
