//! The service over the in-memory store: the storage contract, and the money invariants for any
//! sequence of operations with retried keys.

use crate::contract::store_contract;
use crate::memory::MemoryStore;
use crate::store::{CertificateViews, IssueBatch, NewCertificate};
use crate::*;
use proptest::prelude::*;

#[tokio::test]
async fn the_memory_store_meets_the_storage_contract() {
    store_contract(&MemoryStore::default()).await;
}

const NOMINAL: i64 = 1_000;

fn rub(minor: i64) -> Amount {
    Amount::new(minor, Currency::parse("RUB").unwrap()).unwrap()
}

fn op(s: &str) -> OperationId {
    OperationId::parse(s).unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    Authorize { key: u8, amount: i64 },
    Capture { key: u8, hold: u8, amount: i64 },
    Void { key: u8, target: u8 },
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let one = prop_oneof![
        (0u8..12, 1i64..700).prop_map(|(key, amount)| Op::Authorize { key, amount }),
        (0u8..12, 0u8..12, 1i64..700).prop_map(|(key, hold, amount)| Op::Capture { key, hold, amount }),
        (0u8..12, 0u8..12).prop_map(|(key, target)| Op::Void { key, target }),
    ];
    proptest::collection::vec(one, 1..24)
}

fn request(o: &Op) -> OperationRequest {
    let (key, command) = match o {
        Op::Authorize { key, amount } => (
            *key,
            Command::Authorize {
                amount: rub(*amount),
                ttl_seconds: 600,
            },
        ),
        Op::Capture { key, hold, amount } => (
            *key,
            Command::Capture {
                hold: op(&format!("op-{hold}")),
                amount: rub(*amount),
            },
        ),
        Op::Void { key, target } => (
            *key,
            Command::Void {
                target: op(&format!("op-{target}")),
            },
        ),
    };
    // The same key always carries the same request here, so every retry is a replay.
    let hash = format!("{o:?}");
    let mut request_hash = [0u8; 32];
    for (i, b) in hash.bytes().enumerate() {
        request_hash[i % 32] ^= b.rotate_left(i as u32 % 8);
    }
    OperationRequest {
        certificate: CertificateRef::Code(CodeDigest([1; 32])),
        operation: op(&format!("op-{key}")),
        command,
        origin: events::Origin {
            channel: Channel::Pos,
            initiator: None,
            source_event: None,
        },
        idempotency: Some(IdempotencyClaim {
            key: format!("{key}:{hash}"),
            request_hash,
            retention: time::Duration::hours(1),
        }),
        cvc_verifier: None,
        cvc_sms_to: None,
        reason: None,
    }
}

async fn active_certificate(service: &CertificateService<MemoryStore>) {
    let batch = IssueBatch {
        batch_id: "b".into(),
        job: 1,
        rejected: 0,
        certificates: vec![NewCertificate {
            id: uuid::Uuid::now_v7(),
            code_digest: CodeDigest([1; 32]),
            code_last4: "ABCD".into(),
            nominal: rub(NOMINAL),
            expires_at: None,
            cvc_verifier: [0; 32],
            sealed_cvc: SealedCvc {
                key_id: "k".into(),
                wrapped_key: vec![],
                ciphertext: vec![],
            },
        }],
        channel: Channel::BatchLoader,
        initiator: None,
        source_event: None,
    };
    service.issue(&batch, None).await.unwrap();
    let activate = OperationRequest {
        command: Command::Activate {
            links: SaleLinks::default(),
            price: None,
        },
        operation: op("activate"),
        idempotency: None,
        ..request(&Op::Void { key: 0, target: 0 })
    };
    service.apply(activate).await.unwrap();
}

proptest! {
    /// Any sequence of operations, each sent twice, keeps the money invariants; the second
    /// sending replays the first answer and has no effect of its own.
    #[test]
    fn the_service_keeps_the_money_invariants_for_any_sequence(ops in ops()) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let store = MemoryStore::default();
            let service = CertificateService::new(store.clone());
            active_certificate(&service).await;
            let code = CodeDigest([1; 32]);
            for o in &ops {
                let first = service.apply(request(o)).await;
                let second = service.apply(request(o)).await;
                match (&first, &second) {
                    (Ok(a), Ok(b)) => {
                        prop_assert!(b.replayed || a.replayed, "the retry is a replay");
                        prop_assert_eq!(&a.effects, &b.effects);
                    }
                    (Err(ApplyError::Refused(a)), Err(ApplyError::Refused(b))) => {
                        prop_assert!(b.replayed, "the retry replays the stored refusal");
                        prop_assert_eq!((&a.code, &a.detail), (&b.code, &b.detail));
                    }
                    (Err(a), Err(b)) => prop_assert_eq!(a, b),
                    _ => prop_assert!(false, "a retry answered differently: {:?} then {:?}", first, second),
                }
                let view = store.view(&code).await.unwrap().unwrap();
                let balance = store.balance(&code).await.unwrap().unwrap();
                let moved: i64 = view.history.iter().map(|h| h.balance_after - h.balance_before).sum();
                prop_assert!(view.balance >= 0 && view.balance <= NOMINAL);
                prop_assert_eq!(view.balance, NOMINAL + moved, "the history adds up to the balance");
                prop_assert!(balance.available >= 0, "holds exceed the balance");
                prop_assert_eq!(balance.available, view.balance - view.held);
                let expected_state = match view.balance {
                    0 => State::Redeemed,
                    b if b == NOMINAL => State::Active,
                    _ => State::PartiallyRedeemed,
                };
                prop_assert_eq!(view.state, expected_state);
                // A fresh answer tells the balance now; a replay repeats the first answer, whose
                // balance is the one of its time (later operations may have moved it since).
                if let Some(applied) = first.as_ref().ok().filter(|a| !a.replayed) {
                    prop_assert_eq!(applied.balance, view.balance);
                }
            }
            Ok(())
        })?;
    }
}
