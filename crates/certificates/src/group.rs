//! Group commit: operations that arrive together run in one unit of work and commit once.
//!
//! A group, in order: claim every idempotency key in one call, then in rounds (each certificate
//! and each key at most once a round; an operation after one that waits for a later round waits
//! too, so the operations on one certificate apply in arrival order) lock and load the round's
//! certificates in one call, decide each operation in the domain exactly as a single one is
//! decided ([`crate::service`]), save all changes in one call and all refusals to remember in
//! another; commit; answer each request. An operation the rules refuse, or that names an unknown
//! certificate or presents a wrong CVC, writes nothing and never fails its neighbours. When a
//! call of the group fails before the commit, nothing of the group is kept and each operation
//! runs again alone in a unit of its own, so one that cannot be written fails alone; when the
//! commit fails, every operation of the group answers `Unavailable` (a retry with the same key
//! or operation id is safe either way).
//!
//! [`GroupCommit`] is the queue in front of it: a worker takes whatever waits when its previous
//! commit returns (up to `max_operations`), so a lone request is not held back by a timer and
//! runs the four statements of a single operation.
//!
//! Certificates are named by code in a group (the desks do); one named by id and by code in one
//! round is told apart after the lock, and the later operation waits for the next round.

use crate::certificate::Certificate;
use crate::ports::{Applied, ApplyError, CertificateRef, OperationRequest};
use crate::service::{decide, lookup_of, save_extras, CertificateService, Decision};
use crate::store::{
    CertificateStore, KeyOutcome, LockedCertificate, Remembered, SavedOperation, StoreError, UnitOfWork,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, Mutex};
use uuid::Uuid;

type Answer = Result<Applied, ApplyError>;

/// How a group failed: before its commit (nothing kept, worth running each alone) or at it.
enum GroupFailure {
    /// The single runs that follow say why, one by one.
    Statements,
    Commit(StoreError),
}

impl From<StoreError> for GroupFailure {
    fn from(_: StoreError) -> Self {
        GroupFailure::Statements
    }
}

impl<S: CertificateStore> CertificateService<S> {
    /// Runs `requests` as one group (see the module); the answers are in the same order.
    pub async fn apply_all(&self, requests: &[OperationRequest]) -> Vec<Answer> {
        if let [one] = requests {
            return vec![self.apply(one.clone()).await];
        }
        match self.group(requests).await {
            Ok(answers) => answers,
            Err(GroupFailure::Commit(e)) => vec![Err(e.into()); requests.len()],
            Err(GroupFailure::Statements) => {
                self.fallbacks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut answers = Vec::with_capacity(requests.len());
                for request in requests {
                    answers.push(self.apply(request.clone()).await);
                }
                answers
            }
        }
    }

    /// How many groups ran their operations one by one because a statement of the group
    /// failed; each such operation then answered for itself.
    pub fn group_fallbacks(&self) -> u64 {
        self.fallbacks.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn group(&self, requests: &[OperationRequest]) -> Result<Vec<Answer>, GroupFailure> {
        let mut unit = self.store().begin().await?;
        let outcome = rounds(unit.as_mut(), requests).await;
        let answers = match outcome {
            Ok(answers) => answers,
            Err(e) => {
                // Nothing of the group is kept; a failed rollback changes nothing of that.
                let _ = unit.rollback().await;
                return Err(e.into());
            }
        };
        unit.commit().await.map_err(GroupFailure::Commit)?;
        Ok(answers)
    }
}

fn key_of(request: &OperationRequest) -> Option<(&str, &str)> {
    let claim = request.idempotency.as_ref()?;
    Some((request.origin.channel.as_str(), claim.key.as_str()))
}

/// Claims, then rounds of lock, decide and write; the caller commits.
async fn rounds(unit: &mut dyn UnitOfWork, requests: &[OperationRequest]) -> Result<Vec<Answer>, StoreError> {
    let mut answers: Vec<Option<Answer>> = vec![None; requests.len()];
    let mut keys: Vec<(&str, &str)> = Vec::new();
    let mut key_slot: HashMap<(&str, &str), usize> = HashMap::new();
    for key in requests.iter().filter_map(key_of) {
        key_slot.entry(key).or_insert_with(|| {
            keys.push(key);
            keys.len() - 1
        });
    }
    if !keys.is_empty() {
        let granted = unit.claim_keys(&keys).await?;
        for (request, answer) in requests.iter().zip(answers.iter_mut()) {
            if key_of(request).is_some_and(|key| !granted[key_slot[&key]]) {
                *answer = Some(Err(ApplyError::InFlight));
            }
        }
    }
    let mut waiting: Vec<usize> = (0..requests.len()).filter(|&i| answers[i].is_none()).collect();
    while !waiting.is_empty() {
        let (round, mut later) = next_round(requests, &waiting);
        let wanted: Vec<_> = round
            .iter()
            .map(|&i| (requests[i].certificate, lookup_of(&requests[i])))
            .collect();
        let mut locked = unit.lock_all(&wanted).await?;
        let now = OffsetDateTime::now_utc();
        let mut decided: Vec<(usize, LockedCertificate, Decision)> = Vec::with_capacity(round.len());
        let mut ids: HashSet<Uuid> = HashSet::new();
        for (slot, &i) in round.iter().enumerate() {
            match locked[slot].take() {
                None => answers[i] = Some(Err(ApplyError::NotFound)),
                Some(certificate) if !ids.insert(certificate.id) => later.push(i),
                Some(mut certificate) => {
                    let decision = decide(&mut certificate, &requests[i], now);
                    decided.push((i, certificate, decision));
                }
            }
        }
        write(unit, requests, &decided).await?;
        for (i, _, decision) in decided {
            answers[i] = Some(match decision {
                Decision::Answer(answer) => answer,
                Decision::Remember { refusal, .. } => Err(ApplyError::Refused(refusal)),
                Decision::Save { applied, .. } => Ok(applied),
            });
        }
        later.sort_unstable();
        waiting = later;
    }
    Ok(answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err(ApplyError::Unavailable("operation left unanswered".into()))))
        .collect())
}

/// The operations of the next round, and those that wait: each certificate reference and each
/// key once, and nothing after an operation that waits on the same certificate or key.
fn next_round(requests: &[OperationRequest], waiting: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let mut seen_refs: HashSet<CertificateRef> = HashSet::new();
    let mut seen_keys: HashSet<(&str, &str)> = HashSet::new();
    let (mut round, mut later) = (Vec::new(), Vec::new());
    for &i in waiting {
        let request = &requests[i];
        let key = key_of(request);
        let free_ref = seen_refs.insert(request.certificate);
        let free_key = key.is_none_or(|key| seen_keys.insert(key));
        if free_ref && free_key {
            round.push(i);
        } else {
            later.push(i);
        }
    }
    (round, later)
}

/// The round's changes in one call, its refusals to remember in another, then what goes with
/// each saved operation.
async fn write(
    unit: &mut dyn UnitOfWork,
    requests: &[OperationRequest],
    decided: &[(usize, LockedCertificate, Decision)],
) -> Result<(), StoreError> {
    let mut saves = Vec::new();
    let mut remembered = Vec::new();
    for (i, locked, decision) in decided {
        let request = &requests[*i];
        match decision {
            Decision::Answer(_) => {}
            Decision::Remember { stored, .. } => {
                if let Some(claim) = &request.idempotency {
                    remembered.push(Remembered {
                        channel: request.origin.channel.as_str(),
                        claim,
                        outcome: KeyOutcome::Refused,
                        result: stored.clone(),
                    });
                }
            }
            Decision::Save {
                after,
                applied,
                events,
            } => saves.push(SavedOperation {
                locked,
                after: after.as_ref() as &Certificate,
                applied,
                origin: &request.origin,
                idempotency: request.idempotency.as_ref(),
                events,
            }),
        }
    }
    if !saves.is_empty() {
        unit.save_all(&saves).await?;
    }
    if !remembered.is_empty() {
        unit.remember_all(&remembered).await?;
    }
    for (i, locked, decision) in decided {
        let request = &requests[*i];
        if matches!(decision, Decision::Save { .. })
            && (request.reason.is_some() || request.cvc_sms_to.is_some())
        {
            save_extras(unit, locked, request)
                .await
                .map_err(|e| StoreError(e.to_string()))?;
        }
    }
    Ok(())
}

/// How [`GroupCommit`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupSettings {
    /// Groups in flight at once (each holds one connection while it runs).
    pub workers: usize,
    /// Operations a group takes at most.
    pub max_operations: usize,
    /// Requests that may wait for a worker; a request beyond them waits to be queued.
    pub queue: usize,
}

impl Default for GroupSettings {
    fn default() -> Self {
        Self {
            workers: 4,
            max_operations: 64,
            queue: 4096,
        }
    }
}

struct Pending {
    request: OperationRequest,
    answer: oneshot::Sender<Answer>,
}

/// Called with each group's size, for a histogram.
pub type GroupObserver = Arc<dyn Fn(usize) + Send + Sync>;

/// The queue in front of [`CertificateService::apply_all`]. Cheap to clone.
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<Pending>,
}

impl GroupCommit {
    /// The handle and its workers, to be spawned; each ends once every handle is dropped and the
    /// queue is empty.
    pub fn new<S>(
        service: CertificateService<S>,
        settings: GroupSettings,
        observer: Option<GroupObserver>,
    ) -> (Self, Vec<impl std::future::Future<Output = ()> + Send + 'static>)
    where
        S: CertificateStore + Clone + 'static,
    {
        let (queue, receiver) = mpsc::channel(settings.queue.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        let max = settings.max_operations.max(1);
        let workers = (0..settings.workers.max(1))
            .map(|_| worker(service.clone(), receiver.clone(), max, observer.clone()))
            .collect();
        (Self { queue }, workers)
    }

    /// Runs one operation in the next group. The group runs to its end even when the caller
    /// stops waiting (a client that hangs up cancels nothing half-way).
    pub async fn apply(&self, request: OperationRequest) -> Answer {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Pending { request, answer })
            .await
            .map_err(|_| ApplyError::Unavailable("operation queue closed".into()))?;
        answered.await.unwrap_or_else(|_| {
            Err(ApplyError::Unavailable(
                "operation group ended without an answer".into(),
            ))
        })
    }
}

async fn worker<S: CertificateStore>(
    service: CertificateService<S>,
    receiver: Arc<Mutex<mpsc::Receiver<Pending>>>,
    max: usize,
    observer: Option<GroupObserver>,
) {
    let mut requests = Vec::with_capacity(max);
    let mut waiters = Vec::with_capacity(max);
    loop {
        {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else {
                return;
            };
            let mut next = Some(first);
            while let Some(pending) = next.take() {
                requests.push(pending.request);
                waiters.push(pending.answer);
                if requests.len() < max {
                    next = receiver.try_recv().ok();
                }
            }
        }
        if let Some(observe) = &observer {
            observe(requests.len());
        }
        let answers = service.apply_all(&requests).await;
        for (waiter, answer) in waiters.drain(..).zip(answers) {
            // A caller that stopped waiting gets nothing; the operation stands.
            let _ = waiter.send(answer);
        }
        requests.clear();
    }
}
