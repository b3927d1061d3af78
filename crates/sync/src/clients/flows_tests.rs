//! The dispatcher and the processor over the in-memory store and CRM: both sides converge, echoes
//! stop, conflicts end in one operator task whose resolution reaches both sides, and a crash
//! between the CRM write and the commit doubles nothing.

use super::flows::{Dispatcher, FlowError, Processor};
use super::memory::MemoryClients;
use super::memory_crm::MemoryCrm;
use super::model::{
    Card, ClientId, Direction, Field, Interaction, InteractionChannel, InteractionId, Source, Task, TaskId,
    TaskState, Value,
};
use super::ports::{
    CardChange, Choice, ClientCrm, ClientStore, Entity, Hint, Idempotent, Intake, OperatorTaskState,
};
use super::records::{IncomingHint, OutgoingChange, ProcessedOutcome};
use super::Ownership;
use crate::ports::CrmError;
use std::collections::BTreeMap;
use std::sync::Arc;
use time::OffsetDateTime;

struct World {
    store: Arc<MemoryClients>,
    crm: Arc<MemoryCrm>,
    dispatcher: Dispatcher,
    processor: Processor,
}

fn world() -> World {
    let store = Arc::new(MemoryClients::new());
    let crm = Arc::new(MemoryCrm::new());
    World {
        dispatcher: Dispatcher {
            store: store.clone(),
            crm: crm.clone(),
            ownership: Ownership::default(),
        },
        processor: Processor {
            store: store.clone(),
            crm: crm.clone(),
            ownership: Ownership::default(),
        },
        store,
        crm,
    }
}

fn client(id: &str) -> ClientId {
    ClientId::parse(id).unwrap()
}

fn text(s: &str) -> Value {
    Value::text(s)
}

impl World {
    async fn change(&self, id: &str, fields: &[(Field, Value)], source: Source) {
        let change = CardChange {
            client_id: client(id),
            fields: fields.iter().cloned().collect::<BTreeMap<_, _>>(),
            replace: false,
            must_exist: false,
            source,
            at: OffsetDateTime::now_utc(),
            request_id: format!("req-{id}"),
        };
        let r = self.store.change_card(&change, None).await.unwrap();
        assert!(matches!(r, Idempotent::Fresh(_)));
    }

    /// Takes what the relay would publish now, and deletes it.
    async fn drain(&self) -> (Vec<OutgoingChange>, Vec<IncomingHint>) {
        let rows = self.store.outbox_next(1000).await.unwrap();
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        self.store.outbox_delete(&ids).await.unwrap();
        let mut out = (Vec::new(), Vec::new());
        for r in rows {
            if r.topic == super::apply::TOPIC_OUTGOING {
                out.0.push(serde_json::from_str(&r.payload).unwrap());
            } else {
                out.1.push(serde_json::from_str(&r.payload).unwrap());
            }
        }
        out
    }

    async fn dispatch_all(&self) {
        for change in self.drain().await.0 {
            self.dispatcher.dispatch(&change).await.unwrap();
        }
    }

    /// Stores a webhook for the client's contact as the intake would; returns its id.
    async fn store_hint(&self, id: &str, delivery: &str) -> i64 {
        let crm_id = self.crm.contact_of(&client(id)).unwrap().crm_id;
        let hint = Hint {
            vendor: "generic".into(),
            delivery_id: delivery.into(),
            entity: Entity::Contact,
            crm_id,
            client_id: None,
            event: "contact.updated".into(),
            occurred_at: None,
        };
        let stored = self.store.intake(&[hint], "req-hook").await.unwrap();
        let Intake::Stored(id) = stored[0] else {
            panic!("{stored:?}");
        };
        id
    }

    /// A webhook for the client's contact, stored and relayed as the intake would.
    async fn webhook(&self, id: &str, delivery: &str) -> IncomingHint {
        self.store_hint(id, delivery).await;
        let (_, mut incoming) = self.drain().await;
        assert_eq!(incoming.len(), 1);
        incoming.remove(0)
    }

    /// A webhook for the client's contact, stored as the intake would; only its own hint is taken
    /// from the outbox (our changes waiting there stay).
    async fn webhook_only(&self, id: &str, delivery: &str) -> IncomingHint {
        let id = self.store_hint(id, delivery).await;
        let rows = self.store.outbox_next(1000).await.unwrap();
        let row = rows
            .iter()
            .find(|r| r.topic != super::apply::TOPIC_OUTGOING)
            .expect("the hint's outbox row");
        self.store.outbox_delete(&[row.id]).await.unwrap();
        let incoming: IncomingHint = serde_json::from_str(&row.payload).unwrap();
        assert_eq!(incoming.webhook_id, id);
        incoming
    }

    /// c-1's first name "Ada" synced to the CRM, then changed to "Ada K.": that change, taken
    /// from the outbox and not dispatched.
    async fn synced_then_changed(&self) -> Vec<OutgoingChange> {
        self.change("c-1", &[(Field::FirstName, text("Ada"))], Source::Api)
            .await;
        self.dispatch_all().await;
        self.change("c-1", &[(Field::FirstName, text("Ada K."))], Source::Api)
            .await;
        self.drain().await.0
    }

    /// A field of the client's contact, as the CRM holds it.
    fn theirs(&self, id: &str, field: Field) -> Value {
        self.crm.contact_of(&client(id)).unwrap().card.get(field).clone()
    }

    /// c-1's card and its open task t-1, stored and not dispatched.
    async fn open_task(&self) -> Task {
        self.change("c-1", &[(Field::FirstName, text("Ada"))], Source::Api)
            .await;
        let task = Task {
            task_id: TaskId::parse("t-1").unwrap(),
            client_id: client("c-1"),
            title: "Call back".into(),
            due_at: None,
            state: TaskState::Open,
            assignee: None,
        };
        self.store.put_task(&task, "req-t", None).await.unwrap();
        task
    }

    /// A CRM webhook for one of its tasks, stored and taken from the outbox as the relay would.
    async fn task_hook(&self, crm_task: &str, delivery: &str, event: &str) -> IncomingHint {
        let hint = Hint {
            vendor: "generic".into(),
            delivery_id: delivery.into(),
            entity: Entity::Task,
            crm_id: crm_task.into(),
            client_id: None,
            event: event.into(),
            occurred_at: None,
        };
        self.store.intake(&[hint], "req-hook").await.unwrap();
        let (_, mut incoming) = self.drain().await;
        assert_eq!(incoming.len(), 1);
        incoming.remove(0)
    }

    async fn ours(&self, id: &str) -> Card {
        self.store.card(&client(id)).await.unwrap().unwrap().card
    }
}

#[tokio::test]
async fn our_change_reaches_the_crm_once_and_its_echo_changes_nothing() {
    let w = world();
    w.change(
        "c-1",
        &[
            (Field::FirstName, text("Ada")),
            (Field::Phone, text("+79990000001")),
        ],
        Source::Api,
    )
    .await;
    w.dispatch_all().await;
    let theirs = w.crm.contact_of(&client("c-1")).expect("created in the CRM");
    assert_eq!(theirs.card.get(Field::FirstName), &text("Ada"));
    assert_eq!(theirs.card.get(Field::Phone), &text("+79990000001"));
    assert_eq!(w.crm.contact_writes(), 1);
    assert_eq!(w.crm.request_ids(), vec!["req-c-1".to_owned()]);
    // The CRM's webhook about our own write: re-read, equal to what we wrote: an echo.
    let hint = w.webhook("c-1", "d-1").await;
    let done = w.processor.process(&hint).await.unwrap();
    assert_eq!(done.outcome, ProcessedOutcome::Echo);
    assert!(done.applied.is_empty() && done.sent_back.is_empty());
    assert_eq!(w.crm.contact_writes(), 1, "no write back: the echo does not loop");
    assert!(w.drain().await.0.is_empty(), "no new outgoing change either");
    assert!(w.store.webhook(hint.webhook_id).unwrap().processed_at.is_some());
}

#[tokio::test]
async fn a_crm_change_is_taken_or_written_back_as_the_owner_says() {
    let w = world();
    w.change(
        "c-1",
        &[(Field::Manager, text("6")), (Field::Phone, text("+79990000001"))],
        Source::Api,
    )
    .await;
    w.dispatch_all().await;
    let crm_id = w.crm.contact_of(&client("c-1")).unwrap().crm_id;
    let later = OffsetDateTime::now_utc();
    w.crm.edit(&crm_id, Field::Manager, text("9"), later);
    w.crm.edit(&crm_id, Field::Phone, text("+79990000002"), later);
    let hint = w.webhook("c-1", "d-2").await;
    let done = w.processor.process(&hint).await.unwrap();
    assert_eq!(done.outcome, ProcessedOutcome::Applied);
    assert_eq!(done.applied, vec![Field::Manager], "the CRM owns the manager");
    assert_eq!(done.sent_back, vec![Field::Phone], "we own the phone");
    assert_eq!(w.ours("c-1").await.get(Field::Manager), &text("9"));
    let theirs = w.crm.contact_of(&client("c-1")).unwrap();
    assert_eq!(theirs.card.get(Field::Phone), &text("+79990000001"));
    // Both sides agree now: the next look changes nothing.
    let hint = w.webhook("c-1", "d-3").await;
    assert_eq!(
        w.processor.process(&hint).await.unwrap().outcome,
        ProcessedOutcome::Echo
    );
}

#[tokio::test]
async fn a_conflict_opens_one_operator_task_and_its_resolution_reaches_both_sides() {
    let w = world();
    w.change("c-1", &[(Field::Segment, text("regular"))], Source::Api)
        .await;
    w.dispatch_all().await;
    let crm_id = w.crm.contact_of(&client("c-1")).unwrap().crm_id;
    // Both sides change the segment before they hear of each other.
    w.change("c-1", &[(Field::Segment, text("vip"))], Source::Api)
        .await;
    w.crm.edit(
        &crm_id,
        Field::Segment,
        text("churned"),
        OffsetDateTime::now_utc(),
    );
    w.dispatch_all().await;
    let hint = w.webhook("c-1", "d-4").await;
    let done = w.processor.process(&hint).await.unwrap();
    assert!(
        done.asked.is_empty(),
        "already asked by the dispatcher; the field is pending"
    );
    let tasks = w
        .store
        .operator_tasks(Some(OperatorTaskState::Open), 10)
        .await
        .unwrap();
    assert_eq!(tasks.len(), 1, "exactly one operator task");
    let task = &tasks[0];
    assert_eq!(
        (task.field, task.ours.clone(), task.theirs.clone()),
        (Field::Segment, text("vip"), text("churned"))
    );
    assert_eq!(
        w.ours("c-1").await.get(Field::Segment),
        &text("vip"),
        "ours is kept meanwhile"
    );
    assert_eq!(&w.theirs("c-1", Field::Segment), &text("churned"));
    // A person decides for the CRM's value: our copy takes it and the CRM is written (forced).
    let resolved = w
        .store
        .resolve(
            task.id,
            &Choice::Value(text("vip-churned")),
            "op-1",
            "req-op",
            None,
        )
        .await
        .unwrap();
    assert!(matches!(resolved, Idempotent::Fresh(t) if t.state == OperatorTaskState::Resolved));
    w.dispatch_all().await;
    assert_eq!(w.ours("c-1").await.get(Field::Segment), &text("vip-churned"));
    assert_eq!(&w.theirs("c-1", Field::Segment), &text("vip-churned"));
    assert!(w
        .store
        .operator_tasks(Some(OperatorTaskState::Open), 10)
        .await
        .unwrap()
        .is_empty());
    let log = w.store.conflict_log();
    assert!(
        log.len() >= 2,
        "the conflict and its resolution are both in the log: {log:?}"
    );
}

#[tokio::test]
async fn a_crash_after_the_crm_write_converges_without_a_second_write() {
    let w = world();
    let changes = w.synced_then_changed().await;
    // The write reached the CRM, then the process died before committing.
    let contact = w.crm.contact_of(&client("c-1")).unwrap();
    let card = Card::default().with(Field::FirstName, text("Ada K."));
    w.crm
        .write_contact(
            &client("c-1"),
            Some(&contact.crm_id),
            &card,
            &[Field::FirstName],
            super::WriteContext { request_id: "r" },
        )
        .await
        .unwrap();
    let writes = w.crm.contact_writes();
    // Redelivery: the same change again.
    let d = w.dispatcher.dispatch(&changes[0]).await.unwrap();
    assert!(d.written.is_empty(), "{d:?}");
    assert_eq!(w.crm.contact_writes(), writes, "nothing doubled");
    assert_eq!(
        w.store.base(&client("c-1")).get(&Field::FirstName),
        Some(&text("Ada K.").digest())
    );
}

/// The dispatcher's write lands in the CRM but its session never commits (the reply is lost, as
/// when the process dies between the two). Before the redelivery, the CRM user changes another
/// field and its webhook is processed: the CRM's record is now newer than our field, and without
/// the note of the write our older value, sitting in the CRM, would pass for a change of theirs
/// and overwrite the newer one of ours.
#[tokio::test]
async fn a_write_whose_session_never_committed_is_recognised_as_ours_by_the_next_session() {
    let w = world();
    let changes = w.synced_then_changed().await;
    w.crm.lose_next_replies(1);
    let lost = w.dispatcher.dispatch(&changes[0]).await.unwrap_err();
    assert!(lost.is_transient(), "{lost}");
    assert_eq!(
        &w.theirs("c-1", Field::FirstName),
        &text("Ada K."),
        "the write landed"
    );
    assert_eq!(
        w.store.base(&client("c-1")).get(&Field::FirstName),
        Some(&text("Ada").digest()),
        "and the base was not moved"
    );
    // Our copy changes again, then a CRM user edits the manager.
    w.change("c-1", &[(Field::FirstName, text("Ada King"))], Source::Api)
        .await;
    let crm_id = w.crm.contact_of(&client("c-1")).unwrap().crm_id;
    w.crm.edit(
        &crm_id,
        Field::Manager,
        text("m-7"),
        OffsetDateTime::now_utc() + time::Duration::seconds(5),
    );
    let hook = w.webhook_only("c-1", "d-1").await;
    let p = w.processor.process(&hook).await.unwrap();
    assert_eq!(p.applied, vec![Field::Manager], "{p:?}");
    assert_eq!(p.sent_back, vec![Field::FirstName], "{p:?}");
    assert_eq!(w.ours("c-1").await.get(Field::FirstName), &text("Ada King"));
    assert_eq!(&w.theirs("c-1", Field::FirstName), &text("Ada King"));
    // The redelivered change and the newer one find both sides equal.
    let writes = w.crm.contact_writes();
    w.dispatcher.dispatch(&changes[0]).await.unwrap();
    w.dispatch_all().await;
    assert_eq!(w.crm.contact_writes(), writes, "nothing written again");
    assert_eq!(w.ours("c-1").await.get(Field::Manager), &text("m-7"));
}

#[tokio::test]
async fn a_transient_crm_failure_commits_nothing_and_the_retry_succeeds() {
    let w = world();
    w.change("c-1", &[(Field::FirstName, text("Ada"))], Source::Api)
        .await;
    let (changes, _) = w.drain().await;
    w.crm.fail_next([CrmError::transient("connect refused")]);
    let e = w.dispatcher.dispatch(&changes[0]).await.unwrap_err();
    assert!(e.is_transient());
    assert!(w.store.base(&client("c-1")).is_empty());
    assert!(w.crm.contact_of(&client("c-1")).is_none());
    w.dispatcher.dispatch(&changes[0]).await.unwrap();
    assert_eq!(&w.theirs("c-1", Field::FirstName), &text("Ada"));
    w.crm.fail_next([CrmError::permanent("400 bad field")]);
    w.change("c-1", &[(Field::FirstName, text("Eve"))], Source::Api)
        .await;
    let (changes, _) = w.drain().await;
    let e = w.dispatcher.dispatch(&changes[0]).await.unwrap_err();
    assert!(!e.is_transient());
    assert_eq!(e.reason_code(), "crm_rejected");
}

#[tokio::test]
async fn tasks_and_interactions_hang_on_the_contact_and_are_written_once() {
    let w = world();
    w.change("c-1", &[(Field::FirstName, text("Ada"))], Source::Api)
        .await;
    let task = Task {
        task_id: TaskId::parse("t-1").unwrap(),
        client_id: client("c-1"),
        title: "Call back".into(),
        due_at: None,
        state: TaskState::Open,
        assignee: Some("6".into()),
    };
    w.store.put_task(&task, "req-t", None).await.unwrap();
    let note = Interaction {
        interaction_id: InteractionId::parse("i-1").unwrap(),
        client_id: client("c-1"),
        channel: InteractionChannel::Call,
        direction: Direction::Inbound,
        text: "asked about delivery".into(),
        at: OffsetDateTime::now_utc(),
    };
    w.store.put_interaction(&note, "req-i", None).await.unwrap();
    let (changes, _) = w.drain().await;
    assert_eq!(changes.len(), 3);
    for c in &changes {
        w.dispatcher.dispatch(c).await.unwrap();
    }
    // Redelivered: the task is updated in place, the note is not added twice.
    for c in &changes {
        w.dispatcher.dispatch(c).await.unwrap();
    }
    let contact = w.crm.contact_of(&client("c-1")).unwrap().crm_id;
    let tasks = w.crm.tasks();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].2, contact);
    assert_eq!(w.crm.notes().len(), 1);
    // The CRM closes the task: our copy follows.
    w.crm.set_task_state(&tasks[0].0, TaskState::Done);
    w.store
        .intake(
            &[Hint {
                vendor: "generic".into(),
                delivery_id: "d-task".into(),
                entity: Entity::Task,
                crm_id: tasks[0].0.clone(),
                client_id: None,
                event: "task.updated".into(),
                occurred_at: None,
            }],
            "req-hook",
        )
        .await
        .unwrap();
    let (_, incoming) = w.drain().await;
    let done = w.processor.process(&incoming[0]).await.unwrap();
    assert_eq!(done.outcome, ProcessedOutcome::Applied);
    let mut session = w.store.session(&client("c-1")).await.unwrap();
    assert_eq!(
        session.task(&task.task_id).await.unwrap().unwrap().state,
        TaskState::Done
    );
}

#[tokio::test]
async fn a_hint_for_a_contact_no_client_owns_fails_with_a_reason() {
    let w = world();
    let hint = IncomingHint {
        version: 1,
        webhook_id: 1,
        hint: Hint {
            vendor: "generic".into(),
            delivery_id: "d".into(),
            entity: Entity::Contact,
            crm_id: "ct-404".into(),
            client_id: None,
            event: "contact.updated".into(),
            occurred_at: None,
        },
        request_id: "r".into(),
        received_at: OffsetDateTime::now_utc(),
    };
    let e = w.processor.process(&hint).await.unwrap_err();
    assert!(matches!(e, FlowError::UnknownClient(_)));
    assert!(!e.is_transient());
    assert_eq!(e.reason_code(), "unknown_client");
}

#[test]
fn a_crm_record_linked_to_another_client_is_a_case_for_a_person_not_a_retry() {
    use super::ports::StoreError;
    let e = FlowError::from(StoreError::CrmIdLinkedElsewhere);
    assert!(!e.is_transient());
    assert_eq!(e.reason_code(), "crm_id_linked_elsewhere");
    assert!(FlowError::from(StoreError::Unavailable("down".into())).is_transient());
}

#[tokio::test]
async fn a_new_contact_is_told_every_consent_even_one_never_given() {
    let w = world();
    w.change("c-1", &[(Field::ConsentSms, Value::Flag(true))], Source::Api)
        .await;
    w.dispatch_all().await;
    let theirs = w.crm.contact_of(&client("c-1")).expect("created in the CRM");
    assert_eq!(theirs.card.get(Field::ConsentSms), &Value::Flag(true));
    // Not left to the CRM's default, which may be "consented".
    assert_eq!(theirs.card.get(Field::ConsentEmail), &Value::Flag(false));
    // And the webhook of that write is an echo: nothing goes back and forth.
    let hint = w.webhook("c-1", "d-1").await;
    let done = w.processor.process(&hint).await.unwrap();
    assert_eq!(done.outcome, ProcessedOutcome::Echo);
    assert_eq!(w.crm.contact_writes(), 1);
}

/// A task write lands in the CRM but its session never commits, so no base is recorded. We close
/// the task, and the CRM's webhook for the open task is processed before the redelivery: the
/// open state is ours (noted before the write), not a reopening in the CRM, and the close stays.
#[tokio::test]
async fn a_task_write_whose_session_never_committed_is_recognised_as_ours() {
    let w = world();
    let mut task = w.open_task().await;
    let (changes, _) = w.drain().await;
    assert_eq!(changes.len(), 2, "{changes:?}");
    w.dispatcher.dispatch(&changes[0]).await.unwrap();
    w.crm.lose_next_replies(1);
    let lost = w.dispatcher.dispatch(&changes[1]).await.unwrap_err();
    assert!(lost.is_transient(), "{lost}");
    let crm_task = w.crm.tasks()[0].0.clone();
    assert_eq!(w.crm.tasks()[0].1.state, TaskState::Open, "the write landed");
    task.state = TaskState::Done;
    w.store.put_task(&task, "req-t2", None).await.unwrap();
    let (pending, _) = w.drain().await;
    let incoming = [w.task_hook(&crm_task, "d-open", "task.created").await];
    let p = w.processor.process(&incoming[0]).await.unwrap();
    assert_eq!(p.outcome, ProcessedOutcome::Unchanged, "{p:?}");
    let mut session = w.store.session(&client("c-1")).await.unwrap();
    assert_eq!(
        session.task(&task.task_id).await.unwrap().unwrap().state,
        TaskState::Done,
        "ours stays done"
    );
    drop(session);
    w.dispatcher.dispatch(&changes[1]).await.unwrap();
    for c in &pending {
        w.dispatcher.dispatch(c).await.unwrap();
    }
    assert_eq!(w.crm.tasks()[0].1.state, TaskState::Done, "and reaches the CRM");
}

/// The echo of our own task write can be processed after a newer change of ours is stored and
/// before it is dispatched: the CRM's older state must not overwrite ours.
#[tokio::test]
async fn the_echo_of_our_task_write_does_not_undo_a_newer_state_of_ours() {
    let w = world();
    let mut task = w.open_task().await;
    w.dispatch_all().await;
    let crm_task = w.crm.tasks()[0].0.clone();
    // We close it; before that change is dispatched, the echo of the open write comes in.
    task.state = TaskState::Done;
    w.store.put_task(&task, "req-t2", None).await.unwrap();
    let (pending, _) = w.drain().await;
    let incoming = [w.task_hook(&crm_task, "d-echo", "task.created").await];
    let echo = w.processor.process(&incoming[0]).await.unwrap();
    assert_eq!(echo.outcome, ProcessedOutcome::Unchanged);
    let mut session = w.store.session(&client("c-1")).await.unwrap();
    assert_eq!(
        session.task(&task.task_id).await.unwrap().unwrap().state,
        TaskState::Done,
        "ours stays done"
    );
    drop(session);
    for c in &pending {
        w.dispatcher.dispatch(c).await.unwrap();
    }
    assert_eq!(w.crm.tasks()[0].1.state, TaskState::Done, "and reaches the CRM");
    // A later change made in the CRM is still taken.
    w.crm.set_task_state(&crm_task, TaskState::Open);
    w.store
        .intake(
            &[Hint {
                vendor: "generic".into(),
                delivery_id: "d-reopen".into(),
                entity: Entity::Task,
                crm_id: crm_task,
                client_id: None,
                event: "task.updated".into(),
                occurred_at: None,
            }],
            "req-hook",
        )
        .await
        .unwrap();
    let (_, incoming) = w.drain().await;
    let reopened = w.processor.process(&incoming[0]).await.unwrap();
    assert_eq!(reopened.outcome, ProcessedOutcome::Applied);
}
