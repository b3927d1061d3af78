//! The two-way sync's stages under bad input and duplicate deliveries: the same webhook 50 times
//! at once has one effect; an unverified webhook leaves nothing behind; malformed records and a
//! hint for a contact nobody owns end on `dead.letters` / `crm.failed` with their reason, and the
//! stages go on with the next record.

use crate::two_way::TwoWay;
use backbone_tests::*;
use crm_sim::Dialect;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

async fn count(pool: &sqlx::PgPool, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
}

async fn fifty_at_once(d: Dialect) -> anyhow::Result<()> {
    let tw = TwoWay::start("dup", d).await?;
    let card = json!({"fields": {"first_name": "Ada", "last_name": "Lovelace", "manager": if d == Dialect::Salesforce { "005SIM000000001AAA" } else { "1" }}});
    let (s, b) = tw
        .call(reqwest::Method::PUT, "/v1/clients/c-1", Some(card))
        .await?;
    anyhow::ensure!(s == StatusCode::CREATED, "PUT: {s} {b}");
    let contact = tw
        .wait_theirs("c-1", "the card", |c| c["first_name"] == "Ada")
        .await?;
    let crm_id = contact["crm_id"].as_str().unwrap().to_owned();
    let pool = tw.scope.wait_for_schema().await?;
    tw.quiesce(&pool).await?;
    let manager = if d == Dialect::Salesforce {
        "005SIM000000007AAA"
    } else {
        "7"
    };
    // Changed in the CRM while its webhooks are off; then one delivery, 50 times at once.
    tw.edit_in_crm(&crm_id, json!({"manager": manager})).await?;
    let version = tw.ours("c-1").await?["version"].as_i64().unwrap();
    let stored = count(&pool, "SELECT count(*) FROM crm_webhook").await?;
    let logged = count(
        &pool,
        "SELECT count(*) FROM integrations_log WHERE flow = 'two_way' AND event_id LIKE 'webhook-%'",
    )
    .await?;
    tw.webhooks_on().await?;
    let r: Value = tw
        .http
        .post(format!(
            "{}/sim/{}/contacts/{crm_id}/notify?times=50",
            tw.sim_url,
            d.name()
        ))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let statuses = r["statuses"].as_array().unwrap();
    assert_eq!(statuses.len(), 50);
    assert!(
        statuses
            .iter()
            .all(|s| s.as_u64().is_some_and(|s| (200..300).contains(&s))),
        "{}: every copy acknowledged: {r}",
        d.name()
    );
    tw.wait_ours("c-1", "the CRM's manager", |c| c["fields"]["manager"] == manager)
        .await?;
    tw.quiesce(&pool).await?;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM crm_webhook").await? - stored,
        1,
        "{}: one delivery stored",
        d.name()
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM integrations_log WHERE flow = 'two_way' AND event_id LIKE 'webhook-%'"
        )
        .await?
            - logged,
        1,
        "{}: one effect logged",
        d.name()
    );
    assert_eq!(
        tw.ours("c-1").await?["version"].as_i64().unwrap(),
        version + 1,
        "{}: one change of our copy",
        d.name()
    );
    tw.stop().await
}

#[tokio::test]
async fn fifty_identical_generic_webhooks_at_once_have_one_effect() -> anyhow::Result<()> {
    fifty_at_once(Dialect::Generic).await
}

#[tokio::test]
async fn fifty_identical_bitrix24_webhooks_at_once_have_one_effect() -> anyhow::Result<()> {
    fifty_at_once(Dialect::Bitrix24).await
}

#[tokio::test]
async fn fifty_identical_salesforce_webhooks_at_once_have_one_effect() -> anyhow::Result<()> {
    fifty_at_once(Dialect::Salesforce).await
}

#[tokio::test]
async fn fifty_identical_kommo_webhooks_at_once_have_one_effect() -> anyhow::Result<()> {
    fifty_at_once(Dialect::Kommo).await
}

/// A signed generic webhook for `body`.
fn signed(tw: &TwoWay, body: &str, secret: &str) -> reqwest::RequestBuilder {
    let ts = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
    let nonce = backbone_crm::signing::new_nonce();
    let sig = backbone_crm::signing::sign(
        secret.as_bytes(),
        &backbone_crm::signing::SignedParts {
            method: "POST",
            target: "/webhooks/generic",
            timestamp: &ts,
            nonce: &nonce,
            body: body.as_bytes(),
        },
    );
    tw.http
        .post(format!("{}/webhooks/generic", tw.api))
        .header("content-type", "application/json")
        .header("x-timestamp", ts)
        .header("x-nonce", nonce)
        .header("x-signature", sig)
        .body(body.to_owned())
}

/// Every record on `topic` now, as JSON values.
fn read_topic(topic: &str) -> anyhow::Result<Vec<Value>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    c.subscribe(&[topic])?;
    let mut out = Vec::new();
    let mut idle = std::time::Instant::now();
    let start = std::time::Instant::now();
    while idle.elapsed() < Duration::from_secs(3) && start.elapsed() < Duration::from_secs(20) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            idle = std::time::Instant::now();
            if let Some(v) = m.payload().and_then(|p| serde_json::from_slice(p).ok()) {
                out.push(v);
            }
        }
    }
    Ok(out)
}

#[tokio::test]
async fn bad_webhooks_and_records_are_refused_with_a_reason_and_never_stall_a_stage() -> anyhow::Result<()> {
    let tw = TwoWay::start("bad", Dialect::Generic).await?;
    let pool = tw.scope.wait_for_schema().await?;
    tw.webhooks_off().await?;
    let hint = r#"{"deliveryId":"d-1","event":"contact.updated","entity":"contact","id":"ct-nobody","externalId":null,"occurredAt":"2026-12-02T10:00:00Z"}"#;
    // Unverified: no signature, a wrong one, a wrong Bitrix24 token. Nothing is stored.
    let r = tw
        .http
        .post(format!("{}/webhooks/generic", tw.api))
        .body(hint)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = signed(&tw, hint, "not-the-webhook-secret-0123").send().await?;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = tw
        .http
        .post(format!("{}/webhooks/bitrix24", tw.api))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("event=ONCRMCONTACTUPDATE&data%5BFIELDS%5D%5BID%5D=82&ts=1&auth%5Bmember_id%5D=e2e-member&auth%5Bapplication_token%5D=wrong-token-0123456789")
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Verified but not the vendor's shape: 400, nothing stored.
    let r = signed(&tw, r#"{"deliveryId":1}"#, "e2e-webhook-secret-0123456789")
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(count(&pool, "SELECT count(*) FROM crm_webhook").await?, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM crm_outbox").await?, 0);

    // Verified, for a contact no client owns: stored, acknowledged, then crm.failed.
    let r = signed(&tw, hint, "e2e-webhook-secret-0123456789").send().await?;
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    // Malformed records on the internal and the input topic, then a valid client reference.
    let producer = producer()?;
    let t = &tw.scope.id;
    send(&producer, &format!("crm.incoming.{t}"), "c-x", "not json").await?;
    send(&producer, &format!("All_Clients.{t}"), "c-9", "{").await?;
    send(
        &producer,
        &format!("All_Clients.{t}"),
        "c-9",
        r#"{"version":1,"event_id":"cl-1","client_id":"c-9","occurred_at":"2026-12-02T10:00:00Z","fields":{"phone":"12345"}}"#,
    )
    .await?;
    send(
        &producer,
        &format!("All_Clients.{t}"),
        "c-9",
        r#"{"version":1,"event_id":"cl-2","client_id":"c-9","occurred_at":"2026-12-02T10:00:00Z","fields":{"first_name":"Grace","last_name":"Hopper"}}"#,
    )
    .await?;
    tw.webhooks_on().await?;
    tw.wait_ours("c-9", "the valid All_Clients record", |c| {
        c["fields"]["first_name"] == "Grace"
    })
    .await?;
    tw.wait_theirs("c-9", "the card in the CRM", |c| c["last_name"] == "Hopper")
        .await?;

    // The processor works on its own: its outcome may come after the clients stage's.
    let unknown = |f: &Value| f["reason_code"] == "unknown_client" && f["crm_id"] == "ct-nobody";
    let mut failed = Vec::new();
    let start = std::time::Instant::now();
    while start.elapsed() < WAIT && !failed.iter().any(unknown) {
        failed = read_topic(&format!("crm.failed.{t}"))?;
    }
    assert!(failed.iter().any(unknown), "{failed:?}");
    let mut letters = Vec::new();
    let start = std::time::Instant::now();
    while start.elapsed() < WAIT {
        letters = tw.scope.dead_letters()?;
        if letters.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let reasons: Vec<(String, String)> = letters
        .iter()
        .map(|l| {
            (
                l.header("x-source-topic").unwrap_or_default().to_owned(),
                l.header("x-dlq-reason-code").unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for (topic, code) in [
        (format!("crm.incoming.{t}"), "malformed_json"),
        (format!("All_Clients.{t}"), "malformed_json"),
        (format!("All_Clients.{t}"), "invalid_field"),
    ] {
        assert!(
            reasons.contains(&(topic.clone(), code.to_owned())),
            "{topic} {code}: {reasons:?}"
        );
    }
    let bad_phone = letters
        .iter()
        .find(|l| l.header("x-dlq-reason-code") == Some("invalid_field"))
        .unwrap();
    let reason = bad_phone.header("x-dlq-reason").unwrap_or_default();
    assert!(reason.contains("fields.phone"), "{reason}");
    assert!(!reason.contains("12345"), "the reason never repeats the value");
    tw.stop().await
}
