use crate::{KafkaError, KafkaSettings};
use async_trait::async_trait;
use backbone_sync::ports::{DeadLetter, DeadLetterSink, OutcomeRecord, OutcomeSink, PublishError};
use futures::future::try_join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use std::time::Duration;

/// Dead-letter headers: why, from where, how many tries.
pub const HEADER_REASON: &str = "x-dlq-reason";
pub const HEADER_REASON_CODE: &str = "x-dlq-reason-code";
pub const HEADER_SOURCE_TOPIC: &str = "x-source-topic";
pub const HEADER_SOURCE_PARTITION: &str = "x-source-partition";
pub const HEADER_SOURCE_OFFSET: &str = "x-source-offset";
pub const HEADER_ATTEMPTS: &str = "x-attempts";
pub const HEADER_EVENT_ID: &str = "x-event-id";

/// The idempotent producer behind `crm.sync` and `dead.letters`. Every publish returns only once
/// the broker acknowledged all of its records (`acks=all`).
#[derive(Clone)]
pub struct KafkaPublisher {
    producer: FutureProducer,
    outcome_topic: String,
    dead_letter_topic: String,
}

impl KafkaPublisher {
    pub fn new(settings: &KafkaSettings) -> Result<Self, KafkaError> {
        let mut config = settings.client_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", settings.linger_ms.to_string())
            .set("compression.type", "lz4")
            .set("message.timeout.ms", "30000")
            .set("queue.buffering.max.messages", "1000000");
        // Pass-through properties win (a deployment may shorten timeouts, add TLS, ...).
        for (k, v) in &settings.properties {
            config.set(k, v);
        }
        let producer = config.create()?;
        Ok(Self {
            producer,
            outcome_topic: settings.outcome_topic.clone(),
            dead_letter_topic: settings.dead_letter_topic.clone(),
        })
    }

    /// Publishes records and waits for every acknowledgement.
    pub async fn send_all(&self, records: Vec<OutgoingRecord<'_>>) -> Result<(), KafkaError> {
        let sends = records.into_iter().map(|r| {
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
            for (k, v) in &r.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            let mut record = FutureRecord::to(r.topic).payload(r.payload).headers(headers);
            if let Some(k) = r.key {
                record = record.key(k);
            }
            self.producer
                .send(record, Timeout::After(Duration::from_secs(30)))
        });
        try_join_all(sends)
            .await
            .map_err(|(e, _)| KafkaError(format!("delivery failed: {e}")))?;
        Ok(())
    }

    /// Waits until every queued record is delivered (shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        Ok(self.producer.flush(Timeout::After(timeout))?)
    }
}

/// One record to publish, borrowing its parts.
pub struct OutgoingRecord<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    pub headers: Vec<(String, String)>,
}

#[async_trait]
impl OutcomeSink for KafkaPublisher {
    async fn publish(&self, outcomes: &[OutcomeRecord]) -> Result<(), PublishError> {
        let bodies: Vec<Vec<u8>> = outcomes
            .iter()
            .map(serde_json::to_vec)
            .collect::<Result<_, _>>()
            .map_err(|e| PublishError(e.to_string()))?;
        let trace = backbone_telemetry::current_trace_headers();
        let records = outcomes
            .iter()
            .zip(&bodies)
            .map(|(o, body)| {
                let mut headers = trace.clone();
                headers.push(("x-correlation-id".into(), o.correlation_id.clone()));
                OutgoingRecord {
                    topic: &self.outcome_topic,
                    key: Some(o.shipment_id.as_str().as_bytes()),
                    payload: body,
                    headers,
                }
            })
            .collect();
        self.send_all(records).await.map_err(|e| PublishError(e.0))
    }
}

#[async_trait]
impl DeadLetterSink for KafkaPublisher {
    async fn dead_letter(&self, letters: &[DeadLetter]) -> Result<(), PublishError> {
        let trace = backbone_telemetry::current_trace_headers();
        let records = letters
            .iter()
            .map(|l| {
                let mut headers = trace.clone();
                headers.extend([
                    (HEADER_REASON.to_owned(), l.reason.clone()),
                    (HEADER_REASON_CODE.to_owned(), l.reason_code.to_owned()),
                    (HEADER_SOURCE_TOPIC.to_owned(), l.source.topic.clone()),
                    (HEADER_SOURCE_PARTITION.to_owned(), l.source.partition.to_string()),
                    (HEADER_SOURCE_OFFSET.to_owned(), l.source.offset.to_string()),
                    (HEADER_ATTEMPTS.to_owned(), l.attempts.to_string()),
                    (crate::HEADER_REPLAY_COUNT.to_owned(), l.replay_count.to_string()),
                ]);
                if let Some(id) = &l.event_id {
                    headers.push((HEADER_EVENT_ID.to_owned(), id.to_string()));
                }
                OutgoingRecord {
                    topic: &self.dead_letter_topic,
                    key: l.key.as_deref(),
                    payload: &l.payload,
                    headers,
                }
            })
            .collect();
        self.send_all(records).await.map_err(|e| PublishError(e.0))
    }
}
