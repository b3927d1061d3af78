//! The two use cases that move client data between our copy and the CRM, over the ports:
//! [`Dispatcher::dispatch`] (a change of ours, from `crm.outgoing`, to the CRM) and
//! [`Processor::process`] (a CRM webhook's hint, from `crm.incoming`, to our copy).
//!
//! Effect order of both, and what a crash between two steps does:
//! 1. take the client's sync lock (a session): nothing has happened yet;
//! 2. read the CRM's record (the webhook is a hint, not the truth) and merge: still nothing;
//! 3. note the card's values about to be written (`note_writing`, committed at once), then write
//!    what the merge sends to the CRM: a crash now leaves the CRM ahead of the stored base. The
//!    next session of the client, a redelivery or a webhook processed first, recognises the CRM's
//!    values that were being written as ours (`with_our_writes`), so a later change made in the
//!    CRM cannot make them pass for the CRM's and overwrite newer values of ours. On redelivery
//!    the merge finds both sides equal and only moves the base (no second write of a card; a task
//!    or an interaction is found in the CRM by our id, an upsert or a look-up before the create,
//!    and not made again: see `docs/two-way-sync.md`);
//! 4. commit what the merge takes into our copy, the new base, links, conflicts, operator tasks
//!    and the `integrations_log` rows, in one transaction: a crash before it redoes 2-4;
//! 5. the caller publishes the outcome and commits the Kafka offset: a crash before it publishes
//!    the outcome again (consumers de-duplicate by `change_id` / `webhook_id`).

use super::merge::{digests, merge, with_our_writes, Ours, Ownership, Plan, Resolution, Theirs};
use super::model::{Card, ClientId, Field};
use super::ports::{ClientCrm, ClientSession, ClientStore, Entity, StoreError, SyncWrite, WriteContext};
use super::records::{ChangeKind, IncomingHint, OutgoingChange, ProcessedOutcome};
use crate::event::EventId;
use crate::ports::{AttemptRecord, CrmError, Outcome};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;
use time::OffsetDateTime;

/// Why a change or a hint was not applied.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// Our store is away: retry the same record.
    #[error(transparent)]
    Store(StoreError),
    /// The CRM refused or failed; [`CrmError::is_transient`] says whether to retry.
    #[error("CRM: {0}")]
    Crm(CrmError),
    /// The record names a client we do not know (and the CRM does not say which it is).
    #[error("unknown client: {0}")]
    UnknownClient(String),
}

impl FlowError {
    pub fn is_transient(&self) -> bool {
        match self {
            FlowError::Store(StoreError::Unavailable(_)) => true,
            FlowError::Store(_) => false,
            FlowError::Crm(e) => e.is_transient(),
            FlowError::UnknownClient(_) => false,
        }
    }

    /// The reason code on `crm.failed` and in dead letters.
    pub fn reason_code(&self) -> &'static str {
        match self {
            FlowError::Store(StoreError::CrmIdLinkedElsewhere) => "crm_id_linked_elsewhere",
            FlowError::Store(_) => "store_refused",
            FlowError::Crm(_) => "crm_rejected",
            FlowError::UnknownClient(_) => "unknown_client",
        }
    }
}

impl From<StoreError> for FlowError {
    fn from(e: StoreError) -> Self {
        FlowError::Store(e)
    }
}

impl From<CrmError> for FlowError {
    fn from(e: CrmError) -> Self {
        FlowError::Crm(e)
    }
}

/// What one dispatched change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatched {
    /// Fields written to the CRM (card changes).
    pub written: Vec<Field>,
    /// Fields taken from the CRM into our copy on the way (the CRM had changed them).
    pub taken: Vec<Field>,
    /// Conflicts decided, and how.
    pub conflicts: Vec<(Field, Resolution)>,
    /// A task or interaction written (`false`: already there).
    pub entity_written: bool,
    pub crm_id: Option<String>,
}

/// What one processed hint did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessedHint {
    pub client_id: Option<ClientId>,
    pub outcome: ProcessedOutcome,
    pub applied: Vec<Field>,
    pub sent_back: Vec<Field>,
    pub asked: Vec<Field>,
}

fn attempt(
    id: String,
    client: &ClientId,
    request_id: &str,
    payload: serde_json::Value,
    outcome: Outcome,
    started: Instant,
    event_time: OffsetDateTime,
) -> AttemptRecord {
    AttemptRecord {
        event_id: EventId::parse(id).ok(),
        shipment_id: None,
        client_id: Some(client.to_string()),
        correlation_id: Some(request_id.to_owned()),
        payload: Some(payload),
        http_status: None,
        response_excerpt: None,
        outcome,
        attempt: 1,
        error: None,
        event_time: Some(event_time),
        sent_at: OffsetDateTime::now_utc(),
        latency_ms: Some(started.elapsed().as_secs_f64() * 1000.0),
        source: None,
    }
}

fn fields_json(card: &Card, fields: &[Field]) -> serde_json::Value {
    serde_json::Value::Object(
        fields
            .iter()
            .map(|f| {
                (
                    f.as_str().to_owned(),
                    serde_json::to_value(card.get(*f)).unwrap_or_default(),
                )
            })
            .collect(),
    )
}

/// Merges one client's card with the CRM's under the held session and writes what goes to the
/// CRM, noting it first (`note_writing`). Returns the plan, the contact's CRM id and the fields
/// written.
async fn sync_card(
    crm: &dyn ClientCrm,
    ownership: &Ownership,
    session: &mut dyn ClientSession,
    client: &ClientId,
    theirs: Option<super::ports::CrmContact>,
    forced: &BTreeSet<Field>,
    request_id: &str,
) -> Result<(Plan, Option<String>, Vec<Field>), FlowError> {
    let snap = session.snapshot();
    let Some(ours) = &snap.card else {
        return Ok((Plan::default(), None, Vec::new()));
    };
    // A value of ours that reached the CRM from a session that never committed is ours, not a
    // change made in the CRM.
    let (base, corrected) = with_our_writes(&snap.base, &snap.writing, theirs.as_ref().map(|t| &t.card));
    let mut plan = merge(
        ownership,
        &base,
        &Ours {
            card: Some(&ours.card),
            stamps: Some(&ours.stamps),
        },
        &Theirs {
            card: theirs.as_ref().map(|t| &t.card),
            modified_at: theirs.as_ref().and_then(|t| t.modified_at),
        },
        &snap.pending,
        forced,
    );
    for (f, d) in corrected {
        plan.base.entry(f).or_insert(d);
    }
    let mut crm_id = theirs.as_ref().map(|t| t.crm_id.clone());
    let mut card = ours.card.clone();
    for (f, v) in &plan.to_crm {
        card.set(*f, v.clone());
    }
    let written: Vec<Field> = if theirs.is_none() {
        // A new contact: everything we know goes, and every consent explicitly: a CRM's default
        // may be "consented" (Salesforce's `HasOptedOutOfEmail` starts unticked).
        for f in Field::ALL.into_iter().filter(|f| f.is_flag()) {
            if *card.get(f) == super::model::Value::Empty {
                card.set(f, super::model::Value::Flag(false));
            }
        }
        Field::ALL
            .into_iter()
            .filter(|f| plan.to_crm.contains_key(f) || f.is_flag())
            .collect()
    } else {
        plan.to_crm.keys().copied().collect()
    };
    if !written.is_empty() || crm_id.is_none() {
        session.note_writing(&digests(&card, &written)).await?;
        let id = crm
            .write_contact(
                client,
                crm_id.as_deref(),
                &card,
                &written,
                WriteContext { request_id },
            )
            .await?;
        crm_id = Some(id);
    }
    Ok((plan, crm_id, written))
}

/// Sends our changes to the CRM (the `crm.outgoing` consumer's use case).
pub struct Dispatcher {
    pub store: Arc<dyn ClientStore>,
    pub crm: Arc<dyn ClientCrm>,
    pub ownership: Ownership,
}

impl Dispatcher {
    pub async fn dispatch(&self, change: &OutgoingChange) -> Result<Dispatched, FlowError> {
        let started = Instant::now();
        let client = &change.client_id;
        let mut session = self.store.session(client).await?;
        let Some(ours) = session.snapshot().card.clone() else {
            // The card is gone (never committed, or removed): nothing to send.
            return Ok(Dispatched {
                written: vec![],
                taken: vec![],
                conflicts: vec![],
                entity_written: false,
                crm_id: None,
            });
        };
        let ctx = WriteContext {
            request_id: &change.request_id,
        };
        // The contact is synced first: a task or a note needs it to hang on.
        let needs_card = change.kind == ChangeKind::Card || ours.crm_id.is_none();
        let (plan, crm_id, written) = if needs_card {
            let theirs = self.crm.read_contact(client).await?;
            let forced: BTreeSet<Field> = change.forced.iter().copied().collect();
            sync_card(
                self.crm.as_ref(),
                &self.ownership,
                session.as_mut(),
                client,
                theirs,
                &forced,
                &change.request_id,
            )
            .await?
        } else {
            (Plan::default(), ours.crm_id.clone(), Vec::new())
        };
        let mut write = SyncWrite {
            to_ours: plan.to_ours.clone(),
            at: Some(OffsetDateTime::now_utc()),
            base: plan.base.clone(),
            crm_id: crm_id.clone(),
            conflicts: plan.conflicts.clone(),
            request_id: change.request_id.clone(),
            ..SyncWrite::default()
        };
        let mut entity_written = false;
        let contact = crm_id.clone();
        match (change.kind, &contact) {
            (ChangeKind::Task, Some(contact)) => {
                if let Some(task) = &change.task {
                    // Always the stored task: an older record never writes older values.
                    let current = session.task(&task.task_id).await?.unwrap_or_else(|| task.clone());
                    let existing = session.link(Entity::Task, current.task_id.as_str()).await?;
                    session.note_task_writing(&current.task_id, current.state).await?;
                    let id = self
                        .crm
                        .write_task(&current, contact, existing.as_deref(), ctx)
                        .await?;
                    write.task_links.push((current.task_id.clone(), id));
                    write.task_bases.push((current.task_id.clone(), current.state));
                    entity_written = true;
                }
            }
            (ChangeKind::Interaction, Some(contact)) => {
                if let Some(i) = &change.interaction {
                    if session
                        .link(Entity::Note, i.interaction_id.as_str())
                        .await?
                        .is_none()
                    {
                        let id = self.crm.add_interaction(i, contact, ctx).await?;
                        write.interaction_links.push((i.interaction_id.clone(), id));
                        entity_written = true;
                    }
                }
            }
            _ => {}
        }
        let outcome = if written.is_empty() && !entity_written {
            Outcome::Unchanged
        } else {
            Outcome::Success
        };
        let payload = match change.kind {
            ChangeKind::Card => fields_json(&ours.card, &written),
            ChangeKind::Task => serde_json::to_value(&change.task).unwrap_or_default(),
            ChangeKind::Interaction => serde_json::json!({
                "interaction_id": change.interaction.as_ref().map(|i| i.interaction_id.to_string())
            }),
        };
        write.attempts.push(attempt(
            format!("change-{}", change.change_id),
            client,
            &change.request_id,
            payload,
            outcome,
            started,
            change.occurred_at,
        ));
        session.commit(write).await?;
        Ok(Dispatched {
            written,
            taken: plan.to_ours.keys().copied().collect(),
            conflicts: plan.conflicts.iter().map(|c| (c.field, c.resolution)).collect(),
            entity_written,
            crm_id,
        })
    }
}

/// Applies what the CRM changed to our copy (the `crm.incoming` consumer's use case).
pub struct Processor {
    pub store: Arc<dyn ClientStore>,
    pub crm: Arc<dyn ClientCrm>,
    pub ownership: Ownership,
}

impl Processor {
    pub async fn process(&self, incoming: &IncomingHint) -> Result<ProcessedHint, FlowError> {
        let hint = &incoming.hint;
        match hint.entity {
            Entity::Contact => self.contact(incoming).await,
            Entity::Task => self.task(incoming).await,
            // Notes made in the CRM are not imported: our history is written by our systems.
            Entity::Note => Ok(ProcessedHint {
                client_id: hint.client_id.clone(),
                outcome: ProcessedOutcome::Unchanged,
                applied: vec![],
                sent_back: vec![],
                asked: vec![],
            }),
        }
    }

    async fn client_of(&self, incoming: &IncomingHint) -> Result<Option<ClientId>, FlowError> {
        let hint = &incoming.hint;
        if let Some(c) = &hint.client_id {
            return Ok(Some(c.clone()));
        }
        if let Some(c) = self.store.client_of(&hint.crm_id).await? {
            return Ok(Some(c));
        }
        Ok(self
            .crm
            .read_contact_by_crm_id(&hint.crm_id)
            .await?
            .and_then(|c| c.client_id))
    }

    async fn contact(&self, incoming: &IncomingHint) -> Result<ProcessedHint, FlowError> {
        let started = Instant::now();
        let hint = &incoming.hint;
        let Some(client) = self.client_of(incoming).await? else {
            return Err(FlowError::UnknownClient(format!(
                "no client is linked to CRM contact {}",
                hint.crm_id
            )));
        };
        let mut session = self.store.session(&client).await?;
        if session.snapshot().card.is_none() {
            return Err(FlowError::UnknownClient(format!("client {client} has no card")));
        }
        // Read under the lock: what the CRM holds now, not what the webhook said.
        let Some(theirs) = self.crm.read_contact_by_crm_id(&hint.crm_id).await? else {
            let write = SyncWrite {
                webhook_done: Some(incoming.webhook_id),
                request_id: incoming.request_id.clone(),
                ..SyncWrite::default()
            };
            session.commit(write).await?;
            return Ok(ProcessedHint {
                client_id: Some(client),
                outcome: ProcessedOutcome::Gone,
                applied: vec![],
                sent_back: vec![],
                asked: vec![],
            });
        };
        let (plan, crm_id, sent_back) = sync_card(
            self.crm.as_ref(),
            &self.ownership,
            session.as_mut(),
            &client,
            Some(theirs),
            &BTreeSet::new(),
            &incoming.request_id,
        )
        .await?;
        let applied: Vec<Field> = plan.to_ours.keys().copied().collect();
        let asked: Vec<Field> = plan
            .conflicts
            .iter()
            .filter(|c| c.resolution == Resolution::OperatorTask)
            .map(|c| c.field)
            .collect();
        let outcome = if !asked.is_empty() {
            ProcessedOutcome::Conflict
        } else if !plan.is_noop() {
            ProcessedOutcome::Applied
        } else if plan.echo {
            ProcessedOutcome::Echo
        } else {
            ProcessedOutcome::Unchanged
        };
        let logged = if plan.is_noop() {
            Outcome::Unchanged
        } else {
            Outcome::Success
        };
        let card = session
            .snapshot()
            .card
            .as_ref()
            .map(|c| c.card.clone())
            .unwrap_or_default();
        let mut payload = serde_json::json!({
            "applied": serde_json::to_value(&plan.to_ours).unwrap_or_default(),
            "sent_back": fields_json(&card, &sent_back),
        });
        if let Some(at) = hint.occurred_at {
            payload["hint_at"] = serde_json::Value::String(at.to_string());
        }
        let write = SyncWrite {
            to_ours: plan.to_ours.clone(),
            at: Some(OffsetDateTime::now_utc()),
            base: plan.base.clone(),
            crm_id,
            conflicts: plan.conflicts.clone(),
            webhook_done: Some(incoming.webhook_id),
            attempts: vec![attempt(
                format!("webhook-{}", incoming.webhook_id),
                &client,
                &incoming.request_id,
                payload,
                logged,
                started,
                hint.occurred_at.unwrap_or(incoming.received_at),
            )],
            request_id: incoming.request_id.clone(),
            ..SyncWrite::default()
        };
        session.commit(write).await?;
        Ok(ProcessedHint {
            client_id: Some(client),
            outcome,
            applied,
            sent_back,
            asked,
        })
    }

    async fn task(&self, incoming: &IncomingHint) -> Result<ProcessedHint, FlowError> {
        let hint = &incoming.hint;
        let Some(task) = self.crm.read_task(&hint.crm_id).await? else {
            return Ok(ProcessedHint {
                client_id: hint.client_id.clone(),
                outcome: ProcessedOutcome::Gone,
                applied: vec![],
                sent_back: vec![],
                asked: vec![],
            });
        };
        let client = match (&hint.client_id, &task.contact) {
            (Some(c), _) => Some(c.clone()),
            (None, Some(contact)) => self.store.client_of(contact).await?,
            (None, None) => None,
        };
        let Some(client) = client else {
            return Err(FlowError::UnknownClient(format!(
                "no client is linked to the contact of CRM task {}",
                hint.crm_id
            )));
        };
        let mut session = self.store.session(&client).await?;
        let ours = match &task.task_id {
            Some(id) => session.task(id).await?,
            None => session.task_by_crm_id(&task.crm_id).await?,
        };
        let Some(ours) = ours else {
            return Err(FlowError::UnknownClient(format!(
                "CRM task {} is not one of ours",
                hint.crm_id
            )));
        };
        // The CRM changed the state only when it differs from what both last agreed on: equal
        // to it, it is the echo of our own write, and a newer state of ours (its own outbox row
        // on the way) stays.
        // A state we were writing when a session of ours ended without a commit is ours too.
        let base = session.task_base(&ours.task_id).await?;
        let ours_written = session.task_writing(&ours.task_id).await?.contains(&task.state);
        let theirs_changed = !ours_written && base.is_none_or(|b| b != task.state);
        let changed = theirs_changed && ours.state != task.state;
        let mut write = SyncWrite {
            webhook_done: Some(incoming.webhook_id),
            request_id: incoming.request_id.clone(),
            ..SyncWrite::default()
        };
        if changed {
            write.task_updates.push((ours.task_id.clone(), task.state));
        }
        if theirs_changed || ours_written {
            write.task_bases.push((ours.task_id.clone(), task.state));
        }
        session.commit(write).await?;
        Ok(ProcessedHint {
            client_id: Some(client),
            outcome: if changed {
                ProcessedOutcome::Applied
            } else {
                ProcessedOutcome::Unchanged
            },
            applied: vec![],
            sent_back: vec![],
            asked: vec![],
        })
    }
}
