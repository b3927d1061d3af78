//! The generic REST adapter against the documented HTTP contract (wiremock plays the CRM).

#![allow(clippy::unwrap_used)]

use backbone_crm::signing::{is_valid_nonce, verify, SignedParts};
use backbone_crm::{GenericCrmConfig, GenericRestCrm};
use backbone_sync::event::{ClientId, EventId, ShipmentId};
use backbone_sync::mapping::{CrmMapping, CrmStatusWrite, MappingConfig};
use backbone_sync::ports::{CrmErrorKind, CrmGateway};
use secrecy::SecretString;
use std::time::Duration;
use time::macros::datetime;
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const TOKEN: &str = "test-token-0123456789";
const SECRET: &str = "test-signing-secret-0123456789";

fn crm(server: &MockServer, timeout_ms: u64) -> GenericRestCrm {
    let cfg = GenericCrmConfig {
        base_url: server.uri(),
        token: SecretString::from(TOKEN),
        signing_secret: SecretString::from(SECRET),
        timeout_ms,
        connect_timeout_ms: 500,
    };
    GenericRestCrm::new(&cfg, CrmMapping::new(MappingConfig::default()).unwrap()).unwrap()
}

fn write(n: u32) -> CrmStatusWrite {
    CrmStatusWrite {
        event_id: EventId::parse(format!("e{n}")).unwrap(),
        shipment_id: ShipmentId::parse(format!("s/{n}")).unwrap(),
        client_id: ClientId::parse("c1").unwrap(),
        crm_status: "in_transit".into(),
        timestamp: datetime!(2026-11-01 10:00 UTC),
        correlation_id: format!("corr-{n}"),
    }
}

fn header_of(req: &Request, name: &str) -> String {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The request target as the server received it: path and, if any, `?` and query.
fn target(req: &Request) -> String {
    match req.url.query() {
        Some(q) => format!("{}?{q}", req.url.path()),
        None => req.url.path().to_owned(),
    }
}

/// Whether the signature verifies for this method and target with the request's other parts.
fn signed_for(req: &Request, method: &str, target: &str) -> bool {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    verify(
        SECRET.as_bytes(),
        &SignedParts {
            method,
            target,
            timestamp: &header_of(req, "x-timestamp"),
            nonce: &header_of(req, "x-nonce"),
            body: &req.body,
        },
        &header_of(req, "x-signature"),
        now,
    )
    .is_ok()
}

fn signed_correctly(req: &Request) -> bool {
    header_of(req, "authorization") == format!("Bearer {TOKEN}")
        && signed_for(req, req.method.as_str(), &target(req))
}

#[tokio::test]
async fn single_write_is_signed_and_carries_the_correlation_id() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path("/api/v1/shipments/s%2F1/status"))
        .and(header("x-request-id", "corr-1"))
        .and(body_json(
            serde_json::json!({"clientId": "c1", "shipmentId": "s/1", "status": "in_transit",
            "timestamp": "2026-11-01T10:00:00Z", "eventId": "e1", "requestId": "corr-1"}),
        ))
        .and(|r: &Request| signed_correctly(r))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({})))
        .expect(1)
        .mount(&server)
        .await;
    let out = crm(&server, 2000).write_statuses(&[write(1)]).await.unwrap();
    assert_eq!(out.len(), 1);
    assert!(out[0].result.is_ok());
    assert_eq!(out[0].http_status, Some(200));
}

#[tokio::test]
async fn batch_write_reports_each_item() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/shipments/status:batchWrite"))
        .and(|r: &Request| signed_correctly(r))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"results": [
            {"shipmentId": "s/1", "eventId": "e1", "status": 200},
            {"shipmentId": "s/2", "eventId": "e2", "status": 422, "error": {"code": "unknown_status", "message": "no"}},
            {"shipmentId": "s/3", "eventId": "e3", "status": 503, "error": {"code": "busy", "message": "later"}}
        ]})))
        .expect(1)
        .mount(&server)
        .await;
    let out = crm(&server, 2000)
        .write_statuses(&[write(1), write(2), write(3)])
        .await
        .unwrap();
    assert!(out[0].result.is_ok());
    assert_eq!(out[1].result.as_ref().unwrap_err().kind, CrmErrorKind::Permanent);
    assert_eq!(out[2].result.as_ref().unwrap_err().kind, CrmErrorKind::Transient);
    assert!(out[1]
        .response_excerpt
        .as_deref()
        .unwrap()
        .contains("unknown_status"));
}

#[tokio::test]
async fn reads_single_and_batch_and_treats_404_as_unknown() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/shipments/s%2F1/status"))
        .and(|r: &Request| signed_correctly(r))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v1/shipments/status:batchGet"))
        .and(body_json(serde_json::json!({"shipmentIds": ["s/1", "s/2"]})))
        .and(|r: &Request| signed_correctly(r))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"items": [
            {"clientId": "c1", "shipmentId": "s/2", "status": "delivered", "timestamp": "2026-11-01T11:00:00Z", "eventId": "x"}
        ]})))
        .mount(&server)
        .await;
    let c = crm(&server, 2000);
    assert!(c.read_states(&[write(1).shipment_id]).await.unwrap().is_empty());
    let states = c
        .read_states(&[write(1).shipment_id, write(2).shipment_id])
        .await
        .unwrap();
    assert_eq!(states.len(), 1);
    assert_eq!(states[&write(2).shipment_id].status, "delivered");
}

#[tokio::test]
async fn every_request_carries_a_fresh_nonce_and_is_signed_for_its_method_and_path() {
    let server = MockServer::start().await;
    Mock::given(path("/api/v1/shipments/s%2F1/status"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v1/shipments/status:batchGet"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"items": []})))
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path("/api/v1/shipments/s%2F2/status"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v1/shipments/status:batchWrite"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"results": [
                {"shipmentId": "s/3", "eventId": "e3", "status": 200},
                {"shipmentId": "s/4", "eventId": "e4", "status": 200}
            ]})),
        )
        .mount(&server)
        .await;
    let c = crm(&server, 2000);
    c.read_states(&[write(1).shipment_id]).await.unwrap();
    c.read_states(&[write(1).shipment_id]).await.unwrap();
    c.read_states(&[write(1).shipment_id, write(2).shipment_id])
        .await
        .unwrap();
    c.write_statuses(&[write(2)]).await.unwrap();
    c.write_statuses(&[write(3), write(4)]).await.unwrap();

    let received = server.received_requests().await.unwrap();
    assert_eq!(received.len(), 5);
    let nonces: std::collections::HashSet<String> =
        received.iter().map(|r| header_of(r, "x-nonce")).collect();
    assert_eq!(nonces.len(), received.len(), "a nonce was sent twice: {nonces:?}");
    for r in &received {
        let nonce = header_of(r, "x-nonce");
        assert!(is_valid_nonce(&nonce), "{nonce:?}");
        assert!(header_of(r, "x-signature").starts_with("v2="));
        assert!(signed_correctly(r), "{} {}", r.method, target(r));
    }
    // Two reads of the same shipment differ only in their nonce and signature.
    assert_eq!(target(&received[0]), target(&received[1]));
    assert_ne!(
        header_of(&received[0], "x-signature"),
        header_of(&received[1], "x-signature")
    );
    // A signature covers its own method and path, not another's.
    let (get, put) = (&received[0], &received[3]);
    assert_eq!((get.method.as_str(), put.method.as_str()), ("GET", "PUT"));
    assert!(!signed_for(get, "PUT", &target(get)));
    assert!(!signed_for(put, "PUT", &target(get)));
}

#[tokio::test]
async fn the_signature_covers_the_base_url_path_prefix() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/crm/api/v1/shipments/s%2F1/status"))
        .and(|r: &Request| signed_correctly(r))
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&server)
        .await;
    let cfg = GenericCrmConfig {
        base_url: format!("{}/crm/", server.uri()),
        token: SecretString::from(TOKEN),
        signing_secret: SecretString::from(SECRET),
        timeout_ms: 2000,
        connect_timeout_ms: 500,
    };
    let c = GenericRestCrm::new(&cfg, CrmMapping::new(MappingConfig::default()).unwrap()).unwrap();
    assert!(c.read_states(&[write(1).shipment_id]).await.unwrap().is_empty());
    let received = server.received_requests().await.unwrap();
    assert!(!signed_for(&received[0], "GET", "/api/v1/shipments/s%2F1/status"));
}

#[tokio::test]
async fn errors_are_classified_and_retry_after_is_kept() {
    let server = MockServer::start().await;
    Mock::given(path("/api/v1/shipments/s%2F1/status"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "7"))
        .mount(&server)
        .await;
    Mock::given(path("/api/v1/shipments/s%2F2/status"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    Mock::given(path("/api/v1/shipments/s%2F3/status"))
        .respond_with(ResponseTemplate::new(400).set_body_string("bad field"))
        .mount(&server)
        .await;
    Mock::given(path("/api/v1/shipments/s%2F4/status"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(800)))
        .mount(&server)
        .await;
    Mock::given(path("/api/v1/shipments/status:batchWrite"))
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>"))
        .mount(&server)
        .await;
    let c = crm(&server, 300);
    let e = c.write_statuses(&[write(1)]).await.unwrap_err();
    assert_eq!(
        (e.kind, e.http_status, e.retry_after),
        (CrmErrorKind::Transient, Some(429), Some(Duration::from_secs(7)))
    );
    assert!(c.write_statuses(&[write(2)]).await.unwrap_err().is_transient());
    let refused = c.write_statuses(&[write(3)]).await.unwrap();
    let err = refused[0].result.as_ref().unwrap_err();
    assert_eq!(err.kind, CrmErrorKind::Permanent);
    assert!(err.message.contains("bad field"));
    let timeout = c.write_statuses(&[write(4)]).await.unwrap_err();
    assert!(
        timeout.is_transient() && timeout.message.contains("timeout"),
        "{timeout}"
    );
    let garbage = c.write_statuses(&[write(5), write(6)]).await.unwrap_err();
    assert_eq!(garbage.kind, CrmErrorKind::Permanent);
}

#[tokio::test]
async fn a_closed_port_is_a_transient_connect_error() {
    // wiremock pools its servers, so a dropped one keeps listening: use a port nobody holds.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = GenericCrmConfig {
        base_url: format!("http://127.0.0.1:{port}"),
        token: SecretString::from(TOKEN),
        signing_secret: SecretString::from(SECRET),
        timeout_ms: 300,
        connect_timeout_ms: 300,
    };
    let c = GenericRestCrm::new(&cfg, CrmMapping::new(MappingConfig::default()).unwrap()).unwrap();
    let e = c.read_states(&[write(1).shipment_id]).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
}

#[test]
fn config_validation_and_debug_never_shows_secrets() {
    let cfg = GenericCrmConfig {
        base_url: "ftp://x".into(),
        token: SecretString::from(TOKEN),
        signing_secret: SecretString::from(SECRET),
        timeout_ms: 100,
        connect_timeout_ms: 100,
    };
    assert!(cfg.validate().unwrap_err().contains("http"));
    let dbg = format!("{cfg:?}");
    assert!(!dbg.contains(TOKEN) && !dbg.contains(SECRET));
    let short = GenericCrmConfig {
        base_url: "http://x".into(),
        token: SecretString::from("short"),
        ..cfg
    };
    assert!(short.validate().unwrap_err().contains("token"));
}

#[tokio::test]
async fn the_trace_context_travels_in_crm_request_headers() {
    use tracing::Instrument;
    let _guard = backbone_telemetry::propagation_test_guard();
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(wiremock::matchers::header_exists("traceparent"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let out = crm(&server, 2000)
        .write_statuses(&[write(1)])
        .instrument(tracing::info_span!("batch"))
        .await
        .unwrap();
    assert!(out[0].result.is_ok(), "{:?}", out[0]);
}

/// One record of a batch read that cannot be read (no status) fails only its own shipment, and
/// a record without a shipment id makes the requested shipments the answer does not otherwise
/// cover unreadable; the rest of the answer is kept (before, the whole read failed).
#[tokio::test]
async fn one_unreadable_record_of_a_batch_read_fails_only_its_shipment() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/shipments/status:batchGet"))
        .and(body_json(serde_json::json!({"shipmentIds": ["s/1", "s/2", "s/3"]})))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"items": [
            {"clientId": "c1", "shipmentId": "s/1", "status": "delivered", "timestamp": "2026-11-01T11:00:00Z", "eventId": "x"},
            {"clientId": "c1", "shipmentId": "s/2", "eventId": "y"}
        ]})))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v1/shipments/status:batchGet"))
        .and(body_json(serde_json::json!({"shipmentIds": ["s/1", "s/4"]})))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"items": [
            {"clientId": "c1", "shipmentId": "s/1", "status": "delivered", "timestamp": "2026-11-01T11:00:00Z", "eventId": "x"},
            {"clientId": "c1", "status": "delivered", "timestamp": "2026-11-01T11:00:00Z"}
        ]})))
        .mount(&server)
        .await;
    let c = crm(&server, 2000);
    let ids = |ns: &[u32]| ns.iter().map(|n| write(*n).shipment_id).collect::<Vec<_>>();
    let states = c.read_states(&ids(&[1, 2, 3])).await.unwrap();
    assert_eq!(states[&write(1).shipment_id].status, "delivered");
    assert!(states.unreadable.contains_key(&write(2).shipment_id));
    assert!(
        !states.contains_key(&write(3).shipment_id) && !states.unreadable.contains_key(&write(3).shipment_id),
        "unknown"
    );
    let states = c.read_states(&ids(&[1, 4])).await.unwrap();
    assert!(states.contains_key(&write(1).shipment_id));
    assert!(
        states.unreadable.contains_key(&write(4).shipment_id),
        "may be the anonymous record"
    );
}
