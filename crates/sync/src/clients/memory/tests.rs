//! Smoke tests of the in-memory store; the contract suite (`clients::contract`) covers the rest.

use super::MemoryClients;
use crate::clients::model::{ClientId, Field, Source, Value};
use crate::clients::ports::*;
use std::collections::BTreeMap;
use time::macros::datetime;

fn change(fields: &[(Field, Value)]) -> CardChange {
    CardChange {
        client_id: ClientId::parse("c-1").unwrap(),
        fields: fields.iter().cloned().collect::<BTreeMap<_, _>>(),
        replace: false,
        must_exist: false,
        source: Source::Api,
        at: datetime!(2026-12-02 10:00 UTC),
        request_id: "req-1".into(),
    }
}

#[tokio::test]
async fn a_change_queues_one_record_and_a_repeat_replays_it() {
    let store = MemoryClients::new();
    let claim = IdempotencyClaim {
        key: "k".into(),
        scope: "svc PUT /v1/clients/c-1".into(),
        request_digest: "d1".into(),
    };
    let c = change(&[(Field::FirstName, Value::text("Ada"))]);
    let Idempotent::Fresh(first) = store.change_card(&c, Some(&claim)).await.unwrap() else {
        panic!("a first call is fresh")
    };
    assert!(first.created);
    assert_eq!(first.changed, vec![Field::FirstName]);
    assert_eq!(
        store.change_card(&c, Some(&claim)).await.unwrap(),
        Idempotent::Replayed(first)
    );
    let other = IdempotencyClaim {
        request_digest: "d2".into(),
        ..claim
    };
    assert_eq!(
        store.change_card(&c, Some(&other)).await.unwrap(),
        Idempotent::KeyReused
    );
    assert_eq!(store.outbox_depth().await.unwrap(), 1);
}

#[tokio::test]
async fn a_dropped_session_writes_nothing_and_frees_the_client() {
    let store = MemoryClients::new();
    let client = ClientId::parse("c-1").unwrap();
    let session = store.session(&client).await.unwrap();
    drop(session);
    let session = store.session(&client).await.unwrap();
    session
        .commit(SyncWrite {
            to_ours: BTreeMap::from([(Field::LastName, Value::text("Lovelace"))]),
            request_id: "req-2".into(),
            ..SyncWrite::default()
        })
        .await
        .unwrap();
    let card = store.card(&client).await.unwrap().unwrap();
    assert_eq!(card.card.get(Field::LastName), &Value::text("Lovelace"));
    assert_eq!(card.stamps[&Field::LastName].source, Source::Crm);
    assert_eq!(
        store.outbox_depth().await.unwrap(),
        0,
        "values from the CRM are not sent back"
    );
}

/// The whole contract, each scenario on a fresh store.
mod contract {
    use super::MemoryClients;

    macro_rules! memory {
        ($name:ident) => {
            #[tokio::test]
            async fn $name() {
                let store = MemoryClients::new();
                crate::clients::contract::$name(&store, &store).await;
            }
        };
    }

    crate::client_store_scenarios!(memory);
}
