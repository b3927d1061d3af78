//! crm-sim speaks the documented contract, and the generic adapter talks to it.

#![allow(clippy::unwrap_used)]

use backbone_crm::signing::{self, SignedParts};
use backbone_crm::{GenericCrmConfig, GenericRestCrm};
use backbone_sync::event::{ClientId, EventId, ShipmentId};
use backbone_sync::mapping::{CrmMapping, CrmStatusWrite, MappingConfig};
use backbone_sync::ports::CrmGateway;
use crm_sim::{Faults, Sim};
use secrecy::SecretString;
use time::macros::datetime;

const TOKEN: &str = "sim-token-0123456789";
const SECRET: &str = "sim-secret-0123456789";

async fn start() -> (Sim, String) {
    let sim = Sim::new(TOKEN, SECRET);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = sim.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (sim, url)
}

fn adapter(url: &str, token: &str) -> GenericRestCrm {
    let cfg = GenericCrmConfig {
        base_url: url.into(),
        token: SecretString::from(token),
        signing_secret: SecretString::from(SECRET),
        timeout_ms: 2000,
        connect_timeout_ms: 500,
    };
    GenericRestCrm::new(&cfg, CrmMapping::new(MappingConfig::default()).unwrap()).unwrap()
}

fn write(event: &str, shipment: &str, status: &str) -> CrmStatusWrite {
    CrmStatusWrite {
        event_id: EventId::parse(event).unwrap(),
        shipment_id: ShipmentId::parse(shipment).unwrap(),
        client_id: ClientId::parse("c1").unwrap(),
        crm_status: status.into(),
        timestamp: datetime!(2026-11-01 10:00 UTC),
        correlation_id: event.into(),
    }
}

#[tokio::test]
async fn writes_are_counted_once_per_event_and_read_back() {
    let (sim, url) = start().await;
    let crm = adapter(&url, TOKEN);
    let out = crm
        .write_statuses(&[write("e1", "s1", "in_transit"), write("e2", "s2", "delivered")])
        .await
        .unwrap();
    assert!(out.iter().all(|r| r.result.is_ok()));
    crm.write_statuses(&[write("e1", "s1", "in_transit")])
        .await
        .unwrap();
    let stats = sim.stats();
    assert_eq!(stats.total_writes, 2);
    assert_eq!(stats.duplicate_writes, 1);
    let states = crm
        .read_states(&[ShipmentId::parse("s1").unwrap(), ShipmentId::parse("zz").unwrap()])
        .await
        .unwrap();
    assert_eq!(states.len(), 1);
    assert_eq!(states[&ShipmentId::parse("s1").unwrap()].status, "in_transit");
    assert_eq!(sim.history("s2").len(), 1);
}

#[tokio::test]
async fn wrong_token_or_signature_is_refused() {
    let (sim, url) = start().await;
    let err = adapter(&url, "wrong-token-0123456789")
        .read_states(&[ShipmentId::parse("s1").unwrap()])
        .await
        .unwrap_err();
    assert_eq!(err.http_status, Some(401));
    let resp = reqwest::Client::new()
        .get(format!("{url}/api/v1/shipments/s1/status"))
        .bearer_auth(TOKEN)
        .header("x-timestamp", "1")
        .header("x-signature", "v1=00")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert_eq!(code_of(resp).await, "invalid_signature");
    assert_eq!(sim.stats().rejected_requests, 2);
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A request signed by hand for `signed_method` and `signed_target`, sent as `method` to `target`.
struct Signed<'a> {
    method: &'a str,
    target: &'a str,
    signed_method: &'a str,
    signed_target: &'a str,
    timestamp: i64,
    nonce: &'a str,
    body: &'a str,
}

impl Signed<'_> {
    async fn send(&self, url: &str) -> reqwest::Response {
        let timestamp = self.timestamp.to_string();
        let signature = signing::sign(
            SECRET.as_bytes(),
            &SignedParts {
                method: self.signed_method,
                target: self.signed_target,
                timestamp: &timestamp,
                nonce: self.nonce,
                body: self.body.as_bytes(),
            },
        );
        let mut req = reqwest::Client::new()
            .request(self.method.parse().unwrap(), format!("{url}{}", self.target))
            .bearer_auth(TOKEN)
            .header(signing::TIMESTAMP_HEADER, timestamp)
            .header(signing::NONCE_HEADER, self.nonce)
            .header(signing::SIGNATURE_HEADER, signature);
        if !self.body.is_empty() {
            req = req
                .header("content-type", "application/json")
                .body(self.body.to_owned());
        }
        req.send().await.unwrap()
    }
}

/// A request signed for exactly what it sends.
fn honest<'a>(method: &'a str, target: &'a str, nonce: &'a str, body: &'a str) -> Signed<'a> {
    Signed {
        method,
        target,
        signed_method: method,
        signed_target: target,
        timestamp: now(),
        nonce,
        body,
    }
}

const PATH_A: &str = "/api/v1/shipments/A/status";
const PATH_B: &str = "/api/v1/shipments/B/status";

fn record(shipment: &str, event: &str) -> String {
    serde_json::json!({"clientId": "c1", "shipmentId": shipment, "status": "in_transit",
        "timestamp": "2026-11-01T10:00:00Z", "eventId": event})
    .to_string()
}

async fn code_of(resp: reqwest::Response) -> String {
    let body: serde_json::Value = resp.json().await.unwrap();
    body["code"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_signed_request_replayed_verbatim_is_refused_as_a_replayed_nonce() {
    let (sim, url) = start().await;
    let body = record("A", "e1");
    let first = honest("PUT", PATH_A, "nonce-1", &body);
    assert_eq!(first.send(&url).await.status(), 200);

    let replay = first.send(&url).await;
    assert_eq!(replay.status(), 401);
    assert_eq!(replay.headers()["content-type"], "application/problem+json");
    assert_eq!(code_of(replay).await, "replayed_nonce");

    // Re-signed with another timestamp, the nonce is still spent.
    let resigned = Signed {
        timestamp: now() - 1,
        ..honest("PUT", PATH_A, "nonce-1", &body)
    };
    assert_eq!(code_of(resigned.send(&url).await).await, "replayed_nonce");

    // A replayed read is refused too, and a fresh nonce is admitted.
    let read = honest("GET", PATH_A, "nonce-2", "");
    assert_eq!(read.send(&url).await.status(), 200);
    assert_eq!(code_of(read.send(&url).await).await, "replayed_nonce");
    assert_eq!(
        honest("GET", PATH_A, "nonce-3", "").send(&url).await.status(),
        200
    );

    let stats = sim.stats();
    assert_eq!((stats.total_writes, stats.duplicate_writes), (1, 0));
    assert_eq!(stats.rejected_requests, 3);
}

#[tokio::test]
async fn a_signature_made_for_one_shipments_path_is_refused_on_another() {
    let (sim, url) = start().await;
    let (body_a, body_b) = (record("A", "e1"), record("B", "e2"));
    let put_a = honest("PUT", PATH_A, "n-a", &body_a);
    assert_eq!(put_a.send(&url).await.status(), 200);
    let put_b = honest("PUT", PATH_B, "n-b", &body_b);
    assert_eq!(put_b.send(&url).await.status(), 200);

    // A write whose body is valid for B, signed for A's path.
    let body_b = record("B", "e3");
    let moved_write = Signed {
        target: PATH_B,
        ..honest("PUT", PATH_A, "n-1", &body_b)
    };
    let resp = moved_write.send(&url).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(code_of(resp).await, "invalid_signature");

    // A read of A, sent to B.
    let moved_read = Signed {
        target: PATH_B,
        ..honest("GET", PATH_A, "n-2", "")
    };
    let resp = moved_read.send(&url).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(code_of(resp).await, "invalid_signature");

    // The query string is signed too.
    let moved_query = Signed {
        target: "/api/v1/shipments/A/status?x=1",
        ..honest("GET", PATH_A, "n-3", "")
    };
    assert_eq!(code_of(moved_query.send(&url).await).await, "invalid_signature");

    assert_eq!(sim.history("B").len(), 1);
    assert_eq!(sim.stats().rejected_requests, 3);
}

#[tokio::test]
async fn a_signature_made_for_get_is_refused_for_put() {
    let (sim, url) = start().await;
    let as_put = Signed {
        method: "PUT",
        ..honest("GET", PATH_A, "n-1", "")
    };
    let resp = as_put.send(&url).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(code_of(resp).await, "invalid_signature");

    // Same for a body signed as a batch read and sent as a batch write.
    let body = serde_json::json!({"items": [serde_json::from_str::<serde_json::Value>(&record("A", "e1")).unwrap()]})
        .to_string();
    let as_write = Signed {
        target: "/api/v1/shipments/status:batchWrite",
        ..honest("POST", "/api/v1/shipments/status:batchGet", "n-2", &body)
    };
    assert_eq!(code_of(as_write.send(&url).await).await, "invalid_signature");

    let stats = sim.stats();
    assert_eq!((stats.total_writes, stats.rejected_requests), (0, 2));
}

#[tokio::test]
async fn a_stale_timestamp_is_refused_as_timestamp_skew() {
    let (sim, url) = start().await;
    let stale = Signed {
        timestamp: now() - 412,
        ..honest("GET", PATH_A, "n-1", "")
    };
    let resp = stale.send(&url).await;
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "timestamp_skew");
    assert!(
        body["detail"].as_str().unwrap().contains("seconds away"),
        "{body}"
    );
    // A wrong signature with a stale timestamp is a wrong signature.
    let resp = reqwest::Client::new()
        .get(format!("{url}{PATH_A}"))
        .bearer_auth(TOKEN)
        .header("x-timestamp", (now() - 412).to_string())
        .header("x-nonce", "n-2")
        .header("x-signature", format!("v2={}", "0".repeat(64)))
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(resp).await, "invalid_signature");
    assert_eq!(sim.stats().rejected_requests, 2);
}

#[tokio::test]
async fn a_request_without_a_well_formed_nonce_is_refused() {
    let (sim, url) = start().await;
    for nonce in ["", "has space", &"n".repeat(65)] {
        let resp = honest("GET", PATH_A, nonce, "").send(&url).await;
        assert_eq!(resp.status(), 401, "{nonce:?}");
        assert_eq!(code_of(resp).await, "invalid_signature");
    }
    assert_eq!(sim.stats().rejected_requests, 3);
}

#[tokio::test]
async fn faults_are_injected_on_demand() {
    let (sim, url) = start().await;
    let crm = adapter(&url, TOKEN);
    sim.set_faults(Faults {
        outage_for_ms: 60_000,
        retry_after_s: 3,
        ..Faults::default()
    });
    let err = crm.write_statuses(&[write("e1", "s1", "x")]).await.unwrap_err();
    assert_eq!(
        (err.http_status, err.retry_after),
        (Some(503), Some(std::time::Duration::from_secs(3)))
    );
    sim.set_faults(Faults {
        rate_limit_rps: 1,
        retry_after_s: 1,
        ..Faults::default()
    });
    let results: Vec<_> = read_five(&crm).await;
    assert!(results
        .iter()
        .any(|r| r.as_ref().is_err_and(|e| e.http_status == Some(429))));
    sim.set_faults(Faults::default());
    assert!(crm.write_statuses(&[write("e9", "s9", "x")]).await.is_ok());
    assert_eq!(sim.stats().total_writes, 1);
}

async fn read_five(crm: &GenericRestCrm) -> Vec<Result<(), backbone_sync::ports::CrmError>> {
    let mut out = Vec::new();
    for i in 0..5 {
        out.push(
            crm.read_states(&[ShipmentId::parse(format!("s{i}")).unwrap()])
                .await
                .map(|_| ()),
        );
    }
    out
}
