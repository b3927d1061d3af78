//! Request signing shared by the client and the simulator:
//! `X-Signature: v1=<hex HMAC-SHA256(secret, "<X-Timestamp>.<body>")>`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const TIMESTAMP_HEADER: &str = "x-timestamp";
pub const SIGNATURE_HEADER: &str = "x-signature";
/// How far a request's timestamp may be from the receiver's clock.
pub const MAX_SKEW_SECS: i64 = 300;

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    format!(
        "v1={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// Checks a signature in constant time, and that the timestamp is within [`MAX_SKEW_SECS`] of `now`.
pub fn verify(secret: &[u8], timestamp: &str, body: &[u8], signature: &str, now: i64) -> bool {
    let Ok(ts) = timestamp.parse::<i64>() else {
        return false;
    };
    if (now - ts).abs() > MAX_SKEW_SECS {
        return false;
    }
    let Some(hex_sig) = signature.strip_prefix("v1=") else {
        return false;
    };
    let Ok(bytes) = hex::decode(hex_sig) else {
        return false;
    };
    mac(secret, timestamp, body).verify_slice(&bytes).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_the_same_secret_body_and_a_fresh_timestamp() {
        let sig = sign(b"k", "1000", b"{}");
        assert!(verify(b"k", "1000", b"{}", &sig, 1000));
        assert!(verify(b"k", "1000", b"{}", &sig, 1000 + MAX_SKEW_SECS));
        assert!(!verify(b"k", "1000", b"{}", &sig, 1000 + MAX_SKEW_SECS + 1));
        assert!(!verify(b"other", "1000", b"{}", &sig, 1000));
        assert!(!verify(b"k", "1000", b"{ }", &sig, 1000));
        assert!(!verify(b"k", "1001", b"{}", &sig, 1000));
        assert!(!verify(b"k", "1000", b"{}", "v1=zz", 1000));
        assert!(!verify(b"k", "1000", b"{}", sig.trim_start_matches("v1="), 1000));
    }

    #[test]
    fn wire_format_is_pinned() {
        // Computed independently: HMAC-SHA256("secret", "1700000000.{\"a\":1}").
        assert_eq!(
            sign(b"secret", "1700000000", br#"{"a":1}"#),
            "v1=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }
}
