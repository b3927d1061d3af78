//! One contract for every adapter of `CrmGateway`: the same scenarios, each vendor behind a
//! stateful fake that answers in that vendor's documented shapes.

use crate::fakes::{Bitrix24Fake, GenericFake, KommoFake, SalesforceFake, REFUSED_STATUS};
use crate::{sid, write};
use backbone_sync::breaker::BreakerPolicy;
use backbone_sync::engine::{EngineSettings, Inbound, SyncEngine};
use backbone_sync::mapping::{CrmMapping, MappingConfig};
use backbone_sync::memory::{MemoryLedger, MemoryTopics};
use backbone_sync::ports::{CrmErrorKind, CrmGateway, Outcome, SourcePosition};
use backbone_sync::retry::RetryPolicy;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use wiremock::matchers::any;
use wiremock::{Mock, MockServer};

/// Panics with the first broken expectation.
pub async fn crm_gateway_contract(crm: &dyn CrmGateway) {
    // A shipment the CRM has never seen is absent, not an error.
    let unknown = crm.read_states(&[sid("s-1")]).await.unwrap();
    assert!(unknown.is_empty(), "unknown shipment: {unknown:?}");

    // A single write creates the record; it reads back with its status and time.
    let first = write("e1", "s-1", "in_transit", 0);
    let out = crm.write_statuses(std::slice::from_ref(&first)).await.unwrap();
    assert_eq!(out.len(), 1);
    assert!(out[0].result.is_ok(), "{:?}", out[0]);
    let states = crm.read_states(&[sid("s-1")]).await.unwrap();
    assert_eq!(states[&sid("s-1")].status, "in_transit");
    assert_eq!(states[&sid("s-1")].updated_at, first.timestamp);

    // A later write updates the same record.
    let later = write("e2", "s-1", "delivered", 5);
    assert!(crm.write_statuses(std::slice::from_ref(&later)).await.unwrap()[0]
        .result
        .is_ok());
    let states = crm.read_states(&[sid("s-1")]).await.unwrap();
    assert_eq!(states[&sid("s-1")].status, "delivered");
    assert_eq!(states[&sid("s-1")].updated_at, later.timestamp);

    // A batch mixing known and new shipments answers once per write, in order. `s-10` also
    // checks that a lookup by external id does not confuse `s-1` with `s-10`.
    let batch = [
        write("e3", "s-2", "accepted", 1),
        write("e4", "s-1", "returned", 9),
        write("e5", "s-10", "out_for_delivery", 2),
    ];
    let out = crm.write_statuses(&batch).await.unwrap();
    assert_eq!(out.len(), 3);
    assert!(out.iter().all(|r| r.result.is_ok()), "{out:?}");
    let states = crm
        .read_states(&[sid("s-1"), sid("s-2"), sid("s-10"), sid("s-404")])
        .await
        .unwrap();
    assert_eq!(states.len(), 3, "{states:?}");
    assert_eq!(states[&sid("s-1")].status, "returned");
    assert_eq!(states[&sid("s-2")].status, "accepted");
    assert_eq!(states[&sid("s-10")].status, "out_for_delivery");

    // A partial failure refuses only the item the CRM refused, for good; the others land.
    let mixed = [
        write("e6", "s-3", "accepted", 3),
        write("e7", "s-4", REFUSED_STATUS, 3),
        write("e8", "s-2", "delivered", 8),
    ];
    let out = crm.write_statuses(&mixed).await.unwrap();
    assert_eq!(out.len(), 3);
    let refused = out[1].result.as_ref().unwrap_err();
    assert_eq!(refused.kind, CrmErrorKind::Permanent, "{refused:?}");
    // Kommo validates a request as a whole: its untouched items come back as retryable.
    for item in [&out[0], &out[2]] {
        match &item.result {
            Ok(()) => {}
            Err(e) => assert!(
                e.is_transient(),
                "an item that was not refused must not be dead-lettered: {e:?}"
            ),
        }
    }
    let retry: Vec<_> = [&mixed[0], &mixed[2]]
        .into_iter()
        .zip([&out[0], &out[2]])
        .filter(|(_, r)| r.result.is_err())
        .map(|(w, _)| w.clone())
        .collect();
    if !retry.is_empty() {
        let again = crm.write_statuses(&retry).await.unwrap();
        assert!(again.iter().all(|r| r.result.is_ok()), "{again:?}");
    }
    let states = crm
        .read_states(&[sid("s-2"), sid("s-3"), sid("s-4")])
        .await
        .unwrap();
    assert_eq!(states[&sid("s-2")].status, "delivered");
    assert_eq!(states[&sid("s-3")].status, "accepted");
    assert!(
        !states.contains_key(&sid("s-4")),
        "a refused create leaves no record"
    );
}

/// The engine in front of the adapter: a status the CRM already shows is not written again, and
/// an older one is not written over a newer one; a newer one is written once.
pub async fn conditional_write_contract(
    crm: Arc<dyn CrmGateway>,
    mapping: CrmMapping,
    server: &MockServer,
    is_write: fn(&wiremock::Request) -> bool,
) {
    let writes = || async { count(server, is_write).await };
    let ledger = Arc::new(MemoryLedger::default());
    let topics = Arc::new(MemoryTopics::default());
    let engine = SyncEngine::new(
        mapping,
        EngineSettings {
            retry: RetryPolicy::default(),
            breaker: BreakerPolicy::default(),
            crm_batch_limit: 100,
            max_clock_skew: EngineSettings::DEFAULT_MAX_CLOCK_SKEW,
            max_record_bytes: 900_000,
        },
        crm,
        ledger,
        topics.clone(),
        topics,
        Box::new(|| 0.5),
    );
    let report = engine
        .process(&[event("c1", "k-1", "IN_TRANSIT", 10)])
        .await
        .unwrap();
    assert_eq!(report.count(Outcome::Success), 1);
    let after_first = writes().await;
    let report = engine
        .process(&[event("c2", "k-1", "IN_TRANSIT", 12)])
        .await
        .unwrap();
    assert_eq!(report.count(Outcome::Unchanged), 1, "{report:?}");
    let report = engine
        .process(&[event("c3", "k-1", "ACCEPTED", 5)])
        .await
        .unwrap();
    assert_eq!(report.count(Outcome::Stale), 1, "{report:?}");
    assert_eq!(
        writes().await,
        after_first,
        "no write for an unchanged or older status"
    );
    let report = engine
        .process(&[event("c4", "k-1", "DELIVERED", 20)])
        .await
        .unwrap();
    assert_eq!(report.count(Outcome::Success), 1, "{report:?}");
    assert_eq!(
        writes().await,
        after_first + 1,
        "exactly one write for a newer status"
    );
}

static OFFSET: AtomicI64 = AtomicI64::new(0);

fn event(id: &str, shipment: &str, status: &str, minute: u8) -> Inbound {
    let payload = format!(
        r#"{{"event_id":"{id}","client_id":"c-1","shipment_id":"{shipment}","status":"{status}","occurred_at":"2026-11-01T10:{minute:02}:00.250Z","version":1}}"#
    );
    Inbound {
        source: SourcePosition {
            topic: "tracking.events".into(),
            partition: 0,
            offset: OFFSET.fetch_add(1, Ordering::Relaxed),
        },
        key: Some(shipment.as_bytes().to_vec()),
        payload: Some(payload.into_bytes()),
        oversized: None,
        replay_count: 0,
    }
}

async fn serve(fake: impl wiremock::Respond + 'static) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(any()).respond_with(fake).mount(&server).await;
    server
}

async fn count(server: &MockServer, pred: fn(&wiremock::Request) -> bool) -> u64 {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| pred(r))
        .count() as u64
}

#[tokio::test]
async fn generic_adapter_meets_the_contract() {
    let server = serve(GenericFake::default()).await;
    crm_gateway_contract(&crate::generic(&server)).await;
    let server = serve(GenericFake::default()).await;
    conditional_write_contract(
        Arc::new(crate::generic(&server)),
        CrmMapping::new(MappingConfig::default()).unwrap(),
        &server,
        |r| r.method.as_str() == "PUT" || r.url.path().ends_with(":batchWrite"),
    )
    .await;
}

#[tokio::test]
async fn bitrix24_adapter_meets_the_contract() {
    let server = MockServer::start().await;
    let fake = Arc::new(Bitrix24Fake::default());
    Mock::given(any())
        .respond_with(Shared(fake.clone()))
        .mount(&server)
        .await;
    crm_gateway_contract(&crate::bitrix24(&server)).await;
    let items = fake.items.lock().unwrap().len();
    assert_eq!(items, 4, "one item per shipment written (s-1, s-2, s-10, s-3)");
    assert_eq!(
        *fake.adds.lock().unwrap(),
        4,
        "a known shipment is never added again"
    );

    let server = serve(Bitrix24Fake::default()).await;
    conditional_write_contract(
        Arc::new(crate::bitrix24(&server)),
        crate::mapping(crate::bitrix24_fields()),
        &server,
        |r| r.url.path().ends_with("/batch.json"),
    )
    .await;
}

#[tokio::test]
async fn salesforce_adapter_meets_the_contract() {
    let server = MockServer::start().await;
    let fake = Arc::new(SalesforceFake {
        instance_url: server.uri(),
        records: Default::default(),
        ext: "Shipment_Id__c",
        ts: "Status_At__c",
        status: "Status__c",
    });
    Mock::given(any())
        .respond_with(Shared(fake.clone()))
        .mount(&server)
        .await;
    crm_gateway_contract(&crate::salesforce(&server)).await;
    assert_eq!(fake.records.lock().unwrap().len(), 4);

    let server = MockServer::start().await;
    let fake = SalesforceFake {
        instance_url: server.uri(),
        records: Default::default(),
        ext: "Shipment_Id__c",
        ts: "Status_At__c",
        status: "Status__c",
    };
    Mock::given(any()).respond_with(fake).mount(&server).await;
    conditional_write_contract(
        Arc::new(crate::salesforce(&server)),
        crate::mapping(crate::salesforce_fields()),
        &server,
        |r| r.method.as_str() == "PATCH",
    )
    .await;
}

#[tokio::test]
async fn kommo_adapter_meets_the_contract() {
    let server = MockServer::start().await;
    let fake = Arc::new(KommoFake::default());
    Mock::given(any())
        .respond_with(Shared(fake.clone()))
        .mount(&server)
        .await;
    crm_gateway_contract(&crate::kommo(&server)).await;
    assert_eq!(
        fake.leads.lock().unwrap().len(),
        4,
        "one lead per shipment written"
    );

    let server = serve(KommoFake::default()).await;
    conditional_write_contract(
        Arc::new(crate::kommo(&server)),
        crate::mapping(crate::kommo_fields()),
        &server,
        |r| matches!(r.method.as_str(), "POST" | "PATCH"),
    )
    .await;
}

/// Lets a test keep a handle on a fake that a mock server owns.
pub struct Shared<T>(pub Arc<T>);

impl<T: wiremock::Respond> wiremock::Respond for Shared<T> {
    fn respond(&self, req: &wiremock::Request) -> wiremock::ResponseTemplate {
        self.0.respond(req)
    }
}

/// A shipment seen for the first time: the read that finds nothing is the only lookup, the
/// write right after creates at once (each new shipment looked up once, not twice), and the
/// next write updates what was created, without a lookup.
async fn a_new_shipment_is_looked_up_once(
    crm: &dyn CrmGateway,
    server: &MockServer,
    lookup: fn(&wiremock::Request) -> bool,
) {
    assert!(crm.read_states(&[sid("s-new")]).await.unwrap().is_empty());
    let written = crm
        .write_statuses(&[write("e-new-1", "s-new", "in_transit", 0)])
        .await
        .unwrap();
    assert!(written[0].result.is_ok(), "{:?}", written[0].result);
    assert_eq!(count(server, lookup).await, 1, "one lookup before the create");
    let states = crm.read_states(&[sid("s-new")]).await.unwrap();
    assert!(states.contains_key(&sid("s-new")), "the create made the record");
    let lookups = count(server, lookup).await;
    let again = crm
        .write_statuses(&[write("e-new-2", "s-new", "delivered", 1)])
        .await
        .unwrap();
    assert!(again[0].result.is_ok(), "{:?}", again[0].result);
    assert_eq!(
        count(server, lookup).await,
        lookups,
        "a known record is updated without a lookup"
    );
}

#[tokio::test]
async fn bitrix24_looks_a_new_shipment_up_once() {
    let server = MockServer::start().await;
    let fake = Arc::new(Bitrix24Fake::default());
    Mock::given(any())
        .respond_with(Shared(fake.clone()))
        .mount(&server)
        .await;
    a_new_shipment_is_looked_up_once(&crate::bitrix24(&server), &server, |r| {
        r.url.path().ends_with("/crm.item.list.json")
    })
    .await;
    assert_eq!(*fake.adds.lock().unwrap(), 1, "created once");
}

#[tokio::test]
async fn kommo_looks_a_new_shipment_up_once() {
    let server = MockServer::start().await;
    let fake = Arc::new(KommoFake::default());
    Mock::given(any())
        .respond_with(Shared(fake.clone()))
        .mount(&server)
        .await;
    a_new_shipment_is_looked_up_once(&crate::kommo(&server), &server, |r| {
        r.method.as_str() == "GET" && r.url.query().is_some_and(|q| q.contains("query="))
    })
    .await;
    assert_eq!(fake.leads.lock().unwrap().len(), 1, "created once");
}
