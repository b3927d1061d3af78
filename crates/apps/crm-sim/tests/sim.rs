//! crm-sim speaks the documented contract, and the generic adapter talks to it.

#![allow(clippy::unwrap_used)]

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
    assert_eq!(sim.stats().rejected_requests, 2);
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
