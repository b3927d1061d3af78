use crate::{KafkaError, KafkaSettings};
use futures::future::{join_all, try_join_all};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use std::time::Duration;

/// An idempotent producer. Every publish returns only once the broker acknowledged all of its
/// records (`acks=all`).
#[derive(Clone)]
pub struct KafkaPublisher {
    producer: FutureProducer,
    /// Largest record a consumer of these settings accepts (`kafka.max_record_bytes`).
    max_record_bytes: usize,
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
            .set("queue.buffering.max.messages", "1000000")
            .set("message.max.bytes", settings.producer_max_bytes().to_string());
        // Pass-through properties win (a deployment may shorten timeouts, add TLS, ...).
        for (k, v) in &settings.properties {
            config.set(k, v);
        }
        Ok(Self {
            producer: config.create()?,
            max_record_bytes: settings.max_record_bytes,
        })
    }

    /// The largest record consumers accept; dead letters withhold a value above it.
    pub fn max_record_bytes(&self) -> usize {
        self.max_record_bytes
    }

    /// Publishes records and waits for every acknowledgement; the first failure is the error.
    pub async fn send_all(&self, records: Vec<OutgoingRecord<'_>>) -> Result<(), KafkaError> {
        try_join_all(records.into_iter().map(|r| self.send_one(r))).await?;
        Ok(())
    }

    /// Publishes records and waits for each one's outcome, in the order given: a caller can
    /// tell which record failed and why ([`KafkaError::permanent`]).
    pub async fn send_each(&self, records: Vec<OutgoingRecord<'_>>) -> Vec<Result<(), KafkaError>> {
        join_all(records.into_iter().map(|r| self.send_one(r))).await
    }

    async fn send_one(&self, r: OutgoingRecord<'_>) -> Result<(), KafkaError> {
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
        for (k, v) in &r.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(r.topic).headers(headers);
        if let Some(p) = r.payload {
            record = record.payload(p);
        }
        if let Some(k) = r.key {
            record = record.key(k);
        }
        self.producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
            .map(|_| ())
            .map_err(|(e, _)| {
                let code = e.rdkafka_error_code();
                KafkaError {
                    message: format!("delivery failed: {e}"),
                    too_large: matches!(code, Some(RDKafkaErrorCode::MessageSizeTooLarge)),
                    invalid: matches!(
                        code,
                        Some(RDKafkaErrorCode::InvalidRecord | RDKafkaErrorCode::InvalidTimestamp)
                    ),
                }
            })
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
    /// `None` publishes a record without a value.
    pub payload: Option<&'a [u8]>,
    pub headers: Vec<(String, String)>,
}

impl<'a> OutgoingRecord<'a> {
    /// A JSON value with its key: `content-type: application/json`, then `headers` (an outbox
    /// row's correlation and trace headers).
    pub fn json(topic: &'a str, key: &'a str, payload: &'a str, headers: &[(String, String)]) -> Self {
        Self {
            topic,
            key: Some(key.as_bytes()),
            payload: Some(payload.as_bytes()),
            headers: std::iter::once(("content-type".to_owned(), "application/json".to_owned()))
                .chain(headers.iter().cloned())
                .collect(),
        }
    }
}
