//! The two-way sync's HTTP API, in process: the router over [`MemoryClients`] on a bound port,
//! driven with reqwest (and a raw socket where the body must stay unsent).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use backbone_crm::signing::{self, SignedParts};
use backbone_crm::webhooks::{WebhookConfig, Webhooks, MAX_WEBHOOK_BYTES};
use backbone_sync::clients::memory::MemoryClients;
use backbone_sync::clients::{
    ClientId, ClientStore, Conflict, Field, Owner, Resolution, Source, SyncWrite, Value,
};
use crm_sync::api::{self, ApiConfig, ApiState};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ORDERS_TOKEN: &str = "orders-token-0123456789abcdef";
const DESK_TOKEN: &str = "desk-token-0123456789abcdef";
const GENERIC_SECRET: &str = "generic-webhook-secret-0123456789";
const BITRIX_MEMBER: &str = "member-1";
const BITRIX_TOKEN: &str = "bitrix-app-token-0123456789";
const KOMMO_SECRET: &str = "kommo-path-secret-0123456789";
const KOMMO_ACCOUNT: &str = "7039099";
const SALESFORCE_SECRET: &str = "salesforce-path-secret-0123456789";
const SALESFORCE_ORG: &str = "00D000000000001AAA";

struct App {
    base: String,
    addr: std::net::SocketAddr,
    http: reqwest::Client,
    /// The memory store behind the API (a fresh, unused one when the API is over another).
    store: MemoryClients,
    /// The store the API serves from.
    clients: Arc<dyn ClientStore>,
}

fn webhook_config() -> Json {
    json!({
        "generic": {"secret": GENERIC_SECRET},
        "bitrix24": {"application_tokens": {BITRIX_MEMBER: BITRIX_TOKEN}},
        "kommo": {"path_secret": KOMMO_SECRET, "account_id": KOMMO_ACCOUNT},
        "salesforce": {"path_secret": SALESFORCE_SECRET, "organization_id": SALESFORCE_ORG},
    })
}

async fn start() -> App {
    start_with(webhook_config()).await
}

async fn start_with(webhooks: Json) -> App {
    let store = MemoryClients::new();
    let clients: Arc<dyn ClientStore> = Arc::new(store.clone());
    let addr = serve(state_over(clients.clone(), webhooks)).await;
    App::at(addr, store, clients)
}

/// The API's state over `store`, with the test tokens and these webhook endpoints.
fn state_over(store: Arc<dyn ClientStore>, webhooks: Json) -> ApiState {
    let cfg: WebhookConfig = serde_json::from_value(webhooks).expect("webhook config");
    let webhooks = Webhooks::new(&cfg).expect("webhooks");
    let limits = ApiConfig {
        tokens: BTreeMap::from([
            ("orders".to_owned(), SecretString::from(ORDERS_TOKEN)),
            ("desk".to_owned(), SecretString::from(DESK_TOKEN)),
        ]),
        ..ApiConfig::default()
    };
    limits.validate().expect("valid api config");
    ApiState::new(store, Arc::new(webhooks), limits)
}

/// Serves the router on a free port of this host.
async fn serve(state: ApiState) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, api::router(state)).await.unwrap();
    });
    addr
}

impl App {
    fn at(addr: std::net::SocketAddr, store: MemoryClients, clients: Arc<dyn ClientStore>) -> Self {
        App {
            base: format!("http://{addr}"),
            addr,
            http: reqwest::Client::new(),
            store,
            clients,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn write(&self, method: reqwest::Method, path: &str, key: &str, body: &Json) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(ORDERS_TOKEN)
            .header("idempotency-key", key)
            .json(body)
    }

    async fn put(&self, path: &str, key: &str, body: &Json) -> (StatusCode, Json) {
        send(self.write(reqwest::Method::PUT, path, key, body)).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Json) {
        send(self.http.get(self.url(path)).bearer_auth(DESK_TOKEN)).await
    }

    async fn outbox(&self) -> i64 {
        self.clients.outbox_depth().await.unwrap()
    }
}

async fn send(req: reqwest::RequestBuilder) -> (StatusCode, Json) {
    let res = req.send().await.unwrap();
    let status = res.status();
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Json::String(text)))
}

fn card(first_name: &str) -> Json {
    json!({"fields": {"first_name": first_name, "phone": "+79991234567", "consent_sms": true}})
}

fn assert_problem(status: StatusCode, body: &Json, want_status: u16, code: &str) {
    assert_eq!(status.as_u16(), want_status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], want_status, "{body}");
    assert_eq!(body["type"], format!("/problems/{code}"), "{body}");
}

#[path = "api/cards.rs"]
mod cards;
#[path = "api/document.rs"]
mod document;
#[path = "api/failures.rs"]
mod failures;
#[path = "api/observability.rs"]
mod observability;
#[path = "api/operator.rs"]
mod operator;
#[path = "api/postgres.rs"]
mod postgres;
#[path = "api/webhooks.rs"]
mod webhooks;

// ---------------------------------------------------------------------------------------------
// Authentication

#[tokio::test]
async fn v1_calls_need_a_known_token() {
    let app = start().await;
    let res = app.http.get(app.url("/v1/clients/c-1")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let (s, b) = send(
        app.http
            .get(app.url("/v1/clients/c-1"))
            .bearer_auth("not-a-token"),
    )
    .await;
    assert_problem(s, &b, 401, "unauthenticated");
    let (s, b) = send(
        app.http
            .put(app.url("/v1/clients/c-1"))
            .header("idempotency-key", "k")
            .json(&card("Ada")),
    )
    .await;
    assert_problem(s, &b, 401, "unauthenticated");
    assert_eq!(app.outbox().await, 0);
    // The known token gets through.
    let (s, b) = app.get("/v1/clients/c-1").await;
    assert_problem(s, &b, 404, "client-not-found");
}

/// A request announcing a body it never sends is answered `401` at once: the token is checked
/// before the body is read (a read would wait for the bytes forever).
#[tokio::test]
async fn the_token_is_checked_before_the_body_is_read() {
    let app = start().await;
    let mut sock = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "PUT /v1/clients/c-1 HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer wrong-token\r\nIdempotency-Key: k-1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{",
        app.addr
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf))
        .await
        .expect("answered without waiting for the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // An oversized body without a token is refused for the token, not for its size.
    let (s, b) = send(
        app.http
            .put(app.url("/v1/clients/c-1"))
            .header("idempotency-key", "k")
            .body(vec![b'x'; 1024 * 1024]),
    )
    .await;
    assert_problem(s, &b, 401, "unauthenticated");
}

#[tokio::test]
async fn writes_need_an_idempotency_key_before_the_body_is_looked_at() {
    let app = start().await;
    let (s, b) = send(
        app.http
            .put(app.url("/v1/clients/c-1"))
            .bearer_auth(ORDERS_TOKEN)
            .body("not json"),
    )
    .await;
    assert_problem(s, &b, 400, "idempotency-key-required");
    let (s, b) = send(
        app.http
            .post(app.url("/v1/operator-tasks/1/resolve"))
            .bearer_auth(ORDERS_TOKEN)
            .header("idempotency-key", "k".repeat(256))
            .json(&json!({"choice": "ours", "by": "ann"})),
    )
    .await;
    assert_problem(s, &b, 400, "bad-request");
}

// ---------------------------------------------------------------------------------------------
// Request ids

#[tokio::test]
async fn request_ids_are_echoed_generated_or_refused() {
    let app = start().await;
    let res = app
        .write(reqwest::Method::PUT, "/v1/clients/c-1", "k-1", &card("Ada"))
        .header("x-request-id", "req-42.a:b_c")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["x-request-id"], "req-42.a:b_c");
    // It follows the change into the outbox row.
    let rows = app.store.outbox_next(10).await.unwrap();
    assert!(
        rows[0]
            .headers
            .iter()
            .any(|(k, v)| k == "x-request-id" && v == "req-42.a:b_c"),
        "{:?}",
        rows[0].headers
    );

    let res = app
        .http
        .get(app.url("/v1/clients/c-1"))
        .bearer_auth(DESK_TOKEN)
        .send()
        .await
        .unwrap();
    let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");

    let res = app
        .http
        .get(app.url("/v1/clients/c-1"))
        .bearer_auth(DESK_TOKEN)
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let fresh = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(fresh, "bad id with spaces");
    assert_eq!(fresh.len(), 32);
    let b: Json = res.json().await.unwrap();
    assert_eq!(b["code"], "bad-request-id");

    // The framework's own answers carry it too, as problems.
    for (method, path, status, code) in [
        (
            reqwest::Method::DELETE,
            "/v1/clients/c-1",
            405,
            "method-not-allowed",
        ),
        (reqwest::Method::GET, "/v2/nothing", 404, "not-found"),
    ] {
        let res = app
            .http
            .request(method, app.url(path))
            .bearer_auth(DESK_TOKEN)
            .header("x-request-id", "r-1")
            .send()
            .await
            .unwrap();
        assert_eq!(res.headers()["x-request-id"], "r-1");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let s = res.status();
        let b: Json = res.json().await.unwrap();
        assert_problem(s, &b, status, code);
    }
}

#[tokio::test]
async fn an_oversized_body_is_413() {
    let app = start().await;
    let big = json!({"fields": {"first_name": "x".repeat(70 * 1024)}});
    let (s, b) = app.put("/v1/clients/c-1", "k-1", &big).await;
    assert_problem(s, &b, 413, "payload-too-large");
    assert_eq!(app.outbox().await, 0);
}
