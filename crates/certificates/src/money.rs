//! Money as integer minor units with an ISO 4217 currency: no floating point anywhere.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("currency `{0}` is not three upper-case letters (ISO 4217)")]
    BadCurrency(String),
    #[error("amount must be greater than zero")]
    NotPositive,
}

/// An ISO 4217 alphabetic currency code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        match code.as_bytes() {
            [a, b, c] if [a, b, c].iter().all(|x| x.is_ascii_uppercase()) => Ok(Self([*a, *b, *c])),
            _ => Err(MoneyError::BadCurrency(code.chars().take(8).collect())),
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII upper-case letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for Currency {
    type Error = MoneyError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.as_str().to_owned()
    }
}

/// A strictly positive amount in minor units, in a currency: what an operation moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Amount {
    minor: i64,
    currency: Currency,
}

impl Amount {
    pub fn new(minor: i64, currency: Currency) -> Result<Self, MoneyError> {
        if minor <= 0 {
            return Err(MoneyError::NotPositive);
        }
        Ok(Self { minor, currency })
    }

    pub fn minor(&self) -> i64 {
        self.minor
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.minor, self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currencies_and_amounts_validate() {
        assert_eq!(Currency::parse("RUB").unwrap().as_str(), "RUB");
        for bad in ["rub", "RU", "RUBL", "R1B", ""] {
            assert!(Currency::parse(bad).is_err(), "{bad}");
        }
        let rub = Currency::parse("RUB").unwrap();
        assert_eq!(Amount::new(0, rub), Err(MoneyError::NotPositive));
        assert_eq!(Amount::new(-5, rub), Err(MoneyError::NotPositive));
        assert_eq!(Amount::new(150, rub).unwrap().to_string(), "150 RUB");
        let json = serde_json_free_roundtrip(rub);
        assert_eq!(json, rub);
    }

    fn serde_json_free_roundtrip(c: Currency) -> Currency {
        Currency::try_from(String::from(c)).unwrap()
    }
}
