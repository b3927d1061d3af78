//! Group commit against the store: a group answers and changes exactly what the same
//! operations one after another would.

use super::*;

/// The operations of the scenario on certificates `base..base + 4`, keys prefixed with `p`.
fn scenario(base: u8, p: &str) -> Vec<OperationRequest> {
    let links = SaleLinks::default();
    let activate = Command::Activate { links, price: None };
    let authorize = |minor| Command::Authorize {
        amount: rub(minor),
        ttl_seconds: 600,
    };
    let key = |k: &str, hash| Some(claim(&format!("{p}-{k}"), hash));
    let with_cvc = |mut r: OperationRequest, code: u8| {
        r.cvc_verifier = Some([code.wrapping_add(100); 32]);
        r
    };
    vec![
        request(base, "act-0", activate.clone(), key("a0", 1)),
        request(base + 1, "act-1", activate.clone(), None),
        // The same certificate again: waits for the next round, sees the activation.
        with_cvc(request(base, "hold-1", authorize(300), key("h1", 1)), base),
        request(
            base,
            "cap-1",
            Command::Capture {
                hold: op("hold-1"),
                amount: rub(200),
            },
            key("c1", 1),
        ),
        // Refused by the rules, remembered under its key; its neighbours go on.
        with_cvc(
            request(base + 1, "hold-2", authorize(5_000), key("h2", 1)),
            base + 1,
        ),
        // A wrong CVC and an unknown certificate write nothing.
        with_cvc(
            request(base + 1, "hold-3", authorize(100), key("h3", 1)),
            base + 2,
        ),
        request(250, "refund-x", Command::Refund, None),
        // The key of the third operation again: its answer, replayed; another body under it.
        with_cvc(request(base, "hold-1b", authorize(300), key("h1", 1)), base),
        with_cvc(request(base, "hold-1c", authorize(300), key("h1", 2)), base),
        request(base + 1, "hold-4", authorize(400), key("h4", 1)),
        request(base + 2, "cancel-2", Command::Cancel, None),
        // Not active: refused without a key, nothing remembered.
        request(base + 3, "hold-5", authorize(100), None),
        request(base + 1, "void-4", Command::Void { target: op("hold-4") }, None),
    ]
}

/// What must match between the two runs (ids and times differ).
fn outline(answer: &Result<crate::ports::Applied, ApplyError>) -> String {
    match answer {
        Ok(a) => format!(
            "ok {:?} balance={} available={} replayed={} effects={}",
            a.state,
            a.balance,
            a.available,
            a.replayed,
            a.effects.len()
        ),
        Err(ApplyError::Refused(r)) => format!("refused {} replayed={}", r.code, r.replayed),
        Err(e) => format!("error {e}"),
    }
}

pub(super) async fn a_group_answers_and_writes_as_its_operations_one_by_one<S>(
    service: &CertificateService<&S>,
) where
    S: CertificateStore + CertificateViews + Outbox,
{
    let certificates = (40..44)
        .chain(60..64)
        .map(|n| new_certificate(n, 1_000))
        .collect();
    service
        .issue(&batch("group", 1, certificates), None)
        .await
        .expect("issued");
    let one_by_one_requests = scenario(40, "single");
    let mut one_by_one = Vec::new();
    for request in &one_by_one_requests {
        one_by_one.push(service.apply(request.clone()).await);
    }
    let outbox_before = service.store().pending().await.expect("outbox");
    let grouped = service.apply_all(&scenario(60, "group")).await;
    let outbox_grouped = service.store().pending().await.expect("outbox") - outbox_before;
    assert_eq!(service.group_fallbacks(), 0, "the group ran as a group");

    let expected = [
        "ok Active balance=1000 available=1000 replayed=false effects=1",
        "ok Active balance=1000 available=1000 replayed=false effects=1",
        "ok Active balance=1000 available=700 replayed=false effects=1",
        "ok PartiallyRedeemed balance=800 available=800 replayed=false effects=1",
        "refused insufficient-funds replayed=false",
        "error wrong CVC",
        "error certificate not found",
        "ok Active balance=1000 available=700 replayed=true effects=1",
        "error the idempotency key was used for a different request",
        "ok Active balance=1000 available=600 replayed=false effects=1",
        "ok Cancelled balance=1000 available=1000 replayed=false effects=1",
    ];
    let grouped: Vec<String> = grouped.iter().map(outline).collect();
    let one_by_one: Vec<String> = one_by_one.iter().map(outline).collect();
    assert_eq!(
        grouped, one_by_one,
        "a group answers as one operation after another"
    );
    for (answer, expected) in grouped.iter().zip(expected) {
        assert_eq!(answer, expected);
    }
    assert!(grouped[11].starts_with("refused "), "{}", grouped[11]);
    assert!(
        grouped[12].starts_with("ok Active balance=1000 available=1000"),
        "{}",
        grouped[12]
    );

    for (single, group) in (40..44).zip(60..64) {
        let single = service
            .store()
            .view(&digest(single))
            .await
            .expect("view")
            .expect("stored");
        let group = service
            .store()
            .view(&digest(group))
            .await
            .expect("view")
            .expect("stored");
        assert_eq!(
            (group.state, group.balance, group.held, group.history.len()),
            (single.state, single.balance, single.held, single.history.len()),
            "the group left certificate {} as one by one",
            group.code_last4
        );
    }
    // Each saved operation's events went out once: as many as one by one wrote.
    let records = service.store().next(10_000).await.expect("outbox records");
    let keyed = |last4: &str| records.iter().filter(|r| r.payload.contains(last4)).count();
    for (single, group) in (40..44).zip(60..64) {
        assert_eq!(
            keyed(&format!("AB{group:02}")),
            keyed(&format!("AB{single:02}")),
            "events of certificate {group}"
        );
    }
    assert!(outbox_grouped > 0);

    // The refusal was remembered under its key by the group: a retry gets it back, replayed.
    let retry = service.apply(scenario(60, "group")[4].clone()).await;
    assert_eq!(outline(&retry), "refused insufficient-funds replayed=true");
}

/// The set-based calls answer in the order asked: claims, and locks with what they load.
pub(super) async fn a_round_is_claimed_locked_and_loaded_at_once<S: CertificateStore>(
    service: &CertificateService<&S>,
) {
    let certificates = vec![new_certificate(45, 1_000), new_certificate(46, 2_000)];
    service
        .issue(&batch("round", 1, certificates), None)
        .await
        .expect("issued");
    let store = service.store();
    let mut unit = store.begin().await.expect("unit");
    let channel = Channel::OnlineStore.as_str();
    let claimed = unit
        .claim_keys(&[(channel, "round-k1"), (channel, "round-k2")])
        .await
        .expect("claims");
    assert_eq!(claimed, [true, true]);
    let mut other = store.begin().await.expect("another unit");
    let claimed = other
        .claim_keys(&[(channel, "round-k3"), (channel, "round-k1")])
        .await
        .expect("claims");
    assert_eq!(
        claimed,
        [true, false],
        "a key held by another unit is not claimed"
    );
    other.rollback().await.expect("rollback");

    let operation = op("round-op");
    let lookup = Lookup {
        target: None,
        operation: &operation,
        key: None,
    };
    let locked = unit
        .lock_all(&[
            (CertificateRef::Code(digest(46)), lookup),
            (CertificateRef::Code(digest(251)), lookup),
            (CertificateRef::Code(digest(45)), lookup),
        ])
        .await
        .expect("locked");
    let outline: Vec<Option<(String, i64)>> = locked
        .iter()
        .map(|l| {
            l.as_ref()
                .map(|l| (l.code_last4.clone(), l.certificate.balance()))
        })
        .collect();
    assert_eq!(
        outline,
        [
            Some(("AB46".to_owned(), 2_000)),
            None,
            Some(("AB45".to_owned(), 1_000))
        ]
    );
    let by_id = locked[2].as_ref().expect("locked").id;
    let again = unit
        .lock_all(&[(CertificateRef::Id(by_id), lookup)])
        .await
        .expect("locked by id");
    assert_eq!(again[0].as_ref().map(|l| l.id), Some(by_id));
    unit.rollback().await.expect("rollback");
}
