use rdkafka::message::{BorrowedMessage, Headers, Message};
use time::OffsetDateTime;

/// Where a record sits in the log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordPosition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// One consumed record, owned and free of client types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub position: RecordPosition,
    pub key: Option<Vec<u8>>,
    /// Headers in the order they arrived; `None` for a header without a value.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// `None` for a tombstone.
    pub payload: Option<Vec<u8>>,
    /// The record's create or log-append time, when the broker gave one.
    pub timestamp: Option<OffsetDateTime>,
    /// `Some(size)` when the record (key, value and headers) was larger than
    /// `kafka.max_record_bytes`: its value and headers were dropped at intake (and a key longer
    /// than [`MAX_KEPT_KEY_BYTES`]); it can only be set aside, as `record_too_large`.
    pub oversized: Option<usize>,
}

/// The longest key an oversized record keeps (operators find it again by its key).
pub const MAX_KEPT_KEY_BYTES: usize = 1024;

/// The reason code of a record set aside because it is larger than `kafka.max_record_bytes`.
pub const REASON_RECORD_TOO_LARGE: &str = "record_too_large";

impl ConsumedRecord {
    /// The values of the headers called `name` that have a UTF-8 value, in arrival order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(k, _)| k == name)
            .filter_map(|(_, v)| v.as_deref().and_then(|v| std::str::from_utf8(v).ok()))
    }

    /// The last header called `name` with a UTF-8 value: a later header overrides an earlier.
    pub fn header<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.header_values(name).last()
    }

    /// The value, or empty for a tombstone.
    pub fn value(&self) -> &[u8] {
        self.payload.as_deref().unwrap_or_default()
    }

    pub(crate) fn from_message(m: &BorrowedMessage<'_>, max_record_bytes: usize) -> Self {
        let position = RecordPosition {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
        };
        let timestamp = m
            .timestamp()
            .to_millis()
            .and_then(|ms| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok());
        let size = record_size(m);
        if size > max_record_bytes {
            return Self {
                position,
                key: m
                    .key()
                    .filter(|k| k.len() <= MAX_KEPT_KEY_BYTES)
                    .map(<[u8]>::to_vec),
                headers: Vec::new(),
                payload: None,
                timestamp,
                oversized: Some(size),
            };
        }
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            position,
            key: m.key().map(<[u8]>::to_vec),
            headers,
            payload: m.payload().map(<[u8]>::to_vec),
            timestamp,
            oversized: None,
        }
    }
}

/// Key, value and headers, in bytes, as the record arrived.
fn record_size(m: &BorrowedMessage<'_>) -> usize {
    let headers: usize = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
                .sum()
        })
        .unwrap_or(0);
    m.key().map_or(0, <[u8]>::len) + m.payload().map_or(0, <[u8]>::len) + headers
}
