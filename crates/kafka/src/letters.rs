//! The dead-letter admin API's wire shapes, defined once for every service that serves it (one
//! console page shows them all): a list of letters ([`DeadLetterList`] of [`DeadLetterSummary`]),
//! one letter with its headers and its payload masked ([`DeadLetterDetail`]), a replay's body
//! ([`DeadLetterReplayRequest`]) and what it did ([`ReplaySummary`]).
//!
//! What a list or a replay selects is parsed here too ([`select_letters`], [`list_limit`],
//! [`DeadLetterReplayRequest::selection`]); a refusal is a [`SelectionError`] that each service
//! answers with its own problem document. The text a letter shows passes through the service's
//! scrubber: a service whose letters may carry secrets cuts them, another shows text as it is.

use crate::dead_letter::{HEADER_REASON, HEADER_REASON_CODE};
use crate::dlq::{DeadLetterView, ReplayFilter};
use crate::mask::mask_payload;
use crate::replay::{PlannedReplay, ReplayOutcome};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// Letters a list shows when no `limit` is given.
pub const DEFAULT_LISTED_LETTERS: usize = 50;
/// The most letters one list shows.
pub const MAX_LISTED_LETTERS: usize = 500;
/// The most letters one replay matches, and the most positions it names.
pub const MAX_REPLAYED_LETTERS: usize = 1000;

// The letters present now that match a list, in topic order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetterList {
    /// In topic order (partition by partition), without payloads.
    pub letters: Vec<DeadLetterSummary>,
    /// The list stopped at `limit`: there may be more.
    pub truncated: bool,
}

impl DeadLetterList {
    /// `letters`, as read with `limit`: a full list may stop short of more.
    pub fn new(letters: Vec<DeadLetterSummary>, limit: usize) -> Self {
        Self {
            truncated: letters.len() >= limit,
            letters,
        }
    }
}

/// A letter in a list: where it is and why it is there, without its payload.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetterSummary {
    pub partition: i32,
    pub offset: i64,
    /// When it was dead-lettered (the record's timestamp).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub dead_lettered_at: Option<OffsetDateTime>,
    /// `x-event-id`, else, where the service reads it there, the `event_id` its value keeps.
    pub event_id: Option<String>,
    /// `x-dlq-reason-code`.
    pub reason_code: Option<String>,
    /// `x-dlq-reason`.
    pub reason: Option<String>,
    /// `x-source-topic`; `null` for a letter the service wrote itself.
    pub source_topic: Option<String>,
    /// `x-replay-count`; 0 when absent.
    pub replay_count: u32,
}

impl DeadLetterSummary {
    /// `letter` as a list shows it, named by `event_id` (what the service's
    /// [`DeadLetterSource::event_id`](crate::DeadLetterSource::event_id) reads), its time in UTC;
    /// the event id, reason code and reason pass through `scrub`.
    pub fn new(letter: &DeadLetterView, event_id: Option<String>, scrub: impl Fn(&str) -> String) -> Self {
        let header = |name: &str| letter.header(name).map(&scrub);
        Self {
            partition: letter.partition,
            offset: letter.offset,
            dead_lettered_at: letter.dead_lettered_at.map(|at| at.to_offset(UtcOffset::UTC)),
            event_id: event_id.as_deref().map(&scrub),
            reason_code: header(HEADER_REASON_CODE),
            reason: header(HEADER_REASON),
            source_topic: letter.source_topic().map(str::to_owned),
            replay_count: letter.replay_count(),
        }
    }
}

/// One letter: its headers, key and masked payload.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetterDetail {
    #[serde(flatten)]
    pub summary: DeadLetterSummary,
    pub headers: BTreeMap<String, String>,
    pub key: Option<String>,
    /// The value with only the service's clear fields (its identifiers, status and the like) in
    /// clear; every other value masked (a string longer than 8 characters keeps its last 4 after
    /// `***`, any other value is `***`); `{"not_json": true}` for a value that is not JSON, `null`
    /// for none.
    #[schema(value_type = Object)]
    pub payload: Value,
    /// The value's size in bytes.
    pub payload_bytes: usize,
}

impl DeadLetterDetail {
    /// `letter` as one letter shows it: its summary ([`DeadLetterSummary::new`]), its payload as
    /// [`shown_payload`] shows it with `clear_fields`, and its key and header values through
    /// `scrub`.
    pub fn new(
        letter: &DeadLetterView,
        event_id: Option<String>,
        clear_fields: &[&str],
        scrub: impl Fn(&str) -> String,
    ) -> Self {
        Self {
            summary: DeadLetterSummary::new(letter, event_id, &scrub),
            headers: letter
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), scrub(value)))
                .collect(),
            key: letter.key.as_deref().map(|k| scrub(&String::from_utf8_lossy(k))),
            payload: shown_payload(letter.payload.as_deref(), clear_fields, &scrub),
            payload_bytes: letter.payload.as_ref().map_or(0, Vec::len),
        }
    }
}

/// The payload as an operator may see it: [`mask_payload`] with `clear_fields`, then each
/// top-level text passed through `scrub`.
pub fn shown_payload(payload: Option<&[u8]>, clear_fields: &[&str], scrub: impl Fn(&str) -> String) -> Value {
    let mut shown = mask_payload(payload, clear_fields);
    if let Value::Object(fields) = &mut shown {
        for value in fields.values_mut() {
            if let Value::String(s) = value {
                *s = scrub(s);
            }
        }
    }
    shown
}

// A replay's body: the letters that match every criterion given, at most `limit` of them.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterReplayRequest {
    // In this order: serde names the fields so when it refuses an unknown one, and crm-sync
    // answers its message.
    #[serde(default)]
    pub event_id: Option<String>,
    /// A reason code (`x-dlq-reason-code`).
    #[serde(default)]
    pub reason: Option<String>,
    /// Dead-lettered at or after (RFC 3339).
    #[serde(default)]
    pub since: Option<String>,
    /// Dead-lettered before (RFC 3339).
    #[serde(default)]
    pub until: Option<String>,
    /// Only these letters (at most 1000); any when empty or absent.
    #[serde(default)]
    #[schema(max_items = 1000)]
    pub letters: Vec<LetterPosition>,
    /// 1 to 1000; 1000 when absent.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Required: `true` lists what would be sent, `false` sends it.
    pub dry_run: bool,
}

// Where a letter is in the dead-letter topic.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LetterPosition {
    pub partition: i32,
    pub offset: i64,
}

/// Why a list's or a replay's selection is refused; each service answers it with its own
/// problem document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectionError {
    /// `field` (`since` or `until`) is not an RFC 3339 time.
    Time { field: &'static str },
    /// `limit` is not in `1..=max`.
    Limit { max: usize },
    /// More than `max` letters are named.
    TooManyLetters { max: usize },
}

impl SelectionError {
    /// The field refused.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Time { field } => field,
            Self::Limit { .. } => "limit",
            Self::TooManyLetters { .. } => "letters",
        }
    }
}

/// A list's `limit`: [`DEFAULT_LISTED_LETTERS`] when absent, else 1 to [`MAX_LISTED_LETTERS`].
pub fn list_limit(limit: Option<usize>) -> Result<usize, SelectionError> {
    bounded(limit, DEFAULT_LISTED_LETTERS, MAX_LISTED_LETTERS)
}

fn bounded(limit: Option<usize>, default: usize, max: usize) -> Result<usize, SelectionError> {
    let limit = limit.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(SelectionError::Limit { max })
    }
}

/// The letters a list or a replay selects: `since` and `until` are RFC 3339 times (an empty one
/// is no bound); an event id or reason code that is empty or blank is no criterion.
pub fn select_letters(
    event_id: Option<String>,
    reason: Option<String>,
    since: Option<&str>,
    until: Option<&str>,
) -> Result<ReplayFilter, SelectionError> {
    Ok(ReplayFilter {
        since: time_of("since", since)?,
        until: time_of("until", until)?,
        event_id: non_blank(event_id),
        reason_code: non_blank(reason),
        positions: Vec::new(),
    })
}

fn time_of(field: &'static str, raw: Option<&str>) -> Result<Option<OffsetDateTime>, SelectionError> {
    raw.filter(|s| !s.is_empty())
        .map(|s| OffsetDateTime::parse(s, &Rfc3339).map_err(|_| SelectionError::Time { field }))
        .transpose()
}

fn non_blank(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}

/// What a replay's body selects, its bounds checked.
#[derive(Debug, Clone)]
pub struct ReplaySelection {
    pub filter: ReplayFilter,
    /// 1 to [`MAX_REPLAYED_LETTERS`].
    pub limit: usize,
    pub dry_run: bool,
}

impl DeadLetterReplayRequest {
    /// The letters this body selects: `limit` 1 to [`MAX_REPLAYED_LETTERS`] (that many when
    /// absent), at most as many positions, the rest as [`select_letters`] reads it; refused in
    /// that order.
    pub fn selection(self) -> Result<ReplaySelection, SelectionError> {
        let limit = bounded(self.limit, MAX_REPLAYED_LETTERS, MAX_REPLAYED_LETTERS)?;
        if self.letters.len() > MAX_REPLAYED_LETTERS {
            return Err(SelectionError::TooManyLetters {
                max: MAX_REPLAYED_LETTERS,
            });
        }
        let filter = ReplayFilter {
            positions: self.letters.iter().map(|p| (p.partition, p.offset)).collect(),
            ..select_letters(
                self.event_id,
                self.reason,
                self.since.as_deref(),
                self.until.as_deref(),
            )?
        };
        Ok(ReplaySelection {
            filter,
            limit,
            dry_run: self.dry_run,
        })
    }
}

/// What a replay matched, sent and refused: the JSON of crm-sync's replay.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReplaySummary {
    pub matched: usize,
    pub replayed: usize,
    /// Matched letters not sent because their source topic is not on the allow-list.
    pub refused: usize,
    pub dry_run: bool,
    pub letters: Vec<ReplayedLetter>,
}

impl ReplaySummary {
    /// `outcome` as answered, each letter's event id through `scrub`.
    pub fn new(outcome: ReplayOutcome, scrub: impl Fn(&str) -> String) -> Self {
        Self {
            matched: outcome.matched,
            replayed: outcome.replayed,
            refused: outcome.refused,
            dry_run: outcome.dry_run,
            letters: outcome
                .letters
                .into_iter()
                .map(|p| ReplayedLetter::new(p, &scrub))
                .collect(),
        }
    }
}

impl From<ReplayOutcome> for ReplaySummary {
    fn from(outcome: ReplayOutcome) -> Self {
        Self::new(outcome, str::to_owned)
    }
}

// One matched letter of a replay.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReplayedLetter {
    pub partition: i32,
    pub offset: i64,
    pub event_id: Option<String>,
    pub reason_code: Option<String>,
    /// Where it goes (or would go); empty for a letter naming no topic, unless the service has a
    /// fallback topic.
    pub target_topic: String,
    /// The `x-replay-count` it is sent with.
    pub replay_count: u32,
    /// Why it is not sent, if it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

impl ReplayedLetter {
    /// `planned` as answered, its event id through `scrub`.
    pub fn new(planned: PlannedReplay, scrub: impl Fn(&str) -> String) -> Self {
        Self {
            partition: planned.partition,
            offset: planned.offset,
            event_id: planned.event_id.as_deref().map(scrub),
            reason_code: planned.reason_code,
            target_topic: planned.target_topic,
            replay_count: planned.replay_count,
            refused: planned.refused,
        }
    }
}

impl From<PlannedReplay> for ReplayedLetter {
    fn from(planned: PlannedReplay) -> Self {
        Self::new(planned, str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead_letter::{HEADER_EVENT_ID, HEADER_REPLAY_COUNT, HEADER_SOURCE_TOPIC};
    use serde_json::json;

    fn letter() -> DeadLetterView {
        DeadLetterView {
            partition: 1,
            offset: 7,
            dead_lettered_at: OffsetDateTime::parse("2026-11-01T13:00:00+03:00", &Rfc3339).ok(),
            key: Some(b"key-SECRET".to_vec()),
            payload: Some(
                br#"{"event_id": "ev-SECRET", "status": "SECRET", "client_id": "client-000123"}"#.to_vec(),
            ),
            headers: [
                (HEADER_EVENT_ID, "ev-1"),
                (HEADER_REASON_CODE, "invalid_field"),
                (HEADER_REASON, "a SECRET field"),
                (HEADER_SOURCE_TOPIC, "orders-SECRET"),
                (HEADER_REPLAY_COUNT, "2"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        }
    }

    fn cut(text: &str) -> String {
        text.replace("SECRET", "***")
    }

    #[test]
    fn a_summary_and_a_detail_keep_their_fields_and_scrub_what_they_show() {
        let detail = DeadLetterDetail::new(&letter(), Some("ev-1".into()), &["event_id", "status"], cut);
        assert_eq!(
            serde_json::to_value(&detail).expect("serializes"),
            json!({
                "partition": 1, "offset": 7, "dead_lettered_at": "2026-11-01T10:00:00Z",
                "event_id": "ev-1", "reason_code": "invalid_field", "reason": "a *** field",
                "source_topic": "orders-SECRET", "replay_count": 2,
                "headers": {
                    "x-dlq-reason": "a *** field", "x-dlq-reason-code": "invalid_field",
                    "x-event-id": "ev-1", "x-replay-count": "2", "x-source-topic": "orders-***"
                },
                "key": "key-***",
                "payload": {"event_id": "ev-***", "status": "***", "client_id": "***0123"},
                "payload_bytes": letter().payload.map_or(0, |p| p.len()),
            })
        );
        let plain = DeadLetterSummary::new(&letter(), None, str::to_owned);
        assert_eq!(
            (plain.event_id.as_deref(), plain.reason.as_deref()),
            (None, Some("a SECRET field"))
        );
        let list = DeadLetterList::new(vec![plain], 1);
        assert!(list.truncated, "a full list may stop short");
        assert!(!DeadLetterList::new(Vec::new(), 1).truncated);
        assert_eq!(shown_payload(None, &[], cut), Value::Null);
        assert_eq!(shown_payload(Some(b"x"), &[], cut), json!({"not_json": true}));
    }

    #[test]
    fn a_replay_summary_keeps_its_fields_and_names_a_refusal_only_when_there_is_one() {
        let planned = |refused: Option<&str>| PlannedReplay {
            partition: 0,
            offset: 9,
            event_id: Some("ev-SECRET".into()),
            reason_code: None,
            target_topic: "orders".into(),
            replay_count: 1,
            refused: refused.map(str::to_owned),
        };
        let outcome = ReplayOutcome {
            matched: 2,
            replayed: 1,
            refused: 1,
            dry_run: false,
            letters: vec![planned(None), planned(Some("no"))],
        };
        let letter = json!({"partition": 0, "offset": 9, "event_id": "ev-***", "reason_code": null,
                            "target_topic": "orders", "replay_count": 1});
        let mut refused = letter.clone();
        refused["refused"] = json!("no");
        assert_eq!(
            serde_json::to_value(ReplaySummary::new(outcome.clone(), cut)).expect("serializes"),
            json!({"matched": 2, "replayed": 1, "refused": 1, "dry_run": false,
                   "letters": [letter, refused]})
        );
        let plain = ReplaySummary::from(outcome);
        assert_eq!(plain.letters[0].event_id.as_deref(), Some("ev-SECRET"));
    }

    fn request(body: Value) -> Result<DeadLetterReplayRequest, serde_json::Error> {
        serde_json::from_value(body)
    }

    #[test]
    fn a_replay_body_needs_dry_run_and_names_only_its_fields() {
        assert!(request(json!({})).is_err(), "dry_run is required");
        let unknown = request(json!({"dry_run": true, "extra": 1})).expect_err("refused");
        assert!(
            unknown.to_string().starts_with(
                "unknown field `extra`, expected one of `event_id`, `reason`, `since`, `until`, \
                 `letters`, `limit`, `dry_run`"
            ),
            "{unknown}"
        );
        assert!(
            request(json!({"dry_run": true, "letters": [{"partition": 0, "offset": 1, "x": 1}]})).is_err()
        );
        let selection = request(json!({
            "dry_run": true, "letters": [{"partition": 1, "offset": 7}], "event_id": " ",
            "reason": "invalid_field", "since": "2026-11-01T10:00:00Z", "until": ""
        }))
        .expect("a request")
        .selection()
        .expect("a selection");
        assert_eq!((selection.limit, selection.dry_run), (MAX_REPLAYED_LETTERS, true));
        let f = selection.filter;
        assert_eq!(f.positions, vec![(1, 7)]);
        assert_eq!(f.event_id, None, "blank is no criterion");
        assert_eq!(f.reason_code.as_deref(), Some("invalid_field"));
        assert!(f.since.is_some());
        assert_eq!(f.until, None, "empty is no bound");
    }

    #[test]
    fn a_selection_out_of_bounds_is_refused_naming_the_field() {
        let refused = |body: Value| request(body).expect("parses").selection().expect_err("refused");
        assert_eq!(
            refused(json!({"dry_run": true, "limit": 0})),
            SelectionError::Limit { max: 1000 }
        );
        assert_eq!(refused(json!({"dry_run": true, "limit": 1001})).field(), "limit");
        let many: Vec<Value> = (0..1001).map(|o| json!({"partition": 0, "offset": o})).collect();
        assert_eq!(
            refused(json!({"dry_run": true, "letters": many})),
            SelectionError::TooManyLetters { max: 1000 }
        );
        assert_eq!(
            refused(json!({"dry_run": true, "since": "yesterday", "until": "never"})),
            SelectionError::Time { field: "since" }
        );
        assert_eq!(
            refused(json!({"dry_run": true, "until": " "})).field(),
            "until",
            "only an empty time is none"
        );
        assert_eq!(list_limit(None), Ok(DEFAULT_LISTED_LETTERS));
        assert_eq!(list_limit(Some(500)), Ok(500));
        for bad in [0, 501] {
            assert_eq!(list_limit(Some(bad)), Err(SelectionError::Limit { max: 500 }));
        }
    }
}
