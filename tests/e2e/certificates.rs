//! gift-certificates over the local Kafka-protocol broker: order and payment events sell a
//! certificate (any order, duplicates, partial payments), the CVC goes out once by SMS, state
//! and transaction events come out through the outbox; SMS failures are dead-lettered without
//! the CVC and can be requeued; uploads arrive over Kafka; bad records are dead-lettered.

use backbone_tests::gift::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

#[tokio::test]
async fn a_paid_order_activates_the_certificate_and_sends_the_cvc_once() {
    let sms = sms_provider(200).await;
    let service = Service::start(&sms.uri(), |_| {}).await;
    let (code, cvc) = (new_code(), "4827");
    service.upload(&code, cvc, 10_000).await;
    let producer = producer();
    let t = &service.topics;
    let order_id = format!("order-{}", service.id);

    // The payment arrives first, in two parts; then the order, twice.
    send(
        &producer,
        &t.payments,
        &order_id,
        &payment("p1", &order_id, 4_000),
    )
    .await;
    service
        .wait_for_count(
            "SELECT count(*) FROM sale_payment",
            None,
            1,
            "the payment was not recorded",
        )
        .await;
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
    service
        .wait_for_count(
            "SELECT count(*) FROM certificate_sale",
            None,
            1,
            "the order was not recorded",
        )
        .await;
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
    service.wait_until_cvc_delivered(&code).await;
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
        let shown = without_generated_fields(&serde_json::from_str(&r).unwrap());
        assert!(
            !r.contains(&code) && !shown.contains(cvc),
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
    let letters = read_until(&service.topics.dead_letters, |got| !got.is_empty()).await;
    let letter = &letters[0];
    // The certificate's id is random hex and may hold the 4 digits by chance: left out.
    assert!(
        !without_generated_fields(&serde_json::from_str(&letter.payload).unwrap()).contains(cvc),
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
    let store = backbone_postgres::PgCertificates::connect(&service.db_url, 2)
        .await
        .unwrap();
    assert_eq!(
        backbone_certificates::store::SmsQueue::requeue_failed_sms(&store, None)
            .await
            .unwrap(),
        1
    );
    service.wait_until_cvc_delivered(&code).await;
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
    let t = &service.topics;
    let batch = format!("kafka-batch-{}", service.id);
    let codes: Vec<String> = (0..5).map(|_| new_code()).collect();
    let rows: Vec<Value> = codes
        .iter()
        .map(|c| json!({"code": c, "cvc": "123", "nominal_minor": 2_500, "currency": "RUB"}))
        .collect();
    let job = json!({"version": 1, "batch_id": batch, "job": 0, "certificates": rows}).to_string();
    // A job of a batch nobody opened over the API: dead-lettered, nothing issued.
    let unopened = format!("kafka-unopened-{}", service.id);
    let stray = new_code();
    let stray_job = json!({"version": 1, "batch_id": unopened, "job": 0,
        "certificates": [{"code": stray, "cvc": "7531", "nominal_minor": 100, "currency": "RUB"}]});
    send(&producer, &t.uploads, &batch, &stray_job.to_string()).await;
    service.open_batch(&batch).await;
    send(&producer, &t.uploads, &batch, &job).await;
    // The same job again (a loader resumed after a crash): nothing issued twice.
    send(&producer, &t.uploads, &batch, &job).await;
    send(&producer, &t.orders, "bad", "{not json").await;
    // A job that cannot be taken: its codes and CVCs must not be copied to the dead letters.
    let secret = new_code();
    let bad_job = json!({"version": 1, "batch_id": batch, "job": 1, "extra": true,
        "certificates": [{"code": secret, "cvc": "8642", "nominal_minor": 1, "currency": "RUB"}]});
    send(&producer, &t.uploads, &batch, &bad_job.to_string()).await;
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
    let letters = read_until(&t.dead_letters, |got| got.len() >= 4).await;
    for letter in &letters {
        assert!(
            !letter.payload.contains(&secret)
                && !letter.payload.contains("8642")
                && !letter.payload.contains(&stray)
                && !letter.payload.contains("7531"),
            "a dead letter carries a code or CVC: {}",
            letter.payload
        );
    }
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
    assert!(
        letters.iter().any(|l| {
            l.headers
                .get(backbone_kafka::HEADER_REASON_CODE)
                .map(String::as_str)
                == Some("invalid_job")
                && l.headers.get(backbone_kafka::HEADER_REASON).map(String::as_str)
                    == Some("batch not opened over the API")
        }),
        "no letter for the unopened batch: {:?}",
        letters.iter().map(|l| &l.headers).collect::<Vec<_>>()
    );
    // A later job under the same key (so the same partition): once it is issued, the duplicate
    // before it has been handled too.
    let sentinel = format!("{batch}-after");
    service.open_batch(&sentinel).await;
    let job = json!({"version": 1, "batch_id": sentinel, "job": 0,
        "certificates": [{"code": new_code(), "cvc": "123", "nominal_minor": 100, "currency": "RUB"}]});
    send(&producer, &t.uploads, &batch, &job.to_string()).await;
    service
        .wait_for_count(
            "SELECT count(*) FROM gift_certificate WHERE batch_id = $1",
            Some(&sentinel),
            1,
            "the later job was not issued",
        )
        .await;
    let issued: i64 = sqlx::query_scalar("SELECT count(*) FROM gift_certificate WHERE batch_id = $1")
        .bind(&batch)
        .fetch_one(&service.pool)
        .await
        .unwrap();
    assert_eq!(issued, 5);
    let stray_issued: i64 = sqlx::query_scalar("SELECT count(*) FROM gift_certificate WHERE batch_id = $1")
        .bind(&unopened)
        .fetch_one(&service.pool)
        .await
        .unwrap();
    assert_eq!(stray_issued, 0, "a job of an unopened batch issued certificates");
    service.stop().await;
}

#[tokio::test]
async fn orders_and_payments_with_bad_ids_are_dead_lettered_and_do_not_stall_the_consumer() {
    let sms = sms_provider(200).await;
    let service = Service::start(&sms.uri(), |_| {}).await;
    let producer = producer();
    let t = &service.topics;
    let codes: Vec<String> = (0..4).map(|_| new_code()).collect();
    for code in &codes {
        service.upload(code, "555", 10_000).await;
    }
    let with = |mut order: Value, field: &str, value: Value| {
        order[field] = value;
        order.to_string()
    };
    let order_of = |order_id: &str, code: &str| -> Value {
        serde_json::from_str(&order(order_id, code, 10_000, "+79990001122")).unwrap()
    };
    let long = "o".repeat(120);
    let mut newline_line = order_of("o-newline", &codes[1]);
    newline_line["lines"][0]["line_id"] = json!("1\n");
    // One key for every record: one partition, so the valid sale comes after the bad records.
    let key = format!("stall-{}", service.id);
    let bad = [
        (&t.orders, with(order_of("x", &codes[0]), "order_id", json!(long))),
        (&t.payments, payment("p-long", &long, 10_000)),
        (&t.orders, newline_line.to_string()),
        (&t.payments, payment("p-newline", "o-newline", 10_000)),
        (
            &t.orders,
            with(order_of("o-nul", &codes[2]), "client_id", json!("client\0id")),
        ),
        (&t.payments, payment("p-nul", "o-nul", 10_000)),
    ];
    for (topic, value) in &bad {
        send(&producer, topic, &key, value).await;
    }
    let valid = format!("o-valid-{}", service.id);
    send(
        &producer,
        &t.orders,
        &key,
        &order(&valid, &codes[3], 10_000, "+79990001122"),
    )
    .await;
    send(&producer, &t.payments, &key, &payment("p-valid", &valid, 10_000)).await;

    service.wait_for_state(&codes[3], "Active").await;
    for code in &codes[..3] {
        assert_eq!(service.view(code).await["state"], "Issued");
    }
    let letters = read_until(&t.dead_letters, |got| got.len() >= 4).await;
    let reasons: Vec<(&str, &str)> = letters
        .iter()
        .map(|l| {
            (
                l.headers
                    .get(backbone_kafka::HEADER_REASON_CODE)
                    .map_or("", String::as_str),
                l.headers.get("x-source-topic").map_or("", String::as_str),
            )
        })
        .collect();
    assert_eq!(
        reasons
            .iter()
            .filter(|(code, _)| *code == "invalid_field")
            .count(),
        4,
        "three orders and the payment with the long order id: {reasons:?}"
    );
    for letter in &letters {
        let reason = letter
            .headers
            .get(backbone_kafka::HEADER_REASON)
            .map_or("", String::as_str);
        assert!(!reason.contains(&long), "{reason}");
        for code in &codes {
            assert!(!letter.payload.contains(code.as_str()), "{}", letter.payload);
        }
    }
    service.stop().await;
}

#[tokio::test]
async fn a_paid_order_below_the_nominal_is_refused_with_a_dead_letter() {
    let sms = sms_provider(200).await;
    let service = Service::start(&sms.uri(), |_| {}).await;
    let producer = producer();
    let t = &service.topics;
    let (cheap, right) = (new_code(), new_code());
    service.upload(&cheap, "555", 5_000_000).await;
    service.upload(&right, "556", 5_000_000).await;
    let key = format!("nominal-{}", service.id);
    send(
        &producer,
        &t.orders,
        &key,
        &order("o-kopek", &cheap, 1, "+79990001122"),
    )
    .await;
    send(&producer, &t.payments, &key, &payment("p-kopek", "o-kopek", 1)).await;
    send(
        &producer,
        &t.orders,
        &key,
        &order("o-right", &right, 5_000_000, "+79990001122"),
    )
    .await;
    send(
        &producer,
        &t.payments,
        &key,
        &payment("p-right", "o-right", 5_000_000),
    )
    .await;

    service.wait_for_state(&right, "Active").await;
    assert_eq!(service.view(&cheap).await["state"], "Issued", "sold for 1 kopek");
    let letters = read_until(&t.dead_letters, |got| !got.is_empty()).await;
    let letter = &letters[0];
    assert_eq!(
        letter
            .headers
            .get(backbone_kafka::HEADER_REASON_CODE)
            .map(String::as_str),
        Some("activation_refused"),
        "{:?}",
        letter.headers
    );
    let body: Value = serde_json::from_str(&letter.payload).unwrap();
    assert_eq!(body["order_id"], "o-kopek", "{body}");
    assert_eq!(
        body["refused_lines"][0]["reason_code"], "nominal-mismatch",
        "{body}"
    );
    assert!(!letter.payload.contains(&cheap), "{}", letter.payload);
    // Only the CVC of the certificate that was activated went out.
    service.wait_until_cvc_delivered(&right).await;
    assert_eq!(sms_texts(&sms).await.len(), 1);
    service.stop().await;
}
