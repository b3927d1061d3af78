//! The certificate service: the use cases (operations, sales, the sweep of expired holds, batch
//! issue) over the storage ports. Each use case runs in one unit of work, so its effects commit
//! together or not at all.
//!
//! An operation, in order: claim the idempotency key (a concurrent duplicate is `InFlight` at
//! once), lock and load the certificate, check the CVC (before any stored answer is looked at, so
//! a known key is no oracle for CVCs), replay a stored result under the key, check that the hold
//! or capture named is the channel's own, replay an operation id seen before, decide in the
//! domain ([`execute`]), save the certificate with its holds, operation, audit and events (and
//! the CVC SMS on activation), commit. A refusal is remembered under the key and committed, so a
//! retry gets the same answer; an unknown certificate, a wrong CVC and an unknown (or someone
//! else's) hold are not, so they answer alike however often they are asked.

use crate::certificate::{Certificate, CertificateError, Effect, OperationId, SaleLinks};
use crate::channel::Channel;
use crate::events::{self, Origin};
use crate::money::{Amount, Currency};
use crate::operation::{execute, Command};
use crate::ports::{Applied, ApplyError, CertificateRef, IdempotencyClaim, OperationRequest, Refusal};
use crate::sale::{
    settles, OrderLine, PaymentRecord, RefusalLetters, RefusedLine, RefusedSale, SaleActivation, SaleOrder,
};
use crate::store::{
    CertificateStore, IssueBatch, IssueOutcome, KeyOutcome, LockedCertificate, Lookup, SavedOperation,
    StoreError, StoredResult, UnitOfWork,
};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use uuid::Uuid;

/// The channel sales from order and payment events act as.
pub const SALES_CHANNEL: Channel = Channel::Payments;
/// The channel of the service's own housekeeping (the hold sweeper).
pub const INTERNAL_CHANNEL: Channel = Channel::Internal;

impl From<StoreError> for ApplyError {
    fn from(e: StoreError) -> Self {
        ApplyError::Unavailable(e.0)
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> ApplyError {
    ApplyError::Unavailable(format!("{what}: {e}"))
}

/// The operation id a sale's line activates its certificate under: the same line of the same
/// order always names the same operation, so a redelivered event changes nothing. Ids that
/// pass `ids::check_id` (`MAX_ID_BYTES`, `MAX_LINE_ID_BYTES`) always make a valid one; a sale
/// stored before those checks whose ids do not is refused line by line (`bad-operation-id`),
/// never retried.
pub fn sale_operation(order_id: &str, line_id: &str) -> Result<OperationId, CertificateError> {
    OperationId::parse(format!("sale:{order_id}:{line_id}"))
}

#[derive(Clone)]
pub struct CertificateService<S> {
    store: S,
    refusals: Option<RefusalLetters>,
    /// Groups whose statements failed, so that their operations ran one by one (`crate::group`).
    pub(crate) fallbacks: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<S: CertificateStore> CertificateService<S> {
    pub fn new(store: S) -> Self {
        Self {
            store,
            refusals: None,
            fallbacks: Default::default(),
        }
    }

    /// A paid sale with lines that cannot be activated writes the letter `letters` makes of it
    /// to the outbox, in the sale's transaction. Without: the lines are only reported in
    /// [`SaleActivation::problems`].
    pub fn with_refusal_letters(mut self, letters: RefusalLetters) -> Self {
        self.refusals = Some(letters);
        self
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Runs one operation in its own unit of work.
    pub async fn apply(&self, request: OperationRequest) -> Result<Applied, ApplyError> {
        let mut unit = self.store.begin().await?;
        let result = apply_in(unit.as_mut(), &request).await;
        let keep = match &result {
            Ok(applied) => !applied.replayed,
            Err(ApplyError::Refused(_)) => request.idempotency.is_some(),
            Err(_) => false,
        };
        end(unit, result, keep).await
    }

    /// Records an order with certificate lines; activates them if payments already cover it.
    /// `Ok(None)`: recorded, not paid yet.
    pub async fn record_order(&self, order: &SaleOrder) -> Result<Option<SaleActivation>, ApplyError> {
        let mut unit = self.store.begin().await?;
        let result = async {
            unit.lock_order(&order.order_id).await?;
            let inserted = unit.insert_order(order).await?;
            let outcome = complete_sale(unit.as_mut(), &order.order_id, None, self.refusals.as_ref()).await?;
            Ok(outcome.or_else(|| {
                (!inserted).then(|| SaleActivation {
                    order_id: order.order_id.clone(),
                    duplicate: true,
                    ..SaleActivation::default()
                })
            }))
        }
        .await;
        let keep = result.is_ok();
        end(unit, result, keep).await
    }

    /// Records a payment; activates the order's certificates once payments cover the order.
    pub async fn record_payment(
        &self,
        payment: &PaymentRecord,
    ) -> Result<Option<SaleActivation>, ApplyError> {
        let mut unit = self.store.begin().await?;
        let result = async {
            unit.lock_order(&payment.order_id).await?;
            unit.insert_payment(payment).await?;
            complete_sale(
                unit.as_mut(),
                &payment.order_id,
                Some(&payment.payment_id),
                self.refusals.as_ref(),
            )
            .await
        }
        .await;
        let keep = result.is_ok();
        end(unit, result, keep).await
    }

    /// Issues an upload job. With a claim, the job runs under the caller's idempotency key: a
    /// retry gets the first outcome back (`replayed`), a different body under the key is
    /// `KeyReused`, a concurrent one `InFlight`.
    pub async fn issue(
        &self,
        batch: &IssueBatch,
        claim: Option<&IdempotencyClaim>,
    ) -> Result<IssueOutcome, ApplyError> {
        let mut unit = self.store.begin().await?;
        let result = issue_in(unit.as_mut(), batch, claim).await;
        let keep = result.as_ref().is_ok_and(|outcome| !outcome.replayed);
        end(unit, result, keep).await
    }

    /// Releases the expired holds of one certificate (the sweeper's operation): each becomes
    /// an `expire` effect. Which certificates are due is `CertificateViews::with_expired_holds`.
    pub async fn release_expired_holds(&self, certificate: Uuid) -> Result<Applied, ApplyError> {
        let operation =
            OperationId::parse(format!("sweep:{}", Uuid::now_v7())).map_err(|e| corrupt("sweep id", e))?;
        self.apply(OperationRequest {
            certificate: CertificateRef::Id(certificate),
            operation,
            command: Command::Sweep,
            origin: Origin {
                channel: INTERNAL_CHANNEL,
                initiator: Some("hold-sweeper".into()),
                source_event: None,
            },
            idempotency: None,
            cvc_verifier: None,
            cvc_sms_to: None,
            reason: None,
        })
        .await
    }
}

/// Ends a unit of work: commits what is to be kept, rolls back the rest at once, so its locks
/// (an idempotency key, an order) are free before the answer goes out.
async fn end<T>(
    unit: Box<dyn UnitOfWork>,
    result: Result<T, ApplyError>,
    keep: bool,
) -> Result<T, ApplyError> {
    if keep {
        unit.commit().await?;
    } else if let Err(e) = unit.rollback().await {
        // Nothing of the unit is kept either way; a failed rollback only matters to a success.
        if result.is_ok() {
            return Err(e.into());
        }
    }
    result
}

async fn issue_in(
    unit: &mut dyn UnitOfWork,
    batch: &IssueBatch,
    claim: Option<&IdempotencyClaim>,
) -> Result<IssueOutcome, ApplyError> {
    if let Some(claim) = claim {
        if !unit.claim_key(batch.channel.as_str(), &claim.key).await? {
            return Err(ApplyError::InFlight);
        }
        if let Some(stored) = unit.stored_result(batch.channel.as_str(), &claim.key).await? {
            if stored.request_hash != claim.request_hash {
                return Err(ApplyError::KeyReused);
            }
            let mut outcome: IssueOutcome =
                serde_json::from_value(stored.result).map_err(|e| corrupt("stored upload result", e))?;
            outcome.replayed = true;
            return Ok(outcome);
        }
    }
    let now = OffsetDateTime::now_utc();
    let issued: Vec<_> = batch
        .certificates
        .iter()
        .map(|c| {
            events::issued(
                c.id,
                &c.code_last4,
                &Certificate::issue(c.nominal, c.expires_at),
                now,
            )
        })
        .collect();
    let outcome = unit.issue(batch, &issued).await?;
    if let Some(claim) = claim {
        let result = serde_json::to_value(outcome).map_err(|e| corrupt("upload result", e))?;
        unit.remember(batch.channel.as_str(), claim, KeyOutcome::Applied, result)
            .await?;
    }
    Ok(outcome)
}

fn summary(
    locked: &LockedCertificate,
    c: &Certificate,
    effects: Vec<Effect>,
    now: OffsetDateTime,
) -> Applied {
    Applied {
        certificate_id: locked.id,
        code_last4: locked.code_last4.clone(),
        effects,
        state: c.state(),
        currency: c.currency().to_string(),
        balance: c.balance(),
        available: c.available(now),
        replayed: false,
        code_digest: Some(locked.code_digest),
    }
}

/// What an idempotency record says about a new request with the same key.
fn replay(stored: StoredResult, request_hash: &[u8; 32]) -> Result<Applied, ApplyError> {
    if stored.request_hash != *request_hash {
        return Err(ApplyError::KeyReused);
    }
    match stored.outcome {
        KeyOutcome::Refused => {
            let mut refusal: Refusal =
                serde_json::from_value(stored.result).map_err(|e| corrupt("stored refusal", e))?;
            refusal.replayed = true;
            Err(ApplyError::Refused(refusal))
        }
        KeyOutcome::Applied => {
            let mut applied: Applied =
                serde_json::from_value(stored.result).map_err(|e| corrupt("stored result", e))?;
            applied.replayed = true;
            Ok(applied)
        }
    }
}

/// The channel that made the hold `target` names, or the hold of the capture it names.
fn owner_of<'a>(locked: &'a LockedCertificate, target: &OperationId) -> Option<&'a str> {
    let hold = match locked.certificate.captures().get(target) {
        Some(capture) => &capture.hold,
        None => target,
    };
    locked.hold_channels.get(hold).map(String::as_str)
}

/// What one operation comes to once its certificate is locked and loaded: an answer with
/// nothing to write, a refusal to remember under the key, or a change to save.
pub(crate) enum Decision {
    Answer(Result<Applied, ApplyError>),
    Remember {
        refusal: Refusal,
        stored: serde_json::Value,
    },
    Save {
        after: Box<Certificate>,
        applied: Applied,
        events: Vec<events::Outgoing>,
    },
}

/// The lookup an operation's lock loads with the certificate.
pub(crate) fn lookup_of(request: &OperationRequest) -> Lookup<'_> {
    let channel = request.origin.channel.as_str();
    Lookup {
        target: request.command.target(),
        operation: &request.operation,
        key: request.idempotency.as_ref().map(|k| (channel, k.key.as_str())),
    }
}

/// The domain's part of an operation, after the claim and the lock, in the order the module
/// documents: CVC, stored answer, the target's owner, an operation id seen before, the rules.
pub(crate) fn decide(
    locked: &mut LockedCertificate,
    request: &OperationRequest,
    now: OffsetDateTime,
) -> Decision {
    if let Some(presented) = &request.cvc_verifier {
        if !bool::from(presented.as_slice().ct_eq(&locked.cvc_verifier)) {
            return Decision::Answer(Err(ApplyError::WrongCvc));
        }
    }
    if let (Some(stored), Some(claim)) = (locked.stored.take(), &request.idempotency) {
        return Decision::Answer(replay(stored, &claim.request_hash));
    }
    if let Some(target) = request.command.target() {
        let owner = owner_of(locked, target);
        if owner.is_some_and(|owner| !request.origin.channel.may_act_on(owner)) {
            return Decision::Answer(Err(ApplyError::UnknownTarget));
        }
    }
    // A deterministic operation id seen before: its effect stands, nothing is written again.
    if let Some(previous) = locked.certificate.applied(&request.operation) {
        let mut applied = summary(locked, &locked.certificate, vec![previous.clone()], now);
        applied.replayed = true;
        return Decision::Answer(Ok(applied));
    }
    let mut after = locked.certificate.clone();
    let effects = match execute(&mut after, request.operation.clone(), &request.command, now) {
        Ok(effects) => effects,
        Err(CertificateError::UnknownOperation(_)) => {
            return Decision::Answer(Err(ApplyError::UnknownTarget))
        }
        Err(refused) => {
            let refusal = Refusal::from(&refused);
            if request.idempotency.is_none() {
                return Decision::Answer(Err(ApplyError::Refused(refusal)));
            }
            return match serde_json::to_value(&refusal) {
                Ok(stored) => Decision::Remember { refusal, stored },
                Err(e) => Decision::Answer(Err(corrupt("refusal", e))),
            };
        }
    };
    let applied = summary(locked, &after, effects, now);
    if applied.effects.is_empty() {
        return Decision::Answer(Ok(applied));
    }
    let events = events::outgoing(
        locked.id,
        &locked.code_last4,
        &after,
        &applied.effects,
        &request.origin,
    );
    Decision::Save {
        after: Box::new(after),
        applied,
        events,
    }
}

/// Writes what goes with a saved operation besides its rows: an operator's reason on its audit
/// row, the CVC SMS of an activation.
pub(crate) async fn save_extras(
    unit: &mut dyn UnitOfWork,
    locked: &LockedCertificate,
    request: &OperationRequest,
) -> Result<(), ApplyError> {
    if let Some(reason) = &request.reason {
        unit.record_reason(locked.id, &request.operation, reason).await?;
    }
    if let Some(phone) = &request.cvc_sms_to {
        unit.queue_cvc_sms(locked.id, phone).await?;
    }
    Ok(())
}

/// One operation inside `unit`; the caller commits or rolls back.
async fn apply_in(unit: &mut dyn UnitOfWork, request: &OperationRequest) -> Result<Applied, ApplyError> {
    let channel = request.origin.channel.as_str();
    if let Some(claim) = &request.idempotency {
        if !unit.claim_key(channel, &claim.key).await? {
            return Err(ApplyError::InFlight);
        }
    }
    let mut locked = unit
        .lock(request.certificate, lookup_of(request))
        .await?
        .ok_or(ApplyError::NotFound)?;
    match decide(&mut locked, request, OffsetDateTime::now_utc()) {
        Decision::Answer(answer) => answer,
        Decision::Remember { refusal, stored } => {
            if let Some(claim) = &request.idempotency {
                unit.remember(channel, claim, KeyOutcome::Refused, stored).await?;
            }
            Err(ApplyError::Refused(refusal))
        }
        Decision::Save {
            after,
            applied,
            events,
        } => {
            unit.save(SavedOperation {
                locked: &locked,
                after: &after,
                applied: &applied,
                origin: &request.origin,
                idempotency: request.idempotency.as_ref(),
                events: &events,
            })
            .await?;
            save_extras(unit, &locked, request).await?;
            Ok(applied)
        }
    }
}

/// Activates the order's certificates if it is recorded, not activated yet, and paid. Each line
/// sells its certificate at the line's amount, which must be the nominal in the order's
/// currency. A line that cannot be activated, for whatever reason in the data, is refused and
/// reported (and written as a dead letter with `refusals`); only a storage failure is an error.
async fn complete_sale(
    unit: &mut dyn UnitOfWork,
    order_id: &str,
    payment_id: Option<&str>,
    refusals: Option<&RefusalLetters>,
) -> Result<Option<SaleActivation>, ApplyError> {
    let Some(sale) = unit.pending_sale(order_id).await? else {
        return Ok(None);
    };
    let order = &sale.order;
    let counted = sale
        .payments
        .iter()
        .map(|(id, currency, amount)| (id.as_str(), currency.as_str(), *amount));
    if !settles(order.amount_due(), &order.currency, counted) {
        return Ok(None);
    }
    let all_payments = sale
        .payments
        .iter()
        .map(|(id, _, _)| id.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let links = SaleLinks {
        client_id: order.client_id.clone(),
        order_id: Some(order_id.to_owned()),
        payment_id: Some(payment_id.map_or(all_payments, str::to_owned)),
    };
    let mut activation = SaleActivation {
        order_id: order_id.to_owned(),
        ..SaleActivation::default()
    };
    for line in &order.lines {
        let request = match sale_request(order, line, &links) {
            Ok(request) => request,
            Err(code) => {
                activation.problems.push(refused(line, code));
                continue;
            }
        };
        match apply_in(unit, &request).await {
            Ok(applied) => {
                activation.activated.push(applied.certificate_id);
                activation.touched.push(line.code_digest);
            }
            Err(e @ ApplyError::Unavailable(_)) => return Err(e),
            Err(ApplyError::NotFound) => activation
                .problems
                .push(refused(line, "certificate-not-found".to_owned())),
            Err(ApplyError::Refused(refusal)) => activation.problems.push(refused(line, refusal.code)),
            // No CVC and no idempotency key in a sale: not expected, still not retried.
            Err(_) => activation.problems.push(refused(line, "internal".to_owned())),
        }
    }
    if let (Some(letters), false) = (refusals, activation.problems.is_empty()) {
        unit.queue_letter(&letters(&RefusedSale::new(order, &activation)))
            .await?;
    }
    unit.mark_activated(order_id).await?;
    Ok(Some(activation))
}

/// The activation of one sale line, or the refusal code of a line that cannot make one.
fn sale_request(order: &SaleOrder, line: &OrderLine, links: &SaleLinks) -> Result<OperationRequest, String> {
    let code = |e: &CertificateError| e.code().to_owned();
    let operation = sale_operation(&order.order_id, &line.line_id).map_err(|e| code(&e))?;
    let currency = Currency::parse(&order.currency).map_err(|_| "invalid-currency".to_owned())?;
    let price = Amount::new(line.amount_minor, currency).map_err(|_| "invalid-amount".to_owned())?;
    Ok(OperationRequest {
        certificate: CertificateRef::Code(line.code_digest),
        operation,
        command: Command::Activate {
            links: links.clone(),
            price: Some(price),
        },
        origin: Origin {
            channel: SALES_CHANNEL,
            initiator: None,
            source_event: Some(format!("order:{}", order.order_id)),
        },
        idempotency: None,
        cvc_verifier: None,
        cvc_sms_to: order.phone.clone(),
        reason: None,
    })
}

fn refused(line: &OrderLine, reason_code: String) -> RefusedLine {
    RefusedLine {
        line_id: line.line_id.clone(),
        certificate_code: line.code_last4.as_deref().map(crate::code::mask_last4),
        amount_minor: line.amount_minor,
        reason_code,
    }
}
