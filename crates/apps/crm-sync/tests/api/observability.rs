//! What the API tells operators: logs by route template with the request id, and counters.

use super::webhooks::bitrix;
use super::*;
use std::sync::Mutex;

#[tokio::test]
async fn counters_follow_answers_and_webhooks() {
    let registry = prometheus::Registry::new();
    let metrics = api::ApiMetrics::register(&registry).unwrap();
    let store = MemoryClients::new();
    let state = state_over(Arc::new(store.clone()), webhook_config()).with_metrics(metrics);
    let addr = serve(state).await;
    let app = App::at(addr, store.clone(), Arc::new(store));
    app.get("/v1/clients/c-1").await;
    send(bitrix(&app, "wrong-app-token-0123456789")).await;
    send(bitrix(&app, BITRIX_TOKEN)).await;
    send(bitrix(&app, BITRIX_TOKEN)).await;
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    for line in [
        r#"crm_sync_api_responses_total{route="/v1/clients/{client_id}",status="404"} 1"#,
        r#"crm_sync_api_responses_total{route="/webhooks/{vendor}",status="200"} 2"#,
        r#"crm_sync_webhooks_total{outcome="forbidden",vendor="bitrix24"} 1"#,
        r#"crm_sync_webhooks_total{outcome="stored",vendor="bitrix24"} 1"#,
        r#"crm_sync_webhooks_total{outcome="duplicate",vendor="bitrix24"} 1"#,
    ] {
        assert!(text.contains(line), "{line} missing in\n{text}");
    }
    assert!(!text.contains("c-1"), "paths are never labels");
}

/// Collects what the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The process's subscriber, set once: a per-test (thread-local) one loses events to the
/// callsite interest other tests' threads cache.
fn logs() -> &'static Captured {
    static LOGS: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_env_filter("crm_sync=debug")
            .with_current_span(true)
            .with_writer(captured.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        captured
    })
}

#[tokio::test]
async fn the_span_carries_the_request_id_and_the_route_template_never_the_path() {
    let captured = logs();
    let app = start().await;
    let res = app
        .write(
            reqwest::Method::PUT,
            "/v1/clients/c-secret-7",
            "k-1",
            &card("Ada"),
        )
        .header("x-request-id", "trace-me-1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let res = app
        .http
        .post(app.url(&format!("/webhooks/kommo/{KOMMO_SECRET}")))
        .header("x-request-id", "trace-me-2")
        .body("account%5Bid%5D=1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains(r#""request_id":"trace-me-1""#), "{logs}");
    assert!(logs.contains(r#""route":"/v1/clients/{client_id}""#), "{logs}");
    assert!(logs.contains(r#""caller":"orders""#), "{logs}");
    assert!(logs.contains(r#""request_id":"trace-me-2""#), "{logs}");
    assert!(
        logs.contains(r#""route":"/webhooks/{vendor}/{secret}""#),
        "{logs}"
    );
    assert!(
        !logs.contains("c-secret-7"),
        "a client id reached the logs: {logs}"
    );
    assert!(
        !logs.contains(KOMMO_SECRET),
        "a path secret reached the logs: {logs}"
    );
}
