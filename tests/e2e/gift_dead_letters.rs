//! gift-certificates' dead letters through its admin API, on the real broker: a malformed order
//! is dead-lettered, listed (only with the admin token), shown with its payload masked,
//! dry-run replayed (nothing sent), then replayed by a named operator: the record goes back to
//! the orders topic with `x-replayed-by`, and the service dead-letters it again with replay
//! count 1.

use backbone_tests::gift::*;
use serde_json::{json, Value};
use std::time::Duration;

const ADMIN_TOKEN: &str = "gift-admin-token-for-dead-letters-e2e-7";

/// `GET path` with the admin token: status and JSON body.
async fn get(service: &Service, path: &str) -> (u16, Value) {
    let response = service
        .http
        .get(format!("{}{path}", service.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `POST /admin/v1/dead-letters/replay` with the admin token, as `operator` when given.
async fn replay(service: &Service, operator: Option<&str>, body: &Value) -> (u16, Value) {
    let mut request = service
        .http
        .post(format!("{}/admin/v1/dead-letters/replay", service.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(body);
    if let Some(name) = operator {
        request = request.header("x-operator", name);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The letters of `event_id` once there are `n` of them (waiting at most 60 s).
async fn letters_of(service: &Service, event_id: &str, n: usize) -> Vec<Value> {
    let path = format!("/admin/v1/dead-letters?event_id={event_id}&limit=500");
    let started = std::time::Instant::now();
    loop {
        let (status, listed) = get(service, &path).await;
        assert_eq!(status, 200, "{listed}");
        let found = listed["letters"].as_array().cloned().unwrap_or_default();
        if found.len() >= n {
            return found;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{n} letters of {event_id} never listed: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_order_is_listed_shown_masked_and_replayed_by_an_operator() {
    let sms = sms_provider(200).await;
    let service = Service::start(&sms.uri(), |cfg| {
        cfg.admin.token = secrecy::SecretString::from(ADMIN_TOKEN);
    })
    .await;
    let t = service.topics.clone();
    let order_id = format!("o-dlq-{}", service.id);
    let event_id = format!("order-event-{order_id}");
    // Not a valid certificate code: the order is dead-lettered `invalid_field`.
    send(
        &producer(),
        &t.orders,
        &order_id,
        &order(&order_id, "NOT-A-CERTIFICATE-CODE", 10_000, "+79990001122"),
    )
    .await;

    let anonymous = service
        .http
        .get(format!("{}/admin/v1/dead-letters", service.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    let listed = letters_of(&service, &event_id, 1).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let summary = &listed[0];
    assert_eq!(summary["event_id"], event_id.as_str());
    assert_eq!(summary["reason_code"], "invalid_field");
    assert_eq!(summary["source_topic"], t.orders.as_str());
    assert_eq!(summary["replay_count"], 0);
    assert!(summary["dead_lettered_at"]
        .as_str()
        .is_some_and(|at| at.ends_with('Z')));
    assert!(summary.get("payload").is_none(), "a list carries no payloads");
    let (partition, offset) = (
        summary["partition"].as_i64().unwrap(),
        summary["offset"].as_i64().unwrap(),
    );

    let (status, one) = get(&service, &format!("/admin/v1/dead-letters/{partition}/{offset}")).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["event_id"], event_id.as_str());
    assert_eq!(one["key"], order_id.as_str());
    assert_eq!(one["headers"]["x-dlq-reason-code"], "invalid_field");
    assert_eq!(one["headers"]["x-source-topic"], t.orders.as_str());
    assert!(one["payload_bytes"].as_u64().unwrap() > 0);
    let payload = &one["payload"];
    assert_eq!(payload["event_id"], event_id.as_str());
    assert_eq!(payload["order_id"], order_id.as_str());
    assert_eq!(payload["version"], 1);
    assert_eq!(payload["total_minor"], "***", "amounts are masked");
    assert_eq!(payload["client_id"], "***t-77");
    let shown = payload.to_string();
    for secret in ["+7999", "79990001122", "10000", "CERTIFICATE"] {
        assert!(!shown.contains(secret), "{secret} shown: {shown}");
    }
    let (status, missing) = get(&service, &format!("/admin/v1/dead-letters/{partition}/999999")).await;
    assert_eq!((status, &missing["code"]), (404, &json!("dead-letter-not-found")));
    let (status, _) = get(&service, "/admin/v1/dead-letters/first/1").await;
    assert_eq!(status, 400);

    let chosen = json!({"letters": [{"partition": partition, "offset": offset}], "dry_run": true});
    let (status, refused) = replay(&service, None, &chosen).await;
    assert_eq!(
        (status, &refused["code"]),
        (400, &json!("bad-request")),
        "X-Operator is required"
    );
    let (status, dry) = replay(&service, Some("dry-runner"), &chosen).await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(
        (
            &dry["matched"],
            &dry["replayed"],
            &dry["refused"],
            &dry["dry_run"]
        ),
        (&json!(1), &json!(0), &json!(0), &json!(true))
    );
    let planned = &dry["letters"][0];
    assert_eq!(planned["target_topic"], t.orders.as_str());
    assert_eq!(planned["replay_count"], 1);
    assert_eq!(planned["event_id"], event_id.as_str());
    assert!(planned.get("refused").is_none(), "{planned}");

    let confirm = json!({"letters": [{"partition": partition, "offset": offset}], "dry_run": false});
    let (status, sent) = replay(&service, Some("alice"), &confirm).await;
    assert_eq!(status, 200, "{sent}");
    assert_eq!((&sent["matched"], &sent["replayed"]), (&json!(1), &json!(1)));

    // The record is back on the orders topic, after the original (same key, same partition); a
    // record of the dry run would be between them.
    let replayed_by = |r: &Received| r.headers.get("x-replayed-by").cloned();
    let orders = read_until(&t.orders, |got| {
        got.iter().any(|r| replayed_by(r).as_deref() == Some("alice"))
    })
    .await;
    assert!(
        orders
            .iter()
            .all(|r| replayed_by(r).as_deref() != Some("dry-runner")),
        "the dry run sent nothing"
    );
    let back = orders
        .iter()
        .find(|r| replayed_by(r).as_deref() == Some("alice"))
        .unwrap();
    assert_eq!(back.key, order_id);
    assert_eq!(back.headers["x-replay-count"], "1");
    assert_eq!(
        back.headers["x-replayed-from"],
        format!("{}/{partition}/{offset}", t.dead_letters)
    );

    // Still not a valid order: the service sets it aside again, now with replay count 1.
    let again = letters_of(&service, &event_id, 2).await;
    let counts: Vec<&Value> = again.iter().map(|l| &l["replay_count"]).collect();
    assert_eq!(counts, [&json!(0), &json!(1)], "{again:?}");
    assert_eq!(again[1]["source_topic"], t.orders.as_str());
    service.stop().await;
}
