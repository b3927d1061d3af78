//! The storage contract: the same scenarios run against the in-memory store here and the
//! PostgreSQL store in its crate, so the fake cannot drift from the real thing. Each call starts
//! from an empty store.

use crate::certificate::{OperationId, SaleLinks, State};
use crate::channel::Channel;
use crate::events::Origin;
use crate::money::{Amount, Currency};
use crate::operation::Command;
use crate::ports::{
    ApplyError, CertificateRef, CodeDigest, IdempotencyClaim, OperationRequest, Refusal, SealedCvc,
};
use crate::sale::{OrderLine, PaymentRecord, SaleOrder};
use crate::service::CertificateService;
use crate::store::*;
use uuid::Uuid;

mod group;
mod queues;
use group::*;
use queues::*;

fn digest(n: u8) -> CodeDigest {
    CodeDigest([n; 32])
}

fn rub(minor: i64) -> Amount {
    Amount::new(minor, Currency::parse("RUB").expect("valid currency")).expect("positive amount")
}

fn op(s: &str) -> OperationId {
    OperationId::parse(s).expect("valid operation id")
}

fn new_certificate(n: u8, nominal: i64) -> NewCertificate {
    NewCertificate {
        id: Uuid::now_v7(),
        code_digest: digest(n),
        code_last4: format!("AB{n:02}"),
        nominal: rub(nominal),
        expires_at: None,
        cvc_verifier: [n.wrapping_add(100); 32],
        sealed_cvc: SealedCvc {
            key_id: "k1".into(),
            wrapped_key: vec![1, 2, 3],
            ciphertext: vec![n; 28],
        },
    }
}

fn batch(id: &str, job: u32, certificates: Vec<NewCertificate>) -> IssueBatch {
    IssueBatch {
        batch_id: id.into(),
        job,
        rejected: 0,
        certificates,
        channel: Channel::BatchLoader,
        initiator: None,
        source_event: None,
    }
}

fn claim(key: &str, hash: u8) -> IdempotencyClaim {
    IdempotencyClaim {
        key: key.into(),
        request_hash: [hash; 32],
        retention: time::Duration::hours(1),
    }
}

fn request(code: u8, operation: &str, command: Command, key: Option<IdempotencyClaim>) -> OperationRequest {
    OperationRequest {
        certificate: CertificateRef::Code(digest(code)),
        operation: op(operation),
        command,
        origin: Origin {
            channel: Channel::OnlineStore,
            initiator: None,
            source_event: None,
        },
        idempotency: key,
        cvc_verifier: None,
        cvc_sms_to: None,
        reason: None,
    }
}

/// Every scenario, in order, against `store` (which must start empty).
pub async fn store_contract<S>(store: &S)
where
    S: CertificateStore + CertificateViews + SmsQueue + Outbox + UploadBatches,
{
    let service = CertificateService::new(store);
    issue_counts_new_resent_and_duplicate_codes(&service).await;
    operations_save_replay_and_refuse(&service).await;
    a_group_answers_and_writes_as_its_operations_one_by_one(&service).await;
    a_round_is_claimed_locked_and_loaded_at_once(&service).await;
    keys_are_claimed_by_one_unit_at_a_time(store).await;
    a_stale_version_is_never_saved(&service).await;
    sales_complete_once_when_paid(&service).await;
    a_paid_sale_refuses_lines_not_sold_at_the_nominal(store).await;
    the_cvc_sms_is_queued_once_and_erases_the_cvc(store).await;
    a_finish_after_the_lease_was_taken_over_is_refused(&service).await;
    a_failed_delivery_is_counted_then_requeued(&service).await;
    a_reason_is_recorded_with_its_operation(&service).await;
    the_outbox_keeps_commit_order_and_one_leader(store).await;
    refused_outbox_records_are_parked_and_requeued(store).await;
    a_batch_is_opened_once_by_its_first_opener(store).await;
}

async fn issue_counts_new_resent_and_duplicate_codes<S>(service: &CertificateService<&S>)
where
    S: CertificateStore + CertificateViews,
{
    let first = batch("b1", 1, vec![new_certificate(1, 1_000), new_certificate(2, 500)]);
    let outcome = service
        .issue(&first, Some(&claim("b1:1", 1)))
        .await
        .expect("issued");
    assert_eq!(
        (outcome.issued, outcome.already_issued, outcome.duplicates),
        (2, 0, 0)
    );
    let replay = service
        .issue(&first, Some(&claim("b1:1", 1)))
        .await
        .expect("replayed");
    assert!(replay.replayed);
    assert_eq!(replay.issued, 2);
    assert_eq!(
        service.issue(&first, Some(&claim("b1:1", 9))).await,
        Err(ApplyError::KeyReused)
    );
    // The same job again without a key: nothing new; a code of another batch is a duplicate.
    let resent = service.issue(&first, None).await.expect("resent");
    assert_eq!((resent.issued, resent.already_issued), (0, 2));
    let other = batch("b2", 1, vec![new_certificate(1, 1_000), new_certificate(3, 700)]);
    let outcome = service.issue(&other, None).await.expect("issued");
    assert_eq!(
        (outcome.issued, outcome.already_issued, outcome.duplicates),
        (1, 0, 1)
    );

    // A code twice in one job is issued once and counted as a duplicate.
    let mut twin = new_certificate(4, 900);
    twin.id = Uuid::now_v7();
    let twice = batch("b3", 1, vec![new_certificate(4, 900), twin]);
    let outcome = service.issue(&twice, None).await.expect("issued");
    assert_eq!(
        (outcome.issued, outcome.already_issued, outcome.duplicates),
        (1, 0, 1)
    );

    let views = service.store();
    let b1 = views.batch("b1").await.expect("read").expect("batch b1");
    assert_eq!((b1.jobs, b1.submitted, b1.issued), (1, 2, 2));
    assert!(views.batch("nope").await.expect("read").is_none());
    let balance = views
        .balance(&digest(1))
        .await
        .expect("read")
        .expect("certificate 1");
    assert_eq!(
        (balance.state, balance.balance, balance.available),
        (State::Issued, 1_000, 1_000)
    );
    assert_eq!(balance.cvc_verifier, vec![101u8; 32]);
    let view = views
        .view(&digest(1))
        .await
        .expect("read")
        .expect("certificate 1");
    assert_eq!((view.nominal, view.batch_id.as_deref()), (1_000, Some("b1")));
    assert!(view.cvc_pending_delivery);
    assert!(views.view(&digest(99)).await.expect("read").is_none());
}

async fn operations_save_replay_and_refuse<S>(service: &CertificateService<&S>)
where
    S: CertificateStore + CertificateViews,
{
    assert_eq!(
        service.apply(request(99, "x", Command::Refund, None)).await,
        Err(ApplyError::NotFound)
    );
    let links = SaleLinks {
        client_id: Some("c1".into()),
        ..SaleLinks::default()
    };
    let mut activate = request(
        1,
        "act-1",
        Command::Activate { links, price: None },
        Some(claim("k-act", 1)),
    );
    activate.cvc_sms_to = Some("+79990001122".into());
    let active = service.apply(activate.clone()).await.expect("activated");
    assert_eq!((active.state, active.replayed), (State::Active, false));
    let again = service.apply(activate.clone()).await.expect("replayed");
    assert!(again.replayed);
    assert_eq!(again.effects, active.effects);
    activate.idempotency = Some(claim("k-act", 2));
    assert_eq!(service.apply(activate).await, Err(ApplyError::KeyReused));

    let authorize = Command::Authorize {
        amount: rub(300),
        ttl_seconds: 600,
    };
    let mut wrong = request(1, "hold-0", authorize.clone(), Some(claim("k-h0", 1)));
    wrong.cvc_verifier = Some([7; 32]);
    assert_eq!(service.apply(wrong).await, Err(ApplyError::WrongCvc));
    let mut hold = request(1, "hold-1", authorize, Some(claim("k-h1", 1)));
    hold.cvc_verifier = Some([101; 32]);
    let held = service.apply(hold.clone()).await.expect("held");
    assert_eq!((held.balance, held.available), (1_000, 700));
    // A known key with a wrong CVC is a wrong CVC, not a stored answer nor a key reused: the
    // CVC is checked before the key's record is looked at, so a key is no oracle.
    let mut guess = hold.clone();
    guess.cvc_verifier = Some([8; 32]);
    assert_eq!(service.apply(guess).await, Err(ApplyError::WrongCvc));
    assert!(service.apply(hold).await.expect("replayed").replayed);

    // A hold is its channel's: another front cannot capture or void it, and hears exactly what
    // it would hear for a hold that does not exist (nothing stored under its key).
    for command in [
        Command::Capture {
            hold: op("hold-1"),
            amount: rub(100),
        },
        Command::Void { target: op("hold-1") },
    ] {
        let mut foreign = request(1, "foreign", command.clone(), Some(claim("k-foreign", 1)));
        foreign.origin.channel = Channel::Pos;
        assert_eq!(
            service.apply(foreign.clone()).await,
            Err(ApplyError::UnknownTarget)
        );
        assert_eq!(service.apply(foreign).await, Err(ApplyError::UnknownTarget));
        let mut unknown = request(
            1,
            "unknown",
            Command::Void {
                target: op("no-such-hold"),
            },
            None,
        );
        unknown.origin.channel = Channel::Pos;
        assert_eq!(service.apply(unknown).await, Err(ApplyError::UnknownTarget));
    }
    let capture = Command::Capture {
        hold: op("hold-1"),
        amount: rub(200),
    };
    let captured = service
        .apply(request(1, "cap-1", capture.clone(), Some(claim("k-c1", 1))))
        .await
        .expect("captured");
    assert_eq!(
        (captured.state, captured.balance, captured.available),
        (State::PartiallyRedeemed, 800, 800)
    );

    // A refusal is stored under its key and answered again; without a key nothing is kept.
    let refused = service
        .apply(request(1, "cap-2", capture.clone(), Some(claim("k-c2", 1))))
        .await;
    let Err(ApplyError::Refused(refusal)) = refused else {
        panic!("a second capture of one hold is refused: {refused:?}");
    };
    assert_eq!(refusal.code, "hold-not-active");
    let replayed = service
        .apply(request(1, "cap-3", capture, Some(claim("k-c2", 1))))
        .await;
    // ... marked as a replay, so the answer can say so.
    assert_eq!(
        replayed,
        Err(ApplyError::Refused(Refusal {
            replayed: true,
            ..refusal
        }))
    );

    // The capture's id names it for a void (a refund to the certificate).
    let voided = service
        .apply(request(
            1,
            "void-1",
            Command::Void { target: op("cap-1") },
            Some(claim("k-v1", 1)),
        ))
        .await
        .expect("reversed");
    assert_eq!(voided.balance, 1_000);

    let view = service
        .store()
        .view(&digest(1))
        .await
        .expect("read")
        .expect("certificate 1");
    let actions: Vec<&str> = view.history.iter().map(|h| h.action.as_str()).collect();
    assert_eq!(actions, ["activate", "authorize", "capture", "void"]);
    assert_eq!(view.client_id.as_deref(), Some("c1"));
    assert_eq!((view.balance, view.held), (1_000, 0));
}

async fn keys_are_claimed_by_one_unit_at_a_time<S: CertificateStore>(store: &S) {
    let mut a = store.begin().await.expect("unit");
    let mut b = store.begin().await.expect("unit");
    assert!(a.claim_key("POS", "k").await.expect("claim"));
    assert!(
        a.claim_key("POS", "k").await.expect("claim"),
        "a unit holds its own claim"
    );
    assert!(
        !b.claim_key("POS", "k").await.expect("claim"),
        "held by another unit"
    );
    assert!(
        b.claim_key("OnlineStore", "k").await.expect("claim"),
        "keys are per channel"
    );
    a.rollback().await.expect("rollback");
    b.rollback().await.expect("rollback");
    let mut c = store.begin().await.expect("unit");
    assert!(
        c.claim_key("POS", "k").await.expect("claim"),
        "released with its unit"
    );
    assert!(c.stored_result("POS", "k").await.expect("read").is_none());
    c.remember(
        "POS",
        &claim("k", 5),
        KeyOutcome::Applied,
        serde_json::json!({"n": 1}),
    )
    .await
    .expect("remembered");
    c.commit().await.expect("commit");
    let mut d = store.begin().await.expect("unit");
    let stored = d.stored_result("POS", "k").await.expect("read").expect("stored");
    assert_eq!(
        (stored.request_hash, stored.outcome),
        ([5; 32], KeyOutcome::Applied)
    );
    assert_eq!(stored.result, serde_json::json!({"n": 1}));
    d.rollback().await.expect("rollback");
}

async fn a_stale_version_is_never_saved<S>(service: &CertificateService<&S>)
where
    S: CertificateStore + CertificateViews,
{
    let store = service.store();
    let lookup = Lookup {
        target: None,
        operation: &op("late"),
        key: None,
    };
    let mut early = store.begin().await.expect("unit");
    let locked = early
        .lock(CertificateRef::Code(digest(1)), lookup)
        .await
        .expect("lock")
        .expect("certificate 1");
    early.rollback().await.expect("rollback");
    let changed = service.apply(request(1, "cancel-1", Command::Cancel, None)).await;
    assert_eq!(changed.map(|a| a.state), Ok(State::Cancelled));

    let mut late = store.begin().await.expect("unit");
    let mut after = locked.certificate.clone();
    let effects = crate::execute(
        &mut after,
        op("late"),
        &Command::Refund,
        time::OffsetDateTime::now_utc(),
    )
    .expect("a refund of the certificate as it was");
    let applied = crate::Applied {
        certificate_id: locked.id,
        code_last4: locked.code_last4.clone(),
        effects,
        state: after.state(),
        currency: "RUB".into(),
        balance: after.balance(),
        available: after.balance(),
        replayed: false,
        code_digest: None,
    };
    let origin = Origin {
        channel: Channel::Pos,
        initiator: None,
        source_event: None,
    };
    let saved = late
        .save(SavedOperation {
            locked: &locked,
            after: &after,
            applied: &applied,
            origin: &origin,
            idempotency: None,
            events: &[],
        })
        .await;
    assert!(saved.is_err(), "a save over a newer version is refused");
    late.rollback().await.expect("rollback");
    let view = store
        .balance(&digest(1))
        .await
        .expect("read")
        .expect("certificate 1");
    assert_eq!(view.state, State::Cancelled);
}

async fn sales_complete_once_when_paid<S>(service: &CertificateService<&S>)
where
    S: CertificateStore + CertificateViews,
{
    let order = SaleOrder {
        order_id: "o-1".into(),
        client_id: Some("c-9".into()),
        phone: None,
        currency: "RUB".into(),
        total_minor: 500,
        lines: vec![OrderLine {
            line_id: "1".into(),
            code_digest: digest(2),
            code_last4: Some("AB02".into()),
            amount_minor: 500,
        }],
        source_event: "e-o1".into(),
    };
    assert_eq!(service.record_order(&order).await, Ok(None), "not paid yet");
    let again = service
        .record_order(&order)
        .await
        .expect("recorded")
        .expect("seen before");
    assert!(again.duplicate);
    let payment = |id: &str, amount| PaymentRecord {
        payment_id: id.into(),
        order_id: "o-1".into(),
        currency: "RUB".into(),
        amount_minor: amount,
        source_event: format!("e-{id}"),
    };
    assert_eq!(service.record_payment(&payment("p-1", 300)).await, Ok(None));
    assert_eq!(
        service.record_payment(&payment("p-1", 300)).await,
        Ok(None),
        "counted once"
    );
    let sale = service
        .record_payment(&payment("p-2", 200))
        .await
        .expect("recorded")
        .expect("completed");
    assert_eq!((sale.activated.len(), sale.touched.clone()), (1, vec![digest(2)]));
    assert!(sale.problems.is_empty());
    assert_eq!(
        service.record_payment(&payment("p-3", 100)).await,
        Ok(None),
        "activated once"
    );
    let view = service
        .store()
        .view(&digest(2))
        .await
        .expect("read")
        .expect("certificate 2");
    assert_eq!(view.state, State::Active);
    assert_eq!(
        (view.order_id.as_deref(), view.payment_id.as_deref()),
        (Some("o-1"), Some("p-2"))
    );
}

/// Each line sells its certificate at the nominal, in the certificate's currency; a line that
/// does not, or whose certificate cannot be activated, is refused, and the refusal is written as
/// a letter to the outbox in the sale's transaction. The order must pay at least its lines.
async fn a_paid_sale_refuses_lines_not_sold_at_the_nominal<S>(store: &S)
where
    S: CertificateStore + CertificateViews + Outbox,
{
    let letters: crate::sale::RefusalLetters = std::sync::Arc::new(|sale| OutboxLetter {
        topic: "refused-sales".into(),
        key: sale.order_id.clone(),
        payload: serde_json::to_value(sale).unwrap_or_default(),
        headers: vec![("x-dlq-reason-code".into(), "activation_refused".into())],
    });
    let service = CertificateService::new(store).with_refusal_letters(letters);
    let issued = service
        .issue(
            &batch(
                "b-sale",
                0,
                vec![new_certificate(7, 800), new_certificate(8, 800)],
            ),
            None,
        )
        .await
        .expect("issued");
    assert_eq!(issued.issued, 2);
    let line = |id: &str, n: u8, amount_minor| OrderLine {
        line_id: id.into(),
        code_digest: digest(n),
        code_last4: Some(format!("AB{n:02}")),
        amount_minor,
    };
    let order = |order_id: &str, total_minor, lines| SaleOrder {
        order_id: order_id.into(),
        client_id: None,
        phone: None,
        currency: "RUB".into(),
        total_minor,
        lines,
        source_event: format!("e-{order_id}"),
    };
    let paid = |order_id: &str, amount_minor| PaymentRecord {
        payment_id: format!("p-{order_id}"),
        order_id: order_id.into(),
        currency: "RUB".into(),
        amount_minor,
        source_event: format!("e-p-{order_id}"),
    };
    // A total below its lines is not paid by the total.
    service
        .record_order(&order("o-low", 1, vec![line("1", 7, 800)]))
        .await
        .expect("recorded");
    assert_eq!(
        service.record_payment(&paid("o-low", 1)).await,
        Ok(None),
        "800 due"
    );
    // One line at 1 kopek, one at the nominal, one for a code never issued.
    service
        .record_order(&order(
            "o-mixed",
            1_601,
            vec![line("1", 7, 1), line("2", 8, 800), line("3", 9, 800)],
        ))
        .await
        .expect("recorded");
    let sale = service
        .record_payment(&paid("o-mixed", 1_601))
        .await
        .expect("recorded")
        .expect("completed");
    assert_eq!(sale.activated.len(), 1);
    let refused: Vec<(&str, &str)> = sale
        .problems
        .iter()
        .map(|p| (p.line_id.as_str(), p.reason_code.as_str()))
        .collect();
    assert_eq!(
        refused,
        [("1", "nominal-mismatch"), ("3", "certificate-not-found")]
    );
    let state = |n| async move { store.view(&digest(n)).await.expect("read").map(|v| v.state) };
    assert_eq!(state(7).await, Some(State::Issued));
    assert_eq!(state(8).await, Some(State::Active));
    let written: Vec<OutboxRecord> = store
        .next(10_000)
        .await
        .expect("read")
        .into_iter()
        .filter(|r| r.topic == "refused-sales")
        .collect();
    assert_eq!(written.len(), 1, "one letter per refused sale");
    let letter: serde_json::Value = serde_json::from_str(&written[0].payload).expect("JSON");
    assert_eq!(written[0].key, "o-mixed");
    assert_eq!(
        written[0].headers,
        [("x-dlq-reason-code".to_owned(), "activation_refused".to_owned())]
    );
    assert_eq!(
        (letter["activated"].clone(), letter["refused"].clone()),
        (1.into(), 2.into())
    );
    assert_eq!(
        letter["refused_lines"][0]["certificate_code"],
        "****-****-****-AB07"
    );
    assert_eq!(letter["refused_lines"][1]["reason_code"], "certificate-not-found");
}
