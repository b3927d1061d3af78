//! The storage contract, continued: the CVC SMS queue, the outbox and upload batches.

use super::*;

pub(super) async fn the_cvc_sms_is_queued_once_and_erases_the_cvc<S>(store: &S)
where
    S: SmsQueue + CertificateViews,
{
    let lease = time::Duration::seconds(30);
    let job = store
        .claim_sms(lease)
        .await
        .expect("claim")
        .expect("certificate 1 was activated with a phone");
    assert_eq!((job.phone.as_deref(), job.attempts), (Some("+79990001122"), 1));
    assert_eq!(job.phone_last2, "22");
    assert_eq!(job.code_digest, digest(1));
    assert!(job.sealed.is_some());
    assert!(store.claim_sms(lease).await.expect("claim").is_none(), "leased");
    assert_eq!(
        store.sms_backlog().await.expect("backlog"),
        SmsBacklog {
            pending: 1,
            failed: 0
        }
    );
    store
        .finish_sms(
            &job,
            &SmsOutcome::Sent {
                provider_id: "p-1".into(),
            },
            None,
        )
        .await
        .expect("finished")
        .then_some(())
        .expect("the lease was held");
    let view = store
        .view(&digest(1))
        .await
        .expect("read")
        .expect("certificate 1");
    assert!(!view.cvc_pending_delivery, "the CVC is erased once delivered");
    assert_eq!(store.requeueable_sms(None).await.expect("count"), 0);
    assert_eq!(store.requeue_failed_sms(None).await.expect("requeue"), 0);
    assert_eq!(store.sms_backlog().await.expect("backlog"), SmsBacklog::default());
}

/// A sender whose lease ran out, and whose job another sender claimed, records nothing.
pub(super) async fn a_finish_after_the_lease_was_taken_over_is_refused<S>(service: &CertificateService<&S>)
where
    S: CertificateStore + CertificateViews + SmsQueue,
{
    let store = *service.store();
    service
        .issue(&batch("b-sms", 1, vec![new_certificate(9, 1_000)]), None)
        .await
        .expect("issued");
    let mut activate = request(
        9,
        "activate-sms-9",
        Command::Activate {
            links: SaleLinks::default(),
            price: None,
        },
        None,
    );
    activate.cvc_sms_to = Some("+79990003344".into());
    service.apply(activate).await.expect("activated with a phone");
    let first = store
        .claim_sms(time::Duration::ZERO)
        .await
        .expect("claim")
        .expect("queued");
    let second = store
        .claim_sms(time::Duration::seconds(30))
        .await
        .expect("claim")
        .expect("the first lease has run out: taken over");
    assert_eq!(first.certificate_id, second.certificate_id);
    assert_ne!(first.lease, second.lease);
    let sent = SmsOutcome::Sent {
        provider_id: "late".into(),
    };
    assert!(
        !store.finish_sms(&first, &sent, None).await.expect("finish"),
        "the first sender no longer holds the job"
    );
    let view = store
        .view(&digest(9))
        .await
        .expect("read")
        .expect("certificate 9");
    assert!(
        view.cvc_pending_delivery,
        "nothing was recorded for the first sender"
    );
    assert!(store.finish_sms(&second, &sent, None).await.expect("finish"));
    assert!(
        !store.finish_sms(&second, &sent, None).await.expect("finish"),
        "finished once"
    );
}

/// A delivery that failed for good is counted by the dry run without being changed, then put
/// back by the requeue; one certificate's requeue leaves the others alone.
pub(super) async fn a_failed_delivery_is_counted_then_requeued<S>(service: &CertificateService<&S>)
where
    S: CertificateStore + CertificateViews + SmsQueue,
{
    let store = *service.store();
    service
        .issue(&batch("b-requeue", 1, vec![new_certificate(10, 1_000)]), None)
        .await
        .expect("issued");
    let mut activate = request(
        10,
        "activate-sms-10",
        Command::Activate {
            links: SaleLinks::default(),
            price: None,
        },
        None,
    );
    activate.cvc_sms_to = Some("+79990005566".into());
    let activated = service.apply(activate).await.expect("activated with a phone");
    let job = store
        .claim_sms(time::Duration::seconds(30))
        .await
        .expect("claim")
        .expect("queued");
    let failed = SmsOutcome::Failed {
        error: "provider refused: HTTP 400".into(),
    };
    assert!(store.finish_sms(&job, &failed, None).await.expect("finish"));
    let backlog = store.sms_backlog().await.expect("backlog");
    assert_eq!((backlog.pending, backlog.failed), (0, 1));

    assert_eq!(store.requeueable_sms(None).await.expect("count"), 1);
    assert_eq!(
        store
            .requeueable_sms(Some(activated.certificate_id))
            .await
            .expect("count"),
        1
    );
    assert_eq!(
        store.requeueable_sms(Some(Uuid::now_v7())).await.expect("count"),
        0
    );
    assert_eq!(
        store.sms_backlog().await.expect("backlog"),
        backlog,
        "counting changes nothing"
    );
    assert_eq!(
        store
            .requeue_failed_sms(Some(Uuid::now_v7()))
            .await
            .expect("requeue"),
        0
    );
    assert_eq!(
        store
            .requeue_failed_sms(Some(activated.certificate_id))
            .await
            .expect("requeue"),
        1
    );
    let backlog = store.sms_backlog().await.expect("backlog");
    assert_eq!((backlog.pending, backlog.failed), (1, 0));
    assert_eq!(store.requeueable_sms(None).await.expect("count"), 0);
    // Sent at last: nothing stays queued for the scenarios after this one.
    let job = store
        .claim_sms(time::Duration::seconds(30))
        .await
        .expect("claim")
        .expect("requeued");
    let sent = SmsOutcome::Sent {
        provider_id: "p-10".into(),
    };
    assert!(store.finish_sms(&job, &sent, None).await.expect("finish"));
}

/// An operation asked for with a reason saves it with its audit row; a reason for an operation
/// that was never saved is refused.
pub(super) async fn a_reason_is_recorded_with_its_operation<S>(service: &CertificateService<&S>)
where
    S: CertificateStore + CertificateViews,
{
    service
        .issue(&batch("b-reason", 1, vec![new_certificate(11, 1_000)]), None)
        .await
        .expect("issued");
    let mut cancel = request(11, "cancel-with-reason", Command::Cancel, None);
    cancel.reason = Some("reported stolen".into());
    let cancelled = service.apply(cancel).await.expect("cancelled");
    assert_eq!(cancelled.state, State::Cancelled);

    let mut unit = service.store().begin().await.expect("unit");
    let missing = unit
        .record_reason(cancelled.certificate_id, &op("never-saved"), "no such operation")
        .await;
    assert!(missing.is_err(), "a reason needs the operation's audit row");
    unit.rollback().await.expect("rollback");
}

pub(super) async fn the_outbox_keeps_commit_order_and_one_leader<S: Outbox>(store: &S) {
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
    let pending = store.pending().await.expect("count");
    let records = store.next(1_000).await.expect("read");
    assert_eq!(records.len() as i64, pending);
    assert!(records.windows(2).all(|w| w[0].id < w[1].id), "commit order");
    let first = &records[0];
    assert_eq!(
        first.topic,
        crate::events::STATE_TOPIC,
        "the first event is an Issued state"
    );
    let payload: serde_json::Value = serde_json::from_str(&first.payload).expect("JSON");
    assert_eq!(payload["state"], "Issued");
    let ids: Vec<i64> = records.iter().take(3).map(|r| r.id).collect();
    store.delete(&ids).await.expect("delete");
    assert_eq!(store.pending().await.expect("count"), pending - 3);
    assert_eq!(store.next(1).await.expect("read")[0].id, records[3].id);
    drop(lead);
    assert!(store.try_lead().await.expect("lead").is_some(), "handed over");
}

pub(super) async fn refused_outbox_records_are_parked_and_requeued<S: Outbox>(store: &S) {
    let records = store.next(1_000).await.expect("read");
    assert!(records.len() >= 3, "events left from the scenarios above");
    let (refused, after) = (&records[0], &records[1]);
    store
        .park(
            refused.id,
            "record_too_large",
            "the broker refused the record as too large",
        )
        .await
        .expect("park");
    assert_eq!(store.parked().await.expect("count"), 1);
    assert_eq!(store.pending().await.expect("count"), records.len() as i64 - 1);
    assert_eq!(
        store.next(1).await.expect("read")[0].id,
        after.id,
        "the records after it are next"
    );
    assert_eq!(
        store
            .requeue_parked(Some(refused.id + 1_000_000))
            .await
            .expect("requeue"),
        0
    );
    assert_eq!(store.requeue_parked(None).await.expect("requeue"), 1);
    assert_eq!(store.parked().await.expect("count"), 0);
    let back = store.next(1_000).await.expect("read");
    let last = back.last().expect("requeued");
    assert_eq!(
        (last.topic.as_str(), last.key.as_str(), last.payload.as_str()),
        (
            refused.topic.as_str(),
            refused.key.as_str(),
            refused.payload.as_str()
        ),
        "requeued at the end, unchanged"
    );
    assert!(last.id > refused.id);
}

pub(super) async fn a_batch_is_opened_once_by_its_first_opener<S: UploadBatches>(store: &S) {
    assert!(store.opened_batch("spring").await.expect("read").is_none());
    let (first, opened) = store
        .open_batch("spring", Channel::BatchLoader)
        .await
        .expect("open");
    assert!(opened, "the first call opens it");
    assert_eq!(
        (first.batch_id.as_str(), first.opened_by),
        ("spring", Channel::BatchLoader)
    );
    let (again, opened) = store.open_batch("spring", Channel::Internal).await.expect("open");
    assert!(!opened, "a second call finds it open");
    assert_eq!(again, first, "the first opener and time stand");
    assert_eq!(store.opened_batch("spring").await.expect("read"), Some(first));
    assert!(store.opened_batch("autumn").await.expect("read").is_none());
}
