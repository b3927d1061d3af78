//! Replaying dead letters: the matching letters of a dead-letter topic go back to the topic they
//! came from with their replay count raised, so the consumer treats each as a new attempt rather
//! than a duplicate. Every service's replay (a command, an admin API) is this code with its own
//! allow-list.
//!
//! Letters are streamed: read one at a time and published in chunks of [`REPLAY_CHUNK`], so a
//! replay of millions holds a chunk in memory, not the topic. A letter goes back only to a topic
//! on the [`ReplayPolicy`]'s allow-list: its `x-source-topic` header is data anyone who can write
//! the dead-letter topic chooses, never an instruction. A dry run lists what would be sent and
//! sends nothing.

use crate::dead_letter::{HEADER_EVENT_ID, HEADER_REASON_CODE, HEADER_REPLAY_COUNT};
use crate::dlq::{scan_dead_letters, DeadLetterView, ReplayFilter};
use crate::{KafkaError, KafkaPublisher, KafkaSettings, OutgoingRecord};
use tokio::sync::mpsc;

/// Where a replayed record was read: `<dead-letter topic>/<partition>/<offset>`.
pub const HEADER_REPLAYED_FROM: &str = "x-replayed-from";
/// Who asked for the replay, when a person did.
pub const HEADER_REPLAYED_BY: &str = "x-replayed-by";
/// Letters published per broker round trip.
pub const REPLAY_CHUNK: usize = 500;
/// The longest event id taken from a payload (a longer one is not an id).
pub const MAX_PAYLOAD_EVENT_ID_BYTES: usize = 128;

/// A dead-letter topic to read back, and how its letters name their event.
#[derive(Debug, Clone)]
pub struct DeadLetterSource {
    pub settings: KafkaSettings,
    /// The consumer group the reader names itself with; it never commits.
    pub group: String,
    /// The dead-letter topic.
    pub topic: String,
    /// A letter without `x-event-id` is known by its payload's top-level `event_id` (a JSON
    /// string of at most [`MAX_PAYLOAD_EVENT_ID_BYTES`] bytes without control characters), for
    /// services whose letters carry the event in their value only. Off: the header alone.
    pub event_id_from_payload: bool,
}

impl DeadLetterSource {
    /// `topic` read as a member of `group`; letters are known by their `x-event-id` header.
    pub fn new(settings: KafkaSettings, group: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            settings,
            group: group.into(),
            topic: topic.into(),
            event_id_from_payload: false,
        }
    }

    /// Letters without `x-event-id` are known by their payload's `event_id`.
    pub fn with_payload_event_ids(mut self) -> Self {
        self.event_id_from_payload = true;
        self
    }

    /// The letter's event id: its `x-event-id` header, else (with
    /// [`event_id_from_payload`](Self::event_id_from_payload)) its payload's `event_id`.
    pub fn event_id(&self, letter: &DeadLetterView) -> Option<String> {
        if let Some(id) = letter.header(HEADER_EVENT_ID) {
            return Some(id.to_owned());
        }
        if !self.event_id_from_payload {
            return None;
        }
        payload_event_id(letter.payload.as_deref()?)
    }

    /// Streams the letters present now that match `filter` (its `event_id` compared with
    /// [`event_id`](Self::event_id)) to `visit`, stopping after `limit` matches or when `visit`
    /// returns `false`. Blocking: call it on a blocking thread. Returns how many matched.
    pub fn scan(
        &self,
        filter: &ReplayFilter,
        limit: Option<usize>,
        mut visit: impl FnMut(DeadLetterView) -> bool,
    ) -> Result<usize, KafkaError> {
        let wanted = match &filter.event_id {
            Some(id) if self.event_id_from_payload => id.clone(),
            _ => return scan_dead_letters(&self.settings, &self.group, &self.topic, filter, limit, visit),
        };
        if limit == Some(0) {
            return Ok(0);
        }
        // The header-only comparison of the filter would miss letters named by their payload.
        let rest = ReplayFilter {
            event_id: None,
            ..filter.clone()
        };
        let mut matched = 0;
        scan_dead_letters(&self.settings, &self.group, &self.topic, &rest, None, |view| {
            if self.event_id(&view).as_deref() != Some(wanted.as_str()) {
                return true;
            }
            matched += 1;
            visit(view) && limit.is_none_or(|l| matched < l)
        })?;
        Ok(matched)
    }

    /// The matching letters present now, at most `limit`, read on a blocking thread.
    pub async fn read(&self, filter: ReplayFilter, limit: usize) -> Result<Vec<DeadLetterView>, KafkaError> {
        let source = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            source
                .scan(&filter, Some(limit), |view| {
                    out.push(view);
                    true
                })
                .map(|_| out)
        })
        .await
        .map_err(|e| KafkaError::new(format!("the dead-letter reader failed: {e}")))?
    }
}

/// The top-level `event_id` of a JSON object payload, when it reads as an id.
fn payload_event_id(payload: &[u8]) -> Option<String> {
    let serde_json::Value::Object(mut fields) = serde_json::from_slice(payload).ok()? else {
        return None;
    };
    let serde_json::Value::String(id) = fields.remove("event_id")? else {
        return None;
    };
    let fits = !id.is_empty() && id.len() <= MAX_PAYLOAD_EVENT_ID_BYTES && !id.chars().any(char::is_control);
    fits.then_some(id)
}

/// Where letters may go back to.
#[derive(Debug, Clone)]
pub struct ReplayPolicy {
    /// The only topics a letter is sent back to.
    pub allowed_topics: Vec<String>,
    /// Where a letter without `x-source-topic` goes; `None` refuses such a letter.
    pub fallback_topic: Option<String>,
    /// Why a letter whose topic is not allowed is refused, naming the settings that allow one.
    pub refusal: String,
}

/// Why a letter naming no topic is refused when the policy has no fallback.
pub const REFUSED_NO_SOURCE_TOPIC: &str = "the letter has no x-source-topic to go back to";

impl ReplayPolicy {
    /// Letters go back only to `allowed_topics`; any other is refused with `refusal`.
    pub fn new(allowed_topics: Vec<String>, refusal: impl Into<String>) -> Self {
        Self {
            allowed_topics,
            fallback_topic: None,
            refusal: refusal.into(),
        }
    }

    /// A letter without `x-source-topic` goes to `topic` (still subject to the allow-list).
    pub fn with_fallback_topic(mut self, topic: impl Into<String>) -> Self {
        self.fallback_topic = Some(topic.into());
        self
    }

    /// What a replay does with `letter`: where it goes with which replay count, or why not.
    pub fn plan(&self, source: &DeadLetterSource, letter: &DeadLetterView) -> PlannedReplay {
        let target = letter.source_topic().or(self.fallback_topic.as_deref());
        let refused = match target {
            None => Some(REFUSED_NO_SOURCE_TOPIC.to_owned()),
            Some(t) if !self.allowed_topics.iter().any(|a| a == t) => Some(self.refusal.clone()),
            Some(_) => None,
        };
        PlannedReplay {
            partition: letter.partition,
            offset: letter.offset,
            event_id: source.event_id(letter),
            reason_code: letter.header(HEADER_REASON_CODE).map(str::to_owned),
            target_topic: target.unwrap_or_default().to_owned(),
            replay_count: letter.replay_count() + 1,
            refused,
        }
    }
}

/// One matched letter of a replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedReplay {
    pub partition: i32,
    pub offset: i64,
    pub event_id: Option<String>,
    pub reason_code: Option<String>,
    /// Where it goes (or would go); empty when the letter names no topic and there is no
    /// fallback.
    pub target_topic: String,
    /// The `x-replay-count` it is sent with: the letter's plus one.
    pub replay_count: u32,
    /// Why it is not sent, if it is not.
    pub refused: Option<String>,
}

/// What to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayRequest<'a> {
    pub filter: ReplayFilter,
    /// At most this many matching letters; all when `None`.
    pub limit: Option<usize>,
    /// List what would be sent, send nothing.
    pub dry_run: bool,
    /// The person replaying: each record sent carries it as `x-replayed-by`.
    pub by: Option<&'a str>,
}

/// What a replay matched, sent and refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayOutcome {
    pub matched: usize,
    pub replayed: usize,
    /// Matched letters not sent because their topic is not on the allow-list.
    pub refused: usize,
    pub dry_run: bool,
    pub letters: Vec<PlannedReplay>,
}

/// The headers a replayed record is sent with: `x-replay-count`, `x-replayed-from`
/// (`<dead_letter_topic>/<partition>/<offset>`) and, when a person asked, `x-replayed-by`.
pub fn replay_headers(
    dead_letter_topic: &str,
    letter: &DeadLetterView,
    replay_count: u32,
    by: Option<&str>,
) -> Vec<(String, String)> {
    let mut headers = vec![
        (HEADER_REPLAY_COUNT.to_owned(), replay_count.to_string()),
        (
            HEADER_REPLAYED_FROM.to_owned(),
            format!("{dead_letter_topic}/{}/{}", letter.partition, letter.offset),
        ),
    ];
    if let Some(by) = by {
        headers.push((HEADER_REPLAYED_BY.to_owned(), by.to_owned()));
    }
    headers
}

/// Replays the letters of `source` that match `request`, as `policy` allows: each allowed one is
/// sent back with [`replay_headers`], each other one is listed with its refusal (and logged). A
/// dry run creates no producer and sends nothing.
pub async fn replay_letters(
    source: &DeadLetterSource,
    policy: &ReplayPolicy,
    request: ReplayRequest<'_>,
) -> Result<ReplayOutcome, KafkaError> {
    let (tx, mut rx) = mpsc::channel::<DeadLetterView>(REPLAY_CHUNK);
    let reader = {
        let (source, filter, limit) = (source.clone(), request.filter.clone(), request.limit);
        tokio::task::spawn_blocking(move || {
            source.scan(&filter, limit, |view| tx.blocking_send(view).is_ok())
        })
    };
    let publisher = if request.dry_run {
        None
    } else {
        Some(KafkaPublisher::new(&source.settings)?)
    };
    let mut outcome = ReplayOutcome {
        dry_run: request.dry_run,
        ..ReplayOutcome::default()
    };
    let mut chunk = Vec::with_capacity(REPLAY_CHUNK);
    while let Some(view) = rx.recv().await {
        let planned = policy.plan(source, &view);
        outcome.matched += 1;
        if planned.refused.is_some() {
            outcome.refused += 1;
            tracing::warn!(
                partition = planned.partition,
                offset = planned.offset,
                target = %planned.target_topic,
                "dead letter not replayed: its source topic is not allowed"
            );
        } else if publisher.is_some() {
            chunk.push((view, planned.target_topic.clone(), planned.replay_count));
        }
        outcome.letters.push(planned);
        if chunk.len() >= REPLAY_CHUNK {
            outcome.replayed += publish(publisher.as_ref(), &source.topic, &mut chunk, request.by).await?;
        }
    }
    reader
        .await
        .map_err(|e| KafkaError::new(format!("the dead-letter reader failed: {e}")))??;
    outcome.replayed += publish(publisher.as_ref(), &source.topic, &mut chunk, request.by).await?;
    Ok(outcome)
}

/// Publishes and empties `chunk` (letter, target topic, replay count); returns how many were
/// sent.
async fn publish(
    publisher: Option<&KafkaPublisher>,
    dead_letter_topic: &str,
    chunk: &mut Vec<(DeadLetterView, String, u32)>,
    by: Option<&str>,
) -> Result<usize, KafkaError> {
    let Some(publisher) = publisher else {
        return Ok(0);
    };
    if chunk.is_empty() {
        return Ok(0);
    }
    let records = chunk
        .iter()
        .map(|(letter, target, replay_count)| OutgoingRecord {
            topic: target,
            key: letter.key.as_deref(),
            payload: letter.payload.as_deref(),
            headers: replay_headers(dead_letter_topic, letter, *replay_count, by),
        })
        .collect();
    publisher.send_all(records).await?;
    let sent = chunk.len();
    chunk.clear();
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead_letter::HEADER_SOURCE_TOPIC;

    fn letter(headers: &[(&str, &str)], payload: Option<&str>) -> DeadLetterView {
        DeadLetterView {
            partition: 2,
            offset: 41,
            dead_lettered_at: None,
            key: Some(b"k".to_vec()),
            payload: payload.map(|p| p.as_bytes().to_vec()),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn source() -> DeadLetterSource {
        DeadLetterSource::new(KafkaSettings::default(), "g", "dead")
    }

    fn policy() -> ReplayPolicy {
        ReplayPolicy::new(vec!["orders".into(), "payments".into()], "not on the list")
    }

    #[test]
    fn a_letter_goes_back_only_to_an_allowed_topic() {
        let from_orders = letter(
            &[
                (HEADER_SOURCE_TOPIC, "orders"),
                (HEADER_REASON_CODE, "invalid_field"),
                (HEADER_EVENT_ID, "ev-1"),
                (HEADER_REPLAY_COUNT, "2"),
            ],
            None,
        );
        assert_eq!(
            policy().plan(&source(), &from_orders),
            PlannedReplay {
                partition: 2,
                offset: 41,
                event_id: Some("ev-1".into()),
                reason_code: Some("invalid_field".into()),
                target_topic: "orders".into(),
                replay_count: 3,
                refused: None,
            }
        );
        let forged = letter(&[(HEADER_SOURCE_TOPIC, "payments.archive")], None);
        let planned = policy().plan(&source(), &forged);
        assert_eq!(planned.target_topic, "payments.archive");
        assert_eq!(planned.refused.as_deref(), Some("not on the list"));
        assert_eq!(planned.replay_count, 1, "no x-replay-count is 0");
    }

    #[test]
    fn a_letter_naming_no_topic_takes_the_fallback_or_is_refused() {
        let nameless = letter(&[(HEADER_REASON_CODE, "sms_failed")], None);
        let refused = policy().plan(&source(), &nameless);
        assert_eq!(refused.refused.as_deref(), Some(REFUSED_NO_SOURCE_TOPIC));
        assert_eq!(refused.target_topic, "");
        let with_fallback = policy().with_fallback_topic("orders");
        let planned = with_fallback.plan(&source(), &nameless);
        assert_eq!((planned.target_topic.as_str(), planned.refused), ("orders", None));
        let elsewhere = ReplayPolicy::new(vec!["orders".into()], "no").with_fallback_topic("input");
        assert_eq!(
            elsewhere.plan(&source(), &nameless).refused.as_deref(),
            Some("no"),
            "the fallback is held to the allow-list too"
        );
    }

    #[test]
    fn replayed_records_carry_the_count_the_origin_and_the_person() {
        let l = letter(&[], None);
        assert_eq!(
            replay_headers("dead", &l, 3, Some("alice")),
            vec![
                ("x-replay-count".to_owned(), "3".to_owned()),
                ("x-replayed-from".to_owned(), "dead/2/41".to_owned()),
                ("x-replayed-by".to_owned(), "alice".to_owned()),
            ]
        );
        assert_eq!(
            replay_headers("dead", &l, 1, None).len(),
            2,
            "nobody named, no header"
        );
    }

    #[test]
    fn the_event_id_comes_from_the_header_then_if_asked_from_the_payload() {
        let body = Some(r#"{"event_id": "order-event-7", "order_id": "o-7"}"#);
        let in_payload = letter(&[], body);
        assert_eq!(
            source().event_id(&in_payload),
            None,
            "the header alone by default"
        );
        let by_payload = source().with_payload_event_ids();
        assert_eq!(by_payload.event_id(&in_payload).as_deref(), Some("order-event-7"));
        let both = letter(&[(HEADER_EVENT_ID, "ev-header")], body);
        assert_eq!(by_payload.event_id(&both).as_deref(), Some("ev-header"));
        let long = "x".repeat(MAX_PAYLOAD_EVENT_ID_BYTES + 1);
        for payload in [
            r#"{"event_id": 7}"#.to_owned(),
            r#"{"event_id": ""}"#.to_owned(),
            r#"{"event_id": "a\nb"}"#.to_owned(),
            format!(r#"{{"event_id": "{long}"}}"#),
            r#"["event_id"]"#.to_owned(),
            "not json".to_owned(),
        ] {
            assert_eq!(
                by_payload.event_id(&letter(&[], Some(&payload))),
                None,
                "{payload}"
            );
        }
        assert_eq!(
            policy().plan(&by_payload, &in_payload).event_id.as_deref(),
            Some("order-event-7")
        );
    }
}
