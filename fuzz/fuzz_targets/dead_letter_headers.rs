//! The Kafka record headers crm-sync reads, and the headers a dead letter is written with.
//!
//! - `ConsumedRecord::header_values` yields the UTF-8 values of one header name in arrival order,
//!   and `header` the last of them.
//! - `crm_sync::kafka::inbound` keeps the record's position, key, value and size note, and takes
//!   `x-replay-count` from the last UTF-8 `x-replay-count` header (0 when it is not a `u32`).
//! - `backbone_kafka::DeadLetter::headers` writes one `x-dlq-reason`: the reason with control
//!   characters blanked, cut at a character boundary to at most `MAX_REASON_BYTES`; and
//!   `x-replay-count` exactly when the count is known.
#![no_main]

use arbitrary::Arbitrary;
use backbone_kafka::{
    ConsumedRecord, DeadLetter, RecordPosition, HEADER_REASON, HEADER_REPLAY_COUNT, MAX_REASON_BYTES,
};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    record: Record,
    /// Another header name to look up.
    lookup: Name,
    letter: Letter,
}

#[derive(Arbitrary, Debug)]
struct Record {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    headers: Vec<(Name, Option<HeaderValue>)>,
    payload: Option<Vec<u8>>,
    timestamp_s: Option<i64>,
    oversized: Option<usize>,
}

/// Header names, biased towards the ones the services read.
#[derive(Arbitrary, Debug)]
enum Name {
    ReplayCount,
    Reason,
    Other(String),
}

impl Name {
    fn text(&self) -> String {
        match self {
            Name::ReplayCount => HEADER_REPLAY_COUNT.to_owned(),
            Name::Reason => HEADER_REASON.to_owned(),
            Name::Other(s) => s.clone(),
        }
    }
}

/// Header values, biased towards numbers (what `x-replay-count` should hold).
#[derive(Arbitrary, Debug)]
enum HeaderValue {
    Count(u32),
    Number(i64),
    Text(String),
    Bytes(Vec<u8>),
}

impl HeaderValue {
    fn bytes(&self) -> Vec<u8> {
        match self {
            HeaderValue::Count(n) => n.to_string().into_bytes(),
            HeaderValue::Number(n) => n.to_string().into_bytes(),
            HeaderValue::Text(s) => s.clone().into_bytes(),
            HeaderValue::Bytes(b) => b.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Letter {
    source: Option<(String, i32, i64)>,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    withheld_bytes: Option<usize>,
    reason_code: String,
    reason: String,
    /// Repeats `reason` this many times more, so reasons past the limit are common.
    repeat: u8,
    attempts: u32,
    replay_count: Option<u32>,
    event_id: Option<String>,
}

fuzz_target!(|input: Input| {
    let record = consumed(&input.record);
    check_lookups(&record, HEADER_REPLAY_COUNT);
    check_lookups(&record, &input.lookup.text());
    check_inbound(record);
    check_letter(&input.letter);
});

fn consumed(r: &Record) -> ConsumedRecord {
    ConsumedRecord {
        position: RecordPosition {
            topic: r.topic.clone(),
            partition: r.partition,
            offset: r.offset,
        },
        key: r.key.clone(),
        headers: r
            .headers
            .iter()
            .map(|(name, value)| (name.text(), value.as_ref().map(HeaderValue::bytes)))
            .collect(),
        payload: r.payload.clone(),
        timestamp: r
            .timestamp_s
            .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok()),
        oversized: r.oversized,
    }
}

fn check_lookups(record: &ConsumedRecord, name: &str) {
    let expected: Vec<&str> = record
        .headers
        .iter()
        .filter(|(k, _)| k == name)
        .filter_map(|(_, v)| v.as_deref())
        .filter_map(|v| std::str::from_utf8(v).ok())
        .collect();
    let values: Vec<&str> = record.header_values(name).collect();
    assert_eq!(values, expected, "header_values({name:?})");
    assert_eq!(record.header(name), expected.last().copied(), "header({name:?})");
}

fn check_inbound(record: ConsumedRecord) {
    let expected_count = record
        .headers
        .iter()
        .rev()
        .filter(|(k, _)| k == HEADER_REPLAY_COUNT)
        .find_map(|(_, v)| v.as_deref().and_then(|v| std::str::from_utf8(v).ok()))
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0);
    let before = record.clone();
    let inbound = crm_sync::kafka::inbound(record);
    assert_eq!(inbound.replay_count, expected_count, "x-replay-count");
    assert_eq!(inbound.source.topic, before.position.topic);
    assert_eq!(inbound.source.partition, before.position.partition);
    assert_eq!(inbound.source.offset, before.position.offset);
    assert_eq!(inbound.key, before.key);
    assert_eq!(inbound.payload, before.payload);
    assert_eq!(inbound.oversized, before.oversized);
}

fn check_letter(l: &Letter) {
    let reason = l.reason.repeat(usize::from(l.repeat) + 1);
    let letter = DeadLetter {
        source: l
            .source
            .as_ref()
            .map(|(topic, partition, offset)| RecordPosition {
                topic: topic.clone(),
                partition: *partition,
                offset: *offset,
            }),
        key: l.key.clone(),
        payload: l.payload.clone(),
        withheld_bytes: l.withheld_bytes,
        reason_code: l.reason_code.clone(),
        reason: reason.clone(),
        attempts: l.attempts,
        replay_count: l.replay_count,
        event_id: l.event_id.clone(),
    };
    let headers = letter.headers();
    let reasons: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k == HEADER_REASON)
        .map(|(_, v)| v.as_str())
        .collect();
    let [written] = reasons[..] else {
        panic!("{} x-dlq-reason headers", reasons.len());
    };
    assert!(
        written.len() <= MAX_REASON_BYTES,
        "a {}-byte x-dlq-reason",
        written.len()
    );
    assert!(
        !written.chars().any(char::is_control),
        "x-dlq-reason has a control character: {written:?}"
    );
    // What was written is the start of the blanked reason, cut only where the next character
    // would pass the limit.
    let blanked: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    assert!(
        blanked.starts_with(written),
        "x-dlq-reason is not the reason's start"
    );
    if let Some(next) = blanked[written.len()..].chars().next() {
        assert!(
            written.len() + next.len_utf8() > MAX_REASON_BYTES,
            "x-dlq-reason cut short at {} bytes",
            written.len()
        );
    }
    let counts: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k == HEADER_REPLAY_COUNT)
        .map(|(_, v)| v.as_str())
        .collect();
    let expected = l.replay_count.map(|n| n.to_string());
    assert_eq!(
        counts,
        expected.as_deref().into_iter().collect::<Vec<_>>(),
        "x-replay-count"
    );
}
