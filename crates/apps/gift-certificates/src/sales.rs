//! The consumer of `All_SalesOrder`, `All_Payments` and `GiftCertificateUpload`. Each record's
//! effect commits in PostgreSQL before its offset is committed; redelivery is harmless (orders,
//! payments and upload jobs are recorded once by id). A record that cannot be understood goes to
//! `dead.letters` with the reason; an upload record is never dead-lettered whole, since it
//! carries codes and CVCs: only its rejected row numbers and reasons are.
//!
//! Contracts: `docs/events/gift-certificates-in-v1.md`.

use crate::config::Topics;
use crate::AppState;
use backbone_certificates::{Currency, GiftCode};
use backbone_kafka::{KafkaPublisher, KafkaSettings, OutgoingRecord, TrackingConsumer};
use backbone_postgres::certificates::{OrderLine, PaymentRecord, SaleActivation, SaleOrder};
use backon::{ExponentialBuilder, Retryable};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Deserialize)]
pub struct OrderEvent {
    pub version: u16,
    pub event_id: String,
    pub order_id: String,
    pub client_id: Option<String>,
    pub currency: String,
    /// What the payments must add up to.
    pub total_minor: i64,
    /// Where the CVC of each certificate sold goes.
    pub recipient_phone: Option<String>,
    pub lines: Vec<OrderLineEvent>,
}

#[derive(Deserialize)]
pub struct OrderLineEvent {
    pub line_id: String,
    /// `gift_certificate` lines are ours; other kinds are ignored.
    pub kind: String,
    pub certificate_code: Option<String>,
    pub amount_minor: i64,
}

impl std::fmt::Debug for OrderLineEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderLineEvent")
            .field("line_id", &self.line_id)
            .field("kind", &self.kind)
            .field("certificate_code", &self.certificate_code.as_ref().map(|_| "***"))
            .field("amount_minor", &self.amount_minor)
            .finish()
    }
}

#[derive(Debug, Deserialize)]
pub struct PaymentEvent {
    pub version: u16,
    pub event_id: String,
    pub payment_id: String,
    pub order_id: String,
    /// Only `captured` payments count towards a sale.
    pub status: String,
    pub amount_minor: i64,
    pub currency: String,
}

/// Why a record was dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: &'static str,
    pub reason: String,
}

fn reject(code: &'static str, reason: impl Into<String>) -> Rejection {
    Rejection {
        code,
        reason: reason.into(),
    }
}

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

pub fn order_from(state: &AppState, payload: &[u8]) -> Result<Option<SaleOrder>, Rejection> {
    let e: OrderEvent = serde_json::from_slice(payload).map_err(|e| {
        // serde may quote a value, which could be a code: name the place, not the content.
        reject(
            "malformed_json",
            format!(
                "order event: {:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            ),
        )
    })?;
    if e.version != 1 {
        return Err(reject(
            "unsupported_version",
            format!("order event version {}", e.version),
        ));
    }
    let currency = Currency::parse(&e.currency).map_err(|_| reject("invalid_field", "currency"))?;
    let mut lines = Vec::new();
    for line in e.lines.iter().filter(|l| l.kind == "gift_certificate") {
        let code = line
            .certificate_code
            .as_deref()
            .and_then(|c| GiftCode::parse(c).ok())
            .ok_or_else(|| {
                reject(
                    "invalid_field",
                    format!("line {}: certificate_code", line.line_id),
                )
            })?;
        if line.amount_minor <= 0 {
            return Err(reject(
                "invalid_field",
                format!("line {}: amount_minor", line.line_id),
            ));
        }
        lines.push(OrderLine {
            line_id: line.line_id.clone(),
            code_digest: state.keys.code_digest(&code),
            amount_minor: line.amount_minor,
        });
    }
    if lines.is_empty() {
        return Ok(None);
    }
    if e.total_minor <= 0 {
        return Err(reject("invalid_field", "total_minor"));
    }
    if let Some(phone) = &e.recipient_phone {
        if !crate::sms::valid_phone(phone) {
            return Err(reject("invalid_field", "recipient_phone is not E.164"));
        }
    }
    Ok(Some(SaleOrder {
        order_id: e.order_id,
        client_id: e.client_id,
        phone: e.recipient_phone,
        currency: currency.to_string(),
        total_minor: e.total_minor,
        lines,
        source_event: e.event_id,
    }))
}

pub fn payment_from(payload: &[u8]) -> Result<Option<PaymentRecord>, Rejection> {
    let e: PaymentEvent = serde_json::from_slice(payload)
        .map_err(|e| reject("malformed_json", format!("payment event: {e}")))?;
    if e.version != 1 {
        return Err(reject(
            "unsupported_version",
            format!("payment event version {}", e.version),
        ));
    }
    if e.status != "captured" {
        return Ok(None);
    }
    let currency = Currency::parse(&e.currency).map_err(|_| reject("invalid_field", "currency"))?;
    if e.amount_minor <= 0 {
        return Err(reject("invalid_field", "amount_minor"));
    }
    Ok(Some(PaymentRecord {
        payment_id: e.payment_id,
        order_id: e.order_id,
        currency: currency.to_string(),
        amount_minor: e.amount_minor,
        source_event: e.event_id,
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
            Ok(Some(order)) => state.repository.record_order(&order).await?,
            Ok(None) => return Ok(Handled::Ignored),
            Err(r) => return Ok(Handled::Rejected(r)),
        }
    } else if topic == topics.payments {
        match payment_from(payload) {
            Ok(Some(payment)) => state.repository.record_payment(&payment).await?,
            Ok(None) => return Ok(Handled::Ignored),
            Err(r) => return Ok(Handled::Rejected(r)),
        }
    } else if topic == topics.uploads {
        return upload(state, payload).await;
    } else {
        return Ok(Handled::Rejected(reject("unknown_topic", topic.to_owned())));
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
                "malformed_json",
                format!(
                    "upload job: invalid JSON at line {} column {}",
                    e.line(),
                    e.column()
                ),
            )))
        }
    };
    let (batch, rejected_rows) = match crate::upload::prepare(state.keys.as_ref(), job, "BatchLoader", None) {
        Ok(prepared) => prepared,
        Err(crate::upload::JobError::Keys(e)) => {
            return Err(backbone_certificates::ApplyError::Unavailable(e))
        }
        Err(e) => return Ok(Handled::Rejected(reject("invalid_job", e.to_string()))),
    };
    let outcome = if batch.certificates.is_empty() {
        Default::default()
    } else {
        state.repository.issue(&batch, None).await?
    };
    state.metrics.issued.inc_by(outcome.issued);
    state.outbox_wakeup.notify_one();
    Ok(Handled::Uploaded {
        issued: outcome.issued,
        rejected_rows,
    })
}

/// A rejected order keeps its shape in the dead letter, but not its certificate codes (bearer
/// secrets): each `certificate_code` keeps only its last four characters. A record that is not
/// JSON cannot be masked, so it is withheld; its source position is in the headers.
pub fn redacted_order(payload: &[u8]) -> Vec<u8> {
    let Ok(mut order) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return br#"{"withheld":"not JSON; it may carry certificate codes: read it at its source position"}"#
            .to_vec();
    };
    if let Some(lines) = order.get_mut("lines").and_then(serde_json::Value::as_array_mut) {
        for line in lines {
            if let Some(code) = line.get_mut("certificate_code") {
                let text = code.as_str().unwrap_or_default();
                let tail: String = text
                    .chars()
                    .rev()
                    .take(4)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                *code = backbone_certificates::code::mask_last4(&tail).into();
            }
        }
    }
    serde_json::to_vec(&order).unwrap_or_default()
}

fn dead_letter_headers(
    source: &backbone_sync::ports::SourcePosition,
    r: &Rejection,
) -> Vec<(String, String)> {
    vec![
        (backbone_kafka::HEADER_REASON.into(), r.reason.clone()),
        (backbone_kafka::HEADER_REASON_CODE.into(), r.code.into()),
        (backbone_kafka::HEADER_SOURCE_TOPIC.into(), source.topic.clone()),
        (
            backbone_kafka::HEADER_SOURCE_PARTITION.into(),
            source.partition.to_string(),
        ),
        (
            backbone_kafka::HEADER_SOURCE_OFFSET.into(),
            source.offset.to_string(),
        ),
        (backbone_kafka::HEADER_ATTEMPTS.into(), "1".into()),
    ]
}

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
    let consumer = match TrackingConsumer::for_topics(&settings, &names, None) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot create the sales consumer");
            return;
        }
    };
    while !stop.is_cancelled() {
        let batch = tokio::select! {
            b = consumer.next_batch(200) => b,
            _ = stop.cancelled() => break,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "sales consumer error");
                continue;
            }
        };
        let mut complete = true;
        for record in &batch.records {
            let attempt = || handle(&state, &topics, &record.source.topic, &record.payload);
            let handled = attempt
                .retry(
                    ExponentialBuilder::default()
                        .with_min_delay(Duration::from_millis(100))
                        .with_max_delay(Duration::from_secs(5))
                        .with_jitter()
                        .without_max_times(),
                )
                .when(|_| !stop.is_cancelled())
                .notify(|e, after| tracing::warn!(error = %e, retry_in = ?after, "sales event not stored; retrying"))
                .await;
            let handled = match handled {
                Ok(h) => h,
                // Shutdown while storage is down: leave this record and the rest to redelivery.
                Err(_) => {
                    complete = false;
                    break;
                }
            };
            let letter = match &handled {
                Handled::Rejected(r) if record.source.topic == topics.orders => {
                    Some((r.clone(), redacted_order(&record.payload)))
                }
                Handled::Rejected(r) => Some((r.clone(), record.payload.clone())),
                Handled::Uploaded { rejected_rows, .. } if !rejected_rows.is_empty() => Some((
                    reject("rejected_rows", format!("{} rows rejected", rejected_rows.len())),
                    serde_json::to_vec(&serde_json::json!({ "rejected_rows": rejected_rows }))
                        .unwrap_or_default(),
                )),
                _ => None,
            };
            let label = match &handled {
                Handled::Ignored => "ignored",
                Handled::Recorded(None) => "recorded",
                Handled::Recorded(Some(a)) if a.duplicate => "duplicate",
                Handled::Recorded(Some(a)) if !a.problems.is_empty() => "activation_problem",
                Handled::Recorded(Some(_)) => "activated",
                Handled::Uploaded { .. } => "uploaded",
                Handled::Rejected(_) => "dead_lettered",
            };
            state.metrics.sales.with_label_values(&[label]).inc();
            if let Handled::Recorded(Some(a)) = &handled {
                for (line, problem) in &a.problems {
                    tracing::error!(order_id = %a.order_id, line = %line, problem = %problem, "certificate in a paid order could not be activated");
                }
            }
            if let Some((rejection, payload)) = letter {
                state
                    .metrics
                    .dead_letters
                    .with_label_values(&[rejection.code])
                    .inc();
                tracing::warn!(topic = %record.source.topic, offset = record.source.offset, reason = %rejection.reason, "dead-lettering a record");
                let publish = || {
                    publisher.send_all(vec![OutgoingRecord {
                        topic: &topics.dead_letters,
                        key: record.key.as_deref(),
                        payload: &payload,
                        headers: dead_letter_headers(&record.source, &rejection),
                    }])
                };
                let sent = publish
                    .retry(
                        ExponentialBuilder::default()
                            .with_min_delay(Duration::from_millis(100))
                            .with_max_delay(Duration::from_secs(5))
                            .with_jitter()
                            .without_max_times(),
                    )
                    .when(|_| !stop.is_cancelled())
                    .notify(|e, after| tracing::warn!(error = %e, retry_in = ?after, "dead letter not published; retrying"))
                    .await;
                if sent.is_err() {
                    // Shutdown before the broker took it: the record is redelivered.
                    complete = false;
                    break;
                }
            }
        }
        if complete {
            if let Err(e) = consumer.commit(&batch) {
                tracing::warn!(error = %e, "offset commit failed; records will be redelivered");
            }
        } else {
            break;
        }
    }
    if let Err(e) = consumer.commit_processed() {
        tracing::warn!(error = %e, "final offset commit failed");
    }
}

#[cfg(test)]
mod tests {
    use super::redacted_order;

    #[test]
    fn dead_lettered_orders_keep_their_shape_but_not_their_codes() {
        let order = br#"{"order_id":"o1","lines":[{"line_id":"1","certificate_code":"ABCD-EFGH-JKLM-NPQ7"},{"line_id":"2"}]}"#;
        let out: serde_json::Value = serde_json::from_slice(&redacted_order(order)).unwrap_or_default();
        assert_eq!(out["order_id"], "o1");
        assert_eq!(out["lines"][0]["certificate_code"], "****-****-****-NPQ7");
        assert!(out["lines"][1].get("certificate_code").is_none());
        let garbage = redacted_order(b"ABCDEFGHJKLMNPQ7 not json");
        assert!(!String::from_utf8_lossy(&garbage).contains("ABCDEFGHJKLMNPQ7"));
    }
}
