//! Our side's changes: cards, tasks, interactions, idempotency, and the relay's view of the outbox.

use super::*;
use crate::clients::model::{
    Direction, Interaction, InteractionChannel, InteractionId, Task, TaskId, TaskState,
};
use crate::clients::records::ChangeKind;

pub async fn a_card_is_created_changed_and_left_alone_when_nothing_differs(
    store: &dyn ClientStore,
    _: &dyn Audit,
) {
    let first = fresh(
        store
            .change_card(
                &change(
                    "c-1",
                    &[
                        (Field::FirstName, text("Ada")),
                        (Field::ConsentSms, Value::Flag(true)),
                    ],
                    true,
                    "req-1",
                ),
                None,
            )
            .await,
    );
    assert!(first.created);
    assert_eq!(first.changed, vec![Field::FirstName, Field::ConsentSms]);
    assert_eq!(first.card.version, 1);
    assert_eq!(first.card.card.get(Field::ConsentSms), &Value::Flag(true));
    assert_eq!(first.card.stamps.len(), 2, "only changed fields are stamped");
    assert_eq!(first.card.stamps[&Field::FirstName].at, at(0));
    assert_eq!(first.card.stamps[&Field::FirstName].source, Source::Api);
    assert_eq!(
        store.card(&client("c-1")).await.expect("card").as_ref(),
        Some(&first.card),
        "the answer is what is stored"
    );
    let rows = outbox(store).await;
    assert_eq!(rows.len(), 1);
    let record = outgoing(&rows[0]);
    assert_eq!(record.kind, ChangeKind::Card);
    assert_eq!(record.card_version, Some(1));
    assert_eq!(record.fields, vec![Field::FirstName, Field::ConsentSms]);
    assert!(record.forced.is_empty());
    assert_eq!(
        (record.source, record.request_id.as_str()),
        (Source::Api, "req-1")
    );
    assert_eq!(record.occurred_at, at(0));
    assert_eq!(request_id_of(&rows[0]), Some("req-1"));

    let again = fresh(
        store
            .change_card(
                &change(
                    "c-1",
                    &[
                        (Field::FirstName, text("Ada")),
                        (Field::ConsentSms, Value::Flag(true)),
                    ],
                    true,
                    "req-2",
                ),
                None,
            )
            .await,
    );
    assert!(!again.created && again.changed.is_empty());
    assert_eq!(again.card, first.card, "nothing written, no version bump");
    assert_eq!(store.outbox_depth().await.expect("depth"), 1, "no outbox row");

    // A whole card that leaves a field out empties it.
    let replaced = fresh(
        store
            .change_card(
                &change("c-1", &[(Field::FirstName, text("Ada"))], true, "req-3"),
                None,
            )
            .await,
    );
    assert_eq!(replaced.changed, vec![Field::ConsentSms]);
    assert_eq!(replaced.card.card.get(Field::ConsentSms), &Value::Empty);
    assert_eq!(replaced.card.version, 2);
    let rows = outbox(store).await;
    assert_eq!(rows.len(), 2);
    assert!(rows[0].id < rows[1].id);
    assert_eq!(outgoing(&rows[1]).fields, vec![Field::ConsentSms]);
    assert_eq!(outgoing(&rows[1]).card_version, Some(2));
}

pub async fn a_patch_needs_the_card_and_touches_only_its_fields(store: &dyn ClientStore, _: &dyn Audit) {
    let missing = store
        .change_card(
            &change("c-1", &[(Field::FirstName, text("Ada"))], false, "req-1"),
            None,
        )
        .await;
    assert!(matches!(missing, Err(StoreError::ClientNotFound)), "{missing:?}");
    assert_eq!(store.outbox_depth().await.expect("depth"), 0);
    put(
        store,
        "c-1",
        &[(Field::FirstName, text("Ada")), (Field::LastName, text("L"))],
    )
    .await;
    let mut patch = change("c-1", &[(Field::LastName, text("Lovelace"))], false, "req-2");
    patch.at = at(5);
    patch.source = Source::AllClients;
    let patched = fresh(store.change_card(&patch, None).await);
    assert!(!patched.created);
    assert_eq!(patched.changed, vec![Field::LastName]);
    assert_eq!(patched.card.card.get(Field::FirstName), &text("Ada"), "untouched");
    assert_eq!(patched.card.version, 2);
    assert_eq!(patched.card.stamps[&Field::FirstName].at, at(0));
    assert_eq!(patched.card.stamps[&Field::LastName].at, at(5));
    assert_eq!(patched.card.stamps[&Field::LastName].source, Source::AllClients);
    let record = outgoing(&outbox(store).await[1]);
    assert_eq!((record.source, record.occurred_at), (Source::AllClients, at(5)));
}

pub async fn an_idempotency_key_replays_the_first_answer_and_refuses_another_body(
    store: &dyn ClientStore,
    _: &dyn Audit,
) {
    // A refused change claims nothing: the key can be used again.
    let patch = change("c-1", &[(Field::FirstName, text("Ada"))], false, "req-1");
    let refused = store.change_card(&patch, Some(&claim("k-1", "d-1"))).await;
    assert!(matches!(refused, Err(StoreError::ClientNotFound)), "{refused:?}");
    let put_ada = change("c-1", &[(Field::FirstName, text("Ada"))], true, "req-1");
    let first = fresh(store.change_card(&put_ada, Some(&claim("k-1", "d-1"))).await);
    let replay = store
        .change_card(&put_ada, Some(&claim("k-1", "d-1")))
        .await
        .expect("replay");
    assert_eq!(replay, Idempotent::Replayed(first.clone()));
    // Even where a second run would now answer otherwise.
    put(store, "c-1", &[(Field::FirstName, text("Grace"))]).await;
    let replay = store
        .change_card(&put_ada, Some(&claim("k-1", "d-1")))
        .await
        .expect("replay");
    assert_eq!(replay, Idempotent::Replayed(first));
    let reused = store
        .change_card(&put_ada, Some(&claim("k-1", "d-2")))
        .await
        .expect("reuse");
    assert_eq!(reused, Idempotent::KeyReused);
    assert_eq!(
        store.outbox_depth().await.expect("depth"),
        2,
        "one row per effect"
    );
    assert_eq!(
        store
            .card(&client("c-1"))
            .await
            .expect("card")
            .expect("card")
            .card
            .get(Field::FirstName),
        &text("Grace")
    );
    // Keys are per scope.
    let other_scope = IdempotencyClaim {
        scope: "svc PUT /v1/clients/c-2".into(),
        ..claim("k-1", "d-2")
    };
    let created = fresh(
        store
            .change_card(
                &change("c-2", &[(Field::FirstName, text("Bo"))], true, "r"),
                Some(&other_scope),
            )
            .await,
    );
    assert!(created.created);
    // Tasks keep their first answer too.
    let task = task("t-1", "c-1", "Call back");
    let written = fresh(store.put_task(&task, "req-t", Some(&claim("k-t", "d"))).await);
    assert!(written.created);
    assert_eq!(
        store
            .put_task(&task, "req-t", Some(&claim("k-t", "d")))
            .await
            .expect("replay"),
        Idempotent::Replayed(written)
    );
}

pub async fn concurrent_requests_with_one_key_have_one_effect(store: &dyn ClientStore, _: &dyn Audit) {
    let put_ada = change("c-1", &[(Field::FirstName, text("Ada"))], true, "req-1");
    let key = claim("k-1", "d-1");
    let answers = futures::future::join_all((0..10).map(|_| store.change_card(&put_ada, Some(&key)))).await;
    let answers: Vec<_> = answers.into_iter().map(|a| a.expect("answered")).collect();
    let fresh: Vec<_> = answers
        .iter()
        .filter(|a| matches!(a, Idempotent::Fresh(_)))
        .collect();
    assert_eq!(fresh.len(), 1, "exactly one effect");
    let Idempotent::Fresh(first) = fresh[0] else {
        unreachable!()
    };
    for a in &answers {
        assert!(
            *a == Idempotent::Fresh(first.clone()) || *a == Idempotent::Replayed(first.clone()),
            "{a:?}"
        );
    }
    assert_eq!(store.outbox_depth().await.expect("depth"), 1);
    assert_eq!(version(store, "c-1").await, 1);
}

pub(super) fn task(id: &str, client_id: &str, title: &str) -> Task {
    Task {
        task_id: TaskId::parse(id).expect("valid id"),
        client_id: client(client_id),
        title: title.to_owned(),
        due_at: Some(at(60)),
        state: TaskState::Open,
        assignee: Some("6".into()),
    }
}

pub(super) fn interaction(id: &str, client_id: &str, body: &str) -> Interaction {
    Interaction {
        interaction_id: InteractionId::parse(id).expect("valid id"),
        client_id: client(client_id),
        channel: InteractionChannel::Call,
        direction: Direction::Inbound,
        text: body.to_owned(),
        at: at(1),
    }
}

pub async fn tasks_belong_to_their_client_and_unchanged_ones_queue_nothing(
    store: &dyn ClientStore,
    _: &dyn Audit,
) {
    let call = task("t-1", "c-1", "Call back");
    let missing = store.put_task(&call, "r", None).await;
    assert!(matches!(missing, Err(StoreError::ClientNotFound)), "{missing:?}");
    put(store, "c-1", &[(Field::FirstName, text("Ada"))]).await;
    put(store, "c-2", &[(Field::FirstName, text("Bo"))]).await;
    let written = fresh(store.put_task(&call, "req-t1", None).await);
    assert!(written.created && written.changed);
    assert_eq!(written.entity, call);
    let rows = outbox(store).await;
    let record = outgoing(&rows[2]);
    assert_eq!(record.kind, ChangeKind::Task);
    assert_eq!(record.task.as_ref(), Some(&call));
    assert_eq!(record.request_id, "req-t1");
    assert_eq!(request_id_of(&rows[2]), Some("req-t1"));

    let same = fresh(store.put_task(&call, "req-t2", None).await);
    assert!(!same.created && !same.changed);
    assert_eq!(store.outbox_depth().await.expect("depth"), 3, "unchanged: no row");
    let done = Task {
        state: TaskState::Done,
        ..call.clone()
    };
    let updated = fresh(store.put_task(&done, "req-t3", None).await);
    assert!(!updated.created && updated.changed);
    assert_eq!(outgoing(&outbox(store).await[3]).task, Some(done));
    let stolen = store.put_task(&task("t-1", "c-2", "Call back"), "r", None).await;
    assert!(
        matches!(stolen, Err(StoreError::TaskOfAnotherClient)),
        "{stolen:?}"
    );
    assert_eq!(store.outbox_depth().await.expect("depth"), 4);
}

pub async fn interactions_are_written_once(store: &dyn ClientStore, _: &dyn Audit) {
    let call = interaction("i-1", "c-1", "Asked about the parcel\nand the invoice");
    let missing = store.put_interaction(&call, "r", None).await;
    assert!(matches!(missing, Err(StoreError::ClientNotFound)), "{missing:?}");
    put(store, "c-1", &[(Field::FirstName, text("Ada"))]).await;
    let written = fresh(store.put_interaction(&call, "req-i1", None).await);
    assert!(written.created && written.changed);
    let record = outgoing(&outbox(store).await[1]);
    assert_eq!(record.kind, ChangeKind::Interaction);
    assert_eq!(record.interaction, Some(call.clone()));
    let same = fresh(store.put_interaction(&call, "req-i2", None).await);
    assert!(!same.created && !same.changed);
    let other = interaction("i-1", "c-1", "Something else");
    let refused = store.put_interaction(&other, "r", None).await;
    assert!(
        matches!(refused, Err(StoreError::InteractionExists)),
        "{refused:?}"
    );
    assert_eq!(store.outbox_depth().await.expect("depth"), 2);
}

pub async fn cards_since_pages_by_client_id(store: &dyn ClientStore, _: &dyn Audit) {
    let before = OffsetDateTime::now_utc() - time::Duration::seconds(5);
    for id in ["c-3", "c-1", "c-10", "c-2"] {
        put(store, id, &[(Field::FirstName, text("Ada"))]).await;
    }
    let ids = |cards: Vec<StoredCard>| {
        cards
            .into_iter()
            .map(|c| c.client_id.to_string())
            .collect::<Vec<_>>()
    };
    let page = store.cards_since(before, None, 2).await.expect("cards");
    assert_eq!(ids(page), ["c-1", "c-10"], "by id, bytewise");
    let page = store
        .cards_since(before, Some(&client("c-10")), 10)
        .await
        .expect("cards");
    assert_eq!(ids(page), ["c-2", "c-3"]);
    let later = OffsetDateTime::now_utc() + time::Duration::minutes(5);
    assert!(store
        .cards_since(later, None, 10)
        .await
        .expect("cards")
        .is_empty());
}

pub async fn a_requeue_sends_every_field(store: &dyn ClientStore, _: &dyn Audit) {
    let missing = store.requeue(&client("c-1"), "req-r").await;
    assert!(matches!(missing, Err(StoreError::ClientNotFound)), "{missing:?}");
    put(store, "c-1", &[(Field::FirstName, text("Ada"))]).await;
    store.requeue(&client("c-1"), "req-r").await.expect("requeue");
    let rows = outbox(store).await;
    assert_eq!(rows.len(), 2);
    let record = outgoing(&rows[1]);
    assert_eq!(record.kind, ChangeKind::Card);
    assert_eq!(record.fields, Field::ALL.to_vec());
    assert_eq!(record.card_version, Some(1));
    assert_eq!(record.request_id, "req-r");
}

pub async fn one_relay_leads_and_rows_stay_until_deleted(store: &dyn ClientStore, _: &dyn Audit) {
    let lead = store
        .try_lead()
        .await
        .expect("lead")
        .expect("the first relay leads");
    assert!(
        store.try_lead().await.expect("lead").is_none(),
        "one leader at a time"
    );
    assert!(lead.is_alive().await);
    for id in ["c-1", "c-2", "c-3"] {
        put(store, id, &[(Field::FirstName, text("Ada"))]).await;
    }
    let rows = outbox(store).await;
    assert_eq!(rows.len(), 3);
    assert_eq!(
        store.outbox_next(2).await.expect("outbox"),
        rows[..2].to_vec(),
        "limit, id order"
    );
    assert_eq!(
        store.outbox_next(2).await.expect("outbox"),
        rows[..2].to_vec(),
        "read again until deleted"
    );
    store
        .outbox_delete(&[rows[0].id, rows[1].id])
        .await
        .expect("delete");
    assert_eq!(outbox(store).await, rows[2..].to_vec());
    assert_eq!(store.outbox_depth().await.expect("depth"), 1);
    drop(lead);
    // The server lets go of a closed connection's lock a moment later.
    let mut handed_over = false;
    for _ in 0..200 {
        if store.try_lead().await.expect("lead").is_some() {
            handed_over = true;
            break;
        }
    }
    assert!(handed_over, "handed over");
}
