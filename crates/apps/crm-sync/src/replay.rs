//! `crm-sync dlq replay`: sends chosen dead letters back to their source topic with their replay
//! count raised, so the pipeline treats them as new attempts rather than duplicates.
//!
//! Letters are streamed: read one at a time from the dead-letter topic and published in chunks,
//! so a replay of millions holds a chunk in memory, not the topic. A letter goes back only to a
//! topic on the allow-list (`kafka.input_topic` and `kafka.replay_topics`): its `x-source-topic`
//! header is data anyone who can write the dead-letter topic chooses, never an instruction.

use crate::kafka::KafkaConfig;
use backbone_kafka::{
    scan_dead_letters, DeadLetterView, KafkaPublisher, OutgoingRecord, ReplayFilter, HEADER_REPLAY_COUNT,
};
use serde::Serialize;
use tokio::sync::mpsc;

/// Letters published per broker round trip.
const CHUNK: usize = 500;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReplaySummary {
    pub matched: usize,
    pub replayed: usize,
    /// Matched letters not sent because their source topic is not on the allow-list.
    pub refused: usize,
    pub dry_run: bool,
    pub letters: Vec<ReplayedLetter>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReplayedLetter {
    pub partition: i32,
    pub offset: i64,
    pub event_id: Option<String>,
    pub reason_code: Option<String>,
    pub target_topic: String,
    pub replay_count: u32,
    /// Why the letter was not sent, if it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

impl ReplayedLetter {
    fn of(l: &DeadLetterView, kafka: &KafkaConfig) -> Self {
        let target = l.source_topic().unwrap_or(&kafka.input_topic).to_owned();
        let allowed = target == kafka.input_topic || kafka.replay_topics.contains(&target);
        Self {
            partition: l.partition,
            offset: l.offset,
            event_id: l.header("x-event-id").map(str::to_owned),
            reason_code: l.header("x-dlq-reason-code").map(str::to_owned),
            refused: (!allowed)
                .then(|| "x-source-topic is not kafka.input_topic or one of kafka.replay_topics".to_owned()),
            target_topic: target,
            replay_count: l.replay_count() + 1,
        }
    }
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
    let settings = kafka.client.clone();
    let group = format!("{}-dlq-reader", kafka.group());
    let topic = kafka.dead_letter_topic.clone();
    let (tx, mut rx) = mpsc::channel::<DeadLetterView>(CHUNK);
    let reader = tokio::task::spawn_blocking(move || {
        scan_dead_letters(&settings, &group, &topic, &filter, limit, |view| {
            tx.blocking_send(view).is_ok()
        })
    });
    let publisher = if dry_run {
        None
    } else {
        Some(KafkaPublisher::new(&kafka.client)?)
    };
    let mut summary = ReplaySummary {
        matched: 0,
        replayed: 0,
        refused: 0,
        dry_run,
        letters: Vec::new(),
    };
    let mut chunk = Vec::with_capacity(CHUNK);
    while let Some(view) = rx.recv().await {
        let planned = ReplayedLetter::of(&view, kafka);
        summary.matched += 1;
        if planned.refused.is_some() {
            summary.refused += 1;
            tracing::warn!(
                partition = planned.partition,
                offset = planned.offset,
                target = %planned.target_topic,
                "dead letter not replayed: its source topic is not allowed"
            );
        } else if publisher.is_some() {
            chunk.push((view, planned.target_topic.clone(), planned.replay_count));
        }
        summary.letters.push(planned);
        if chunk.len() >= CHUNK {
            summary.replayed += publish(publisher.as_ref(), kafka, &mut chunk, by).await?;
        }
    }
    reader.await??;
    summary.replayed += publish(publisher.as_ref(), kafka, &mut chunk, by).await?;
    Ok(summary)
}

/// Publishes and empties `chunk`; returns how many were sent.
async fn publish(
    publisher: Option<&KafkaPublisher>,
    kafka: &KafkaConfig,
    chunk: &mut Vec<(DeadLetterView, String, u32)>,
    by: Option<&str>,
) -> anyhow::Result<usize> {
    let Some(publisher) = publisher else {
        return Ok(0);
    };
    if chunk.is_empty() {
        return Ok(0);
    }
    let records = chunk
        .iter()
        .map(|(l, target, replay_count)| {
            let mut headers = vec![
                (HEADER_REPLAY_COUNT.to_owned(), replay_count.to_string()),
                (
                    "x-replayed-from".to_owned(),
                    format!("{}/{}/{}", kafka.dead_letter_topic, l.partition, l.offset),
                ),
            ];
            if let Some(by) = by {
                headers.push(("x-replayed-by".to_owned(), by.to_owned()));
            }
            OutgoingRecord {
                topic: target,
                key: l.key.as_deref(),
                payload: l.payload.as_deref(),
                headers,
            }
        })
        .collect();
    publisher.send_all(records).await?;
    let sent = chunk.len();
    chunk.clear();
    Ok(sent)
}
