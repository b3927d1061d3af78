//! Contract tests of the generic SMS provider adapter against a wiremock provider: the request
//! shape of `docs/openapi/sms-provider-v1.yaml` and the classification of every answer class.
#![allow(clippy::unwrap_used)]

use backbone_certificates::ports::{SmsError, SmsMessage, SmsSender};
use backbone_sms::{HttpSmsSender, SmsProviderConfig};
use secrecy::SecretString;
use serde_json::json;
use std::time::Duration;
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN: &str = "sms-test-token-0123456789";
const PHONE: &str = "+79991234567";
const TEXT: &str = "Certificate ****-****-****-ABCD, security code 4821";
const KEY: &str = "certificate-sms:0193a1c2-7d4e-7c11-9a3b-4d5e6f708192";

fn message() -> SmsMessage {
    SmsMessage {
        to: PHONE.into(),
        text: TEXT.into(),
        idempotency_key: KEY.into(),
    }
}

fn config(url: &str) -> SmsProviderConfig {
    SmsProviderConfig::new(url, SecretString::from(TOKEN))
}

fn sender(url: &str) -> HttpSmsSender {
    HttpSmsSender::new(&config(url)).unwrap()
}

/// Nothing of the message body or the full number may appear in an error.
fn assert_clean(e: &SmsError) {
    let shown = format!("{e} {e:?}");
    for secret in ["4821", TEXT, PHONE, "1234567", TOKEN] {
        assert!(!shown.contains(secret), "{shown} contains {secret}");
    }
}

async fn answer(template: ResponseTemplate) -> Result<String, SmsError> {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(template)
        .expect(1)
        .mount(&server)
        .await;
    let out = sender(&server.uri())
        .send(&message())
        .await
        .map(|r| r.provider_id);
    if let Err(e) = &out {
        assert_clean(e);
    }
    out
}

fn problem(status: u16, code: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(
        json!({
            "type": "https://sms.example.com/problems/x",
            "title": "Request refused",
            "status": status,
            "code": code,
            // Providers echo the request in `detail`; the adapter must not pass it on.
            "detail": format!("number {PHONE} text '{TEXT}'"),
        })
        .to_string(),
        "application/problem+json",
    )
}

#[tokio::test]
async fn created_sends_the_documented_request_and_returns_the_provider_id() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("idempotency-key", KEY))
        .and(header("content-type", "application/json"))
        .and(body_json(json!({ "to": PHONE, "text": TEXT, "client_ref": KEY })))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({ "id": "msg-1", "status": "queued" })))
        .expect(1)
        .mount(&server)
        .await;
    let receipt = sender(&format!("{}/", server.uri()))
        .send(&message())
        .await
        .unwrap();
    assert_eq!(receipt.provider_id, "msg-1");
}

#[tokio::test]
async fn a_configured_sender_goes_in_from() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .and(body_json(
            json!({ "to": PHONE, "text": TEXT, "client_ref": KEY, "from": "Shop" }),
        ))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({ "id": "msg-2", "status": "queued" })))
        .expect(1)
        .mount(&server)
        .await;
    let mut cfg = config(&server.uri());
    cfg.sender = Some("Shop".into());
    let receipt = HttpSmsSender::new(&cfg).unwrap().send(&message()).await.unwrap();
    assert_eq!(receipt.provider_id, "msg-2");
}

#[tokio::test]
async fn a_replayed_200_is_the_original_message() {
    let out =
        answer(ResponseTemplate::new(200).set_body_json(json!({ "id": "msg-0", "status": "delivered" })));
    assert_eq!(out.await.unwrap(), "msg-0");
}

#[tokio::test]
async fn a_success_without_an_id_is_transient() {
    for body in [
        json!({ "status": "queued" }),
        json!({ "id": " ", "status": "queued" }),
    ] {
        let out = answer(ResponseTemplate::new(201).set_body_json(body)).await;
        assert!(matches!(out, Err(SmsError::Transient(_))), "{out:?}");
    }
    let out = answer(ResponseTemplate::new(201).set_body_string("<html>")).await;
    assert!(matches!(out, Err(SmsError::Transient(_))), "{out:?}");
}

#[tokio::test]
async fn bad_requests_are_rejected_with_the_stable_code_only() {
    for (status, code) in [
        (400, "invalid_number"),
        (404, "not_found"),
        (409, "idempotency_key_reused"),
        (413, "too_large"),
        (422, "sender_not_registered"),
    ] {
        match answer(problem(status, code)).await {
            Err(SmsError::Rejected(m)) => {
                assert!(m.contains(&status.to_string()) && m.contains(code), "{m}")
            }
            other => panic!("{status}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn refused_credentials_are_rejected_as_configuration() {
    for status in [401, 403] {
        match answer(problem(status, "unauthorized")).await {
            Err(SmsError::Rejected(m)) => assert!(m.contains("sms.token"), "{m}"),
            other => panic!("{status}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn rate_limits_are_transient_and_carry_retry_after() {
    let out = answer(problem(429, "rate_limited").insert_header("retry-after", "7")).await;
    match out {
        Err(SmsError::Transient(m)) => assert!(m.contains("429") && m.contains("retry after 7 s"), "{m}"),
        other => panic!("{other:?}"),
    }
    let out = answer(ResponseTemplate::new(429)).await;
    assert!(matches!(out, Err(SmsError::Transient(_))), "{out:?}");
}

#[tokio::test]
async fn server_errors_and_request_timeouts_are_transient() {
    for status in [408, 425, 500, 502, 503, 504] {
        let out = answer(problem(status, "unavailable")).await;
        assert!(matches!(out, Err(SmsError::Transient(_))), "{status}: {out:?}");
    }
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_is_rejected() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(ResponseTemplate::new(307).insert_header("location", "http://127.0.0.1:9/v1/messages"))
        .expect(1)
        .mount(&server)
        .await;
    let out = sender(&server.uri()).send(&message()).await;
    assert!(
        matches!(&out, Err(SmsError::Rejected(m)) if m.contains("sms.base_url")),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_slow_provider_times_out_as_transient() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(json!({ "id": "late", "status": "queued" }))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let mut cfg = config(&server.uri());
    cfg.timeout_ms = 200;
    let started = std::time::Instant::now();
    let out = HttpSmsSender::new(&cfg).unwrap().send(&message()).await;
    assert!(
        matches!(&out, Err(SmsError::Transient(m)) if m == "timeout"),
        "{out:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_reset_connection_is_transient() {
    // A server that reads the request and closes the connection without answering.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut buf).await;
            drop(socket);
        }
    });
    let out = sender(&format!("http://{addr}")).send(&message()).await;
    match &out {
        Err(e @ SmsError::Transient(_)) => assert_clean(e),
        other => panic!("{other:?}"),
    }
    server.abort();
}

#[tokio::test]
async fn a_refused_connection_is_transient() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let out = sender(&format!("http://{addr}")).send(&message()).await;
    assert!(
        matches!(&out, Err(SmsError::Transient(m)) if m == "connect error"),
        "{out:?}"
    );
}

#[test]
fn configuration_is_validated_and_the_token_never_printed() {
    let good = config("https://sms.example.com");
    assert!(good.validate().is_ok());
    assert!(!format!("{good:?}").contains(TOKEN));
    let sender = HttpSmsSender::new(&good).unwrap();
    assert!(!format!("{sender:?}").contains(TOKEN));

    let empty_token = SmsProviderConfig::new("https://sms.example.com", SecretString::from(" "));
    assert!(empty_token.validate().unwrap_err().0.contains("sms.token"));
    assert!(config("ftp://sms.example.com").validate().is_err());
    assert!(config("not a url").validate().is_err());
    let mut zero = config("https://sms.example.com");
    zero.timeout_ms = 0;
    assert!(zero.validate().is_err());
    let mut long_sender = config("https://sms.example.com");
    long_sender.sender = Some("x".repeat(21));
    assert!(long_sender.validate().is_err());
    let parsed: SmsProviderConfig =
        serde_json::from_value(json!({ "base_url": "https://sms.example.com", "token": TOKEN })).unwrap();
    assert_eq!(parsed.timeout_ms, 10_000);
    assert!(parsed.validate().is_ok());
}

#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_name_the_message_by_key_and_never_show_its_text() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("idempotency-key", "ok"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({ "id": "msg-9", "status": "queued" })))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(header("idempotency-key", "bad"))
        .respond_with(problem(422, "invalid_number"))
        .mount(&server)
        .await;
    let sender = sender(&server.uri());
    for key in ["ok", "bad"] {
        let mut m = message();
        m.idempotency_key = key.into();
        let _ = sender.send(&m).await;
    }
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("msg-9") && logs.contains("invalid_number"),
        "{logs}"
    );
    for secret in ["4821", "security code", PHONE, "1234567", TOKEN] {
        assert!(!logs.contains(secret), "logs contain {secret}: {logs}");
    }
}
