//! crm-sim serves contacts, tasks and notes in every dialect's wire shapes and sends webhooks back
//! in each vendor's shape: real HTTP against a sim on 127.0.0.1:0, webhooks received by a small
//! axum server.

#![allow(clippy::unwrap_used)]

#[path = "two_way/bitrix24.rs"]
mod bitrix24;
#[path = "two_way/generic.rs"]
mod generic;
#[path = "two_way/kommo.rs"]
mod kommo;
#[path = "two_way/salesforce.rs"]
mod salesforce;

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::Router;
use bytes::Bytes;
use crm_sim::Sim;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "sim-token-0123456789";
pub const SECRET: &str = "sim-secret-0123456789";
pub const VENDOR_SECRET: &str = "simVendorSecret0123456789";
pub const HOOK_SECRET: &str = "hook-secret-0123456789";

pub async fn start() -> (Sim, String) {
    let sim = Sim::new(TOKEN, SECRET).with_vendor_secret(VENDOR_SECRET);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(crm_sim::serve(listener, sim.router()));
    (sim, url)
}

/// One webhook as received.
#[derive(Debug, Clone)]
pub struct Got {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub fn form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }

    pub fn field(&self, key: &str) -> Option<String> {
        self.form().into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// A webhook receiver: keeps what it gets as it arrives, and answers `status` (with a SOAP Ack
/// on Salesforce paths) after `delay_ms`.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    got: Arc<Mutex<Vec<Got>>>,
    pub status: Arc<AtomicU16>,
    pub delay_ms: Arc<AtomicU64>,
}

const ACK: &str = r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"#;

impl Receiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = Receiver {
            url: format!("http://{}", listener.local_addr().unwrap()),
            got: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
            delay_ms: Arc::default(),
        };
        let state = r.clone();
        let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let state = state.clone();
            async move {
                let path = uri.path_and_query().map(|p| p.to_string()).unwrap_or_default();
                let soap = path.contains("salesforce");
                state.got.lock().unwrap().push(Got {
                    path,
                    headers,
                    body: body.to_vec(),
                });
                let delay = state.delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                let status = StatusCode::from_u16(state.status.load(Ordering::SeqCst)).unwrap();
                (status, if soap { ACK } else { "" })
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        r
    }

    pub fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until at least `n` webhooks arrived (at most 5 s), and returns them.
    pub async fn wait(&self, n: usize) -> Vec<Got> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.got().len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let got = self.got();
        assert!(got.len() >= n, "{} webhooks received, {n} expected", got.len());
        got
    }

    /// Asserts that nothing more than `n` webhooks arrives within a short while.
    pub async fn settle(&self, n: usize) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(self.got().len(), n);
    }
}

pub async fn call(method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method.parse().unwrap(), url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Points a dialect's webhooks at the receiver.
pub async fn hook(url: &str, dialect: &str, target: Value) {
    let (status, body) = call("PUT", &format!("{url}/sim/webhooks/{dialect}"), Some(target)).await;
    assert_eq!(status, 204, "{body}");
}

/// Waits until a dialect's webhook counters satisfy `done` (at most 5 s).
pub async fn stats_until(url: &str, dialect: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, stats) = call("GET", &format!("{url}/sim/webhooks/stats"), None).await;
        let s = stats[dialect].clone();
        if done(&s) || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends the same delivery `times` times through the notify endpoint; asserts every copy
/// arrived identical and returns one.
pub async fn notify_50(url: &str, dialect: &str, what: &str, crm_id: &str, rx: &Receiver) -> Got {
    let before = rx.got().len();
    let (status, body) = call(
        "POST",
        &format!("{url}/sim/{dialect}/{what}/{crm_id}/notify?times=50"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let statuses = body["statuses"].as_array().unwrap();
    assert_eq!(statuses.len(), 50);
    assert!(statuses.iter().all(|s| s == 200), "{body}");
    let got = rx.wait(before + 50).await;
    let copies = &got[before..];
    assert_eq!(copies.len(), 50);
    assert!(
        copies.iter().all(|g| g.body == copies[0].body),
        "identical bodies"
    );
    copies[0].clone()
}

#[tokio::test]
async fn webhook_targets_are_validated_counted_and_can_be_turned_off() {
    let (_sim, url) = start().await;
    let rx = Receiver::start().await;
    // A generic target needs its secret, a Bitrix24 one its application token, and a URL.
    let sim_hooks = format!("{url}/sim/webhooks");
    let (status, _) = call(
        "PUT",
        &format!("{sim_hooks}/generic"),
        Some(json!({"url": rx.url})),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = call(
        "PUT",
        &format!("{sim_hooks}/bitrix24"),
        Some(json!({"url": rx.url})),
    )
    .await;
    assert_eq!(status, 400);
    let bad = json!({"url": "ftp://x", "secret": "s"});
    assert_eq!(
        call("PUT", &format!("{sim_hooks}/generic"), Some(bad)).await.0,
        400
    );
    assert_eq!(
        call(
            "PUT",
            &format!("{sim_hooks}/nowhere"),
            Some(json!({"url": rx.url}))
        )
        .await
        .0,
        404
    );

    // Kommo needs nothing but the URL; its credentials have defaults.
    hook(
        &url,
        "kommo",
        json!({"url": format!("{}/webhooks/kommo/s", rx.url)}),
    )
    .await;
    let (_, stats) = call("GET", &format!("{sim_hooks}/stats"), None).await;
    assert_eq!(stats["kommo"]["configured"], true);
    assert_eq!(stats["generic"]["configured"], false);
    let (status, created) = call("POST", &format!("{url}/sim/kommo/contacts"), Some(json!({}))).await;
    assert_eq!(status, 201);
    rx.wait(1).await;
    let s = stats_until(&url, "kommo", |s| s["sent"] == 1).await;
    assert_eq!(
        (
            s["sent"].as_u64(),
            s["failed"].as_u64(),
            s["last_status"].as_u64()
        ),
        (Some(1), Some(0), Some(200))
    );

    // Turned off, a change sends nothing.
    let (status, _) = call("DELETE", &format!("{sim_hooks}/kommo"), None).await;
    assert_eq!(status, 204);
    let id = created["crm_id"].as_str().unwrap();
    let edit = json!({"segment": "vip"});
    let (status, _) = call("PATCH", &format!("{url}/sim/kommo/contacts/{id}"), Some(edit)).await;
    assert_eq!(status, 200);
    rx.settle(1).await;
    let (status, body) = call("POST", &format!("{url}/sim/kommo/contacts/{id}/notify"), None).await;
    assert_eq!(status, 409, "{body}");
}

#[tokio::test]
async fn a_slow_or_failing_receiver_never_delays_the_answer_and_is_counted_not_retried() {
    let (_sim, url) = start().await;
    let rx = Receiver::start().await;
    // The receiver answers after 3 s; the sim gives up after its default 2 s.
    rx.delay_ms.store(3_000, Ordering::SeqCst);
    hook(
        &url,
        "kommo",
        json!({"url": format!("{}/webhooks/kommo/s", rx.url)}),
    )
    .await;
    let started = Instant::now();
    let (status, _) = call("POST", &format!("{url}/sim/kommo/contacts"), Some(json!({}))).await;
    assert_eq!(status, 201);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let s = stats_until(&url, "kommo", |s| s["failed"] == 1).await;
    assert_eq!((s["failed"].as_u64(), s["attempts"].as_u64()), (Some(1), Some(1)));
    assert_eq!(s["last_error"], "timeout");

    // An error status is a failure too, and Kommo does not send it again.
    rx.delay_ms.store(0, Ordering::SeqCst);
    rx.status.store(500, Ordering::SeqCst);
    let before = rx.got().len();
    let (status, _) = call("POST", &format!("{url}/sim/kommo/contacts"), Some(json!({}))).await;
    assert_eq!(status, 201);
    let s = stats_until(&url, "kommo", |s| s["failed"] == 2).await;
    assert_eq!(
        (
            s["failed"].as_u64(),
            s["attempts"].as_u64(),
            s["last_status"].as_u64()
        ),
        (Some(2), Some(2), Some(500))
    );
    rx.settle(before + 1).await;
}
