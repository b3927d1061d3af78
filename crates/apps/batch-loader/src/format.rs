//! The batch file (`docs/batch-file-format.md`): CSV with a header naming the columns
//! `code,cvc,nominal_minor,currency,expires_at` in any order, one certificate per row.

use crate::contract::UploadCertificate;
use backbone_certificates::code::{CodeError, Cvc, GiftCode};
use backbone_certificates::money::{Amount, Currency};
use csv::ByteRecord;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

pub const COLUMNS: [&str; 5] = ["code", "cvc", "nominal_minor", "currency", "expires_at"];

/// Why a row was rejected. The codes are stable: they are what the reject file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    ColumnCount,
    NotUtf8,
    CodeFormat,
    CodeCheckCharacter,
    Cvc,
    Nominal,
    Currency,
    ExpiresAt,
    DuplicateInFile,
}

impl RejectReason {
    pub fn code(self) -> &'static str {
        match self {
            Self::ColumnCount => "column_count",
            Self::NotUtf8 => "not_utf8",
            Self::CodeFormat => "code_format",
            Self::CodeCheckCharacter => "code_check_character",
            Self::Cvc => "cvc",
            Self::Nominal => "nominal_minor",
            Self::Currency => "currency",
            Self::ExpiresAt => "expires_at",
            Self::DuplicateInFile => "duplicate_in_file",
        }
    }
}

/// Where each column is in the file.
#[derive(Debug, Clone, Copy)]
pub struct Columns {
    index: [usize; 5],
    count: usize,
}

impl Columns {
    /// Reads the header: exactly the five column names, in any order, each once.
    pub fn from_header(header: &ByteRecord) -> Result<Self, String> {
        let names: Vec<String> = header
            .iter()
            .map(|f| String::from_utf8_lossy(f).trim().to_ascii_lowercase())
            .collect();
        let mut index = [0usize; 5];
        for (slot, wanted) in index.iter_mut().zip(COLUMNS) {
            let found: Vec<usize> = names
                .iter()
                .enumerate()
                .filter(|(_, n)| n.as_str() == wanted)
                .map(|(i, _)| i)
                .collect();
            match found.as_slice() {
                [i] => *slot = *i,
                [] => return Err(format!("the header lacks the column `{wanted}`")),
                _ => return Err(format!("the header names `{wanted}` more than once")),
            }
        }
        if names.len() != COLUMNS.len() {
            return Err(format!(
                "the header has columns besides {}; expected exactly those",
                COLUMNS.join(",")
            ));
        }
        Ok(Self {
            index,
            count: names.len(),
        })
    }
}

fn field<'a>(record: &'a ByteRecord, cols: &Columns, i: usize) -> Result<&'a str, RejectReason> {
    let raw = record.get(cols.index[i]).unwrap_or_default();
    std::str::from_utf8(raw)
        .map(str::trim)
        .map_err(|_| RejectReason::NotUtf8)
}

/// Validates one row. The code comes back normalised, the expiry in UTC.
pub fn validate_row(
    record: &ByteRecord,
    cols: &Columns,
) -> Result<(GiftCode, UploadCertificate), RejectReason> {
    if record.len() != cols.count {
        return Err(RejectReason::ColumnCount);
    }
    let code = GiftCode::parse(field(record, cols, 0)?).map_err(|e| match e {
        CodeError::CheckCharacter => RejectReason::CodeCheckCharacter,
        _ => RejectReason::CodeFormat,
    })?;
    let cvc = Cvc::parse(field(record, cols, 1)?).map_err(|_| RejectReason::Cvc)?;
    let currency = Currency::parse(field(record, cols, 3)?).map_err(|_| RejectReason::Currency)?;
    let nominal = field(record, cols, 2)?
        .parse::<i64>()
        .ok()
        .and_then(|minor| Amount::new(minor, currency).ok())
        .ok_or(RejectReason::Nominal)?;
    let expires_at = match field(record, cols, 4)? {
        "" => None,
        text => Some(
            OffsetDateTime::parse(text, &Rfc3339)
                .ok()
                .and_then(|t| t.to_offset(UtcOffset::UTC).format(&Rfc3339).ok())
                .ok_or(RejectReason::ExpiresAt)?,
        ),
    };
    let certificate = UploadCertificate {
        code: code.expose().to_owned(),
        cvc: cvc.expose().to_owned(),
        nominal_minor: nominal.minor(),
        currency: currency.as_str().to_owned(),
        expires_at,
    };
    Ok((code, certificate))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cols() -> Columns {
        Columns::from_header(&ByteRecord::from(COLUMNS.to_vec())).unwrap()
    }

    fn row(fields: &[&str]) -> ByteRecord {
        ByteRecord::from(fields.to_vec())
    }

    fn good_code() -> String {
        GiftCode::from_payload(b"ABCDEFGHJKLMNPQ")
            .unwrap()
            .expose()
            .to_owned()
    }

    #[test]
    fn a_good_row_is_normalised() {
        let grouped = GiftCode::parse(&good_code()).unwrap().grouped().to_lowercase();
        let (code, c) = validate_row(
            &row(&[&grouped, " 0123 ", "500000", "RUB", "2027-12-31T23:59:59+03:00"]),
            &cols(),
        )
        .unwrap();
        assert_eq!(code.expose(), good_code());
        assert_eq!(c.code, good_code());
        assert_eq!(c.cvc, "0123");
        assert_eq!(c.nominal_minor, 500_000);
        assert_eq!(c.expires_at.as_deref(), Some("2027-12-31T20:59:59Z"));
        let (_, no_expiry) = validate_row(&row(&[&good_code(), "123", "1", "USD", ""]), &cols()).unwrap();
        assert_eq!(no_expiry.expires_at, None);
    }

    #[test]
    fn each_bad_field_has_its_reason() {
        let code = good_code();
        let mut typo = code.clone().into_bytes();
        typo[0] = if typo[0] == b'A' { b'B' } else { b'A' };
        let typo = String::from_utf8(typo).unwrap();
        let cases: Vec<(Vec<&str>, RejectReason)> = vec![
            (vec![&code, "1234", "100", "RUB"], RejectReason::ColumnCount),
            (vec!["ABC", "1234", "100", "RUB", ""], RejectReason::CodeFormat),
            (
                vec![&typo, "1234", "100", "RUB", ""],
                RejectReason::CodeCheckCharacter,
            ),
            (vec![&code, "12", "100", "RUB", ""], RejectReason::Cvc),
            (vec![&code, "12a4", "100", "RUB", ""], RejectReason::Cvc),
            (vec![&code, "1234", "0", "RUB", ""], RejectReason::Nominal),
            (vec![&code, "1234", "-5", "RUB", ""], RejectReason::Nominal),
            (vec![&code, "1234", "10.50", "RUB", ""], RejectReason::Nominal),
            (vec![&code, "1234", "100", "rub", ""], RejectReason::Currency),
            (
                vec![&code, "1234", "100", "RUB", "tomorrow"],
                RejectReason::ExpiresAt,
            ),
        ];
        for (fields, reason) in cases {
            assert_eq!(
                validate_row(&row(&fields), &cols()).unwrap_err(),
                reason,
                "{fields:?}"
            );
        }
        let not_utf8 = ByteRecord::from(vec![&b"\xff\xfe"[..], b"1234", b"100", b"RUB", b""]);
        assert_eq!(
            validate_row(&not_utf8, &cols()).unwrap_err(),
            RejectReason::NotUtf8
        );
    }

    #[test]
    fn headers_may_reorder_but_not_omit_or_repeat() {
        let reordered =
            Columns::from_header(&row(&["currency", "CVC", "code", "expires_at", "nominal_minor"])).unwrap();
        let (_, c) = validate_row(&row(&["EUR", "999", &good_code(), "", "7"]), &reordered).unwrap();
        assert_eq!(
            (c.currency.as_str(), c.cvc.as_str(), c.nominal_minor),
            ("EUR", "999", 7)
        );
        assert!(Columns::from_header(&row(&["code", "cvc", "nominal_minor", "currency"])).is_err());
        assert!(Columns::from_header(&row(&[
            "code",
            "cvc",
            "nominal_minor",
            "currency",
            "expires_at",
            "x"
        ]))
        .is_err());
        assert!(
            Columns::from_header(&row(&["code", "code", "nominal_minor", "currency", "expires_at"])).is_err()
        );
    }
}
