//! The whole service over the local Kafka-protocol broker: order and payment events sell a
//! certificate (any order, duplicates, partial payments), the CVC goes out once by SMS, state
//! and transaction events come out through the outbox; SMS failures are dead-lettered without
//! the CVC and can be requeued; uploads arrive over Kafka; bad records are dead-lettered.

use crate::harness::{new_code, token};
use gift_certificates::auth::Channel;
use gift_certificates::config::Config;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;
use secrecy::SecretString;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn pg_base() -> String {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into());
    url.rsplit_once('/')
        .map(|(base, _)| base.to_owned())
        .unwrap_or(url)
}

/// The service running in this process with topics, group and database of its own.
struct Service {
    id: String,
    cfg_topics: gift_certificates::config::Topics,
    base: String,
    http: reqwest::Client,
    pool: PgPool,
    db_url: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _keys: tempfile::TempDir,
}

impl Service {
    async fn start(sms_url: &str, tune: impl FnOnce(&mut Config)) -> Self {
        crate::harness::logs();
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let keys = tempfile::tempdir().unwrap();
        let mut cfg = crate::harness::config(&keys);
        cfg.kafka.brokers = brokers();
        cfg.kafka.create_topics = true;
        cfg.kafka.topic_partitions = 3;
        cfg.topics.orders = format!("All_SalesOrder.{id}");
        cfg.topics.payments = format!("All_Payments.{id}");
        cfg.topics.uploads = format!("GiftCertificateUpload.{id}");
        cfg.topics.dead_letters = format!("dead.letters.{id}");
        cfg.topics.state = format!("GiftCertificateState.{id}");
        cfg.topics.transactions = format!("GiftCertificateTransaction.{id}");
        cfg.topics.bi = format!("GiftCertificateBI.{id}");
        cfg.topics.group_id = format!("gift-certificates-{id}");
        let db_url = format!("{}/gc_e2e_{id}", pg_base());
        cfg.postgres.url = SecretString::from(db_url.clone());
        cfg.postgres.max_connections = 8;
        cfg.sms.base_url = sms_url.into();
        cfg.sms.token = SecretString::from("sms-provider-test-token");
        cfg.sms.min_backoff_ms = 20;
        cfg.sms.max_backoff_ms = 100;
        cfg.sms.poll_interval_ms = 50;
        cfg.sms.timeout_ms = 2_000;
        cfg.holds.sweep_interval_ms = 100;
        tune(&mut cfg);
        let topics = cfg.topics.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let task = tokio::spawn(gift_certificates::serve(cfg, listener, stop.clone()));
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Ok(r) = http.get(format!("{base}/health/ready")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(!task.is_finished(), "the service stopped during start-up");
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the service did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let pool = PgPool::connect(&db_url).await.unwrap();
        Self {
            id,
            cfg_topics: topics,
            base,
            http,
            pool,
            db_url,
            stop,
            task,
            _keys: keys,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        let result = tokio::time::timeout(Duration::from_secs(30), self.task).await;
        assert!(
            matches!(result, Ok(Ok(Ok(())))),
            "the service did not stop cleanly: {result:?}"
        );
        self.pool.close().await;
        if let Ok(admin) = PgPool::connect(&format!("{}/postgres", pg_base())).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"gc_e2e_{}\" WITH (FORCE)",
                self.id
            ))
            .execute(&admin)
            .await;
        }
        let _ = self.db_url;
    }

    async fn upload(&self, code: &str, cvc: &str, nominal: i64) {
        let batch = format!("e2e-{}", uuid::Uuid::new_v4().simple());
        let body = json!({"version": 1, "batch_id": batch, "job": 0,
            "certificates": [{"code": code, "cvc": cvc, "nominal_minor": nominal, "currency": "RUB"}]});
        let response = self
            .http
            .post(format!("{}/certificates/upload/batch", self.base))
            .bearer_auth(token(Channel::BatchLoader))
            .header("idempotency-key", format!("{batch}:0"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    async fn view(&self, code: &str) -> Value {
        self.http
            .get(format!("{}/certificates/{code}", self.base))
            .bearer_auth(token(Channel::Internal))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn wait_for_state(&self, code: &str, state: &str) -> Value {
        let started = Instant::now();
        loop {
            let view = self.view(code).await;
            if view["state"] == state {
                return view;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "never {state}: {view}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .create()
        .unwrap()
}

async fn send(producer: &FutureProducer, topic: &str, key: &str, payload: &str) {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Timeout::After(Duration::from_secs(10)),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

struct Received {
    key: String,
    payload: String,
    headers: BTreeMap<String, String>,
}

/// Reads `topic` from the beginning until `done` holds for what was read (or 30 s pass).
async fn read_until(topic: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut got = Vec::new();
    let started = Instant::now();
    while !done(&got) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{topic}: only {:?}",
            got.iter()
                .map(|r: &Received| r.payload.clone())
                .collect::<Vec<_>>()
        );
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| {
                            (
                                x.key.to_owned(),
                                String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            got.push(Received {
                key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                payload: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                headers,
            });
        }
    }
    got
}

fn order(order_id: &str, code: &str, amount: i64, phone: &str) -> String {
    json!({"version": 1, "event_id": format!("order-event-{order_id}"), "order_id": order_id,
        "client_id": "client-77", "currency": "RUB", "total_minor": amount, "recipient_phone": phone,
        "lines": [{"line_id": "1", "kind": "gift_certificate", "certificate_code": code, "amount_minor": amount}]})
    .to_string()
}

fn payment(payment_id: &str, order_id: &str, amount: i64) -> String {
    json!({"version": 1, "event_id": format!("payment-event-{payment_id}"), "payment_id": payment_id,
        "order_id": order_id, "status": "captured", "amount_minor": amount, "currency": "RUB"})
    .to_string()
}

async fn sms_provider(status: u16) -> MockServer {
    let sms = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(ResponseTemplate::new(status).set_body_json(json!({"id": "msg-1", "status": "queued"})))
        .mount(&sms)
        .await;
    sms
}

async fn sms_texts(sms: &MockServer) -> Vec<Value> {
    sms.received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

#[tokio::test]
async fn a_paid_order_activates_the_certificate_and_sends_the_cvc_once() {
    let sms = sms_provider(200).await;
    let service = Service::start(&sms.uri(), |_| {}).await;
    let (code, cvc) = (new_code(), "4827");
    service.upload(&code, cvc, 10_000).await;
    let producer = producer();
    let t = &service.cfg_topics;
    let order_id = format!("order-{}", service.id);

    // The payment arrives first, in two parts; then the order, twice.
    send(
        &producer,
        &t.payments,
        &order_id,
        &payment("p1", &order_id, 4_000),
    )
    .await;
    let started = Instant::now();
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM sale_payment")
            .fetch_one(&service.pool)
            .await
            .unwrap();
        if n == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the payment was not recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    send(
        &producer,
        &t.orders,
        &order_id,
        &order(&order_id, &code, 10_000, "+79990001122"),
    )
    .await;
    send(
        &producer,
        &t.orders,
        &order_id,
        &order(&order_id, &code, 10_000, "+79990001122"),
    )
    .await;
    let started = Instant::now();
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM certificate_sale")
            .fetch_one(&service.pool)
            .await
            .unwrap();
        if n == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the order was not recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        service.view(&code).await["state"],
        "Issued",
        "4,000 of 10,000 paid"
    );
    send(
        &producer,
        &t.payments,
        &order_id,
        &payment("p2", &order_id, 6_000),
    )
    .await;
    send(
        &producer,
        &t.payments,
        &order_id,
        &payment("p2", &order_id, 6_000),
    )
    .await;

    let view = service.wait_for_state(&code, "Active").await;
    assert_eq!(view["order_id"], order_id.as_str());
    assert_eq!(view["client_id"], "client-77");

    // The CVC goes out once; then its ciphertext is erased.
    let started = Instant::now();
    while service.view(&code).await["cvc_pending_delivery"] != false {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the SMS was never delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let texts = sms_texts(&sms).await;
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert_eq!(texts[0]["to"], "+79990001122");
    assert!(texts[0]["text"].as_str().unwrap().contains(cvc), "{}", texts[0]);
    assert!(
        !texts[0]["text"].as_str().unwrap().contains(&code),
        "the SMS shows the whole code"
    );

    // Events: Issued then Active for this certificate, and one activate transaction.
    let id = view["certificate_id"].as_str().unwrap().to_owned();
    let states = read_until(&t.state, |got| got.iter().filter(|r| r.key == id).count() >= 2).await;
    let states: Vec<Value> = states
        .iter()
        .filter(|r| r.key == id)
        .map(|r| serde_json::from_str(&r.payload).unwrap())
        .collect();
    assert_eq!(states[0]["state"], "Issued", "{states:?}");
    assert_eq!(states[1]["state"], "Active", "{states:?}");
    let transactions = read_until(&t.transactions, |got| got.iter().any(|r| r.key == id)).await;
    let activate: Value =
        serde_json::from_str(&transactions.iter().find(|r| r.key == id).unwrap().payload).unwrap();
    assert_eq!(activate["type"], "activate");
    let bi = read_until(&t.bi, |got| {
        got.iter().any(|r| r.key == id && r.payload.contains(&order_id))
    })
    .await;
    assert!(!bi.is_empty());
    for r in states
        .iter()
        .map(Value::to_string)
        .chain(transactions.iter().map(|r| r.payload.clone()))
    {
        assert!(
            !r.contains(&code) && !r.contains(cvc),
            "an event carries a secret: {r}"
        );
    }
    // The duplicates changed nothing: one activation in the history.
    let activations: i64 =
        sqlx::query_scalar("SELECT count(*) FROM gift_certificate_operation WHERE action = 'activate'")
            .fetch_one(&service.pool)
            .await
            .unwrap();
    assert_eq!(activations, 1);
    service.stop().await;
}

#[tokio::test]
async fn sms_failures_are_dead_lettered_without_the_cvc_and_can_be_requeued() {
    let sms = sms_provider(503).await;
    let service = Service::start(&sms.uri(), |cfg| cfg.sms.max_attempts = 2).await;
    let (code, cvc) = (new_code(), "9157");
    service.upload(&code, cvc, 5_000).await;
    let response = service
        .http
        .post(format!("{}/certificates/{code}/activate", service.base))
        .bearer_auth(token(Channel::Payments))
        .header("idempotency-key", "activate-sms")
        .json(&json!({"order_id": "o-sms", "phone": "+79990002233"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = service.view(&code).await["certificate_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let letters = read_until(&service.cfg_topics.dead_letters, |got| !got.is_empty()).await;
    let letter = &letters[0];
    assert!(
        !letter.payload.contains(cvc),
        "the dead letter carries the CVC: {}",
        letter.payload
    );
    assert!(
        letter.payload.contains(&id) || letter.key == id,
        "{}",
        letter.payload
    );
    assert!(
        letter
            .headers
            .values()
            .any(|v| v.contains("503") || v.to_lowercase().contains("unavailable")),
        "the reason is missing: {:?}",
        letter.headers
    );
    assert!(sms_texts(&sms).await.len() >= 2, "retried before giving up");
    assert_eq!(
        service.view(&code).await["cvc_pending_delivery"],
        true,
        "kept for a requeue"
    );

    // The provider recovers; an operator requeues.
    sms.reset().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "msg-2", "status": "queued"})))
        .mount(&sms)
        .await;
    let repository = backbone_postgres::PgCertificates::new(service.pool.clone());
    assert_eq!(repository.requeue_failed_sms(None).await.unwrap(), 1);
    let started = Instant::now();
    while service.view(&code).await["cvc_pending_delivery"] != false {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the requeued SMS was never delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let texts = sms_texts(&sms).await;
    assert_eq!(texts.len(), 1);
    assert!(texts[0]["text"].as_str().unwrap().contains(cvc));
    service.stop().await;
}

#[tokio::test]
async fn uploads_over_kafka_issue_and_bad_records_are_dead_lettered() {
    let sms = sms_provider(200).await;
    let service = Service::start(&sms.uri(), |_| {}).await;
    let producer = producer();
    let t = &service.cfg_topics;
    let batch = format!("kafka-batch-{}", service.id);
    let codes: Vec<String> = (0..5).map(|_| new_code()).collect();
    let rows: Vec<Value> = codes
        .iter()
        .map(|c| json!({"code": c, "cvc": "123", "nominal_minor": 2_500, "currency": "RUB"}))
        .collect();
    let job = json!({"version": 1, "batch_id": batch, "job": 0, "certificates": rows}).to_string();
    send(&producer, &t.uploads, &batch, &job).await;
    // The same job again (a loader resumed after a crash): nothing issued twice.
    send(&producer, &t.uploads, &batch, &job).await;
    send(&producer, &t.orders, "bad", "{not json").await;
    send(
        &producer,
        &t.payments,
        "bad",
        &json!({"version": 9, "event_id": "x"}).to_string(),
    )
    .await;

    let started = Instant::now();
    loop {
        let r = service
            .http
            .get(format!("{}/certificates/upload/batches/{batch}", service.base))
            .bearer_auth(token(Channel::BatchLoader))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            let b: Value = r.json().await.unwrap();
            if b["jobs"].as_i64().unwrap_or(0) >= 1 && b["issued"] == 5 {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the upload was not issued"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let letters = read_until(&t.dead_letters, |got| got.len() >= 2).await;
    let codes_of: Vec<&str> = letters
        .iter()
        .filter_map(|l| {
            l.headers
                .get(backbone_kafka::HEADER_REASON_CODE)
                .map(String::as_str)
        })
        .collect();
    assert!(codes_of.contains(&"malformed_json"), "{codes_of:?}");
    assert!(codes_of.contains(&"unsupported_version"), "{codes_of:?}");
    // A later job under the same key (so the same partition): once it is issued, the duplicate
    // before it has been handled too.
    let sentinel = format!("{batch}-after");
    let job = json!({"version": 1, "batch_id": sentinel, "job": 0,
        "certificates": [{"code": new_code(), "cvc": "123", "nominal_minor": 100, "currency": "RUB"}]});
    send(&producer, &t.uploads, &batch, &job.to_string()).await;
    let started = Instant::now();
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM gift_certificate WHERE batch_id = $1")
            .bind(&sentinel)
            .fetch_one(&service.pool)
            .await
            .unwrap();
        if n == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the later job was not issued"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let issued: i64 = sqlx::query_scalar("SELECT count(*) FROM gift_certificate WHERE batch_id = $1")
        .bind(&batch)
        .fetch_one(&service.pool)
        .await
        .unwrap();
    assert_eq!(issued, 5);
    service.stop().await;
}
