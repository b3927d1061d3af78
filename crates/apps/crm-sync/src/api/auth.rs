//! Service tokens and the `/v1` gate: the bearer token and, on writes, the `Idempotency-Key`
//! are checked before the body is read.

use super::problem::{Problem, ProblemCode};
use super::Shared;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// The configured tokens, kept as SHA-256 digests so every comparison has the same length and
/// runs in constant time over all callers.
#[derive(Clone)]
pub struct Tokens {
    digests: Vec<(Caller, [u8; 32])>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.digests.iter().map(|(c, _)| c.as_str()))
            .finish()
    }
}

/// Who called: the name its token is configured under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(Arc<str>);

impl Caller {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Tokens {
    pub fn new(tokens: &BTreeMap<String, SecretString>) -> Self {
        Self {
            digests: tokens
                .iter()
                .map(|(name, t)| (Caller(name.as_str().into()), digest(t.expose_secret().as_bytes())))
                .collect(),
        }
    }

    /// The caller that owns `authorization` (`Bearer <token>`); `None` for a missing, malformed
    /// or unknown one.
    pub fn check(&self, authorization: Option<&str>) -> Option<Caller> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())?;
        let presented = digest(token.as_bytes());
        let mut found = None;
        // No early exit: the time taken does not depend on which token matched.
        for (caller, expected) in &self.digests {
            if bool::from(presented.ct_eq(expected)) {
                found = Some(caller.clone());
            }
        }
        found
    }
}

/// A write's `Idempotency-Key`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(pub String);

/// `Idempotency-Key`: 1..=255 printable ASCII characters (space included, not at either end).
pub fn idempotency_key(headers: &HeaderMap) -> Result<IdempotencyKey, Problem> {
    let Some(raw) = headers.get(IDEMPOTENCY_HEADER) else {
        return Err(Problem::new(ProblemCode::IdempotencyKeyRequired, None));
    };
    let key = raw.to_str().ok().map(str::trim).filter(|k| {
        (1..=MAX_IDEMPOTENCY_KEY_BYTES).contains(&k.len()) && k.bytes().all(|b| (0x20..=0x7e).contains(&b))
    });
    match key {
        Some(k) => Ok(IdempotencyKey(k.to_owned())),
        None if raw.as_bytes().iter().all(u8::is_ascii_whitespace) => {
            Err(Problem::new(ProblemCode::IdempotencyKeyRequired, None))
        }
        None => Err(Problem::bad_request(
            "Idempotency-Key must be 1 to 255 printable ASCII characters",
        )),
    }
}

fn is_write(method: &Method) -> bool {
    matches!(*method, Method::PUT | Method::PATCH | Method::POST)
}

/// The `/v1` gate (a route layer: it runs before the handler's extractors, so before the body is
/// read). Puts the [`Caller`] and, on writes, the [`IdempotencyKey`] into the request.
pub(crate) async fn gate(State(shared): State<Arc<Shared>>, mut req: Request, next: Next) -> Response {
    let authorization = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(caller) = shared.api.tokens.check(authorization) else {
        return Problem::new(ProblemCode::Unauthenticated, None).into_response();
    };
    if is_write(req.method()) {
        match idempotency_key(req.headers()) {
            Ok(key) => {
                req.extensions_mut().insert(key);
            }
            Err(p) => return p.into_response(),
        }
    }
    tracing::Span::current().record("caller", caller.as_str());
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_callers() {
        let tokens = Tokens::new(&BTreeMap::from([
            (
                "orders".to_owned(),
                SecretString::from("orders-token-0123456789abcdef"),
            ),
            (
                "desk".to_owned(),
                SecretString::from("desk-token-0123456789abcdef"),
            ),
        ]));
        let c = tokens.check(Some("Bearer orders-token-0123456789abcdef"));
        assert_eq!(c.as_ref().map(Caller::as_str), Some("orders"));
        let c = tokens.check(Some("Bearer desk-token-0123456789abcdef"));
        assert_eq!(c.as_ref().map(Caller::as_str), Some("desk"));
        for bad in [
            None,
            Some(""),
            Some("Bearer "),
            Some("orders-token-0123456789abcdef"),
            Some("Basic orders-token-0123456789abcdef"),
            Some("Bearer orders-token-0123456789abcdeF"),
        ] {
            assert_eq!(tokens.check(bad), None, "{bad:?}");
        }
        assert!(!format!("{tokens:?}").contains("token-0123"));
    }

    #[test]
    fn idempotency_keys_are_bounded_printable_ascii() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(IDEMPOTENCY_HEADER, v.parse().unwrap());
            idempotency_key(&h)
        };
        assert_eq!(with("k-1 a").unwrap(), IdempotencyKey("k-1 a".into()));
        assert_eq!(with(&"k".repeat(255)).unwrap().0.len(), 255);
        assert_eq!(with(&"k".repeat(256)).unwrap_err().code, "bad-request");
        assert_eq!(with("").unwrap_err().code, "idempotency-key-required");
        assert_eq!(with("a\tb").unwrap_err().code, "bad-request");
        assert_eq!(
            idempotency_key(&HeaderMap::new()).unwrap_err().code,
            "idempotency-key-required"
        );
    }
}
