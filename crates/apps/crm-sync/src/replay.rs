//! `crm-sync dlq replay`: sends chosen dead letters back to their source topic with their replay
//! count raised, so the pipeline treats them as new attempts rather than duplicates.
//!
//! The replay itself is the shared one ([`backbone_kafka::replay_letters`]: letters streamed and
//! published in chunks, `x-replay-count`, `x-replayed-from`, `x-replayed-by`), and so is its JSON
//! ([`ReplaySummary`]); this module gives it crm-sync's dead-letter topic and allow-list. A letter
//! goes back only to `kafka.input_topic` or one of `kafka.replay_topics` (a letter without
//! `x-source-topic` goes to `kafka.input_topic`): its `x-source-topic` header is data anyone who
//! can write the dead-letter topic chooses, never an instruction.

use crate::kafka::KafkaConfig;
use backbone_kafka::{replay_letters, DeadLetterSource, ReplayFilter, ReplayPolicy, ReplayRequest};

/// What a replay did, as this command prints it and the admin API answers it.
pub use backbone_kafka::{ReplaySummary, ReplayedLetter};

/// Why a letter whose source topic is not on crm-sync's allow-list is not sent.
const REFUSAL: &str = "x-source-topic is not kafka.input_topic or one of kafka.replay_topics";

/// crm-sync's dead-letter topic, read as `<group>-dlq-reader`; letters are known by their
/// `x-event-id` header.
pub(crate) fn source(kafka: &KafkaConfig) -> DeadLetterSource {
    DeadLetterSource::new(
        kafka.client.clone(),
        format!("{}-dlq-reader", kafka.group()),
        kafka.dead_letter_topic.clone(),
    )
}

/// Where letters may go back to: `kafka.input_topic` (also for a letter naming no topic) and
/// `kafka.replay_topics`.
fn policy(kafka: &KafkaConfig) -> ReplayPolicy {
    let allowed = std::iter::once(kafka.input_topic.clone())
        .chain(kafka.replay_topics.iter().cloned())
        .collect();
    ReplayPolicy::new(allowed, REFUSAL).with_fallback_topic(kafka.input_topic.clone())
}

pub async fn replay_dead_letters(
    kafka: &KafkaConfig,
    filter: ReplayFilter,
    limit: Option<usize>,
    dry_run: bool,
) -> anyhow::Result<ReplaySummary> {
    replay_dead_letters_by(kafka, filter, limit, dry_run, None).await
}

/// [`replay_dead_letters`] on behalf of a person: each record sent carries `x-replayed-by`.
pub async fn replay_dead_letters_by(
    kafka: &KafkaConfig,
    filter: ReplayFilter,
    limit: Option<usize>,
    dry_run: bool,
    by: Option<&str>,
) -> anyhow::Result<ReplaySummary> {
    let request = ReplayRequest {
        filter,
        limit,
        dry_run,
        by,
    };
    let outcome = replay_letters(&source(kafka), &policy(kafka), request).await?;
    Ok(outcome.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use backbone_kafka::{DeadLetterView, ReplayOutcome};

    fn letter(source_topic: Option<&str>) -> DeadLetterView {
        DeadLetterView {
            partition: 0,
            offset: 9,
            dead_lettered_at: None,
            key: None,
            payload: Some(br#"{"event_id": "ev-in-payload"}"#.to_vec()),
            headers: source_topic
                .map(|t| ("x-source-topic".to_owned(), t.to_owned()))
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn the_allow_list_is_the_input_topic_and_the_replay_topics() {
        let kafka = KafkaConfig {
            replay_topics: vec!["tracking.events.retry".into()],
            ..KafkaConfig::default()
        };
        let (source, policy) = (source(&kafka), policy(&kafka));
        let plan = |t| ReplayedLetter::from(policy.plan(&source, &letter(t)));
        let nameless = plan(None);
        assert_eq!(
            (nameless.target_topic.as_str(), nameless.refused),
            ("tracking.events", None)
        );
        assert_eq!(
            nameless.event_id, None,
            "crm-sync names letters by x-event-id only"
        );
        assert!(plan(Some("tracking.events.retry")).refused.is_none());
        let forged = plan(Some("elsewhere"));
        assert_eq!(forged.target_topic, "elsewhere");
        assert_eq!(forged.refused.as_deref(), Some(REFUSAL));
    }

    #[test]
    fn the_summary_json_keeps_its_fields() {
        let kafka = KafkaConfig::default();
        let outcome = ReplayOutcome {
            matched: 2,
            replayed: 1,
            refused: 1,
            dry_run: false,
            letters: vec![
                policy(&kafka).plan(&source(&kafka), &letter(None)),
                policy(&kafka).plan(&source(&kafka), &letter(Some("elsewhere"))),
            ],
        };
        let json = serde_json::to_value(ReplaySummary::from(outcome)).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({
                "matched": 2, "replayed": 1, "refused": 1, "dry_run": false,
                "letters": [
                    {"partition": 0, "offset": 9, "event_id": null, "reason_code": null,
                     "target_topic": "tracking.events", "replay_count": 1},
                    {"partition": 0, "offset": 9, "event_id": null, "reason_code": null,
                     "target_topic": "elsewhere", "replay_count": 1, "refused": REFUSAL},
                ]
            })
        );
    }
}
