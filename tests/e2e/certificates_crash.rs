//! gift-certificates killed with SIGKILL in the middle of authorize/capture traffic, then
//! restarted. Concurrent operations are committed in groups: one PostgreSQL transaction holds
//! the effects of a group with their audit rows, outbox events and Idempotency-Keys, and the
//! answers go out after its commit. So a crash at any point leaves either all of a group or none
//! of it: an answered request is applied once; a request cut off by the crash (its group
//! committed or not) and retried with the same key after the restart is applied once (or
//! replayed), never twice; money adds up; and the outbox relay, restarted,
//! publishes every committed event (a crash between the broker's acknowledgement and the
//! outbox delete publishes some twice; consumers de-duplicate by `event_id`), in order per
//! certificate.

use backbone_tests::gift::*;
use futures::future::join_all;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CERTIFICATES: usize = 16;
const NOMINAL: i64 = 1_000_000;
const PRICE: i64 = 100;

fn binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("gift-certificates");
    assert!(
        bin.exists(),
        "{} missing: `cargo build --bins` (done by `make test`)",
        bin.display()
    );
    bin
}

/// One request: retried with the same key and body until it gets an answer from the service.
async fn until_answered(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    body: &Value,
    stop: &AtomicBool,
) -> Option<(u16, Value)> {
    loop {
        let sent = http
            .post(url)
            .bearer_auth(token(Channel::Pos))
            .header("idempotency-key", key)
            .json(body)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        match sent {
            Ok(r) if r.status().as_u16() != 409 && r.status().as_u16() != 503 => {
                let status = r.status().as_u16();
                return Some((status, r.json().await.unwrap_or(Value::Null)));
            }
            // Down (killed, restarting) or the key still in flight: the same request again.
            _ => {
                if stop.load(Ordering::Relaxed) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// How many groups committed so far, and how many operations they held, from `/metrics`.
async fn group_sizes(http: &reqwest::Client, base: &str) -> (f64, f64) {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
    };
    (
        value("gift_certificates_operation_group_size_count"),
        value("gift_certificates_operation_group_size_sum"),
    )
}

#[tokio::test]
async fn a_kill_9_under_load_loses_nothing_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = ChildConfig::new(dir.path());
    let base = config.base();
    let mut child = config.spawn(&binary(), &dir.path().join("run-1.log")).await;
    let http = reqwest::Client::new();

    // Certificates, issued and sold.
    let codes: Vec<(String, String)> = (0..CERTIFICATES)
        .map(|i| (new_code(), format!("{:04}", 1000 + i)))
        .collect();
    let rows: Vec<Value> = codes
        .iter()
        .map(|(c, v)| json!({"code": c, "cvc": v, "nominal_minor": NOMINAL, "currency": "RUB"}))
        .collect();
    let r = http
        .post(format!("{base}/certificates/upload/batch"))
        .bearer_auth(token(Channel::BatchLoader))
        .header("idempotency-key", "crash:0")
        .json(&json!({"version": 1, "batch_id": "crash", "job": 0, "certificates": rows}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for (code, _) in &codes {
        let r = http
            .post(format!("{base}/certificates/{code}/activate"))
            .bearer_auth(token(Channel::Payments))
            .header("idempotency-key", format!("activate-{code}"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    // Each client pays with its certificate, one authorize+capture after another, retrying a
    // request cut off by the crash with the same key until it is answered.
    let stop = Arc::new(AtomicBool::new(false));
    let clients = codes.iter().enumerate().map(|(w, (code, cvc))| {
        let (http, base, stop) = (http.clone(), base.clone(), stop.clone());
        let (code, cvc) = (code.clone(), cvc.clone());
        tokio::spawn(async move {
            let mut captured = 0i64;
            let mut keys = Vec::new();
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let key = format!("a-{w}-{i}");
                let body = json!({"amount_minor": PRICE, "currency": "RUB", "cvc": cvc});
                let Some((status, hold)) = until_answered(
                    &http,
                    &format!("{base}/certificates/{code}/authorize"),
                    &key,
                    &body,
                    &stop,
                )
                .await
                else {
                    break;
                };
                assert_eq!(status, 201, "{hold}");
                keys.push(key);
                let key = format!("c-{w}-{i}");
                let body = json!({"hold_id": hold["operation_id"], "amount_minor": PRICE, "currency": "RUB"});
                // Once authorized, the capture is seen through even when stopping.
                let never = AtomicBool::new(false);
                let (status, capture) = until_answered(
                    &http,
                    &format!("{base}/certificates/{code}/capture"),
                    &key,
                    &body,
                    &never,
                )
                .await
                .unwrap();
                assert_eq!(status, 200, "{capture}");
                keys.push(key);
                captured += 1;
            }
            (captured, keys)
        })
    });
    let clients: Vec<_> = clients.collect();

    // Let traffic run, kill -9 mid-flight, restart on the same database and broker.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // The kill falls among groups of several operations, not single ones.
    let (groups, grouped) = group_sizes(&http, &base).await;
    assert!(
        grouped > groups,
        "{grouped} operations in {groups} groups before the kill: none held two"
    );
    std::process::Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status()
        .unwrap();
    let _ = child.wait();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut child = config.spawn(&binary(), &dir.path().join("run-2.log")).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    stop.store(true, Ordering::Relaxed);
    let results: Vec<(i64, Vec<String>)> = join_all(clients).await.into_iter().map(Result::unwrap).collect();

    let pool = sqlx::PgPool::connect(&config.db_url).await.unwrap();
    let answered: HashSet<&String> = results.iter().flat_map(|(_, keys)| keys).collect();
    let total_captured: i64 = results.iter().map(|(n, _)| n).sum();
    assert!(total_captured > 0, "no traffic went through");
    // One operation row per answered request: none lost, none doubled.
    let operations: Vec<(String, String)> = sqlx::query_as(
        "SELECT o.action, k.key FROM gift_certificate_operation o
           JOIN idempotency_key k ON k.result->'effects'->-1->>'operation' = o.operation_id
          WHERE o.action IN ('authorize', 'capture')",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let keys: HashSet<&String> = operations.iter().map(|(_, k)| k).collect();
    assert_eq!(keys.len(), operations.len(), "a key has two effects");
    assert_eq!(keys, answered, "operations and answered requests differ");
    // Money adds up per certificate, and nothing is left held.
    for (w, (code, cvc)) in codes.iter().enumerate() {
        let balance: Value = http
            .get(format!("{base}/certificates/{code}/balance"))
            .bearer_auth(token(Channel::Pos))
            .header("x-certificate-cvc", cvc)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            balance["balance_minor"],
            NOMINAL - PRICE * results[w].0,
            "{balance}"
        );
        assert_eq!(balance["available_minor"], balance["balance_minor"], "{balance}");
    }

    // Every committed transaction event reaches Kafka, in commit order per certificate.
    let expected: Vec<(String, String)> = sqlx::query_as(
        "SELECT certificate_id::text, operation_id FROM gift_certificate_operation ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (certificate, op) in expected {
        wanted.entry(certificate).or_default().push(op);
    }
    let total: usize = wanted.values().map(Vec::len).sum();
    let received = read_until(&config.topics.transactions, |got| {
        got.iter()
            .map(|r| (&r.key, &r.payload))
            .collect::<HashSet<_>>()
            .len()
            >= total
    })
    .await;
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &received {
        let event: Value = serde_json::from_str(&r.payload).unwrap();
        let op = event["operation_id"].as_str().unwrap().to_owned();
        let ops = seen.entry(r.key.clone()).or_default();
        // A duplicate (republished after the crash) repeats an event already seen; a new one
        // must come after everything seen so far for that certificate.
        if !ops.contains(&op) {
            ops.push(op);
        }
    }
    assert_eq!(seen, wanted, "events lost or out of order");

    child.kill().unwrap();
    let _ = child.wait();
    pool.close().await;
    if let Ok(admin) = sqlx::PgPool::connect(&format!("{}/postgres", backbone_tests::pg_base())).await {
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"gc_crash_{}\" WITH (FORCE)",
            config.id
        ))
        .execute(&admin)
        .await;
    }
}
