//! `[api]`: where the two-way sync's HTTP API listens, who may call it, how large a body may be.

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// The default body limit of `/v1` calls: a card, a task or an interaction is far smaller.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// The largest body limit a configuration may set.
pub const MAX_MAX_BODY_BYTES: usize = 1024 * 1024;
/// The shortest service token accepted.
pub const MIN_TOKEN_CHARS: usize = 24;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// `/v1/...`, `/webhooks/...`, `/openapi.json`.
    pub listen: SocketAddr,
    /// Service token per caller (`[api.tokens] orders = "..."`). The caller's name scopes its
    /// `Idempotency-Key`s. With no tokens every `/v1` call is `401`; webhooks still work.
    #[serde(skip_serializing)]
    pub tokens: BTreeMap<String, SecretString>,
    /// The largest `/v1` request body; larger is `413 payload-too-large`. Webhooks have their
    /// own limit (`backbone_crm::webhooks::MAX_WEBHOOK_BYTES`).
    pub max_body_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8083)),
            tokens: BTreeMap::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// A caller's name: 1..=64 of `[A-Za-z0-9._-]`.
pub fn valid_caller_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl ApiConfig {
    /// Every problem at once, one per line. Never repeats a token.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        for (name, token) in &self.tokens {
            if !valid_caller_name(name) {
                problems.push("api.tokens: caller names are 1 to 64 of A-Z a-z 0-9 . _ -".to_owned());
                continue;
            }
            let token = token.expose_secret();
            if token.chars().count() < MIN_TOKEN_CHARS {
                problems.push(format!(
                    "api.tokens.{name}: a service token needs at least {MIN_TOKEN_CHARS} characters"
                ));
            } else if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                problems.push(format!(
                    "api.tokens.{name}: a service token has no whitespace or control characters"
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        if self.tokens.values().any(|t| !seen.insert(t.expose_secret())) {
            problems.push("api.tokens: two callers share a token".to_owned());
        }
        if !(1..=MAX_MAX_BODY_BYTES).contains(&self.max_body_bytes) {
            problems.push(format!("api.max_body_bytes must be in 1..={MAX_MAX_BODY_BYTES}"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_listens_on_8083_with_a_64_kib_limit() {
        let c = ApiConfig::default();
        assert_eq!(c.listen.port(), 8083);
        assert_eq!(c.max_body_bytes, 64 * 1024);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn tokens_are_checked_without_repeating_them() {
        let secret = "short-secret";
        let c = ApiConfig {
            tokens: BTreeMap::from([
                ("orders".to_owned(), SecretString::from(secret)),
                ("bad name".to_owned(), SecretString::from("x".repeat(30))),
                ("a".to_owned(), SecretString::from("y".repeat(30))),
                ("b".to_owned(), SecretString::from("y".repeat(30))),
            ]),
            max_body_bytes: 0,
            ..ApiConfig::default()
        };
        let e = c.validate().unwrap_err();
        assert!(e.contains("api.tokens.orders"), "{e}");
        assert!(e.contains("caller names"), "{e}");
        assert!(e.contains("share a token"), "{e}");
        assert!(e.contains("max_body_bytes"), "{e}");
        assert!(!e.contains(secret), "{e}");
    }

    #[test]
    fn tokens_are_read_but_never_written_back() {
        let c: ApiConfig = serde_json::from_str(
            r#"{"listen":"0.0.0.0:8083","tokens":{"orders":"orders-token-0123456789abcdef"}}"#,
        )
        .unwrap();
        assert!(c.validate().is_ok());
        let out = serde_json::to_string(&c).unwrap();
        assert!(!out.contains("orders-token"), "{out}");
        assert!(serde_json::from_str::<ApiConfig>(r#"{"nope":1}"#).is_err());
    }
}
