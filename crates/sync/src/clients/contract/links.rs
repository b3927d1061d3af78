//! CRM ids and what both sides last agreed on: a CRM record belongs to one client, a task keeps
//! its synced state apart from ours.

use super::ours::task;
use super::theirs::link;
use super::*;
use crate::clients::model::{TaskId, TaskState};

pub async fn a_crm_id_links_one_client_only(store: &dyn ClientStore, _: &dyn Audit) {
    put(store, "c-1", &[(Field::FirstName, text("Ada"))]).await;
    put(store, "c-2", &[(Field::FirstName, text("Bo"))]).await;
    link(store, "c-1", "x-1").await;
    let session = store.session(&client("c-2")).await.expect("session");
    let refused = session
        .commit(SyncWrite {
            crm_id: Some("x-1".into()),
            to_ours: BTreeMap::from([(Field::LastName, text("L"))]),
            request_id: "req-2".into(),
            ..SyncWrite::default()
        })
        .await;
    // A refusal for a person, not an outage to retry; the other client's card is left as it was.
    assert!(
        matches!(refused, Err(StoreError::CrmIdLinkedElsewhere)),
        "{refused:?}"
    );
    let card = store.card(&client("c-2")).await.expect("card").expect("card");
    assert_eq!(card.crm_id, None);
    assert_eq!(card.card.get(Field::LastName), &Value::Empty);
    assert_eq!(
        store.client_of("x-1").await.expect("client_of"),
        Some(client("c-1"))
    );
}

pub async fn a_task_keeps_the_state_both_sides_agreed_on(store: &dyn ClientStore, _: &dyn Audit) {
    put(store, "c-1", &[(Field::FirstName, text("Ada"))]).await;
    let t = task("t-1", "c-1", "Call back");
    store.put_task(&t, "req-t", None).await.expect("task");
    let mut session = store.session(&client("c-1")).await.expect("session");
    assert_eq!(
        session.task_base(&t.task_id).await.expect("base"),
        None,
        "never synced"
    );
    session
        .commit(SyncWrite {
            task_links: vec![(t.task_id.clone(), "tk-1".into())],
            task_bases: vec![(t.task_id.clone(), TaskState::Done)],
            request_id: "req-s".into(),
            ..SyncWrite::default()
        })
        .await
        .expect("commit");
    let mut session = store.session(&client("c-1")).await.expect("session");
    assert_eq!(
        session.task_base(&t.task_id).await.expect("base"),
        Some(TaskState::Done)
    );
    // The base is the sync's own: our task is as we stored it.
    let ours = session.task(&t.task_id).await.expect("task").expect("task");
    assert_eq!(ours.state, TaskState::Open);
    let unknown = TaskId::parse("t-9").expect("valid id");
    assert_eq!(session.task_base(&unknown).await.expect("base"), None);
}

/// A task state noted before a CRM write is there for the next session though the noting one
/// never committed; each state is kept once; a commit that records the task's base clears them,
/// one that does not keeps them.
pub async fn a_noted_task_write_outlives_its_session_until_its_base_is_recorded(
    store: &dyn ClientStore,
    _: &dyn Audit,
) {
    put(store, "c-1", &[(Field::FirstName, text("Ada"))]).await;
    let t = task("t-1", "c-1", "Call back");
    store.put_task(&t, "req-t", None).await.expect("task");
    let mut session = store.session(&client("c-1")).await.expect("session");
    assert!(session.task_writing(&t.task_id).await.expect("noted").is_empty());
    session
        .note_task_writing(&t.task_id, TaskState::Open)
        .await
        .expect("note");
    drop(session);
    let mut session = store.session(&client("c-1")).await.expect("session");
    assert_eq!(
        session.task_writing(&t.task_id).await.expect("noted"),
        [TaskState::Open],
        "a note outlives a session that never committed"
    );
    session
        .note_task_writing(&t.task_id, TaskState::Done)
        .await
        .expect("note");
    session
        .note_task_writing(&t.task_id, TaskState::Open)
        .await
        .expect("note");
    session
        .commit(SyncWrite {
            request_id: "req-no-base".into(),
            ..SyncWrite::default()
        })
        .await
        .expect("commit");
    let mut session = store.session(&client("c-1")).await.expect("session");
    let noted = session.task_writing(&t.task_id).await.expect("noted");
    assert!(
        noted.len() == 2 && noted.contains(&TaskState::Open) && noted.contains(&TaskState::Done),
        "each kept once, until a base is recorded: {noted:?}"
    );
    session
        .commit(SyncWrite {
            task_bases: vec![(t.task_id.clone(), TaskState::Open)],
            request_id: "req-base".into(),
            ..SyncWrite::default()
        })
        .await
        .expect("commit");
    let mut session = store.session(&client("c-1")).await.expect("session");
    assert!(session.task_writing(&t.task_id).await.expect("noted").is_empty());
}
