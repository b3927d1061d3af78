//! Channel service tokens and the scopes each channel holds.

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use subtle::ConstantTimeEq;

/// The callers of the API. Names as in the seed (`OnlineStore`, `POS`, ...); the lower-case
/// forms are accepted too, since environment variables reach the configuration lower-cased
/// (`GIFT_CERTIFICATES_TOKENS__POS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Channel {
    #[serde(alias = "onlinestore", alias = "online_store")]
    OnlineStore,
    #[serde(rename = "POS", alias = "pos")]
    Pos,
    #[serde(alias = "payments")]
    Payments,
    #[serde(alias = "batchloader", alias = "batch_loader")]
    BatchLoader,
    #[serde(rename = "internal", alias = "Internal")]
    Internal,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::OnlineStore => "OnlineStore",
            Channel::Pos => "POS",
            Channel::Payments => "Payments",
            Channel::BatchLoader => "BatchLoader",
            Channel::Internal => "internal",
        }
    }

    /// What each channel may do: the fronts spend, Payments sells and refunds, the loader
    /// uploads, internal tools may do everything.
    pub fn allows(self, scope: Scope) -> bool {
        use Scope::*;
        match self {
            Channel::OnlineStore | Channel::Pos => matches!(scope, Balance | Authorize | Capture | Void),
            Channel::Payments => matches!(scope, Balance | Activate | Refund | Void),
            Channel::BatchLoader => matches!(scope, Upload),
            Channel::Internal => true,
        }
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Upload,
    Activate,
    Authorize,
    Capture,
    Void,
    Refund,
    Cancel,
    Balance,
    Read,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No or malformed credentials, or an unknown token: 401.
    Unauthenticated,
    /// A known channel without the scope: 403.
    Forbidden(Channel),
}

/// The configured tokens, kept as SHA-256 digests so every comparison has the same length and
/// runs in constant time over all channels.
pub struct Tokens {
    digests: Vec<(Channel, [u8; 32])>,
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Tokens {
    pub fn new(tokens: &BTreeMap<Channel, SecretString>) -> Self {
        Self {
            digests: tokens
                .iter()
                .map(|(c, t)| (*c, digest(t.expose_secret().as_bytes())))
                .collect(),
        }
    }

    /// The channel that owns `authorization` (`Bearer <token>`), if it holds `scope`.
    pub fn check(&self, authorization: Option<&str>, scope: Scope) -> Result<Channel, AuthError> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Unauthenticated)?;
        let presented = digest(token.as_bytes());
        let mut found = None;
        // No early exit: the time taken does not depend on which token matched.
        for (channel, expected) in &self.digests {
            if bool::from(presented.ct_eq(expected)) {
                found = Some(*channel);
            }
        }
        let channel = found.ok_or(AuthError::Unauthenticated)?;
        if channel.allows(scope) {
            Ok(channel)
        } else {
            Err(AuthError::Forbidden(channel))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_are_read_in_either_case() {
        let parsed: Result<BTreeMap<Channel, String>, _> = serde_json::from_str(
            r#"{"pos":"a","onlinestore":"b","payments":"c","batch_loader":"d","internal":"e"}"#,
        );
        let keys: Vec<Channel> = parsed.map(|m| m.into_keys().collect()).unwrap_or_default();
        assert_eq!(
            keys,
            [
                Channel::OnlineStore,
                Channel::Pos,
                Channel::Payments,
                Channel::BatchLoader,
                Channel::Internal
            ]
        );
        let seed: Result<BTreeMap<Channel, String>, _> =
            serde_json::from_str(r#"{"POS":"a","OnlineStore":"b","BatchLoader":"d"}"#);
        assert_eq!(seed.map(|m| m.len()).unwrap_or_default(), 3);
    }

    #[test]
    fn tokens_map_to_channels_and_scopes() {
        let tokens = Tokens::new(&BTreeMap::from([
            (Channel::Pos, SecretString::from("pos-token-0123456789abcdef")),
            (
                Channel::BatchLoader,
                SecretString::from("loader-token-0123456789abcdef"),
            ),
        ]));
        let pos = Some("Bearer pos-token-0123456789abcdef");
        assert_eq!(tokens.check(pos, Scope::Authorize), Ok(Channel::Pos));
        assert_eq!(
            tokens.check(pos, Scope::Upload),
            Err(AuthError::Forbidden(Channel::Pos))
        );
        assert_eq!(
            tokens.check(Some("Bearer loader-token-0123456789abcdef"), Scope::Upload),
            Ok(Channel::BatchLoader)
        );
        for bad in [
            None,
            Some(""),
            Some("Bearer "),
            Some("pos-token-0123456789abcdef"),
            Some("Bearer nope"),
        ] {
            assert_eq!(
                tokens.check(bad, Scope::Balance),
                Err(AuthError::Unauthenticated),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn scopes_follow_the_channel_table() {
        assert!(Channel::OnlineStore.allows(Scope::Capture));
        assert!(!Channel::OnlineStore.allows(Scope::Activate));
        assert!(!Channel::OnlineStore.allows(Scope::Refund));
        assert!(Channel::Payments.allows(Scope::Activate));
        assert!(!Channel::Payments.allows(Scope::Authorize));
        assert!(!Channel::BatchLoader.allows(Scope::Balance));
        assert!(Channel::Internal.allows(Scope::Cancel));
    }
}
