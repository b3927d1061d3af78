//! The consumer of `All_SalesOrder`, `All_Payments` and `GiftCertificateUpload`. Each record's
//! effect commits in PostgreSQL before its offset is committed; redelivery is harmless (orders,
//! payments and upload jobs are recorded once by id). A record that cannot be understood goes to
//! `dead.letters` with the reason: an order or a payment as its known fields only, codes masked
//! (`backbone_orders::order_letter`, `payment_letter`); an upload record is never dead-lettered
//! whole, since it carries codes and CVCs: only its rejected row numbers and reasons are. A paid
//! order whose certificate lines cannot all be activated writes its own dead letter
//! (`activation_refused`) through the outbox, in the sale's transaction ([`refusal_letters`]).
//!
//! Contracts: `docs/events/gift-certificates-in-v1.md`.

use crate::config::Topics;
use crate::state::AppState;
use async_trait::async_trait;
use backbone_certificates::sale::{OrderLine, PaymentRecord, RefusalLetters, SaleActivation, SaleOrder};
use backbone_certificates::store::OutboxLetter;
use backbone_kafka::{
    ConsumedRecord, ConsumerRunner, DeadLetterPublisher, Disposition, KafkaConsumer, KafkaPublisher,
    KafkaSettings, RecordHandler, Rejected,
};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use backbone_certificates::store::UploadBatches;
use backbone_certificates::{Channel, DeadLetterReason};
pub use backbone_orders::{reject, Rejection};

/// What became of one record.
#[derive(Debug, PartialEq, Eq)]
pub enum Handled {
    /// Not about certificates (an order without certificate lines, a pending payment).
    Ignored,
    Recorded(Option<SaleActivation>),
    Uploaded {
        issued: u64,
        rejected_rows: Vec<crate::upload::RejectedRow>,
    },
    Rejected(Rejection),
}

/// An order event as a sale to record: codes become their keyed digests here.
pub fn order_from(state: &AppState, payload: &[u8]) -> Result<Option<SaleOrder>, Rejection> {
    let Some(order) = backbone_orders::parse_order(payload)? else {
        return Ok(None);
    };
    Ok(Some(SaleOrder {
        lines: order
            .lines
            .iter()
            .map(|line| OrderLine {
                line_id: line.line_id.clone(),
                code_digest: state.keys.code_digest(&line.code),
                code_last4: Some(line.code.last4().to_owned()),
                amount_minor: line.amount_minor,
            })
            .collect(),
        order_id: order.order_id,
        client_id: order.client_id,
        phone: order.phone,
        currency: order.currency.to_string(),
        total_minor: order.total_minor,
        source_event: order.event_id,
    }))
}

pub fn payment_from(payload: &[u8]) -> Result<Option<PaymentRecord>, Rejection> {
    Ok(backbone_orders::parse_payment(payload)?.map(|p| PaymentRecord {
        payment_id: p.payment_id,
        order_id: p.order_id,
        currency: p.currency.to_string(),
        amount_minor: p.amount_minor,
        source_event: p.event_id,
    }))
}

/// Handles one record. `Err` means storage is unavailable: retry the same record.
pub async fn handle(
    state: &AppState,
    topics: &Topics,
    topic: &str,
    payload: &[u8],
) -> Result<Handled, backbone_certificates::ApplyError> {
    let activation = if topic == topics.orders {
        match order_from(state, payload) {
            Ok(Some(order)) => state.certificates.record_order(&order).await?,
            Ok(None) => return Ok(Handled::Ignored),
            Err(r) => return Ok(Handled::Rejected(r)),
        }
    } else if topic == topics.payments {
        match payment_from(payload) {
            Ok(Some(payment)) => state.certificates.record_payment(&payment).await?,
            Ok(None) => return Ok(Handled::Ignored),
            Err(r) => return Ok(Handled::Rejected(r)),
        }
    } else if topic == topics.uploads {
        return upload(state, payload).await;
    } else {
        return Ok(Handled::Rejected(reject(
            DeadLetterReason::UnknownTopic,
            topic.to_owned(),
        )));
    };
    if let Some(a) = &activation {
        for digest in &a.touched {
            state.after_commit(&hex::encode(digest.0)).await;
        }
        if !a.activated.is_empty() {
            state.sms_wakeup.notify_one();
        }
    }
    Ok(Handled::Recorded(activation))
}

async fn upload(state: &AppState, payload: &[u8]) -> Result<Handled, backbone_certificates::ApplyError> {
    let job: crate::upload::UploadJob = match serde_json::from_slice(payload) {
        Ok(job) => job,
        // The serde message may quote a value, which could be a code: keep only its position.
        Err(e) => {
            return Ok(Handled::Rejected(reject(
                DeadLetterReason::MalformedJson,
                format!(
                    "upload job: invalid JSON at line {} column {}",
                    e.line(),
                    e.column()
                ),
            )))
        }
    };
    if let Err(e) = crate::upload::check_job(&job) {
        return Ok(Handled::Rejected(reject(
            DeadLetterReason::InvalidJob,
            e.to_string(),
        )));
    }
    // Producing to the topic is not enough to issue: the batch must have been opened over the
    // authenticated API (`PUT /certificates/upload/batches/{id}`, or an upload over HTTP).
    if state.store().opened_batch(&job.batch_id).await?.is_none() {
        return Ok(Handled::Rejected(reject(
            DeadLetterReason::InvalidJob,
            "batch not opened over the API".to_owned(),
        )));
    }
    let (batch, rejected_rows) =
        match crate::upload::prepare(state.keys.as_ref(), job, Channel::BatchLoader, None) {
            Ok(prepared) => prepared,
            Err(crate::upload::JobError::Keys(e)) => {
                return Err(backbone_certificates::ApplyError::Unavailable(e))
            }
            Err(e) => {
                return Ok(Handled::Rejected(reject(
                    DeadLetterReason::InvalidJob,
                    e.to_string(),
                )))
            }
        };
    let outcome = if batch.certificates.is_empty() {
        Default::default()
    } else {
        state.certificates.issue(&batch, None).await?
    };
    state.metrics.issued.inc_by(outcome.issued);
    state.outbox_wakeup.notify_one();
    Ok(Handled::Uploaded {
        issued: outcome.issued,
        rejected_rows,
    })
}

/// The dead letter of a paid order with refused lines, as the outbox relay publishes it to
/// `topic`: keyed by the order id, the standard `x-dlq-*` headers (reason code
/// `activation_refused`), the order without codes or phone and each refused line with its
/// reason code (`backbone_certificates::sale::RefusedSale`).
pub fn refusal_letters(topic: &str) -> RefusalLetters {
    let topic = topic.to_owned();
    Arc::new(move |sale| {
        let headers = backbone_kafka::DeadLetter {
            source: None,
            key: None,
            payload: None,
            withheld_bytes: None,
            reason_code: DeadLetterReason::ActivationRefused.as_str().into(),
            reason: format!(
                "{} of {} certificate lines of a paid order not activated",
                sale.refused,
                sale.refused + sale.activated
            ),
            attempts: 1,
            replay_count: None,
            event_id: None,
        }
        .headers();
        OutboxLetter {
            topic: topic.clone(),
            key: sale.order_id.clone(),
            payload: serde_json::to_value(sale).unwrap_or_default(),
            headers,
        }
    })
}

/// The consumer's use case for the runner: route by topic, record, and say what the dead letter
/// of a record that can never be handled carries.
pub struct SalesHandler {
    pub state: Arc<AppState>,
    pub topics: Topics,
}

#[async_trait]
impl RecordHandler for SalesHandler {
    type Transient = backbone_certificates::ApplyError;

    async fn handle(&self, record: &ConsumedRecord) -> Result<Disposition, Self::Transient> {
        let topic = record.position.topic.as_str();
        let payload = record.value();
        let handled = handle(&self.state, &self.topics, topic, payload).await?;
        let metrics = &self.state.metrics;
        let label = match &handled {
            Handled::Ignored => "ignored",
            Handled::Recorded(None) => "recorded",
            Handled::Recorded(Some(a)) if a.duplicate => "duplicate",
            Handled::Recorded(Some(a)) if !a.problems.is_empty() => "activation_problem",
            Handled::Recorded(Some(_)) => "activated",
            Handled::Uploaded { .. } => "uploaded",
            Handled::Rejected(_) => "dead_lettered",
        };
        metrics.sales.with_label_values(&[label]).inc();
        let rejected = match handled {
            Handled::Rejected(r) => {
                let payload = if topic == self.topics.orders {
                    Some(backbone_orders::order_letter(payload))
                } else if topic == self.topics.payments {
                    Some(backbone_orders::payment_letter(payload))
                } else if topic == self.topics.uploads {
                    // An upload job is codes and CVCs: never copied; its position is in the headers.
                    Some(
                        br#"{"withheld":"an upload job carries codes and CVCs: read it at its source position"}"#
                            .to_vec(),
                    )
                } else {
                    None
                };
                rejected(r, payload)
            }
            Handled::Uploaded { rejected_rows, .. } if !rejected_rows.is_empty() => rejected(
                reject(
                    DeadLetterReason::RejectedRows,
                    format!("{} rows rejected", rejected_rows.len()),
                ),
                Some(
                    serde_json::to_vec(&serde_json::json!({ "rejected_rows": rejected_rows }))
                        .unwrap_or_default(),
                ),
            ),
            Handled::Recorded(Some(a)) => {
                for line in &a.problems {
                    tracing::error!(order_id = %a.order_id, line = %line.line_id, reason_code = %line.reason_code, "certificate in a paid order could not be activated");
                }
                if !a.problems.is_empty() {
                    // Its letter was written to the outbox with the sale.
                    metrics
                        .dead_letters
                        .with_label_values(&[DeadLetterReason::ActivationRefused.as_str()])
                        .inc();
                }
                return Ok(Disposition::Done);
            }
            _ => return Ok(Disposition::Done),
        };
        metrics
            .dead_letters
            .with_label_values(&[rejected.reason_code.as_str()])
            .inc();
        Ok(Disposition::DeadLetter(rejected))
    }
}

fn rejected(r: Rejection, payload: Option<Vec<u8>>) -> Rejected {
    Rejected {
        reason_code: r.code.as_str().to_owned(),
        reason: r.reason,
        payload,
    }
}

/// Consumes orders, payments and uploads until `stop`, then commits what was handled.
pub async fn run(
    settings: KafkaSettings,
    topics: Topics,
    publisher: KafkaPublisher,
    state: Arc<AppState>,
    stop: CancellationToken,
) {
    let names = [
        topics.orders.as_str(),
        topics.payments.as_str(),
        topics.uploads.as_str(),
    ];
    let consumer = match KafkaConsumer::new(&settings, &topics.group_id, &names, None) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot create the sales consumer");
            return;
        }
    };
    // Distinct orders, payments and upload jobs are independent: an order and its payments
    // meet under the order's lock, a certificate under its row lock, and an upload job is keyed
    // by its batch and number.
    let runner = ConsumerRunner::new(
        consumer,
        DeadLetterPublisher::new(publisher, &topics.dead_letters),
        200,
    )
    .with_key_concurrency(topics.concurrency);
    runner.run(&SalesHandler { state, topics }, &stop).await;
}

#[cfg(test)]
mod tests {
    use super::refusal_letters;
    use backbone_certificates::sale::{RefusedLine, RefusedSale};

    #[test]
    fn a_refused_sale_is_a_dead_letter_with_its_reason_code_and_no_code() {
        let sale = RefusedSale {
            version: 1,
            kind: "sale_activation",
            order_id: "o-1".into(),
            client_id: Some("c-1".into()),
            currency: "RUB".into(),
            total_minor: 1,
            activated: 1,
            refused: 1,
            refused_lines: vec![RefusedLine {
                line_id: "2".into(),
                certificate_code: Some("****-****-****-NPQ7".into()),
                amount_minor: 1,
                reason_code: "nominal-mismatch".into(),
            }],
        };
        let letter = refusal_letters("dead")(&sale);
        assert_eq!((letter.topic.as_str(), letter.key.as_str()), ("dead", "o-1"));
        let header = |name: &str| {
            letter
                .headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            header(backbone_kafka::HEADER_REASON_CODE),
            Some("activation_refused")
        );
        assert_eq!(
            header(backbone_kafka::HEADER_REASON),
            Some("1 of 2 certificate lines of a paid order not activated")
        );
        assert_eq!(
            letter.payload["refused_lines"][0]["reason_code"],
            "nominal-mismatch"
        );
    }
}
