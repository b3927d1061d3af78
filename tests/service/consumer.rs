//! The order and payment consumer's use case (`SalesHandler`, what the runner calls for each
//! record) over the real PostgreSQL: each record is done, dead-lettered with a reason code and a
//! value, or a transient error, which the runner retries on the same record for ever. Bad data
//! must never be the last.

use crate::harness::{new_code, TestApp};
use backbone_certificates::GiftCode;
use backbone_kafka::{ConsumedRecord, Disposition, RecordHandler, RecordPosition, Rejected};
use gift_certificates::auth::Channel;
use gift_certificates::config::Topics;
use gift_certificates::sales::SalesHandler;
use serde_json::{json, Value};
use sqlx::PgPool;

/// Runs one record through the consumer's handler, as the runner does.
async fn consume(app: &TestApp, topic: &str, value: &[u8]) -> Result<Disposition, String> {
    let handler = SalesHandler {
        state: app.state.clone(),
        topics: Topics::default(),
    };
    let record = ConsumedRecord {
        position: RecordPosition {
            topic: topic.to_owned(),
            partition: 0,
            offset: 0,
        },
        key: None,
        headers: Vec::new(),
        payload: Some(value.to_vec()),
        timestamp: None,
        oversized: None,
    };
    handler.handle(&record).await.map_err(|e| e.to_string())
}

fn orders() -> String {
    Topics::default().orders
}

fn payments() -> String {
    Topics::default().payments
}

fn order(order_id: &str, client_id: &str, line_id: &str, code: &str, amount: i64) -> Value {
    json!({"version": 1, "event_id": format!("ev-{}", uuid::Uuid::new_v4().simple()),
        "order_id": order_id, "client_id": client_id, "currency": "RUB", "total_minor": amount,
        "lines": [{"line_id": line_id, "kind": "gift_certificate", "certificate_code": code, "amount_minor": amount}]})
}

fn payment(payment_id: &str, order_id: &str, amount: i64) -> Value {
    json!({"version": 1, "event_id": format!("ev-{}", uuid::Uuid::new_v4().simple()),
        "payment_id": payment_id, "order_id": order_id, "status": "captured", "amount_minor": amount,
        "currency": "RUB"})
}

fn dead_letter(outcome: Result<Disposition, String>, what: &str) -> Rejected {
    match outcome {
        Ok(Disposition::DeadLetter(rejected)) => rejected,
        Ok(Disposition::Done) => panic!("{what}: taken as valid instead of dead-lettered"),
        Err(e) => panic!("{what}: a transient error, retried for ever: {e}"),
    }
}

async fn state_of(app: &TestApp, code: &str) -> String {
    let (_, view) = app
        .call(app.get(Channel::Internal, &format!("/certificates/{code}")))
        .await;
    view["state"].as_str().unwrap_or_default().to_owned()
}

/// No code in `text`, however it is spelled (grouped, lower case).
fn assert_no_code(text: &str, code: &str, what: &str) {
    let normalised: String = text
        .chars()
        .filter(|c| *c != '-' && *c != ' ')
        .collect::<String>()
        .to_uppercase();
    assert!(
        !normalised.contains(&code.to_uppercase()),
        "{what}: the dead letter carries the code: {text}"
    );
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn records_with_bad_ids_are_dead_lettered_and_later_sales_still_activate(pool: PgPool) {
    let app = TestApp::start(pool).await;
    let long = "o".repeat(120);
    let codes: Vec<(String, String)> = (0..6).map(|_| (new_code(), "555".to_owned())).collect();
    app.upload("bad-ids", 0, &codes, 3_000).await;
    let code = |i: usize| codes[i].0.as_str();

    // Each bad record with the bad value it carries (which no reason may quote).
    let cases: Vec<(String, Value, &str)> = vec![
        (orders(), order(&long, "c-1", "1", code(0), 3_000), long.as_str()),
        (payments(), payment("p-long-order", &long, 3_000), long.as_str()),
        (orders(), order("o-newline", "c-1", "1\n", code(1), 3_000), "1\n"),
        (
            orders(),
            order("o-nul", "client\0id", "1", code(2), 3_000),
            "client\0id",
        ),
        (
            orders(),
            order("o-long-line", "c-1", &"l".repeat(33), code(3), 3_000),
            "",
        ),
        (payments(), payment(&"p".repeat(120), "o-newline", 3_000), ""),
        (payments(), payment("p\0nul", "o-nul", 3_000), "p\0nul"),
        (
            orders(),
            {
                let mut o = order("o-event", "c-1", "1", code(4), 3_000);
                o["event_id"] = json!("e".repeat(120));
                o
            },
            "",
        ),
    ];
    for (i, (topic, value, bad)) in cases.iter().enumerate() {
        let what = format!("case {i} on {topic}");
        let rejected = dead_letter(consume(&app, topic, value.to_string().as_bytes()).await, &what);
        assert_eq!(
            rejected.reason_code, "invalid_field",
            "{what}: {}",
            rejected.reason
        );
        assert!(
            bad.is_empty() || !rejected.reason.contains(bad),
            "{what}: the reason quotes the value: {}",
            rejected.reason
        );
        assert!(rejected.reason.len() < 300, "{what}: {}", rejected.reason);
    }
    // The orders were not stored, so a valid payment for them completes nothing.
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM certificate_sale")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    for i in 0..5 {
        assert_eq!(state_of(&app, code(i)).await, "Issued", "certificate {i}");
    }

    // A valid order and payment after them are handled: the stage does not stall.
    let done = consume(
        &app,
        &orders(),
        order("o-valid", "c-1", "1", code(5), 3_000)
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(done, Ok(Disposition::Done));
    let done = consume(
        &app,
        &payments(),
        payment("p-valid", "o-valid", 3_000).to_string().as_bytes(),
    )
    .await;
    assert_eq!(done, Ok(Disposition::Done));
    assert_eq!(state_of(&app, code(5)).await, "Active");
}

/// A 16-character code made only of the digits 2-9 with a digit as its check character, so
/// that it can be sent as a JSON number.
fn numeric_code() -> String {
    (0u64..)
        .map(|n| {
            let digits: Vec<u8> = format!("{:015}", 234_567_892_345_678 + n * 7)
                .bytes()
                .map(|b| if b < b'2' { b + 2 } else { b })
                .collect();
            digits
        })
        .filter_map(|payload| {
            let payload: [u8; 15] = payload.try_into().ok()?;
            GiftCode::from_payload(&payload).ok()
        })
        .map(|c| c.expose().to_owned())
        .find(|c| c.bytes().all(|b| b.is_ascii_digit()))
        .expect("some payload has a digit check character")
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn dead_letters_carry_only_known_fields_and_no_code(pool: PgPool) {
    let app = TestApp::start(pool).await;
    let secret = new_code();
    let digits = numeric_code();
    let line = |extra: Value| {
        let mut l = json!({"line_id": "1", "kind": "gift_certificate", "amount_minor": 100});
        if let (Some(l), Some(extra)) = (l.as_object_mut(), extra.as_object()) {
            l.extend(extra.clone());
        }
        l
    };
    let base = |lines: Value| {
        json!({"version": 1, "event_id": "e-1", "order_id": "o-1", "client_id": "c-1",
            "currency": "RUB", "total_minor": 100, "lines": lines})
    };
    let mut cases: Vec<(String, Value, &str)> = vec![
        (
            orders(),
            base(json!([line(json!({"certificateCode": secret}))])),
            "certificateCode",
        ),
        (orders(), base(json!([line(json!({"code": secret}))])), "code"),
        (
            orders(),
            base(json!({"1": line(json!({"certificate_code": secret}))})),
            "lines as an object",
        ),
        (
            orders(),
            base(json!([line(json!({"certificate_code": {"value": secret}}))])),
            "a code in a nested object",
        ),
        (
            orders(),
            base(json!([line(json!({"certificate_code": [secret]}))])),
            "a code in an array",
        ),
        (
            orders(),
            base(json!([line(
                json!({"certificate_code": "not-a-code", "note": {"deep": [secret]}})
            )])),
            "an unknown nested field of a line",
        ),
    ];
    let mut o = base(json!([line(json!({"certificate_code": "not-a-code"}))]));
    o["client_id"] = json!({"code": secret});
    cases.push((orders(), o, "client_id as an object"));
    let mut o = base(json!([]));
    o["order_id"] = json!(secret);
    o["currency"] = json!("rub");
    cases.push((orders(), o, "a code as the order id"));
    let mut o = base(json!([]));
    o["meta"] = json!({"codes": [secret], "again": secret});
    o["total_minor"] = json!(secret);
    cases.push((orders(), o, "a code as the total and in unknown fields"));
    let numeric: Value = serde_json::from_str(&format!(
        r#"{{"version":1,"event_id":"e-1","order_id":"o-1","currency":"RUB","total_minor":100,
            "lines":[{{"line_id":"1","kind":"gift_certificate","certificate_code":{digits},"amount_minor":100}}]}}"#
    ))
    .unwrap();
    cases.push((orders(), numeric, "a code as a number"));
    let mut p = payment("p-1", "o-1", -5);
    p["note"] = json!(secret);
    p["meta"] = json!({"code": secret});
    cases.push((payments(), p, "a payment with unknown fields"));
    let mut p = payment(&secret, "o-1", 5);
    p["version"] = json!(2);
    cases.push((payments(), p, "a code as the payment id"));

    for (topic, value, what) in &cases {
        let rejected = dead_letter(consume(&app, topic, value.to_string().as_bytes()).await, what);
        let letter = rejected
            .payload
            .as_deref()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .expect("the letter replaces the record's value");
        assert_no_code(&letter, &secret, what);
        assert_no_code(&letter, &digits, what);
        assert_no_code(&rejected.reason, &secret, what);
        assert!(
            !letter.contains("certificateCode") && !letter.contains("meta") && !letter.contains("note"),
            "{what}: an unknown field is copied: {letter}"
        );
    }

    // A known field keeps its shape, the code masked to its last four characters.
    let bad_check = format!(
        "{}{}",
        &secret[..15],
        if secret.ends_with('A') { 'B' } else { 'A' }
    );
    let value = base(json!([line(json!({"certificate_code": bad_check}))]));
    let rejected = dead_letter(
        consume(&app, &orders(), value.to_string().as_bytes()).await,
        "a code with a bad check character",
    );
    assert_eq!(rejected.reason_code, "invalid_field");
    let letter: Value = serde_json::from_slice(rejected.payload.as_deref().unwrap()).unwrap();
    assert_eq!(letter["order_id"], "o-1");
    assert_eq!(letter["lines"][0]["line_id"], "1");
    assert_eq!(
        letter["lines"][0]["certificate_code"],
        format!("****-****-****-{}", &bad_check[12..])
    );
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn a_sale_activates_only_a_certificate_sold_at_its_nominal_in_its_currency(pool: PgPool) {
    let app = TestApp::start(pool).await;
    let nominal = 5_000_000; // 50,000.00
    let codes: Vec<(String, String)> = (0..4).map(|_| (new_code(), "555".to_owned())).collect();
    app.upload("nominal", 0, &codes, nominal).await;
    let code = |i: usize| codes[i].0.as_str();
    let sell = |order_value: Value, payment_value: Value| {
        let app = &app;
        async move {
            let order_outcome = consume(app, &orders(), order_value.to_string().as_bytes()).await;
            let payment_outcome = consume(app, &payments(), payment_value.to_string().as_bytes()).await;
            (order_outcome, payment_outcome)
        }
    };

    // An order of 1 kopek for the card of 50,000.00, paid with 1 kopek.
    let (o, p) = sell(
        order("o-kopek", "c-1", "1", code(0), 1),
        payment("p-kopek", "o-kopek", 1),
    )
    .await;
    assert_eq!((o, p), (Ok(Disposition::Done), Ok(Disposition::Done)));
    assert_eq!(state_of(&app, code(0)).await, "Issued", "sold for 1 kopek");

    // The line at the nominal, but a total of 1 kopek, paid with 1 kopek.
    let mut cheap_total = order("o-total", "c-1", "1", code(1), nominal);
    cheap_total["total_minor"] = json!(1);
    let (o, _) = sell(cheap_total, payment("p-total", "o-total", 1)).await;
    assert_eq!(
        o.map(|d| matches!(d, Disposition::DeadLetter(r) if r.reason_code == "invalid_field")),
        Ok(true),
        "a total below the certificate lines"
    );
    assert_eq!(
        state_of(&app, code(1)).await,
        "Issued",
        "paid 1 kopek of 50,000.00"
    );

    // The nominal, in euros, for a card in roubles.
    let mut euros = order("o-eur", "c-1", "1", code(2), nominal);
    euros["currency"] = json!("EUR");
    let mut paid_in_euros = payment("p-eur", "o-eur", nominal);
    paid_in_euros["currency"] = json!("EUR");
    let (o, p) = sell(euros, paid_in_euros).await;
    assert_eq!((o, p), (Ok(Disposition::Done), Ok(Disposition::Done)));
    assert_eq!(
        state_of(&app, code(2)).await,
        "Issued",
        "sold in another currency"
    );

    // The right order still activates.
    let (o, p) = sell(
        order("o-right", "c-1", "1", code(3), nominal),
        payment("p-right", "o-right", nominal),
    )
    .await;
    assert_eq!((o, p), (Ok(Disposition::Done), Ok(Disposition::Done)));
    assert_eq!(state_of(&app, code(3)).await, "Active");

    // Each refused sale leaves operators a dead letter, written with the sale: the order
    // (codes masked) and each refused line with its reason code.
    let letters: Vec<(String, Value, Value)> =
        sqlx::query_as("SELECT key, payload, headers FROM outbox WHERE topic = $1 ORDER BY id")
            .bind(Topics::default().dead_letters)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let refused: Vec<(&str, &str)> = letters
        .iter()
        .map(|(key, payload, _)| {
            (
                key.as_str(),
                payload["refused_lines"][0]["reason_code"]
                    .as_str()
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        refused,
        [("o-kopek", "nominal-mismatch"), ("o-eur", "currency-mismatch")],
        "{letters:?}"
    );
    for (_, payload, headers) in &letters {
        assert_eq!(headers["x-dlq-reason-code"], "activation_refused", "{headers}");
        assert_eq!(payload["refused_lines"][0]["line_id"], "1", "{payload}");
        for (i, (code, _)) in codes.iter().enumerate() {
            assert_no_code(
                &payload.to_string(),
                code,
                &format!("letter about certificate {i}"),
            );
        }
    }
    assert_eq!(
        letters[0].1["refused_lines"][0]["certificate_code"],
        format!("****-****-****-{}", &code(0)[12..])
    );
}
