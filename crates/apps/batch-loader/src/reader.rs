//! Reads a batch file (`docs/batch-file-format.md`) row by row, each row validated and numbered
//! with the line it starts on.
//!
//! The CSV parser's own line count cannot be used for that: it records a record's position
//! before skipping what precedes the record's first byte, so the `\n` of a `\r\n` ending (the
//! parser ends the record at the `\r`) and blank lines went uncounted, and every row after a
//! `\r\n` line came out one line too low. Instead, [`LineIndex`] watches the bytes on their way
//! to the parser and numbers lines itself; a row's line is the line of its first byte, found
//! from the row's exact byte offset.

use crate::contract::UploadCertificate;
use crate::format::{validate_row, Columns, RejectReason};
use backbone_certificates::code::GiftCode;
use csv::ByteRecord;
use std::collections::VecDeque;
use std::io::{self, Read};

/// The parser's buffer: large enough that a big file is read in few calls.
pub const DEFAULT_BUFFER: usize = 1 << 18;

/// Why a file cannot be read on.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The header is not the five columns; no row is read.
    #[error("{0}")]
    Header(String),
    #[error("reading the file: {0}")]
    Io(#[from] csv::Error),
}

/// One data row: where it starts, its fields as read, and what validation made of it.
pub struct Row<'a> {
    /// Line number in the file, from 1 (the header is line 1 unless blank lines precede it).
    pub line: u64,
    pub record: &'a ByteRecord,
    pub outcome: Result<(GiftCode, UploadCertificate), RejectReason>,
}

/// The rows of a batch file, in file order.
pub struct BatchReader<R: Read> {
    csv: csv::Reader<LineIndex<io::Chain<io::Cursor<Vec<u8>>, R>>>,
    columns: Columns,
    record: ByteRecord,
}

impl<R: Read> BatchReader<R> {
    /// Reads the header; fails when it is not exactly the five columns.
    pub fn new(input: R) -> Result<Self, ReadError> {
        Self::with_buffer(input, DEFAULT_BUFFER)
    }

    /// As [`BatchReader::new`], with the parser's buffer of `capacity` bytes (at least 1).
    pub fn with_buffer(input: R, capacity: usize) -> Result<Self, ReadError> {
        let input = without_bom(input).map_err(csv::Error::from)?;
        let mut csv = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .buffer_capacity(capacity.max(1))
            .from_reader(LineIndex::new(input));
        let columns = Columns::from_header(csv.byte_headers()?).map_err(ReadError::Header)?;
        Ok(Self {
            csv,
            columns,
            record: ByteRecord::new(),
        })
    }

    /// The next row, or `None` at the end of the file.
    pub fn next_row(&mut self) -> Result<Option<Row<'_>>, ReadError> {
        if !self.csv.read_byte_record(&mut self.record)? {
            return Ok(None);
        }
        let start = self.record.position().map_or(0, csv::Position::byte);
        let line = self.csv.get_mut().line_of(start);
        Ok(Some(Row {
            line,
            record: &self.record,
            outcome: validate_row(&self.record, &self.columns),
        }))
    }

    /// Bytes of the file the parser has consumed.
    pub fn bytes_read(&self) -> u64 {
        self.csv.position().byte()
    }
}

const BOM: &[u8; 3] = b"\xef\xbb\xbf";

/// The input without a leading UTF-8 byte order mark. The parser drops one only when its first
/// read holds the mark and more (one that is the whole first read ends its input there), so it
/// is dropped here, whatever the reads.
fn without_bom<R: Read>(mut input: R) -> io::Result<io::Chain<io::Cursor<Vec<u8>>, R>> {
    let mut head = Vec::with_capacity(BOM.len());
    let mut byte = [0u8; 1];
    while head.len() < BOM.len() && BOM.starts_with(&head) {
        match input.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => head.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if head == BOM {
        head.clear();
    }
    Ok(io::Cursor::new(head).chain(input))
}

/// A run of consecutive `\r` and `\n` bytes.
#[derive(Debug, Clone, Copy)]
struct Breaks {
    /// Offset of its first byte.
    start: u64,
    /// Offset just past its last byte.
    end: u64,
    /// Line breaks in it: each `\r`, and each `\n` not right after a `\r`.
    count: u64,
}

/// Passes bytes through unchanged and remembers where lines break, so that the line of any
/// byte offset at or after the last one asked about can be told. A line ends with `\n`,
/// `\r\n`, or a lone `\r` (the parser ends a record at each of them). Only the runs of line
/// breaks not yet passed are kept: memory follows the parser's read-ahead, not the file.
struct LineIndex<R> {
    inner: R,
    /// Offset of the next byte to read.
    offset: u64,
    /// Runs read but not yet passed by a query, in file order.
    pending: VecDeque<Breaks>,
    /// Line breaks before the first pending run.
    passed: u64,
    /// Whether the last byte read was a `\r` (a `\n` right after it ends no further line).
    after_cr: bool,
}

impl<R> LineIndex<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            offset: 0,
            pending: VecDeque::new(),
            passed: 0,
            after_cr: false,
        }
    }

    /// The line (from 1) of the first byte at or after `start` that is not a line break: where
    /// a record the parser began reading at `start` starts, since it skips line breaks before
    /// a record. Offsets asked about must not decrease, and that byte must have been read.
    fn line_of(&mut self, start: u64) -> u64 {
        // Runs that begin at or before `start` lie wholly before the record's first byte: a run
        // that reaches past `start` ends where the record begins.
        while let Some(run) = self.pending.front() {
            if run.start > start {
                break;
            }
            self.passed += run.count;
            self.pending.pop_front();
        }
        self.passed + 1
    }

    fn note(&mut self, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            let at = self.offset + i as u64;
            let breaks = match b {
                b'\r' => 1,
                b'\n' if self.after_cr => 0,
                b'\n' => 1,
                _ => {
                    self.after_cr = false;
                    continue;
                }
            };
            self.after_cr = b == b'\r';
            match self.pending.back_mut() {
                Some(run) if run.end == at => {
                    run.end = at + 1;
                    run.count += breaks;
                }
                _ => self.pending.push_back(Breaks {
                    start: at,
                    end: at + 1,
                    count: breaks,
                }),
            }
        }
        self.offset += bytes.len() as u64;
    }
}

impl<R: Read> Read for LineIndex<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.note(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const HEADER: &str = "code,cvc,nominal_minor,currency,expires_at";

    fn lines(text: &str, buffer: usize) -> Vec<u64> {
        let mut reader = BatchReader::with_buffer(text.as_bytes(), buffer).unwrap();
        let mut out = Vec::new();
        while let Some(row) = reader.next_row().unwrap() {
            out.push(row.line);
        }
        out
    }

    #[test]
    fn rows_are_numbered_by_the_line_they_start_on() {
        let body = "a,1\nb,2\n\n\"c\nc\",3\nd,4\n";
        let lf = format!("{HEADER}\n{body}");
        let crlf = lf.replace('\n', "\r\n");
        let cr = lf.replace('\n', "\r");
        for text in [&lf, &crlf, &cr] {
            for buffer in [1, 2, 3, 5, 7, 64, DEFAULT_BUFFER] {
                assert_eq!(
                    lines(text, buffer),
                    [2, 3, 5, 7],
                    "{text:?} with a {buffer}-byte buffer"
                );
            }
        }
    }

    #[test]
    fn leading_blank_lines_and_a_missing_final_line_end_are_counted_right() {
        let text = format!("\r\n\n{HEADER}\r\nx,1\r\ny,2");
        assert_eq!(lines(&text, 4), [4, 5]);
    }

    #[test]
    fn a_byte_order_mark_is_read_past_whatever_the_buffer() {
        let text = format!("\u{feff}{HEADER}\r\nx,1\r\ny,2\r\n");
        for buffer in [1, 2, 3, 4, DEFAULT_BUFFER] {
            assert_eq!(lines(&text, buffer), [2, 3], "a {buffer}-byte buffer");
        }
    }

    #[test]
    fn a_header_that_is_not_the_five_columns_is_refused() {
        assert!(matches!(
            BatchReader::new(&b"code,cvc\n"[..]),
            Err(ReadError::Header(_))
        ));
        assert!(matches!(BatchReader::new(&b""[..]), Err(ReadError::Header(_))));
    }
}
