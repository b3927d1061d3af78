//! crm-sim speaks each vendor dialect closely enough for our adapters: each adapter, configured
//! as in `config/crm-sync.<vendor>.local.toml`, verifies its mapping, creates, updates and
//! reads back records by external id, renews its tokens, and sees injected faults in its
//! vendor's documented shape.

#![allow(clippy::unwrap_used)]

use backbone_crm::bitrix24::Bitrix24Auth;
use backbone_crm::kommo::KommoAuth;
use backbone_crm::salesforce::SalesforceAuth;
use backbone_crm::{Bitrix24Config, Bitrix24Crm, KommoConfig, KommoCrm, SalesforceConfig, SalesforceCrm};
use backbone_sync::event::{ClientId, EventId, ShipmentId};
use backbone_sync::mapping::{CrmMapping, CrmStatusWrite, FieldNames, MappingConfig};
use backbone_sync::ports::{CrmErrorKind, CrmGateway};
use crm_sim::{Dialect, Faults, Sim};
use secrecy::SecretString;
use serde_json::json;
use std::time::Duration;
use time::macros::datetime;

const SECRET: &str = "simVendorSecret0123456789";
const TEST_RSA_KEY: &str = include_str!("../../../crm/tests/vendors/test_rsa_key.pem");

async fn start() -> (Sim, String) {
    let sim = Sim::new("sim-token-0123456789", "sim-secret-0123456789").with_vendor_secret(SECRET);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(crm_sim::serve(listener, sim.router()));
    (sim, url)
}

fn fields(names: [&str; 5]) -> FieldNames {
    FieldNames {
        client_id: names[0].into(),
        shipment_id: names[1].into(),
        status: names[2].into(),
        timestamp: names[3].into(),
        event_id: names[4].into(),
    }
}

fn mapping(names: [&str; 5], statuses: &[(&str, &str)]) -> CrmMapping {
    let mut cfg = MappingConfig {
        fields: fields(names),
        ..MappingConfig::default()
    };
    for (k, v) in statuses {
        cfg.statuses.insert((*k).into(), (*v).into());
    }
    CrmMapping::new(cfg).unwrap()
}

fn bitrix24_mapping() -> CrmMapping {
    mapping(
        [
            "ufCrmClientId",
            "title",
            "stageId",
            "ufCrmStatusAt",
            "ufCrmEventId",
        ],
        &[],
    )
}

fn salesforce_mapping() -> CrmMapping {
    mapping(
        [
            "Client_Id__c",
            "Shipment_Id__c",
            "Status__c",
            "Status_At__c",
            "Event_Id__c",
        ],
        &[],
    )
}

const KOMMO_STAGES: [(&str, &str); 8] = [
    ("CREATED", "1001"),
    ("ACCEPTED", "1002"),
    ("IN_TRANSIT", "1003"),
    ("AT_PICKUP_POINT", "1004"),
    ("OUT_FOR_DELIVERY", "1005"),
    ("RETURNED", "1006"),
    ("DELIVERED", "142"),
    ("LOST", "143"),
];

fn kommo_mapping() -> CrmMapping {
    mapping(
        ["cf:101", "cf:102", "status_id", "cf:104", "cf:105"],
        &KOMMO_STAGES,
    )
}

fn bitrix24_config(url: &str) -> Bitrix24Config {
    Bitrix24Config {
        portal_url: url.into(),
        webhook_token: SecretString::from(SECRET),
        timeout_ms: 2000,
        connect_timeout_ms: 500,
        ..Bitrix24Config::default()
    }
}

fn salesforce_config(url: &str) -> SalesforceConfig {
    SalesforceConfig {
        login_url: url.into(),
        auth: SalesforceAuth::ClientCredentials,
        client_id: "3MVG9simconsumerkey".into(),
        client_secret: SecretString::from(SECRET),
        per_second: 1000.0,
        burst: 100,
        timeout_ms: 2000,
        connect_timeout_ms: 500,
        ..SalesforceConfig::default()
    }
}

fn kommo_config(url: &str) -> KommoConfig {
    KommoConfig {
        base_url: url.into(),
        access_token: SecretString::from(SECRET),
        pipeline_id: 1000,
        timeout_ms: 2000,
        connect_timeout_ms: 500,
        ..KommoConfig::default()
    }
}

fn sid(s: &str) -> ShipmentId {
    ShipmentId::parse(s).unwrap()
}

/// A write at `minute` past 10:00, with milliseconds.
fn write(event: &str, shipment: &str, status: &str, minute: i64) -> CrmStatusWrite {
    CrmStatusWrite {
        event_id: EventId::parse(event).unwrap(),
        shipment_id: sid(shipment),
        client_id: ClientId::parse("c-1").unwrap(),
        crm_status: status.into(),
        timestamp: datetime!(2026-11-01 10:00:00.123 UTC) + time::Duration::minutes(minute),
        correlation_id: format!("corr-{event}"),
    }
}

/// Creates two shipments, updates one, reads both back; one record per shipment.
async fn round_trip(sim: &Sim, d: Dialect, crm: &dyn CrmGateway, statuses: [&str; 3]) {
    let out = crm
        .write_statuses(&[
            write("e1", "s-1", statuses[0], 0),
            write("e2", "s-2", statuses[1], 1),
        ])
        .await
        .unwrap();
    assert!(out.iter().all(|r| r.result.is_ok()), "{out:?}");
    let out = crm
        .write_statuses(&[write("e3", "s-1", statuses[2], 2)])
        .await
        .unwrap();
    assert!(out[0].result.is_ok(), "{out:?}");
    let states = crm
        .read_states(&[sid("s-1"), sid("s-2"), sid("s-3")])
        .await
        .unwrap();
    assert_eq!(states.len(), 2, "{states:?}");
    assert_eq!(states[&sid("s-1")].status, statuses[2]);
    assert_eq!(
        states[&sid("s-1")].updated_at,
        datetime!(2026-11-01 10:02:00.123 UTC)
    );
    assert_eq!(states[&sid("s-2")].status, statuses[1]);
    for s in ["s-1", "s-2"] {
        assert_eq!(sim.records_of(d, s).len(), 1, "{d:?} {s}");
    }
    assert_eq!(sim.status_of(d, "s-1").as_deref(), Some(statuses[2]));
    assert_eq!(sim.history_of(d, "s-1").len(), 2);
    let stats = sim.stats_of(d);
    assert_eq!(
        (
            stats.total_writes,
            stats.creates,
            stats.records,
            stats.duplicate_writes
        ),
        (3, 2, 2, 0),
        "{d:?}: {stats:?}"
    );
}

#[tokio::test]
async fn bitrix24_webhook_items_are_added_updated_and_listed_by_origin_id() {
    let (sim, url) = start().await;
    let crm = Bitrix24Crm::new(&bitrix24_config(&url), bitrix24_mapping()).unwrap();
    crm.verify_mapping().await.unwrap();
    round_trip(&sim, Dialect::Bitrix24, &crm, ["NEW", "EXECUTING", "WON"]).await;
    let item = &sim.records_of(Dialect::Bitrix24, "s-1")[0];
    assert_eq!(item["originatorId"], "backbone-crm-sync");
    assert_eq!(item["ufCrmStatusAt"], "2026-11-01T10:02:00.123Z");
    assert_eq!(item["entityTypeId"], 2);

    // A field the portal lacks is caught by the mapping check (the portal would ignore it).
    let typo = mapping(
        [
            "ufCrmClientId",
            "title",
            "stageId",
            "ufCrmStatusAtt",
            "ufCrmEventId",
        ],
        &[],
    );
    let err = Bitrix24Crm::new(&bitrix24_config(&url), typo)
        .unwrap()
        .verify_mapping()
        .await
        .unwrap_err();
    assert!(err.contains("ufCrmStatusAtt"), "{err}");

    // A wrong webhook code is refused; more than 50 batch commands too.
    let wrong = Bitrix24Config {
        webhook_token: SecretString::from("wrongcode0123"),
        ..bitrix24_config(&url)
    };
    let err = Bitrix24Crm::new(&wrong, bitrix24_mapping())
        .unwrap()
        .read_states(&[sid("s-1")])
        .await
        .unwrap_err();
    assert_eq!(err.http_status, Some(401));
    let cmd: serde_json::Map<String, serde_json::Value> = (0..51)
        .map(|i| (format!("c{i}"), json!("crm.item.get?entityTypeId=2&id=1")))
        .collect();
    let resp = reqwest::Client::new()
        .post(format!("{url}/rest/1/{SECRET}/batch.json"))
        .json(&json!({"halt": 0, "cmd": cmd}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "ERROR_BATCH_LENGTH_EXCEEDED");
}

#[tokio::test]
async fn bitrix24_oauth_tokens_are_refreshed_and_refresh_tokens_are_single_use() {
    let (sim, url) = start().await;
    let cfg = Bitrix24Config {
        auth: Bitrix24Auth::Oauth,
        oauth_url: url.clone(),
        client_id: "local.sim".into(),
        client_secret: SecretString::from(SECRET),
        refresh_token: SecretString::from(SECRET),
        ..bitrix24_config(&url)
    };
    let crm = Bitrix24Crm::new(&cfg, bitrix24_mapping()).unwrap();
    crm.write_statuses(&[write("e1", "s-1", "NEW", 0)]).await.unwrap();
    sim.expire_tokens(Dialect::Bitrix24);
    let states = crm.read_states(&[sid("s-1")]).await.unwrap();
    assert_eq!(states[&sid("s-1")].status, "NEW");
    assert_eq!(
        (crm.token_fetches(), sim.tokens_issued(Dialect::Bitrix24)),
        (2, 2)
    );
    // The install-time refresh token was spent by the first grant.
    let again = Bitrix24Crm::new(&cfg, bitrix24_mapping()).unwrap();
    let err = again.read_states(&[sid("s-1")]).await.unwrap_err();
    assert_eq!(err.http_status, Some(400), "{err}");
}

#[tokio::test]
async fn salesforce_records_are_upserted_by_external_id_and_queried() {
    let (sim, url) = start().await;
    let crm = SalesforceCrm::new(&salesforce_config(&url), salesforce_mapping()).unwrap();
    crm.verify_mapping().await.unwrap();
    round_trip(
        &sim,
        Dialect::Salesforce,
        &crm,
        ["created", "in_transit", "delivered"],
    )
    .await;
    let record = &sim.records_of(Dialect::Salesforce, "s-1")[0];
    assert_eq!(record["Status_At__c"], "2026-11-01T10:02:00.123+0000");
    assert_eq!(record["Shipment_Id__c"], "s-1");

    // External ids match case-insensitively: S-1 is the same record.
    let out = crm
        .write_statuses(&[
            write("e4", "S-1", "returned", 3),
            write("e5", "s-9", "created", 3),
        ])
        .await
        .unwrap();
    assert!(out.iter().all(|r| r.result.is_ok()), "{out:?}");
    assert_eq!(sim.records_of(Dialect::Salesforce, "s-1").len(), 1);
    assert_eq!(
        sim.status_of(Dialect::Salesforce, "s-1").as_deref(),
        Some("returned")
    );

    // An expired session is renewed once.
    sim.expire_tokens(Dialect::Salesforce);
    crm.read_states(&[sid("s-2")]).await.unwrap();
    assert_eq!(crm.token_fetches(), 2);

    // A field the object lacks.
    let typo = mapping(
        [
            "Client_Id__c",
            "Shipment_Id__c",
            "Status__c",
            "StatusAt__c",
            "Event_Id__c",
        ],
        &[],
    );
    let err = SalesforceCrm::new(&salesforce_config(&url), typo)
        .unwrap()
        .verify_mapping()
        .await
        .unwrap_err();
    assert!(err.contains("StatusAt__c"), "{err}");
}

#[tokio::test]
async fn salesforce_jwt_bearer_grant_is_accepted() {
    let (sim, url) = start().await;
    let cfg = SalesforceConfig {
        auth: SalesforceAuth::JwtBearer,
        username: "integration@example.com".into(),
        private_key_pem: SecretString::from(TEST_RSA_KEY),
        client_secret: SecretString::from(""),
        ..salesforce_config(&url)
    };
    let crm = SalesforceCrm::new(&cfg, salesforce_mapping()).unwrap();
    let out = crm
        .write_statuses(&[write("e1", "s-1", "created", 0)])
        .await
        .unwrap();
    assert!(out[0].result.is_ok());
    assert_eq!(sim.tokens_issued(Dialect::Salesforce), 1);
}

#[tokio::test]
async fn kommo_leads_are_found_by_custom_field_and_updated_in_batches() {
    let (sim, url) = start().await;
    let crm = KommoCrm::new(&kommo_config(&url), kommo_mapping()).unwrap();
    crm.verify_mapping(KOMMO_STAGES.iter().map(|(_, v)| *v))
        .await
        .unwrap();
    round_trip(&sim, Dialect::Kommo, &crm, ["1001", "1003", "142"]).await;
    let lead = &sim.records_of(Dialect::Kommo, "s-1")[0];
    assert_eq!(lead["pipeline_id"], 1000);
    assert_eq!(lead["cf:104"], "2026-11-01T10:02:00.123Z");

    // A stage outside the pipeline is refused for that lead only; the other is retried.
    let out = crm
        .write_statuses(&[write("e6", "s-1", "999", 4), write("e7", "s-2", "1004", 4)])
        .await
        .unwrap();
    assert_eq!(out[0].result.as_ref().unwrap_err().kind, CrmErrorKind::Permanent);
    assert_eq!(out[1].result.as_ref().unwrap_err().kind, CrmErrorKind::Transient);
    assert_eq!(sim.status_of(Dialect::Kommo, "s-2").as_deref(), Some("1003"));
    let err = crm.verify_mapping(["1001", "777"]).await.unwrap_err();
    assert!(err.contains("777"), "{err}");
}

#[tokio::test]
async fn kommo_oauth_refresh_tokens_rotate() {
    let (sim, url) = start().await;
    let dir = std::env::temp_dir().join(format!("crm-sim-kommo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("refresh");
    let cfg = KommoConfig {
        auth: KommoAuth::Oauth,
        access_token: SecretString::from(""),
        client_id: "sim-integration".into(),
        client_secret: SecretString::from(SECRET),
        refresh_token: SecretString::from(SECRET),
        redirect_uri: "https://example.com/oauth".into(),
        token_file: Some(token_file.to_string_lossy().into_owned()),
        ..kommo_config(&url)
    };
    let crm = KommoCrm::new(&cfg, kommo_mapping()).unwrap();
    crm.write_statuses(&[write("e1", "s-1", "1001", 0)])
        .await
        .unwrap();
    sim.expire_tokens(Dialect::Kommo);
    crm.read_states(&[sid("s-1")]).await.unwrap();
    assert_eq!(crm.token_fetches(), 2);
    // A restart reads the rotated refresh token from the file, not the spent one.
    let restarted = KommoCrm::new(&cfg, kommo_mapping()).unwrap();
    assert_eq!(restarted.read_states(&[sid("s-1")]).await.unwrap().len(), 1);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn faults_come_back_in_each_vendors_shape() {
    let (sim, url) = start().await;
    let bitrix24 = Bitrix24Crm::new(&bitrix24_config(&url), bitrix24_mapping()).unwrap();
    let salesforce = SalesforceCrm::new(&salesforce_config(&url), salesforce_mapping()).unwrap();
    let kommo = KommoCrm::new(&kommo_config(&url), kommo_mapping()).unwrap();
    // Get the Salesforce session before the faults start.
    salesforce.read_states(&[sid("s-1")]).await.unwrap();

    sim.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    let e = bitrix24.read_states(&[sid("s-1")]).await.unwrap_err();
    assert_eq!((e.kind, e.http_status), (CrmErrorKind::Transient, Some(500)));
    let e = salesforce.read_states(&[sid("s-1")]).await.unwrap_err();
    assert_eq!((e.kind, e.http_status), (CrmErrorKind::Transient, Some(503)));
    let e = kommo.read_states(&[sid("s-1")]).await.unwrap_err();
    assert_eq!((e.kind, e.http_status), (CrmErrorKind::Transient, Some(503)));

    sim.set_faults(Faults {
        rate_limit_rps: 1,
        ..Faults::default()
    });
    let mut refusals = Vec::new();
    for crm in [&bitrix24 as &dyn CrmGateway, &salesforce, &kommo] {
        for _ in 0..3 {
            if let Err(e) = crm.read_states(&[sid("s-1")]).await {
                refusals.push(e);
                break;
            }
        }
    }
    let shapes: Vec<(Option<u16>, Option<Duration>)> =
        refusals.iter().map(|e| (e.http_status, e.retry_after)).collect();
    assert_eq!(
        shapes,
        [
            (Some(503), Some(Duration::from_secs(1))),
            // The adapter keeps no HTTP status for this refusal: it is told by its message.
            (None, Some(Duration::from_secs(5))),
            (Some(429), None)
        ],
        "{refusals:?}"
    );
    assert!(refusals[0].message.contains("QUERY_LIMIT_EXCEEDED"));
    assert!(refusals[1].message.contains("REQUEST_LIMIT_EXCEEDED"));
    assert!(refusals.iter().all(|e| e.is_transient()));

    // The daily quota: Salesforce pauses the adapter.
    sim.set_faults(Faults {
        api_quota: 1,
        ..Faults::default()
    });
    let e = salesforce.read_states(&[sid("s-1")]).await.unwrap_err();
    assert!(
        e.is_transient() && e.message.contains("REQUEST_LIMIT_EXCEEDED"),
        "{e}"
    );
    assert!(salesforce.paused().is_some());
}
