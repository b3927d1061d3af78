//! `generate`: pre-generated codes and CVCs from a CSPRNG, written as a batch file.
//!
//! Codes: 15 characters drawn uniformly from the 32-letter alphabet (a random byte's low five
//! bits; 256 is a multiple of 32, so there is no modulo bias) plus the check character: 75 random
//! bits. Two equal codes in a million have a chance of about 10^-11, so no de-duplication pass is
//! made here; `load` would reject a repeat anyway. CVCs: 4 digits, uniform.

use crate::format::COLUMNS;
use backbone_certificates::code::{GiftCode, ALPHABET, CODE_LEN};
use backbone_certificates::money::{Amount, Currency};
use rand::{Rng, RngCore};
use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::Path;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub count: u64,
    pub nominal_minor: i64,
    pub currency: String,
    pub expires_at: Option<OffsetDateTime>,
    /// Replace an existing file instead of refusing.
    pub overwrite: bool,
}

/// One random code from a cryptographically secure generator.
pub fn random_code(rng: &mut impl RngCore) -> GiftCode {
    let mut payload = [0u8; CODE_LEN - 1];
    rng.fill_bytes(&mut payload);
    for b in &mut payload {
        *b = ALPHABET[usize::from(*b & 0x1f)];
    }
    match GiftCode::from_payload(&payload) {
        Ok(code) => code,
        // Every payload byte is from the alphabet.
        Err(_) => unreachable!(),
    }
}

pub fn random_cvc(rng: &mut impl Rng) -> String {
    format!("{:04}", rng.random_range(0..10_000u32))
}

/// Writes `count` certificates to `out` (created readable by its owner only: it holds CVCs).
pub fn generate(out: &Path, options: &GenerateOptions) -> anyhow::Result<()> {
    let currency = Currency::parse(&options.currency)?;
    let nominal = Amount::new(options.nominal_minor, currency)?;
    let expires_at = options
        .expires_at
        .map(|t| t.to_offset(UtcOffset::UTC).format(&Rfc3339))
        .transpose()?
        .unwrap_or_default();
    let mut open = OpenOptions::new();
    open.write(true);
    if options.overwrite {
        open.create(true).truncate(true);
    } else {
        open.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        open.mode(0o600);
    }
    let file = open
        .open(out)
        .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    let mut w = BufWriter::with_capacity(1 << 16, file);
    writeln!(w, "{}", COLUMNS.join(","))?;
    // ThreadRng: ChaCha12 seeded and periodically reseeded from the operating system.
    let mut rng = rand::rng();
    for _ in 0..options.count {
        let code = random_code(&mut rng);
        let cvc = random_cvc(&mut rng);
        writeln!(
            w,
            "{},{},{},{},{}",
            code.expose(),
            cvc,
            nominal.minor(),
            currency.as_str(),
            expires_at
        )?;
    }
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn codes_use_the_whole_alphabet_evenly_and_validate() {
        let mut rng = rand::rng();
        let mut counts = [0u32; 32];
        for _ in 0..4_000 {
            let code = random_code(&mut rng);
            assert_eq!(GiftCode::parse(code.expose()).unwrap(), code);
            for &c in &code.expose().as_bytes()[..CODE_LEN - 1] {
                counts[ALPHABET.iter().position(|&a| a == c).unwrap()] += 1;
            }
        }
        // 60,000 characters over 32 letters: 1,875 each on average; a biased draw would leave
        // some far off.
        assert!(counts.iter().all(|&n| (1_600..2_150).contains(&n)), "{counts:?}");
    }

    #[test]
    fn cvcs_are_four_digits() {
        let mut rng = rand::rng();
        let cvcs: Vec<String> = (0..1_000).map(|_| random_cvc(&mut rng)).collect();
        assert!(cvcs
            .iter()
            .all(|c| c.len() == 4 && c.bytes().all(|b| b.is_ascii_digit())));
        assert!(
            cvcs.iter().any(|c| c.starts_with('0')),
            "leading zeros must be kept"
        );
    }
}
