//! gift-certificates' background stages against a broker: an outbox row the broker refuses is
//! parked and every later event still goes out; a shutdown with a broker that no longer answers
//! ends within the documented bound.

use backbone_tests::gift::*;
use backbone_tests::tls::Tansu;
use serde_json::{json, Value};
use std::time::Duration;

/// What `docs/gift-certificates.md` promises for a shutdown ("Shutdown": at most 10 s).
const DOCUMENTED_SHUTDOWN: Duration = Duration::from_secs(10);
/// Scheduling slack on a loaded test machine; the bound checked is the documented one.
const MARGIN: Duration = Duration::from_secs(2);

async fn activate(service: &Service, code: &str, key: &str) {
    let response = service
        .http
        .post(format!("{}/certificates/{code}/activate", service.base))
        .bearer_auth(token(Channel::Payments))
        .header("idempotency-key", key)
        .json(&json!({"order_id": format!("o-{key}")}))
        .send()
        .await
        .expect("activate");
    assert_eq!(response.status(), 200, "activation refused");
}

#[tokio::test]
async fn an_outbox_row_the_broker_refuses_is_parked_and_later_events_still_go_out() {
    let sms = sms_provider(200).await;
    let service = Service::start(&sms.uri(), |_| {}).await;
    let code = new_code();
    service.upload(&code, "4411", 10_000).await;
    let id = service.view(&code).await["certificate_id"]
        .as_str()
        .expect("certificate id")
        .to_owned();
    // A row larger than any record the broker takes, written straight into the outbox (the
    // HTTP edge refuses input that would make one), then an ordinary operation.
    sqlx::query(
        "INSERT INTO outbox (topic, key, payload) VALUES ($1, $2, jsonb_build_object('version', 1, 'pad', repeat('x', 1200000)))",
    )
    .bind(backbone_certificates::events::STATE_TOPIC)
    .bind(&id)
    .execute(&service.pool)
    .await
    .expect("oversized outbox row");
    activate(&service, &code, &format!("activate-{}", service.id)).await;

    // The certificate's later event is published although the row before it cannot be.
    let states = read_until(&service.topics.state, |got| {
        got.iter()
            .any(|r| r.key == id && r.payload.contains("\"Active\""))
    })
    .await;
    let mine: Vec<Value> = states
        .iter()
        .filter(|r| r.key == id)
        .map(|r| serde_json::from_str(&r.payload).expect("JSON event"))
        .collect();
    assert_eq!(
        mine.first().map(|e| e["state"].clone()),
        Some("Issued".into()),
        "{mine:?}"
    );
    assert!(
        mine.iter().all(|e| e.get("pad").is_none()),
        "the oversized row went out"
    );

    // The refused row is set aside with its reason, out of the outbox.
    service
        .wait_for_count(
            "SELECT count(*) FROM outbox_parked WHERE reason_code = 'record_too_large' AND key = $1",
            Some(&id),
            1,
            "the oversized row parked",
        )
        .await;
    service
        .wait_for_count("SELECT count(*) FROM outbox", None, 0, "the outbox drained")
        .await;
    let metrics = service
        .http
        .get(format!("{}/metrics", service.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains("gift_certificates_outbox_parked_total{reason=\"record_too_large\"} 1"),
        "{metrics}"
    );
    service.stop().await;
}

#[tokio::test]
async fn shutdown_with_a_broker_that_stopped_answering_ends_within_the_documented_bound() {
    let broker = Tansu::start_plain().expect("a broker of this test's own");
    let sms = sms_provider(200).await;
    let brokers = broker.listen.to_string();
    let service = Service::start(&sms.uri(), move |cfg| cfg.kafka.client.brokers = brokers).await;

    // The consumer has handled a record (its offset is to be committed at shutdown) ...
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.listen.to_string())
        .create()
        .expect("producer");
    let code = new_code();
    service.upload(&code, "5522", 10_000).await;
    let order_id = format!("order-{}", service.id);
    send(
        &producer,
        &service.topics.orders,
        &order_id,
        &order(&order_id, &code, 10_000, "+79990004455"),
    )
    .await;
    service
        .wait_for_count(
            "SELECT count(*) FROM certificate_sale",
            None,
            1,
            "the order recorded",
        )
        .await;
    service
        .wait_for_count("SELECT count(*) FROM outbox", None, 0, "the outbox drained")
        .await;

    // ... then the broker stops answering, with events still to relay.
    broker.freeze().expect("SIGSTOP the broker");
    service.upload(&new_code(), "6633", 10_000).await;
    activate(&service, &code, &format!("activate-{}", service.id)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (took, result) = service.stop_timed(Duration::from_secs(60)).await;
    broker.thaw().expect("SIGCONT the broker");
    eprintln!("shutdown with a frozen broker: serve returned after {took:?}");
    assert!(result.is_ok(), "{result:?}");
    assert!(
        took <= DOCUMENTED_SHUTDOWN + MARGIN,
        "shutdown took {took:?}; the documented bound is {DOCUMENTED_SHUTDOWN:?}"
    );
}
