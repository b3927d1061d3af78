//! Ids and short texts other systems hand us (orders, payments, clients, order lines, batches,
//! initiators): bounded and printable at the edge, so nothing downstream (an operation id built
//! from them, an outbox row, a Kafka record, a log line) can be broken by one of them. A value
//! that fails is refused by naming the field, never by quoting it.

/// Longest order, payment, client or batch id, in bytes.
pub const MAX_ID_BYTES: usize = 64;
/// Longest order-line id, in bytes: `sale:<order>:<line>` must fit an operation id (128).
pub const MAX_LINE_ID_BYTES: usize = 32;
/// Longest free text (an initiator, a cashier id), in bytes.
pub const MAX_TEXT_BYTES: usize = 128;

/// Why a value is refused, in words that name no part of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("is empty")]
    Empty,
    #[error("is longer than {0} bytes")]
    TooLong(usize),
    #[error("contains a control character or whitespace")]
    NotPrintable,
}

/// An id: 1..=`max` bytes, no control characters, no whitespace (no NUL, no line breaks).
pub fn check_id(value: &str, max: usize) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty);
    }
    if value.len() > max {
        return Err(IdError::TooLong(max));
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(IdError::NotPrintable);
    }
    Ok(())
}

/// Free text: 1..=`max` bytes, no control characters (spaces allowed).
pub fn check_text(value: &str, max: usize) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty);
    }
    if value.len() > max {
        return Err(IdError::TooLong(max));
    }
    if value.chars().any(char::is_control) {
        return Err(IdError::NotPrintable);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_bounded_and_printable() {
        assert_eq!(check_id("order-42", MAX_ID_BYTES), Ok(()));
        assert_eq!(check_id("заказ-42", MAX_ID_BYTES), Ok(()));
        assert_eq!(check_id("", MAX_ID_BYTES), Err(IdError::Empty));
        assert_eq!(
            check_id(&"x".repeat(MAX_ID_BYTES + 1), MAX_ID_BYTES),
            Err(IdError::TooLong(MAX_ID_BYTES))
        );
        for bad in ["1\n", "a\0b", "a b", "\u{7f}", "tab\there"] {
            assert_eq!(check_id(bad, MAX_ID_BYTES), Err(IdError::NotPrintable), "{bad:?}");
        }
        assert_eq!(check_text("cashier 7", MAX_TEXT_BYTES), Ok(()));
        assert_eq!(check_text("a\0", MAX_TEXT_BYTES), Err(IdError::NotPrintable));
    }

    #[test]
    fn a_sale_operation_id_of_the_longest_ids_fits() {
        let longest = format!(
            "sale:{}:{}",
            "o".repeat(MAX_ID_BYTES),
            "l".repeat(MAX_LINE_ID_BYTES)
        );
        assert!(crate::OperationId::parse(longest).is_ok());
    }
}
