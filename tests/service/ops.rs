//! The service's background stages over PostgreSQL: the CVC SMS sender (one send per CVC with
//! two senders and a slow provider; phone numbers sealed while pending and erased once
//! delivered) and the metrics gauges (refreshed in the background, never counted by a scrape).

use crate::harness::{new_code, TestApp};
use backbone_certificates::sale::{OrderLine, PaymentRecord, SaleOrder};
use backbone_certificates::store::SmsQueue;
use backbone_certificates::GiftCode;
use gift_certificates::auth::Channel;
use gift_certificates::sms::{send_due, SmsSettings};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn provider(status: u16, delay: Duration) -> MockServer {
    let server = MockServer::start().await;
    mount(&server, status, delay).await;
    server
}

async fn mount(server: &MockServer, status: u16, delay: Duration) {
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(
            ResponseTemplate::new(status)
                .set_body_json(json!({"id": "msg-1", "status": "queued"}))
                .set_delay(delay),
        )
        .mount(server)
        .await;
}

fn sender(base_url: &str, timeout_ms: u64) -> backbone_sms::HttpSmsSender {
    let mut cfg = gift_certificates::config::Config::default();
    cfg.sms.base_url = base_url.into();
    cfg.sms.token = secrecy::SecretString::from("sms-provider-test-token");
    cfg.sms.timeout_ms = timeout_ms;
    backbone_sms::HttpSmsSender::new(&cfg.sms_provider()).expect("SMS sender")
}

fn settings(lease: time::Duration) -> SmsSettings {
    SmsSettings {
        max_attempts: 3,
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        poll: Duration::from_millis(50),
        template: "Certificate ****{last4}: security code {cvc}".into(),
        dead_letter_topic: "dead.letters.test".into(),
        lease,
    }
}

/// The numbers the provider was asked to send to, with how many times each.
async fn sent_to(server: &MockServer) -> BTreeMap<String, usize> {
    let mut sent = BTreeMap::new();
    for r in server.received_requests().await.unwrap_or_default() {
        let body: Value = serde_json::from_slice(&r.body).expect("JSON SMS request");
        *sent
            .entry(body["to"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    sent
}

/// Issues `n` certificates and activates each with a phone: `n` deliveries queued.
async fn queue_deliveries(app: &TestApp, n: usize) -> Vec<String> {
    let rows: Vec<(String, String)> = (0..n).map(|i| (new_code(), format!("{:04}", 1000 + i))).collect();
    let batch = format!("sms-{}", uuid::Uuid::new_v4().simple());
    app.upload(&batch, 0, &rows, 5_000).await;
    let mut phones = Vec::new();
    for (i, (code, _)) in rows.iter().enumerate() {
        let phone = format!("+7999{:07}", 1_000_000 + i);
        let (status, body) = app
            .call(app.post(
                Channel::Payments,
                &format!("/certificates/{code}/activate"),
                &format!("activate-{code}"),
                &json!({"order_id": format!("o-{i}"), "phone": phone}),
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        phones.push(phone);
    }
    phones
}

async fn pending(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM sms_delivery WHERE status = 'pending'")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Every stored row of `table`, as text: what a database dump would show.
async fn dump(app: &TestApp, table: &str) -> String {
    let rows: Vec<String> = sqlx::query_scalar(&format!("SELECT row_to_json(t)::text FROM {table} t"))
        .fetch_all(&app.pool)
        .await
        .unwrap();
    rows.join("\n")
}

/// Sends due deliveries until none is pending (or 60 s pass).
async fn send_until_done(app: &TestApp, sender: &backbone_sms::HttpSmsSender, settings: &SmsSettings) {
    let started = Instant::now();
    while pending(app).await > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "deliveries still pending"
        );
        send_due(&app.state, sender, settings).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn two_senders_with_a_slow_provider_send_each_cvc_once(pool: PgPool) {
    let app = TestApp::start(pool).await;
    let phones = queue_deliveries(&app, 8).await;
    // Each send takes 1 s; a lease of 3 s is longer than one send, shorter than eight.
    let slow = provider(200, Duration::from_millis(1_000)).await;
    let sender = sender(&slow.uri(), 2_000);
    let settings = settings(time::Duration::seconds(3));
    // Two instances on one database.
    tokio::join!(
        send_until_done(&app, &sender, &settings),
        send_until_done(&app, &sender, &settings)
    );
    let sent = sent_to(&slow).await;
    for phone in &phones {
        assert_eq!(sent.get(phone), Some(&1), "sends per number: {sent:?}");
    }
    let delivered: i64 = sqlx::query_scalar("SELECT count(*) FROM sms_delivery WHERE status = 'sent'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(delivered, 8);
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn phones_are_sealed_while_pending_and_erased_once_delivered(pool: PgPool) {
    let app = TestApp::start(pool).await;
    let certificates = &app.state.certificates;
    // One delivery from an activation, and a sale with a recipient phone still unpaid.
    let phones = queue_deliveries(&app, 1).await;
    let code = new_code();
    app.upload("sale-batch", 0, &[(code.clone(), "7788".into())], 3_000)
        .await;
    let sale_phone = "+79995550123";
    let order = SaleOrder {
        order_id: "order-phone".into(),
        client_id: None,
        phone: Some(sale_phone.into()),
        currency: "RUB".into(),
        total_minor: 3_000,
        lines: vec![OrderLine {
            line_id: "1".into(),
            code_digest: app.state.keys.code_digest(&GiftCode::parse(&code).unwrap()),
            code_last4: None,
            amount_minor: 3_000,
        }],
        source_event: "order-event-phone".into(),
    };
    certificates.record_order(&order).await.unwrap();

    // While pending: no number in clear anywhere.
    let digits = |p: &str| p.trim_start_matches('+').to_owned();
    for table in ["sms_delivery", "certificate_sale"] {
        let rows = dump(&app, table).await;
        for p in [phones[0].as_str(), sale_phone] {
            assert!(
                !rows.contains(&digits(p)[2..]),
                "{table} holds a phone in clear: {rows}"
            );
        }
    }

    // The sale is paid: its certificate's delivery is queued, the order forgets the number.
    let paid = PaymentRecord {
        payment_id: "pay-phone".into(),
        order_id: "order-phone".into(),
        currency: "RUB".into(),
        amount_minor: 3_000,
        source_event: "payment-event-phone".into(),
    };
    let activation = certificates.record_payment(&paid).await.unwrap().expect("paid");
    assert_eq!(activation.activated.len(), 1, "{activation:?}");

    let fast = provider(200, Duration::ZERO).await;
    let sender = sender(&fast.uri(), 2_000);
    send_until_done(&app, &sender, &settings(time::Duration::seconds(30))).await;

    // Each SMS reached the provider with its number ...
    let sent = sent_to(&fast).await;
    assert_eq!(sent.get(&phones[0]), Some(&1), "{sent:?}");
    assert_eq!(sent.get(sale_phone), Some(&1), "{sent:?}");
    // ... and no row keeps more than the last two digits.
    for table in ["sms_delivery", "certificate_sale"] {
        let rows = dump(&app, table).await;
        for p in [phones[0].as_str(), sale_phone] {
            assert!(!rows.contains(&digits(p)[2..]), "{table} keeps a phone: {rows}");
        }
    }
    let tails: Vec<String> = sqlx::query_scalar("SELECT phone_last2 FROM sms_delivery ORDER BY 1")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    let mut expected = vec![phones[0][phones[0].len() - 2..].to_owned(), "23".to_owned()];
    expected.sort();
    assert_eq!(tails, expected);
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn a_failed_delivery_keeps_its_sealed_phone_and_requeue_sends_it(pool: PgPool) {
    let app = TestApp::start(pool).await;
    let phones = queue_deliveries(&app, 1).await;
    let server = provider(400, Duration::ZERO).await;
    let sender = sender(&server.uri(), 2_000);
    let settings = settings(time::Duration::seconds(30));
    send_due(&app.state, &sender, &settings).await.unwrap();
    let status: String = sqlx::query_scalar("SELECT status FROM sms_delivery")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(status, "failed");
    let rows = dump(&app, "sms_delivery").await;
    assert!(
        !rows.contains(&phones[0][3..]),
        "a failed delivery holds its phone in clear: {rows}"
    );

    // The provider accepts again; the operator requeues: the SMS goes to the same number.
    server.reset().await;
    mount(&server, 200, Duration::ZERO).await;
    assert_eq!(app.state.store().requeue_failed_sms(None).await.unwrap(), 1);
    send_until_done(&app, &sender, &settings).await;
    assert_eq!(sent_to(&server).await.get(&phones[0]), Some(&1));
}

fn gauge(metrics: &str, name: &str) -> Option<i64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn metrics_answer_from_the_background_refresh_without_touching_postgres(pool: PgPool) {
    let app = TestApp::start(pool).await;
    // No relay runs here: the outbox keeps the Issued events of two uploads.
    app.upload("m1", 0, &[(new_code(), "111".into())], 1_000).await;
    app.upload("m2", 0, &[(new_code(), "222".into())], 1_000).await;
    gift_certificates::metrics::refresh_gauges(&app.state)
        .await
        .unwrap();
    app.upload("m3", 0, &[(new_code(), "333".into())], 1_000).await;
    let scrape = || async {
        let response = tokio::time::timeout(
            Duration::from_secs(2),
            app.http.get(format!("{}/metrics", app.base)).send(),
        )
        .await
        .expect("a scrape answers without waiting for PostgreSQL")
        .unwrap();
        response.text().await.unwrap()
    };
    // A scrape shows the last refresh (two rows), not a count made now (three).
    assert_eq!(
        gauge(&scrape().await, "gift_certificates_outbox_pending"),
        Some(2)
    );

    // Every connection of the service's pool is taken: scrapes still answer at once.
    let mut held = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(c)) =
            tokio::time::timeout(Duration::from_millis(500), app.state.store().pool().acquire()).await
        {
            held.push(c);
        }
    }
    assert_eq!(app.state.store().pool().num_idle(), 0);
    for _ in 0..3 {
        assert_eq!(
            gauge(&scrape().await, "gift_certificates_outbox_pending"),
            Some(2)
        );
    }
    drop(held);

    gift_certificates::metrics::refresh_gauges(&app.state)
        .await
        .unwrap();
    let metrics = scrape().await;
    assert_eq!(gauge(&metrics, "gift_certificates_outbox_pending"), Some(3));
    assert_eq!(gauge(&metrics, "gift_certificates_outbox_parked"), Some(0));
}
