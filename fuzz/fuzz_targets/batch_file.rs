//! The batch-loader's file reader (`batch_loader::reader::BatchReader`) on arbitrary bytes; the
//! first byte picks the parser's buffer size (1 to 64 bytes), so that line breaks fall on every
//! side of a buffer boundary.
//!
//! - Nothing panics.
//! - Line numbers strictly increase, and do not depend on the buffer size.
//! - With every `\r` removed, the file read with `\n` line ends and with `\r\n` line ends gives
//!   the same rows on the same line numbers, with the same outcome.
//! - A refused file's message carries no digit (so no CVC) and no code of the input.
#![no_main]

use backbone_certificates::GiftCode;
use batch_loader::reader::BatchReader;
use libfuzzer_sys::fuzz_target;

/// Larger than any input (`-max_len=8192`): the whole input in one read, as with the loader's
/// default buffer, without allocating that per run.
const WHOLE: usize = 16 * 1024;

/// What the reader made of each row: its line and its reason code, or `ok`.
fn read(input: &[u8], buffer: usize) -> Result<Vec<(u64, &'static str)>, String> {
    let mut reader = BatchReader::with_buffer(input, buffer).map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    while let Some(row) = reader.next_row().map_err(|e| e.to_string())? {
        let outcome = match &row.outcome {
            Ok(_) => "ok",
            Err(reason) => reason.code(),
        };
        rows.push((row.line, outcome));
    }
    Ok(rows)
}

fn codes_in(input: &[u8]) -> Vec<String> {
    input
        .split(|b| matches!(b, b',' | b'\n' | b'\r' | b'"'))
        .filter_map(|f| std::str::from_utf8(f).ok())
        .filter_map(|f| GiftCode::parse(f.trim()).ok())
        .map(|c| c.expose().to_owned())
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((first, input)) = data.split_first() else {
        return;
    };
    let buffer = usize::from(*first % 64) + 1;
    let small = read(input, buffer);
    let large = read(input, WHOLE);
    assert_eq!(
        small, large,
        "the outcome depends on the buffer size ({buffer} bytes)"
    );
    match &small {
        Ok(rows) => assert!(
            rows.windows(2).all(|w| w[0].0 < w[1].0),
            "line numbers do not strictly increase: {rows:?}"
        ),
        Err(message) => {
            assert!(
                !message.bytes().any(|b| b.is_ascii_digit()),
                "a message with a digit: {message}"
            );
            for code in codes_in(input) {
                assert!(!message.contains(&code), "the message echoes a code: {message}");
            }
        }
    }

    let lf: Vec<u8> = input.iter().copied().filter(|&b| b != b'\r').collect();
    let mut crlf = Vec::with_capacity(lf.len() * 2);
    for &b in &lf {
        if b == b'\n' {
            crlf.push(b'\r');
        }
        crlf.push(b);
    }
    assert_eq!(
        read(&lf, buffer),
        read(&crlf, buffer),
        "LF and CRLF line ends read differently"
    );
});
