//! Request signing shared by the client and the simulator (`docs/openapi/crm-generic-v1.yaml`,
//! "Request signing").
//!
//! `X-Signature: v2=<lowercase hex HMAC-SHA256(secret, canonical)>`, where `canonical` is the
//! bytes
//!
//! ```text
//! v2 LF <METHOD> LF <target> LF <X-Timestamp> LF <X-Nonce> LF <body>
//! ```
//!
//! with LF a single `\n` byte (no trailing LF after the body), `<METHOD>` the request method as
//! sent (`GET`, `PUT`, `POST`), `<target>` the request target as sent on the request line: the
//! path, percent-encoded as on the wire, and, if the URL has one, `?` and the query string; never
//! the scheme, host or fragment. `<body>` is the exact bytes of the body, empty for `GET`.
//!
//! The nonce is fresh for every request, so a receiver that remembers the nonces it has accepted
//! for the [`MAX_SKEW_SECS`] window refuses a verbatim replay, and a signature made for one
//! method or path does not verify for another.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const TIMESTAMP_HEADER: &str = "x-timestamp";
pub const NONCE_HEADER: &str = "x-nonce";
pub const SIGNATURE_HEADER: &str = "x-signature";
/// The scheme tag: the first line of the canonical string and the prefix of `X-Signature`.
pub const SCHEME: &str = "v2";
/// How far a request's timestamp may be from the receiver's clock.
pub const MAX_SKEW_SECS: i64 = 300;
/// The longest `X-Nonce` accepted; its characters are `[A-Za-z0-9_-]`.
pub const MAX_NONCE_LEN: usize = 64;

/// The parts of a request that its signature covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedParts<'a> {
    /// The method as sent, e.g. `PUT`.
    pub method: &'a str,
    /// Path and, if any, `?` and query string, exactly as on the request line.
    pub target: &'a str,
    /// `X-Timestamp`: Unix time in whole seconds.
    pub timestamp: &'a str,
    /// `X-Nonce`.
    pub nonce: &'a str,
    /// The body bytes as sent (empty for `GET`).
    pub body: &'a [u8],
}

/// Why a signed request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// A signature, timestamp or nonce header is missing or malformed, or the signature does not
    /// match the request.
    BadSignature,
    /// The signature matches, but the timestamp is this many seconds (absolute) away from the
    /// receiver's clock, more than [`MAX_SKEW_SECS`].
    TimestampSkew(i64),
}

/// A fresh nonce: 128 random bits (a UUID v4) as 32 lowercase hex digits.
pub fn new_nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Whether `nonce` is a well-formed `X-Nonce`: 1 to [`MAX_NONCE_LEN`] characters of
/// `[A-Za-z0-9_-]`.
pub fn is_valid_nonce(nonce: &str) -> bool {
    (1..=MAX_NONCE_LEN).contains(&nonce.len())
        && nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn mac(secret: &[u8], parts: &SignedParts<'_>) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    for field in [SCHEME, parts.method, parts.target, parts.timestamp, parts.nonce] {
        mac.update(field.as_bytes());
        mac.update(b"\n");
    }
    mac.update(parts.body);
    mac
}

/// The `X-Signature` value for a request.
pub fn sign(secret: &[u8], parts: &SignedParts<'_>) -> String {
    format!(
        "{SCHEME}={}",
        hex::encode(mac(secret, parts).finalize().into_bytes())
    )
}

/// Checks a signature in constant time, then that the timestamp is within [`MAX_SKEW_SECS`] of
/// `now`. A well-formed nonce is required; whether it was seen before is the receiver's to check
/// (after this, so that only authentic requests are remembered).
pub fn verify(secret: &[u8], parts: &SignedParts<'_>, signature: &str, now: i64) -> Result<(), Rejection> {
    // No field before the body may hold a line feed, so the canonical string is unambiguous.
    let Ok(ts) = parts.timestamp.parse::<i64>() else {
        return Err(Rejection::BadSignature);
    };
    if !is_valid_nonce(parts.nonce)
        || parts.method.is_empty()
        || parts.method.contains('\n')
        || parts.target.contains('\n')
    {
        return Err(Rejection::BadSignature);
    }
    let Some(hex_sig) = signature.strip_prefix(SCHEME).and_then(|s| s.strip_prefix('=')) else {
        return Err(Rejection::BadSignature);
    };
    let Ok(bytes) = hex::decode(hex_sig) else {
        return Err(Rejection::BadSignature);
    };
    if mac(secret, parts).verify_slice(&bytes).is_err() {
        return Err(Rejection::BadSignature);
    }
    let skew = now.saturating_sub(ts).saturating_abs();
    if skew > MAX_SKEW_SECS {
        return Err(Rejection::TimestampSkew(skew));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: &str = "0123456789abcdef0123456789abcdef";

    fn parts() -> SignedParts<'static> {
        SignedParts {
            method: "PUT",
            target: "/api/v1/shipments/SHP-1/status",
            timestamp: "1000",
            nonce: NONCE,
            body: b"{}",
        }
    }

    #[test]
    fn a_signature_verifies_only_for_the_same_secret_and_a_fresh_timestamp() {
        let p = parts();
        let sig = sign(b"k", &p);
        assert_eq!(verify(b"k", &p, &sig, 1000), Ok(()));
        assert_eq!(verify(b"k", &p, &sig, 1000 + MAX_SKEW_SECS), Ok(()));
        assert_eq!(verify(b"k", &p, &sig, 1000 - MAX_SKEW_SECS), Ok(()));
        assert_eq!(
            verify(b"k", &p, &sig, 1000 + MAX_SKEW_SECS + 1),
            Err(Rejection::TimestampSkew(MAX_SKEW_SECS + 1))
        );
        assert_eq!(
            verify(b"k", &p, &sig, 1000 - 412),
            Err(Rejection::TimestampSkew(412))
        );
        assert_eq!(verify(b"other", &p, &sig, 1000), Err(Rejection::BadSignature));
    }

    #[test]
    fn a_wrong_signature_is_refused_even_with_a_stale_timestamp() {
        // The skew is only reported for requests that are otherwise authentic.
        let p = parts();
        assert_eq!(
            verify(b"other", &p, &sign(b"k", &p), 1_000_000),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn malformed_signatures_are_refused() {
        let p = parts();
        let sig = sign(b"k", &p);
        assert!(sig.starts_with("v2="));
        for bad in [
            "",
            "v2=zz",
            "v2=",
            sig.trim_start_matches("v2="),
            &sig.replacen("v2=", "v1=", 1),
            &sig.replacen("v2=", "v2", 1),
            &sig[..sig.len() - 2],
        ] {
            assert_eq!(verify(b"k", &p, bad, 1000), Err(Rejection::BadSignature), "{bad}");
        }
    }

    #[test]
    fn changing_the_method_changes_the_signature() {
        let p = parts();
        let other = SignedParts { method: "GET", ..p };
        assert_ne!(sign(b"k", &p), sign(b"k", &other));
        assert_eq!(
            verify(b"k", &other, &sign(b"k", &p), 1000),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn changing_the_path_changes_the_signature() {
        let p = parts();
        let other = SignedParts {
            target: "/api/v1/shipments/SHP-2/status",
            ..p
        };
        assert_ne!(sign(b"k", &p), sign(b"k", &other));
        assert_eq!(
            verify(b"k", &other, &sign(b"k", &p), 1000),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn changing_the_query_string_changes_the_signature() {
        let p = parts();
        let with_query = SignedParts {
            target: "/api/v1/shipments/SHP-1/status?x=1",
            ..p
        };
        let other_query = SignedParts {
            target: "/api/v1/shipments/SHP-1/status?x=2",
            ..p
        };
        assert_ne!(sign(b"k", &p), sign(b"k", &with_query));
        assert_ne!(sign(b"k", &with_query), sign(b"k", &other_query));
    }

    #[test]
    fn changing_the_timestamp_changes_the_signature() {
        let p = parts();
        let other = SignedParts {
            timestamp: "1001",
            ..p
        };
        assert_ne!(sign(b"k", &p), sign(b"k", &other));
        assert_eq!(
            verify(b"k", &other, &sign(b"k", &p), 1000),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn changing_the_nonce_changes_the_signature() {
        let p = parts();
        let other = SignedParts {
            nonce: "fedcba9876543210fedcba9876543210",
            ..p
        };
        assert_ne!(sign(b"k", &p), sign(b"k", &other));
        assert_eq!(
            verify(b"k", &other, &sign(b"k", &p), 1000),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn changing_the_body_changes_the_signature() {
        let p = parts();
        let other = SignedParts { body: b"{ }", ..p };
        assert_ne!(sign(b"k", &p), sign(b"k", &other));
        assert_eq!(
            verify(b"k", &other, &sign(b"k", &p), 1000),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn fields_cannot_be_shifted_across_the_separators() {
        // The same canonical bytes split differently: only the split without a line feed inside
        // a field verifies.
        let p = SignedParts {
            method: "PUT",
            target: "/a",
            timestamp: "1000",
            nonce: "1000",
            body: b"n\nx",
        };
        let shifted = SignedParts {
            method: "PUT",
            target: "/a\n1000",
            timestamp: "1000",
            nonce: "n",
            body: b"x",
        };
        let sig = sign(b"k", &p);
        assert_eq!(sig, sign(b"k", &shifted));
        assert_eq!(verify(b"k", &p, &sig, 1000), Ok(()));
        assert_eq!(verify(b"k", &shifted, &sig, 1000), Err(Rejection::BadSignature));
    }

    #[test]
    fn nonces_are_fresh_and_well_formed() {
        let (a, b) = (new_nonce(), new_nonce());
        assert_ne!(a, b);
        assert!(is_valid_nonce(&a) && a.len() == 32, "{a}");
        assert!(is_valid_nonce("A-z_09"));
        assert!(is_valid_nonce(&"n".repeat(MAX_NONCE_LEN)));
        for bad in ["", "a b", "a\nb", "a.b", "ä", &"n".repeat(MAX_NONCE_LEN + 1)] {
            assert!(!is_valid_nonce(bad), "{bad:?}");
        }
        let p = SignedParts {
            nonce: "a.b",
            ..parts()
        };
        assert_eq!(
            verify(b"k", &p, &sign(b"k", &p), 1000),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn wire_format_is_pinned() {
        // Expected values computed independently with Python's hmac module:
        //   hmac.new(secret, b"v2\n" + method + b"\n" + target + b"\n" + timestamp + b"\n"
        //            + nonce + b"\n" + body, hashlib.sha256).hexdigest()
        assert_eq!(
            sign(
                b"secret",
                &SignedParts {
                    method: "PUT",
                    target: "/api/v1/shipments/SHP-1/status",
                    timestamp: "1700000000",
                    nonce: NONCE,
                    body: br#"{"a":1}"#,
                }
            ),
            "v2=74b93900db6f01af56069c72aaec0a3f48cd6e8320227b084e04a0979e2e7e38"
        );
        assert_eq!(
            sign(
                b"secret",
                &SignedParts {
                    method: "GET",
                    target: "/api/v1/shipments/SHP-1/status?view=full",
                    timestamp: "1700000000",
                    nonce: NONCE,
                    body: b"",
                }
            ),
            "v2=e983efa0df3bc3d9dfcfa7a119f00a6e34ee636981498a1bc936a5aa73a03fee"
        );
        // The example in docs/openapi/crm-generic-v1.yaml.
        assert_eq!(
            sign(
                b"s3cr3t",
                &SignedParts {
                    method: "POST",
                    target: "/api/v1/shipments/status:batchGet",
                    timestamp: "1793527200",
                    nonce: "5f0c6e1d9a7b4c2e8f3a1b0c9d8e7f6a",
                    body: br#"{"shipmentIds":["SHP-1"]}"#,
                }
            ),
            "v2=0f5162df6324b3e305008541a3591ee3947e751cf1705b1359f73f45bf648933"
        );
    }
}
