//! The contract of a [`ClientStore`]: one scenario per behaviour, run against the in-memory store
//! here and against PostgreSQL in `backbone-postgres`'s tests, each on a fresh store, so the fake
//! can never drift from the real thing. [`client_store_scenarios!`](crate::client_store_scenarios)
//! names them all; a test crate turns each into a test with its own fixture.
//!
//! What the port does not show (the conflict log, processed webhooks, `integrations_log`) each
//! store shows through [`Audit`].

mod links;
mod ours;
mod theirs;

pub use links::*;
pub use ours::*;
pub use theirs::*;

use super::memory::MemoryClients;
use super::model::{ClientId, Field, Source, Value};
use super::ports::*;
use super::records::OutgoingChange;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use time::OffsetDateTime;

/// One `crm_conflict_log` row, as the contract checks it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditedConflict {
    pub field: Field,
    pub rule: String,
    pub resolution: String,
    pub operator_task: Option<i64>,
    pub chosen: Option<Value>,
    pub request_id: String,
}

/// What a store records beyond the port, for the contract to check.
#[async_trait]
pub trait Audit: Send + Sync {
    /// The client's `crm_conflict_log` rows, oldest first.
    async fn conflicts(&self, client: &ClientId) -> Vec<AuditedConflict>;
    /// Whether the stored webhook is marked processed.
    async fn webhook_processed(&self, id: i64) -> bool;
    /// The correlation ids of the two-way flow's `integrations_log` rows, oldest first.
    async fn two_way_attempts(&self) -> Vec<Option<String>>;
}

#[async_trait]
impl Audit for MemoryClients {
    async fn conflicts(&self, client: &ClientId) -> Vec<AuditedConflict> {
        self.conflict_log()
            .into_iter()
            .filter(|c| c.client_id == *client)
            .map(|c| AuditedConflict {
                field: c.field,
                rule: c.rule,
                resolution: c.resolution,
                operator_task: c.operator_task,
                chosen: c.chosen,
                request_id: c.request_id,
            })
            .collect()
    }

    async fn webhook_processed(&self, id: i64) -> bool {
        self.webhook(id).is_some_and(|w| w.processed_at.is_some())
    }

    async fn two_way_attempts(&self) -> Vec<Option<String>> {
        self.attempts().into_iter().map(|a| a.correlation_id).collect()
    }
}

/// Expands `$run!(scenario)` once per scenario of the contract (each an `async fn(&dyn
/// ClientStore, &dyn Audit)` in [`crate::clients::contract`]).
#[macro_export]
macro_rules! client_store_scenarios {
    ($run:ident) => {
        $run!(a_card_is_created_changed_and_left_alone_when_nothing_differs);
        $run!(a_patch_needs_the_card_and_touches_only_its_fields);
        $run!(an_idempotency_key_replays_the_first_answer_and_refuses_another_body);
        $run!(concurrent_requests_with_one_key_have_one_effect);
        $run!(tasks_belong_to_their_client_and_unchanged_ones_queue_nothing);
        $run!(interactions_are_written_once);
        $run!(cards_since_pages_by_client_id);
        $run!(a_requeue_sends_every_field);
        $run!(one_relay_leads_and_rows_stay_until_deleted);
        $run!(a_delivery_is_stored_once_and_a_known_contact_is_linked);
        $run!(the_same_delivery_at_once_is_stored_once);
        $run!(a_session_commits_what_it_learnt_without_queueing_it);
        $run!(a_dropped_session_writes_nothing);
        $run!(a_crm_id_links_one_client_only);
        $run!(a_task_keeps_the_state_both_sides_agreed_on);
        $run!(a_noted_task_write_outlives_its_session_until_its_base_is_recorded);
        $run!(a_noted_write_outlives_its_session_until_a_commit);
        $run!(sessions_of_one_client_take_turns);
        $run!(a_session_holds_up_neither_the_api_nor_other_clients);
        $run!(conflicts_are_logged_and_a_person_is_asked_once_per_field);
        $run!(a_resolution_sets_our_card_and_forces_it_to_the_crm);
    };
}

/// The stored card's version.
async fn version(store: &dyn ClientStore, id: &str) -> i64 {
    store
        .card(&client(id))
        .await
        .expect("card")
        .expect("card")
        .version
}

fn client(id: &str) -> ClientId {
    ClientId::parse(id).expect("valid id")
}

/// Whole seconds: every store keeps at least that precision.
fn at(minute: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_796_205_600 + minute * 60).expect("valid time")
}

fn text(s: &str) -> Value {
    Value::text(s)
}

fn change(id: &str, fields: &[(Field, Value)], replace: bool, request_id: &str) -> CardChange {
    CardChange {
        client_id: client(id),
        fields: fields.iter().cloned().collect::<BTreeMap<_, _>>(),
        replace,
        must_exist: !replace,
        source: Source::Api,
        at: at(0),
        request_id: request_id.to_owned(),
    }
}

fn claim(key: &str, digest: &str) -> IdempotencyClaim {
    IdempotencyClaim {
        key: key.to_owned(),
        scope: "svc PUT /v1/clients".to_owned(),
        request_digest: digest.to_owned(),
    }
}

fn fresh<T: std::fmt::Debug>(answer: Result<Idempotent<T>, StoreError>) -> T {
    match answer.expect("the change succeeds") {
        Idempotent::Fresh(t) => t,
        other => panic!("expected a fresh answer, got {other:?}"),
    }
}

async fn put(store: &dyn ClientStore, id: &str, fields: &[(Field, Value)]) -> CardChanged {
    fresh(
        store
            .change_card(&change(id, fields, true, "req-put"), None)
            .await,
    )
}

async fn outbox(store: &dyn ClientStore) -> Vec<OutboxRow> {
    store.outbox_next(1_000).await.expect("outbox")
}

fn outgoing(row: &OutboxRow) -> OutgoingChange {
    assert_eq!(row.topic, super::apply::TOPIC_OUTGOING);
    let change: OutgoingChange = serde_json::from_str(&row.payload).expect("an OutgoingChange");
    assert_eq!(change.change_id, row.id, "the record names its own row");
    assert_eq!(row.key, change.client_id.as_str(), "keyed by client");
    change
}

fn request_id_of(row: &OutboxRow) -> Option<&str> {
    row.headers
        .iter()
        .find(|(k, _)| k == super::records::HEADER_REQUEST_ID)
        .map(|(_, v)| v.as_str())
}

/// Gives way once: whatever else is being awaited alongside runs before this resumes.
async fn yield_now() {
    struct YieldNow(bool);
    impl Future for YieldNow {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                return Poll::Ready(());
            }
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
    YieldNow(false).await;
}
