//! Transport security for gift-certificates, with the harness crm-sync's tests use
//! (`backbone_tests::tls`): a broker whose certificate this test's own CA signed, reached over
//! SASL_SSL with SCRAM-SHA-512, and a PostgreSQL that accepts TLS only, reached with
//! `sslmode=verify-full`. An order and a payment go in over TLS, the certificate is activated,
//! its CVC is sent, and its events come out over TLS; every session the service holds on
//! PostgreSQL is encrypted. See `docs/transport-security.md`.

use backbone_tests::gift::{order, payment, sms_provider, Service};
use backbone_tests::tls::*;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const USER: &str = "gift-certificates";
const PASSWORD: &str = "scram-password-for-certificates-01";

/// Reads `topic` from the beginning over `properties` until a record's value contains every
/// one of `needles`.
async fn read_over(
    brokers: &str,
    properties: &BTreeMap<String, String>,
    topic: &str,
    needles: &[&str],
) -> anyhow::Result<String> {
    let consumer: StreamConsumer = client_config(brokers, properties)
        .set("group.id", format!("tls-reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            if needles.iter().all(|n| value.contains(n)) {
                return Ok(value);
            }
        }
    }
    anyhow::bail!("{topic}: no record with {needles:?} within 30 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gift_certificates_over_sasl_ssl_kafka_and_verify_full_postgres() -> anyhow::Result<()> {
    let started = Instant::now();
    let pki = Pki::new("backbone e2e CA")?;
    let kafka_cert = pki.server("kafka", &["localhost", "127.0.0.1"])?;
    let (tansu, _front, brokers) = tls_broker(&kafka_cert, None, Some((USER, PASSWORD))).await?;
    let scram = scram_properties(&pki.ca_pem, USER, PASSWORD);
    let good = probe(brokers.clone(), scram.clone(), Duration::from_secs(6)).await;
    assert!(good.ok(), "SCRAM over TLS: {good:?}\n{}", tansu.log_tail());

    let pg_cert = pki.server("postgres", &["localhost", "127.0.0.1"])?;
    let pg = tokio::task::spawn_blocking(move || TlsPostgres::start(&pg_cert)).await??;
    let verify_full = format!("sslmode=verify-full&sslrootcert={}", pki.ca_pem.display());
    let db_url = pg.url("gift_certificates_tls", &verify_full);

    let sms = sms_provider(200).await;
    let (kafka_brokers, kafka_properties, service_db) = (brokers.clone(), scram.clone(), db_url.clone());
    let service = Service::start(&sms.uri(), move |cfg| {
        cfg.kafka.client.brokers = kafka_brokers;
        cfg.kafka.client.properties = kafka_properties;
        cfg.postgres.url = SecretString::from(service_db);
    })
    .await;

    let result = async {
        // Every session the service holds on its database is encrypted.
        let (sessions, encrypted): (i64, Option<bool>) = sqlx::query_as(
            "SELECT count(*), bool_and(s.ssl) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
              WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()",
        )
        .fetch_one(&service.pool)
        .await?;
        assert!(sessions > 0, "the service holds no session on its database");
        assert_eq!(encrypted, Some(true), "a session without TLS");

        let code = backbone_tests::gift::new_code();
        service.upload(&code, "0427", 150_000).await;
        let producer = producer_with(&brokers, &scram)?;
        let order_id = format!("tls-order-{}", service.id);
        for (topic, value) in [
            (
                &service.topics.orders,
                order(&order_id, &code, 150_000, "+79990001122"),
            ),
            (
                &service.topics.payments,
                payment(&format!("tls-pay-{}", service.id), &order_id, 150_000),
            ),
        ] {
            producer
                .send(
                    FutureRecord::to(topic).key(&order_id).payload(&value),
                    Timeout::After(Duration::from_secs(10)),
                )
                .await
                .map_err(|(e, _)| anyhow::anyhow!("producing over TLS: {e}"))?;
        }
        let view = service.wait_for_state(&code, "Active").await;
        let certificate_id = view["certificate_id"].as_str().unwrap_or_default().to_owned();
        service.wait_until_cvc_delivered(&code).await;
        // The relay published the activation over TLS.
        let event = read_over(
            &brokers,
            &scram,
            &service.topics.state,
            &[&certificate_id, r#""state": "Active""#],
        )
        .await?;
        assert!(event.contains(r#""previous_state": "Issued""#), "{event}");
        anyhow::Ok(())
    }
    .await;
    service.stop().await;
    result?;
    eprintln!(
        "gift-certificates over sasl_ssl + verify-full: {:?}",
        started.elapsed()
    );
    Ok(())
}
