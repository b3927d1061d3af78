//! Channel service tokens and the scopes each channel holds, and the admin API's token.

pub use backbone_certificates::channel::{Channel, Scope};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use subtle::ConstantTimeEq;

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
        let token = bearer(authorization).ok_or(AuthError::Unauthenticated)?;
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

/// The token in `Bearer <token>`, if the header has that form.
fn bearer(authorization: Option<&str>) -> Option<&str> {
    authorization
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The admin API's token (`admin.token`), kept as its SHA-256 digest and compared in constant
/// time like the channel tokens. Without one configured, nothing is admitted.
pub struct AdminToken {
    digest: Option<[u8; 32]>,
}

impl AdminToken {
    /// `token` empty: no admin token, the admin API admits no one.
    pub fn new(token: &SecretString) -> Self {
        let token = token.expose_secret();
        Self {
            digest: (!token.is_empty()).then(|| digest(token.as_bytes())),
        }
    }

    /// Whether `authorization` is `Bearer <the admin token>`. A channel token is refused.
    pub fn admits(&self, authorization: Option<&str>) -> bool {
        let (Some(expected), Some(token)) = (&self.digest, bearer(authorization)) else {
            return false;
        };
        bool::from(digest(token.as_bytes()).ct_eq(expected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_token_admits_only_itself() {
        let admin = AdminToken::new(&SecretString::from("admin-token-0123456789abcdef"));
        assert!(admin.admits(Some("Bearer admin-token-0123456789abcdef")));
        for bad in [
            None,
            Some(""),
            Some("Bearer "),
            Some("admin-token-0123456789abcdef"),
            Some("Bearer admin-token-0123456789abcdeF"),
            Some("Bearer pos-token-0123456789abcdef"),
        ] {
            assert!(!admin.admits(bad), "{bad:?}");
        }
        let unset = AdminToken::new(&SecretString::from(""));
        assert!(!unset.admits(Some("Bearer ")));
        assert!(!unset.admits(Some("Bearer admin-token-0123456789abcdef")));
    }

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
