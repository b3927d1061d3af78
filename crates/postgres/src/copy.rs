//! Fields of `COPY ... FROM STDIN` in PostgreSQL's text format, for the bulk writes of both
//! services: each field is followed by a tab; the caller ends the row (`end_row`).

use time::OffsetDateTime;

/// One text field: `\N` for NULL, and backslash, tab, newline and carriage return escaped.
pub(crate) fn copy_text(buf: &mut String, value: Option<&str>) {
    match value {
        None => buf.push_str("\\N"),
        Some(v) => {
            for ch in v.chars() {
                match ch {
                    // PostgreSQL text cannot hold NUL; a CRM answer that has one loses it here.
                    '\0' => {}
                    '\\' => buf.push_str("\\\\"),
                    '\t' => buf.push_str("\\t"),
                    '\n' => buf.push_str("\\n"),
                    '\r' => buf.push_str("\\r"),
                    c => buf.push(c),
                }
            }
        }
    }
    buf.push('\t');
}

/// One bytea field in hex form (`\x0a1b`, its backslash escaped for COPY), or `\N`.
#[cfg(feature = "certificates")]
pub(crate) fn copy_bytea(buf: &mut String, value: Option<&[u8]>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match value {
        None => buf.push_str("\\N"),
        Some(bytes) => {
            buf.reserve(3 + 2 * bytes.len());
            buf.push_str("\\\\x");
            for b in bytes {
                buf.push(char::from(HEX[usize::from(b >> 4)]));
                buf.push(char::from(HEX[usize::from(b & 0x0f)]));
            }
        }
    }
    buf.push('\t');
}

/// Replaces the last field's tab by the end of the row.
pub(crate) fn end_row(buf: &mut String) {
    if buf.ends_with('\t') {
        buf.pop();
    }
    buf.push('\n');
}

/// A timestamptz field's text (RFC 3339); `None` for a time RFC 3339 cannot write (a year past
/// 9999, an offset with seconds).
pub(crate) fn rfc3339(t: OffsetDateTime) -> Option<String> {
    t.format(&time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_what_copy_would_misread() {
        let mut buf = String::new();
        copy_text(&mut buf, Some("a\tb\nc\\d\re\0"));
        copy_text(&mut buf, None);
        assert_eq!(buf, "a\\tb\\nc\\\\d\\re\t\\N\t");
    }

    #[cfg(feature = "certificates")]
    #[test]
    fn copy_bytea_writes_escaped_hex() {
        let mut buf = String::new();
        copy_bytea(&mut buf, Some(&[0x00, 0x0a, 0x5c, 0xff]));
        copy_bytea(&mut buf, Some(&[]));
        copy_bytea(&mut buf, None);
        end_row(&mut buf);
        assert_eq!(buf, "\\\\x000a5cff\t\\\\x\t\\N\n");
    }
}
