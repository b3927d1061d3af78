//! Reading a dead-letter topic back: the letters present now, filtered, one at a time (for the
//! replay in `crate::replay` and the services' admin APIs).

use crate::dead_letter::{HEADER_EVENT_ID, HEADER_REASON_CODE, HEADER_REPLAY_COUNT, HEADER_SOURCE_TOPIC};
use crate::{KafkaError, KafkaSettings};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// One dead letter as read back.
#[derive(Debug, Clone)]
pub struct DeadLetterView {
    pub partition: i32,
    pub offset: i64,
    /// When it was dead-lettered (the record's timestamp).
    pub dead_lettered_at: Option<OffsetDateTime>,
    pub key: Option<Vec<u8>>,
    /// `None` for a letter without a value (a tombstone, or a value withheld as too large).
    pub payload: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
}

impl DeadLetterView {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn replay_count(&self) -> u32 {
        self.header(HEADER_REPLAY_COUNT)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub fn source_topic(&self) -> Option<&str> {
        self.header(HEADER_SOURCE_TOPIC)
    }
}

/// Which dead letters to replay; every set field must match.
#[derive(Debug, Clone, Default)]
pub struct ReplayFilter {
    pub event_id: Option<String>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    pub reason_code: Option<String>,
    /// Only the letters at these (partition, offset) positions; empty for any. A scan with
    /// positions reads only their partitions, from the lowest position on.
    pub positions: Vec<(i32, i64)>,
}

impl ReplayFilter {
    pub fn matches(&self, l: &DeadLetterView) -> bool {
        let at = l.dead_lettered_at;
        self.event_id
            .as_deref()
            .is_none_or(|id| l.header(HEADER_EVENT_ID) == Some(id))
            && self
                .reason_code
                .as_deref()
                .is_none_or(|r| l.header(HEADER_REASON_CODE) == Some(r))
            && self.since.is_none_or(|s| at.is_some_and(|t| t >= s))
            && self.until.is_none_or(|u| at.is_some_and(|t| t < u))
            && (self.positions.is_empty() || self.positions.contains(&(l.partition, l.offset)))
    }

    /// Where to read partition `p` of a topic holding offsets `low..high`: `None` when it cannot
    /// hold a match, else the first offset and the end (exclusive).
    fn span(&self, p: i32, low: i64, high: i64) -> Option<(i64, i64)> {
        if self.positions.is_empty() {
            return (high > low).then_some((low, high));
        }
        let wanted = self
            .positions
            .iter()
            .filter(|(part, _)| *part == p)
            .map(|(_, o)| *o);
        let (first, last) = wanted.fold(None, |acc: Option<(i64, i64)>, o| {
            Some(acc.map_or((o, o), |(a, b)| (a.min(o), b.max(o))))
        })?;
        let (start, end) = (first.max(low), (last + 1).min(high));
        (end > start).then_some((start, end))
    }
}

/// Reads every dead letter of `topic` present now (up to each partition's high watermark) that
/// matches, as a member of `group` that never commits.
pub fn read_dead_letters(
    settings: &KafkaSettings,
    group: &str,
    topic: &str,
    filter: &ReplayFilter,
) -> Result<Vec<DeadLetterView>, KafkaError> {
    let mut out = Vec::new();
    scan_dead_letters(settings, group, topic, filter, None, |view| {
        out.push(view);
        true
    })?;
    Ok(out)
}

/// Streams the dead letters of `topic` present now that match to `visit`, one at a time, and
/// stops after `limit` matches or when `visit` returns `false`: nothing is held in memory but
/// the letter at hand. Returns how many matched.
pub fn scan_dead_letters(
    settings: &KafkaSettings,
    group: &str,
    topic: &str,
    filter: &ReplayFilter,
    limit: Option<usize>,
    mut visit: impl FnMut(DeadLetterView) -> bool,
) -> Result<usize, KafkaError> {
    if limit == Some(0) {
        return Ok(0);
    }
    let consumer: BaseConsumer = settings
        .client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        if let Some((start, end)) = filter.span(p, low, high) {
            remaining.insert(p, end);
            tpl.add_partition_offset(topic, p, Offset::Offset(start))?;
        }
    }
    if remaining.is_empty() {
        return Ok(0);
    }
    consumer.assign(&tpl)?;
    let mut matched = 0;
    let mut last_progress = Instant::now();
    while !remaining.is_empty() {
        if last_progress.elapsed() > timeout {
            return Err(KafkaError::new(format!(
                "reading {topic} stalled before its high watermark (partitions left: {:?})",
                remaining.keys().collect::<Vec<_>>()
            )));
        }
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = msg?;
        last_progress = Instant::now();
        if remaining
            .get(&m.partition())
            .is_some_and(|high| m.offset() + 1 >= *high)
        {
            remaining.remove(&m.partition());
        }
        let mut headers = BTreeMap::new();
        if let Some(hs) = m.headers() {
            for h in hs.iter() {
                if let Some(v) = h.value.and_then(|v| std::str::from_utf8(v).ok()) {
                    headers.insert(h.key.to_owned(), v.to_owned());
                }
            }
        }
        let view = DeadLetterView {
            partition: m.partition(),
            offset: m.offset(),
            dead_lettered_at: m
                .timestamp()
                .to_millis()
                .and_then(|ms| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
        };
        if filter.matches(&view) {
            matched += 1;
            if !visit(view) || limit.is_some_and(|l| matched >= l) {
                break;
            }
        }
    }
    Ok(matched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn letter(event: &str, reason: &str, at: OffsetDateTime) -> DeadLetterView {
        DeadLetterView {
            partition: 0,
            offset: 0,
            dead_lettered_at: Some(at),
            key: None,
            payload: None,
            headers: [(HEADER_EVENT_ID, event), (HEADER_REASON_CODE, reason)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }

    #[test]
    fn positions_narrow_the_partitions_and_offsets_read() {
        let any = ReplayFilter::default();
        assert_eq!(any.span(0, 3, 10), Some((3, 10)));
        assert_eq!(any.span(0, 10, 10), None, "an empty partition is not read");
        let some = ReplayFilter {
            positions: vec![(1, 5), (1, 7), (2, 40)],
            ..Default::default()
        };
        assert_eq!(some.span(0, 0, 100), None, "no position there");
        assert_eq!(
            some.span(1, 0, 100),
            Some((5, 8)),
            "from the lowest to past the highest"
        );
        assert_eq!(
            some.span(1, 6, 7),
            Some((6, 7)),
            "within what the partition holds"
        );
        assert_eq!(some.span(2, 0, 30), None, "compacted or not yet written");
        let mut l = letter("e1", "crm_rejected", datetime!(2026-11-01 10:00 UTC));
        (l.partition, l.offset) = (1, 7);
        assert!(some.matches(&l));
        l.offset = 6;
        assert!(!some.matches(&l));
    }

    #[test]
    fn filter_fields_all_have_to_match() {
        let l = letter("e1", "crm_rejected", datetime!(2026-11-01 10:00 UTC));
        assert!(ReplayFilter::default().matches(&l));
        assert!(ReplayFilter {
            event_id: Some("e1".into()),
            ..Default::default()
        }
        .matches(&l));
        assert!(!ReplayFilter {
            event_id: Some("e2".into()),
            ..Default::default()
        }
        .matches(&l));
        assert!(!ReplayFilter {
            reason_code: Some("malformed_json".into()),
            ..Default::default()
        }
        .matches(&l));
        let window = ReplayFilter {
            since: Some(datetime!(2026-11-01 09:00 UTC)),
            until: Some(datetime!(2026-11-01 10:00 UTC)),
            ..Default::default()
        };
        assert!(!window.matches(&l), "until is exclusive");
        let window = ReplayFilter {
            until: Some(datetime!(2026-11-01 10:01 UTC)),
            ..window
        };
        assert!(window.matches(&l));
    }
}
