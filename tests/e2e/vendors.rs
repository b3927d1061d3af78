//! The pipeline end to end once per CRM dialect: crm-sim serves the vendor's API in process,
//! crm-sync runs in process with `crm.vendor` set to it (mapping checked against the vendor at
//! start-up), and a messy stream on the real broker ends with the newest status per shipment in
//! exactly one vendor record each.

use backbone_tests::*;
use crm_sim::{Dialect, Faults, Sim};
use crm_sync::config::Vendor;
use secrecy::SecretString;
use std::collections::HashSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What every vendor dialect of the simulator accepts (webhook code, client secret, token).
pub(crate) const VENDOR_SECRET: &str = "e2eVendorSecret0123456789";
const STATUSES: [&str; 4] = ["CREATED", "IN_TRANSIT", "OUT_FOR_DELIVERY", "DELIVERED"];
const SHIPMENTS: usize = 6;

/// The tracking status table of each vendor, as in `config/crm-sync.<vendor>.local.toml`.
const BITRIX24_STAGES: [(&str, &str); 8] = [
    ("CREATED", "NEW"),
    ("ACCEPTED", "PREPARATION"),
    ("IN_TRANSIT", "EXECUTING"),
    ("AT_PICKUP_POINT", "UC_PICKUP"),
    ("OUT_FOR_DELIVERY", "FINAL_INVOICE"),
    ("DELIVERED", "WON"),
    ("RETURNED", "LOSE"),
    ("LOST", "APOLOGY"),
];
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

/// Where each dialect keeps the status and its time, and what the newest event leaves there.
struct Expect {
    status_field: &'static str,
    delivered: &'static str,
    time_field: &'static str,
    newest_time: &'static str,
}

fn expect(d: Dialect) -> Expect {
    match d {
        Dialect::Generic => Expect {
            status_field: "status",
            delivered: "delivered",
            time_field: "timestamp",
            newest_time: "2026-11-01T10:03:00Z",
        },
        Dialect::Bitrix24 => Expect {
            status_field: "stageId",
            delivered: "WON",
            time_field: "ufCrmStatusAt",
            newest_time: "2026-11-01T10:03:00Z",
        },
        Dialect::Salesforce => Expect {
            status_field: "Status__c",
            delivered: "delivered",
            time_field: "Status_At__c",
            newest_time: "2026-11-01T10:03:00.000+0000",
        },
        Dialect::Kommo => Expect {
            status_field: "status_id",
            delivered: "142",
            time_field: "cf:104",
            newest_time: "2026-11-01T10:03:00Z",
        },
    }
}

pub(crate) async fn start_vendor_sim() -> anyhow::Result<(Sim, String)> {
    let sim = Sim::new(TOKEN, SECRET).with_vendor_secret(VENDOR_SECRET);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(crm_sim::serve(listener, sim.router()));
    Ok((sim, url))
}

fn set_mapping(cfg: &mut crm_sync::Config, fields: [&str; 5], statuses: &[(&str, &str)]) {
    let f = &mut cfg.mapping.fields;
    f.client_id = fields[0].into();
    f.shipment_id = fields[1].into();
    f.status = fields[2].into();
    f.timestamp = fields[3].into();
    f.event_id = fields[4].into();
    for (tracking, crm) in statuses {
        cfg.mapping.statuses.insert((*tracking).into(), (*crm).into());
    }
}

/// crm-sync for this scope, talking to crm-sim's dialect `d` at `url`.
pub(crate) fn config(scope: &Scope, d: Dialect, url: &str) -> anyhow::Result<crm_sync::Config> {
    let mut cfg = scope.config(url);
    match d {
        Dialect::Generic => {}
        Dialect::Bitrix24 => {
            cfg.crm.vendor = Vendor::Bitrix24;
            let b = &mut cfg.crm.bitrix24;
            b.portal_url = url.into();
            b.webhook_token = SecretString::from(VENDOR_SECRET);
            b.timeout_ms = 2_000;
            set_mapping(
                &mut cfg,
                [
                    "ufCrmClientId",
                    "title",
                    "stageId",
                    "ufCrmStatusAt",
                    "ufCrmEventId",
                ],
                &BITRIX24_STAGES,
            );
        }
        Dialect::Salesforce => {
            cfg.crm.vendor = Vendor::Salesforce;
            let s = &mut cfg.crm.salesforce;
            s.login_url = url.into();
            s.auth = serde_json::from_value(serde_json::json!("client_credentials"))?;
            s.client_id = "3MVG9e2econsumerkey".into();
            s.client_secret = SecretString::from(VENDOR_SECRET);
            s.timeout_ms = 2_000;
            set_mapping(
                &mut cfg,
                [
                    "Client_Id__c",
                    "Shipment_Id__c",
                    "Status__c",
                    "Status_At__c",
                    "Event_Id__c",
                ],
                &[],
            );
        }
        Dialect::Kommo => {
            cfg.crm.vendor = Vendor::Kommo;
            let k = &mut cfg.crm.kommo;
            k.base_url = url.into();
            k.access_token = SecretString::from(VENDOR_SECRET);
            k.pipeline_id = 1000;
            k.timeout_ms = 2_000;
            set_mapping(
                &mut cfg,
                ["cf:101", "cf:102", "status_id", "cf:104", "cf:105"],
                &KOMMO_STAGES,
            );
        }
    }
    Ok(cfg)
}

/// Events of shipment `s` in delivery order: newest first for odd shipments, shuffled for the
/// others, so an older status arrives after a newer one; some delivered twice.
fn stream(s: usize) -> Vec<(String, String)> {
    let order: [usize; 4] = if s % 2 == 1 { [3, 2, 1, 0] } else { [1, 0, 3, 2] };
    let mut out = Vec::new();
    for i in order {
        let id = format!("ev-{s}-{i}");
        let doc = event_json(
            &id,
            &format!("ship-{s}"),
            STATUSES[i],
            &format!("2026-11-01T10:0{i}:00Z"),
        );
        out.push((id.clone(), doc.clone()));
        if (s + i) % 3 == 0 {
            out.push((id, doc)); // duplicate delivery
        }
    }
    out
}

async fn converges(d: Dialect) -> anyhow::Result<()> {
    let scope = Scope::new(&format!("vendor_{}", d.name()));
    scope.create_topics().await?;
    let (sim, url) = start_vendor_sim().await?;
    let producer = producer()?;
    let topic = scope.kafka.input_topic.clone();
    let streams: Vec<Vec<(String, String)>> = (0..SHIPMENTS).map(stream).collect();
    let valid: HashSet<&str> = streams.iter().flatten().map(|(id, _)| id.as_str()).collect();

    let shutdown = CancellationToken::new();
    let service = tokio::spawn(crm_sync::run(config(&scope, d, &url)?, shutdown.clone()));
    let pool = scope.wait_for_schema().await?;

    // First half of every shipment's stream against a healthy CRM...
    for (s, events) in streams.iter().enumerate() {
        for (_, doc) in &events[..2] {
            send(&producer, &topic, &format!("ship-{s}"), doc).await?;
        }
    }
    eventually(Duration::from_secs(60), "the first records", || {
        let sim = sim.clone();
        async move { Ok(!sim.shipments_of(d).is_empty()) }
    })
    .await?;
    // ...the rest while one call in five fails in the vendor's own error shape.
    sim.set_faults(Faults {
        error_rate: 0.2,
        ..Faults::default()
    });
    for (s, events) in streams.iter().enumerate() {
        for (_, doc) in &events[2..] {
            send(&producer, &topic, &format!("ship-{s}"), doc).await?;
        }
    }

    let expected = valid.len() as i64;
    eventually(Duration::from_secs(120), "every event at a final outcome", || {
        let pool = pool.clone();
        async move {
            let finals: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM processed_events WHERE outcome IN ('success', 'stale', 'unchanged')",
            )
            .fetch_one(&pool)
            .await?;
            let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM sync_retry")
                .fetch_one(&pool)
                .await?;
            Ok(finals == expected && parked == 0)
        }
    })
    .await?;
    shutdown.cancel();
    service.await??;
    sim.set_faults(Faults::default());

    let want = expect(d);
    assert_eq!(sim.shipments_of(d).len(), SHIPMENTS, "{d:?}");
    for s in 0..SHIPMENTS {
        let shipment = format!("ship-{s}");
        let records = sim.records_of(d, &shipment);
        assert_eq!(records.len(), 1, "{d:?} {shipment}: one record per shipment");
        let record = &records[0];
        assert_eq!(
            record[want.status_field].to_string().trim_matches('"'),
            want.delivered,
            "{d:?} {shipment}"
        );
        assert_eq!(record[want.time_field], want.newest_time, "{d:?} {shipment}");
        let stamps: Vec<String> = sim
            .history_of(d, &shipment)
            .iter()
            .map(|r| r[want.time_field].as_str().unwrap_or_default().to_owned())
            .collect();
        assert!(
            stamps.windows(2).all(|w| w[0] < w[1]),
            "{d:?} {shipment} went back in time: {stamps:?}"
        );
    }
    let stats = sim.stats_of(d);
    assert_eq!(stats.duplicate_writes, 0, "{d:?}: an event was written twice");
    assert_eq!(stats.creates, SHIPMENTS as u64, "{d:?}: {stats:?}");
    assert!(stats.total_writes <= expected as u64, "{d:?}: {stats:?}");
    scope.drop_database().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_crm_converges_to_the_newest_status() -> anyhow::Result<()> {
    converges(Dialect::Generic).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bitrix24_converges_to_the_newest_status() -> anyhow::Result<()> {
    converges(Dialect::Bitrix24).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_converges_to_the_newest_status() -> anyhow::Result<()> {
    converges(Dialect::Salesforce).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kommo_converges_to_the_newest_status() -> anyhow::Result<()> {
    converges(Dialect::Kommo).await
}
