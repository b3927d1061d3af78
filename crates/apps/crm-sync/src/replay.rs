//! `crm-sync dlq replay`: sends chosen dead letters back to their source topic with their replay
//! count raised, so the pipeline treats them as new attempts rather than duplicates.

use crate::kafka::KafkaConfig;
use backbone_kafka::{read_dead_letters, KafkaPublisher, OutgoingRecord, ReplayFilter, HEADER_REPLAY_COUNT};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct ReplaySummary {
    pub matched: usize,
    pub replayed: usize,
    pub dry_run: bool,
    pub letters: Vec<ReplayedLetter>,
}

#[derive(Debug, Serialize)]
pub struct ReplayedLetter {
    pub partition: i32,
    pub offset: i64,
    pub event_id: Option<String>,
    pub reason_code: Option<String>,
    pub target_topic: String,
    pub replay_count: u32,
}

pub async fn replay_dead_letters(
    kafka: &KafkaConfig,
    filter: ReplayFilter,
    limit: Option<usize>,
    dry_run: bool,
) -> anyhow::Result<ReplaySummary> {
    let settings = kafka.client.clone();
    let group = format!("{}-dlq-reader", kafka.group());
    let topic = kafka.dead_letter_topic.clone();
    let mut letters =
        tokio::task::spawn_blocking(move || read_dead_letters(&settings, &group, &topic, &filter)).await??;
    if let Some(limit) = limit {
        letters.truncate(limit);
    }
    let planned: Vec<ReplayedLetter> = letters
        .iter()
        .map(|l| ReplayedLetter {
            partition: l.partition,
            offset: l.offset,
            event_id: l.header("x-event-id").map(str::to_owned),
            reason_code: l.header("x-dlq-reason-code").map(str::to_owned),
            target_topic: l.source_topic().unwrap_or(&kafka.input_topic).to_owned(),
            replay_count: l.replay_count() + 1,
        })
        .collect();
    if dry_run || letters.is_empty() {
        return Ok(ReplaySummary {
            matched: planned.len(),
            replayed: 0,
            dry_run,
            letters: planned,
        });
    }
    let publisher = KafkaPublisher::new(&kafka.client)?;
    let records = letters
        .iter()
        .zip(&planned)
        .map(|(l, p)| OutgoingRecord {
            topic: &p.target_topic,
            key: l.key.as_deref(),
            payload: l.payload.as_deref(),
            headers: vec![
                (HEADER_REPLAY_COUNT.to_owned(), p.replay_count.to_string()),
                (
                    "x-replayed-from".to_owned(),
                    format!("{}/{}/{}", kafka.dead_letter_topic, l.partition, l.offset),
                ),
            ],
        })
        .collect();
    publisher.send_all(records).await?;
    Ok(ReplaySummary {
        matched: planned.len(),
        replayed: planned.len(),
        dry_run,
        letters: planned,
    })
}
