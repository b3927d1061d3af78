//! Certificate codes and CVCs: bearer secrets. Neither type implements `Display`, and `Debug`
//! shows only the last four characters of a code and nothing of a CVC, so a stray `{:?}` in a
//! log line cannot leak one.
//!
//! Code format: 16 characters from a 32-letter alphabet without look-alikes (no `I`, `O`, `0`,
//! `1`), the last one a Luhn mod 32 check character; about 75 bits of randomness. Input may be
//! lower case and grouped with `-` or spaces (`ABCD-EFGH-JKLM-NPQ7`); it is normalised before
//! validation. A CVC is 3 or 4 decimal digits.

use std::fmt;

/// The code alphabet: upper-case letters and digits without `I`, `O`, `0` and `1`.
pub const ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
/// Characters in a normalised code, check character included.
pub const CODE_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("a certificate code has 16 characters from the code alphabet")]
    Format,
    #[error("the certificate code's check character does not match")]
    CheckCharacter,
    #[error("a CVC is 3 or 4 digits")]
    Cvc,
}

fn index_of(c: u8) -> Option<usize> {
    ALPHABET.iter().position(|&a| a == c)
}

/// Luhn mod N check character over `payload` (already in the alphabet).
pub fn check_character(payload: &[u8]) -> Option<u8> {
    let n = ALPHABET.len();
    let mut factor = 2;
    let mut sum = 0;
    for &c in payload.iter().rev() {
        let mut addend = factor * index_of(c)?;
        factor = if factor == 2 { 1 } else { 2 };
        addend = addend / n + addend % n;
        sum += addend;
    }
    Some(ALPHABET[(n - sum % n) % n])
}

/// A validated, normalised certificate code.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct GiftCode(String);

impl GiftCode {
    pub fn parse(raw: &str) -> Result<Self, CodeError> {
        let normalised: Vec<u8> = raw
            .bytes()
            .filter(|b| *b != b'-' && *b != b' ')
            .map(|b| b.to_ascii_uppercase())
            .collect();
        if normalised.len() != CODE_LEN || normalised.iter().any(|c| index_of(*c).is_none()) {
            return Err(CodeError::Format);
        }
        let (payload, check) = normalised.split_at(CODE_LEN - 1);
        if check_character(payload) != Some(check[0]) {
            return Err(CodeError::CheckCharacter);
        }
        // Only alphabet bytes remain, so this is ASCII.
        Ok(Self(String::from_utf8_lossy(&normalised).into_owned()))
    }

    /// Builds a code from 15 payload characters, appending the check character.
    pub fn from_payload(payload: &[u8; CODE_LEN - 1]) -> Result<Self, CodeError> {
        let check = check_character(payload).ok_or(CodeError::Format)?;
        let mut code = payload.to_vec();
        code.push(check);
        Ok(Self(String::from_utf8_lossy(&code).into_owned()))
    }

    /// The normalised code. Call only to hash it, encrypt it or hand it to its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The last four characters: what is shown and logged.
    pub fn last4(&self) -> &str {
        &self.0[CODE_LEN - 4..]
    }

    /// `****-****-****-ABCD`
    pub fn masked(&self) -> String {
        mask_last4(self.last4())
    }

    /// Grouped for people: `ABCD-EFGH-JKLM-NPQR`.
    pub fn grouped(&self) -> String {
        let s = &self.0;
        format!("{}-{}-{}-{}", &s[0..4], &s[4..8], &s[8..12], &s[12..16])
    }
}

pub fn mask_last4(last4: &str) -> String {
    format!("****-****-****-{last4}")
}

/// The last `n` characters of `text`: the only part of a code or a phone number ever shown.
pub fn visible_tail(text: &str, n: usize) -> &str {
    if n == 0 {
        return "";
    }
    let start = text.char_indices().rev().nth(n - 1).map_or(0, |(i, _)| i);
    &text[start..]
}

impl fmt::Debug for GiftCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GiftCode({})", self.masked())
    }
}

/// A certificate's security code.
#[derive(Clone, PartialEq, Eq)]
pub struct Cvc(String);

impl Cvc {
    pub fn parse(raw: &str) -> Result<Self, CodeError> {
        let raw = raw.trim();
        if (3..=4).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(CodeError::Cvc)
        }
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Cvc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cvc(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_tail_is_visible_whatever_the_characters() {
        assert_eq!(visible_tail("ABCDEFGH", 4), "EFGH");
        assert_eq!(visible_tail("+79991234567", 2), "67");
        assert_eq!(visible_tail("ab", 4), "ab");
        assert_eq!(visible_tail("ключ", 2), "юч");
        assert_eq!(visible_tail("abc", 0), "");
    }

    #[test]
    fn codes_normalise_validate_and_mask() {
        let code = GiftCode::from_payload(b"ABCDEFGHJKLMNPQ").unwrap();
        let grouped = code.grouped().to_lowercase();
        let parsed = GiftCode::parse(&grouped).unwrap();
        assert_eq!(parsed, code);
        assert_eq!(
            format!("{parsed:?}"),
            format!("GiftCode(****-****-****-{})", code.last4())
        );
        assert!(!format!("{parsed:?}").contains("ABCD"));
        assert_eq!(GiftCode::parse("ABCD"), Err(CodeError::Format));
        assert_eq!(GiftCode::parse("ABCDEFGHJKLMNPQ0"), Err(CodeError::Format));
    }

    #[test]
    fn every_single_character_change_is_caught() {
        let code = GiftCode::from_payload(b"ZZ23456789ABCDE").unwrap();
        let bytes = code.expose().as_bytes().to_vec();
        for i in 0..CODE_LEN {
            for &c in ALPHABET.iter().filter(|&&c| c != bytes[i]) {
                let mut typo = bytes.clone();
                typo[i] = c;
                let typo = String::from_utf8(typo).unwrap();
                assert_eq!(GiftCode::parse(&typo), Err(CodeError::CheckCharacter), "{i}");
            }
        }
    }

    #[test]
    fn cvcs_are_digits_and_never_printed() {
        assert_eq!(Cvc::parse(" 123 ").unwrap().expose(), "123");
        assert!(Cvc::parse("12").is_err() && Cvc::parse("12a4").is_err() && Cvc::parse("12345").is_err());
        assert_eq!(format!("{:?}", Cvc::parse("4821").unwrap()), "Cvc(***)");
    }
}
