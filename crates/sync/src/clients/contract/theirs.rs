//! The CRM's side: webhook intake, client sessions, conflicts and their resolution.

use super::ours::{interaction, task};
use super::*;
use crate::clients::merge::{digests, Conflict, Owner, Resolution, Writing};
use crate::clients::model::Card;
use crate::clients::model::{InteractionId, TaskId, TaskState};
use crate::clients::records::IncomingHint;
use crate::ports::{AttemptRecord, Outcome};

fn hint(delivery: &str, crm_id: &str, client_id: Option<&str>) -> Hint {
    Hint {
        vendor: "bitrix24".into(),
        delivery_id: delivery.into(),
        entity: Entity::Contact,
        crm_id: crm_id.into(),
        client_id: client_id.map(client),
        event: "ONCRMCONTACTUPDATE".into(),
        occurred_at: Some(at(3)),
    }
}

fn incoming(row: &OutboxRow) -> IncomingHint {
    assert_eq!(row.topic, crate::clients::apply::TOPIC_INCOMING);
    let record: IncomingHint = serde_json::from_str(&row.payload).expect("an IncomingHint");
    assert_eq!(row.key, record.key());
    record
}

/// Links `crm_id` to the client through a session, as the dispatcher does after a first write.
pub(super) async fn link(store: &dyn ClientStore, id: &str, crm_id: &str) {
    let session = store.session(&client(id)).await.expect("session");
    session
        .commit(SyncWrite {
            crm_id: Some(crm_id.into()),
            request_id: "req-link".into(),
            ..SyncWrite::default()
        })
        .await
        .expect("commit");
}

pub async fn a_delivery_is_stored_once_and_a_known_contact_is_linked(store: &dyn ClientStore, _: &dyn Audit) {
    put(store, "c-1", &[(Field::FirstName, text("Ada"))]).await;
    link(store, "c-1", "82").await;
    assert_eq!(store.client_of("82").await.expect("client"), Some(client("c-1")));
    assert_eq!(store.client_of("83").await.expect("client"), None);
    let before = outbox(store).await.len();
    let hints = [
        hint("d-1", "82", None),
        hint("d-2", "99", None),
        hint("d-1", "82", None),
    ];
    let stored = store.intake(&hints, "req-w").await.expect("intake");
    let (Intake::Stored(first), Intake::Stored(second)) = (stored[0], stored[1]) else {
        panic!("{stored:?}")
    };
    assert_ne!(first, second);
    assert_eq!(stored[2], Intake::Duplicate, "the same delivery in one batch");
    assert_eq!(
        store.intake(&hints[..1], "req-w2").await.expect("intake"),
        vec![Intake::Duplicate]
    );
    let rows = outbox(store).await;
    assert_eq!(rows.len(), before + 2, "one record per stored delivery");
    let linked = incoming(&rows[before]);
    assert_eq!(linked.webhook_id, first);
    assert_eq!(
        linked.hint.client_id,
        Some(client("c-1")),
        "filled from the linked card"
    );
    assert_eq!(rows[before].key, "c-1");
    assert_eq!(linked.hint.occurred_at, Some(at(3)));
    assert_eq!(linked.request_id, "req-w");
    assert_eq!(request_id_of(&rows[before]), Some("req-w"));
    let unknown = incoming(&rows[before + 1]);
    assert_eq!(
        (unknown.webhook_id, rows[before + 1].key.as_str()),
        (second, "crm:99")
    );
    // Another vendor's delivery with the same id is another delivery.
    let other = Hint {
        vendor: "kommo".into(),
        ..hint("d-1", "82", Some("c-1"))
    };
    assert!(matches!(
        store.intake(&[other], "r").await.expect("intake")[0],
        Intake::Stored(_)
    ));
}

pub async fn the_same_delivery_at_once_is_stored_once(store: &dyn ClientStore, _: &dyn Audit) {
    let one = [hint("d-1", "82", Some("c-1"))];
    let results = futures::future::join_all((0..50).map(|_| store.intake(&one, "req-w"))).await;
    let stored = results
        .into_iter()
        .map(|r| r.expect("intake")[0])
        .filter(|r| matches!(r, Intake::Stored(_)))
        .count();
    assert_eq!(stored, 1);
    assert_eq!(store.outbox_depth().await.expect("depth"), 1);
}

fn attempt(request_id: &str) -> AttemptRecord {
    AttemptRecord {
        event_id: None,
        shipment_id: None,
        client_id: Some("c-1".into()),
        correlation_id: Some(request_id.into()),
        payload: Some(serde_json::json!({"NAME": "Ada"})),
        http_status: Some(200),
        response_excerpt: Some("{\"result\":true}".into()),
        outcome: Outcome::Success,
        attempt: 1,
        error: None,
        event_time: None,
        sent_at: at(4),
        latency_ms: Some(3.0),
        source: None,
    }
}

pub async fn a_session_commits_what_it_learnt_without_queueing_it(
    store: &dyn ClientStore,
    audit: &dyn Audit,
) {
    put(
        store,
        "c-1",
        &[(Field::FirstName, text("Ada")), (Field::Segment, text("vip"))],
    )
    .await;
    store
        .put_task(&task("t-1", "c-1", "Call back"), "r", None)
        .await
        .expect("task");
    store
        .put_interaction(&interaction("i-1", "c-1", "Hello"), "r", None)
        .await
        .expect("interaction");
    let webhook = match store
        .intake(&[hint("d-1", "82", Some("c-1"))], "r")
        .await
        .expect("intake")[0]
    {
        Intake::Stored(id) => id,
        Intake::Duplicate => panic!("a new delivery"),
    };
    let depth = store.outbox_depth().await.expect("depth");
    let mut session = store.session(&client("c-1")).await.expect("session");
    let snapshot = session.snapshot().clone();
    assert_eq!(snapshot.card.as_ref().map(|c| c.version), Some(1));
    assert!(snapshot.base.is_empty() && snapshot.pending.is_empty());
    assert_eq!(session.link(Entity::Task, "t-1").await.expect("link"), None);
    let base = BTreeMap::from([(Field::FirstName, text("Ada").digest())]);
    session
        .commit(SyncWrite {
            to_ours: BTreeMap::from([
                (Field::LastName, text("Lovelace")),
                (Field::FirstName, text("Ada")),
            ]),
            at: Some(at(7)),
            base: base.clone(),
            crm_id: Some("82".into()),
            task_links: vec![(TaskId::parse("t-1").expect("id"), "9100".into())],
            interaction_links: vec![(InteractionId::parse("i-1").expect("id"), "999".into())],
            task_updates: vec![(TaskId::parse("t-1").expect("id"), TaskState::Done)],
            attempts: vec![attempt("req-s")],
            webhook_done: Some(webhook),
            request_id: "req-s".into(),
            ..SyncWrite::default()
        })
        .await
        .expect("commit");
    assert_eq!(
        store.outbox_depth().await.expect("depth"),
        depth,
        "values from the CRM are not sent back"
    );
    let card = store.card(&client("c-1")).await.expect("card").expect("card");
    assert_eq!(card.version, 2);
    assert_eq!(card.crm_id.as_deref(), Some("82"));
    assert_eq!(card.card.get(Field::LastName), &text("Lovelace"));
    assert_eq!(card.stamps[&Field::LastName].source, Source::Crm);
    assert_eq!(card.stamps[&Field::LastName].at, at(7));
    assert_eq!(
        card.stamps[&Field::FirstName].source,
        Source::Api,
        "an equal value is not restamped"
    );
    assert_eq!(store.client_of("82").await.expect("client"), Some(client("c-1")));
    assert!(audit.webhook_processed(webhook).await);
    assert_eq!(audit.two_way_attempts().await, vec![Some("req-s".to_owned())]);

    let mut session = store.session(&client("c-1")).await.expect("session");
    assert_eq!(session.snapshot().base, base);
    assert_eq!(session.snapshot().card.as_ref(), Some(&card));
    assert_eq!(
        session
            .link(Entity::Contact, "c-1")
            .await
            .expect("link")
            .as_deref(),
        Some("82")
    );
    assert_eq!(
        session.link(Entity::Task, "t-1").await.expect("link").as_deref(),
        Some("9100")
    );
    assert_eq!(
        session.link(Entity::Note, "i-1").await.expect("link").as_deref(),
        Some("999")
    );
    assert_eq!(session.link(Entity::Task, "t-9").await.expect("link"), None);
    let done = session
        .task(&TaskId::parse("t-1").expect("id"))
        .await
        .expect("task")
        .expect("task");
    assert_eq!(done.state, TaskState::Done);
    assert_eq!(done.title, "Call back");
    assert_eq!(session.task_by_crm_id("9100").await.expect("task"), Some(done));
    assert_eq!(session.task_by_crm_id("9101").await.expect("task"), None);
    // The base grows field by field.
    let more = BTreeMap::from([(Field::LastName, text("Lovelace").digest())]);
    session
        .commit(SyncWrite {
            base: more.clone(),
            request_id: "req-s2".into(),
            ..SyncWrite::default()
        })
        .await
        .expect("commit");
    let session = store.session(&client("c-1")).await.expect("session");
    let expected: BTreeMap<_, _> = base.into_iter().chain(more).collect();
    assert_eq!(session.snapshot().base, expected);
    assert_eq!(version(store, "c-1").await, 2, "nothing new");
}

pub async fn a_dropped_session_writes_nothing(store: &dyn ClientStore, audit: &dyn Audit) {
    put(store, "c-1", &[(Field::FirstName, text("Ada"))]).await;
    let session = store.session(&client("c-1")).await.expect("session");
    drop(session);
    let session = store.session(&client("c-1")).await.expect("the lock was let go");
    drop(session);
    assert_eq!(version(store, "c-1").await, 1);
    assert!(audit.two_way_attempts().await.is_empty());
}

/// What a session noted before a CRM write is there for the next session of the client even
/// though the noting session never committed; notes of other values add up, the same value is
/// kept once, and a commit clears them.
pub async fn a_noted_write_outlives_its_session_until_a_commit(store: &dyn ClientStore, _: &dyn Audit) {
    put(store, "c-1", &[(Field::FirstName, text("Ada"))]).await;
    put(store, "c-2", &[(Field::FirstName, text("Bea"))]).await;
    let first_name = |v: &str| {
        digests(
            &Card::default().with(Field::FirstName, text(v)),
            &[Field::FirstName],
        )
    };
    let mut session = store.session(&client("c-1")).await.expect("session");
    assert!(session.snapshot().writing.is_empty());
    session.note_writing(&first_name("Ada K.")).await.expect("note");
    drop(session);
    let mut session = store.session(&client("c-1")).await.expect("session");
    assert_eq!(
        session.snapshot().writing,
        Writing::from([(Field::FirstName, vec![text("Ada K.").digest()])]),
        "a note outlives a session that never committed"
    );
    session.note_writing(&first_name("Ada King")).await.expect("note");
    session.note_writing(&first_name("Ada K.")).await.expect("note");
    drop(session);
    let other = store.session(&client("c-2")).await.expect("session");
    assert!(other.snapshot().writing.is_empty(), "notes are the client's own");
    drop(other);
    let session = store.session(&client("c-1")).await.expect("session");
    assert_eq!(
        session.snapshot().writing,
        Writing::from([(
            Field::FirstName,
            vec![text("Ada King").digest(), text("Ada K.").digest()]
        )])
    );
    session
        .commit(SyncWrite {
            request_id: "req-noted".into(),
            ..SyncWrite::default()
        })
        .await
        .expect("commit");
    let session = store.session(&client("c-1")).await.expect("session");
    assert!(session.snapshot().writing.is_empty(), "a commit clears the notes");
    drop(session);
    assert_eq!(version(store, "c-1").await, 1, "notes change nothing of the card");
}

pub async fn sessions_of_one_client_take_turns(store: &dyn ClientStore, _: &dyn Audit) {
    put(store, "c-1", &[(Field::Segment, text("0"))]).await;
    // Each reads the segment as a counter and writes it plus one: turns make 2, overlap makes 1.
    let turn = || async {
        let session = store.session(&client("c-1")).await.expect("session");
        let seen: u32 = session
            .snapshot()
            .card
            .as_ref()
            .and_then(|c| c.card.get(Field::Segment).as_text())
            .and_then(|t| t.parse().ok())
            .expect("a counter");
        yield_now().await;
        session
            .commit(SyncWrite {
                to_ours: BTreeMap::from([(Field::Segment, text(&(seen + 1).to_string()))]),
                request_id: "req-turn".into(),
                ..SyncWrite::default()
            })
            .await
            .expect("commit");
    };
    futures::future::join(turn(), turn()).await;
    let card = store.card(&client("c-1")).await.expect("card").expect("card");
    assert_eq!(card.card.get(Field::Segment), &text("2"));
    assert_eq!(card.version, 3);
}

pub async fn a_session_holds_up_neither_the_api_nor_other_clients(store: &dyn ClientStore, _: &dyn Audit) {
    put(store, "c-1", &[(Field::FirstName, text("Ada"))]).await;
    let session = store.session(&client("c-1")).await.expect("session");
    let other = store
        .session(&client("c-2"))
        .await
        .expect("another client's session");
    drop(other);
    // The API changes the card while a CRM round trip is in flight...
    let mut patch = change("c-1", &[(Field::FirstName, text("Ada K."))], false, "req-api");
    patch.at = at(9);
    fresh(store.change_card(&patch, None).await);
    // ...and the CRM's older view of that field does not overwrite it; other fields are taken.
    session
        .commit(SyncWrite {
            to_ours: BTreeMap::from([(Field::FirstName, text("Adele")), (Field::LastName, text("L"))]),
            request_id: "req-s".into(),
            ..SyncWrite::default()
        })
        .await
        .expect("commit");
    let card = store.card(&client("c-1")).await.expect("card").expect("card");
    assert_eq!(card.card.get(Field::FirstName), &text("Ada K."));
    assert_eq!(card.card.get(Field::LastName), &text("L"));
    assert_eq!(card.version, 3);
}

fn conflict(field: Field, ours: &str, theirs: &str, rule: Owner, resolution: Resolution) -> Conflict {
    Conflict {
        field,
        ours: text(ours),
        ours_at: Some(at(1)),
        ours_source: Some(Source::Api),
        theirs: text(theirs),
        theirs_at: Some(at(2)),
        rule,
        resolution,
        reason: format!("{field} changed on both sides"),
    }
}

/// Opens an operator task on the client's segment (ours `vip`, theirs `churned`).
async fn ask_about_segment(store: &dyn ClientStore) -> OperatorTask {
    put(
        store,
        "c-1",
        &[(Field::FirstName, text("Ada")), (Field::Segment, text("vip"))],
    )
    .await;
    let session = store.session(&client("c-1")).await.expect("session");
    session
        .commit(SyncWrite {
            conflicts: vec![
                conflict(Field::Manager, "7", "9", Owner::Crm, Resolution::CrmWins),
                conflict(
                    Field::Segment,
                    "vip",
                    "churned",
                    Owner::Ask,
                    Resolution::OperatorTask,
                ),
            ],
            request_id: "req-c1".into(),
            ..SyncWrite::default()
        })
        .await
        .expect("commit");
    let open = store
        .operator_tasks(Some(OperatorTaskState::Open), 10)
        .await
        .expect("tasks");
    assert_eq!(open.len(), 1, "{open:?}");
    open.into_iter().next().expect("a task")
}

pub async fn conflicts_are_logged_and_a_person_is_asked_once_per_field(
    store: &dyn ClientStore,
    audit: &dyn Audit,
) {
    let task = ask_about_segment(store).await;
    assert_eq!((task.client_id.as_str(), task.field), ("c-1", Field::Segment));
    assert_eq!(
        (task.ours.clone(), task.theirs.clone()),
        (text("vip"), text("churned"))
    );
    assert_eq!((task.ours_at, task.theirs_at), (Some(at(1)), Some(at(2))));
    assert_eq!(
        (task.ours_source, task.theirs_source),
        (Some(Source::Api), Source::Crm)
    );
    assert_eq!(task.state, OperatorTaskState::Open);
    assert!(task.resolution.is_none() && task.resolved_at.is_none());
    assert_eq!(
        store.operator_task(task.id).await.expect("task"),
        Some(task.clone())
    );
    assert_eq!(store.operator_task(task.id + 100).await.expect("task"), None);
    let session = store.session(&client("c-1")).await.expect("session");
    assert!(session.snapshot().pending.contains(&Field::Segment));
    assert_eq!(session.snapshot().pending.len(), 1);
    session
        .commit(SyncWrite {
            conflicts: vec![conflict(
                Field::Segment,
                "vip",
                "lost",
                Owner::Ask,
                Resolution::OperatorTask,
            )],
            request_id: "req-c2".into(),
            ..SyncWrite::default()
        })
        .await
        .expect("commit");
    let all = store.operator_tasks(None, 10).await.expect("tasks");
    assert_eq!(all, vec![task.clone()], "the open task is kept");
    let log = audit.conflicts(&client("c-1")).await;
    let rows: Vec<_> = log
        .iter()
        .map(|c| {
            (
                c.field,
                c.rule.as_str(),
                c.resolution.as_str(),
                c.operator_task,
                c.request_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (Field::Manager, "crm", "crm_wins", None, "req-c1"),
            (Field::Segment, "ask", "operator_task", Some(task.id), "req-c1"),
            (Field::Segment, "ask", "operator_task", Some(task.id), "req-c2"),
        ]
    );
    assert!(store
        .operator_tasks(Some(OperatorTaskState::Resolved), 10)
        .await
        .expect("tasks")
        .is_empty());
    assert_eq!(
        store.outbox_depth().await.expect("depth"),
        1,
        "a conflict queues nothing"
    );
}

pub async fn a_resolution_sets_our_card_and_forces_it_to_the_crm(store: &dyn ClientStore, audit: &dyn Audit) {
    let task = ask_about_segment(store).await;
    let missing = store.resolve(task.id + 100, &Choice::Ours, "op", "r", None).await;
    assert!(
        matches!(missing, Err(StoreError::OperatorTaskNotFound)),
        "{missing:?}"
    );
    let bad = store
        .resolve(task.id, &Choice::Value(Value::Flag(true)), "op", "r", None)
        .await;
    assert!(matches!(bad, Err(StoreError::InvalidValue(_))), "{bad:?}");
    let before = store.card(&client("c-1")).await.expect("card").expect("card");
    let key = claim("k-r", "d");
    let closed = fresh(
        store
            .resolve(task.id, &Choice::Theirs, "ops@acme", "req-r", Some(&key))
            .await,
    );
    assert_eq!(closed.state, OperatorTaskState::Resolved);
    assert_eq!(closed.resolution, Some(text("churned")));
    assert_eq!(closed.resolved_by.as_deref(), Some("ops@acme"));
    assert!(closed.resolved_at.is_some());
    assert_eq!(
        store.operator_task(task.id).await.expect("task"),
        Some(closed.clone())
    );
    let card = store.card(&client("c-1")).await.expect("card").expect("card");
    assert_eq!(card.card.get(Field::Segment), &text("churned"));
    assert_eq!(card.stamps[&Field::Segment].source, Source::Operator);
    assert_eq!(card.version, before.version + 1);
    let rows = outbox(store).await;
    let record = outgoing(rows.last().expect("a row"));
    assert_eq!(
        (record.fields.clone(), record.forced.clone()),
        (vec![Field::Segment], vec![Field::Segment])
    );
    assert_eq!(record.source, Source::Operator);
    assert_eq!(record.card_version, Some(card.version));
    assert_eq!(record.request_id, "req-r");
    assert_eq!(
        store
            .resolve(task.id, &Choice::Theirs, "ops@acme", "req-r", Some(&key))
            .await
            .expect("replay"),
        Idempotent::Replayed(closed)
    );
    let again = store.resolve(task.id, &Choice::Ours, "op", "r", None).await;
    assert!(
        matches!(again, Err(StoreError::OperatorTaskResolved)),
        "{again:?}"
    );
    assert_eq!(outbox(store).await.len(), rows.len(), "one effect");
    let last = audit.conflicts(&client("c-1")).await.pop().expect("a log row");
    assert_eq!(
        (
            last.rule.as_str(),
            last.resolution.as_str(),
            last.operator_task,
            last.chosen,
            last.request_id.as_str()
        ),
        (
            "operator",
            "resolved_theirs",
            Some(task.id),
            Some(text("churned")),
            "req-r"
        )
    );
    let session = store.session(&client("c-1")).await.expect("session");
    assert!(
        session.snapshot().pending.is_empty(),
        "resolved: no longer pending"
    );
    drop(session);
    // A new conflict on the field may now open a new task.
    let session = store.session(&client("c-1")).await.expect("session");
    session
        .commit(SyncWrite {
            conflicts: vec![conflict(
                Field::Segment,
                "churned",
                "vip",
                Owner::Ask,
                Resolution::OperatorTask,
            )],
            request_id: "req-c3".into(),
            ..SyncWrite::default()
        })
        .await
        .expect("commit");
    let open = store
        .operator_tasks(Some(OperatorTaskState::Open), 10)
        .await
        .expect("tasks");
    assert_eq!(open.len(), 1);
    assert_ne!(open[0].id, task.id);
    let edited = fresh(
        store
            .resolve(open[0].id, &Choice::Value(text("regular")), "op", "req-v", None)
            .await,
    );
    assert_eq!(edited.resolution, Some(text("regular")));
    assert_eq!(
        store
            .card(&client("c-1"))
            .await
            .expect("card")
            .expect("card")
            .card
            .get(Field::Segment),
        &text("regular")
    );
}
