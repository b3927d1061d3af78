use crate::*;
use proptest::prelude::*;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

const T0: OffsetDateTime = datetime!(2026-11-01 10:00 UTC);

fn rub(minor: i64) -> Amount {
    Amount::new(minor, Currency::parse("RUB").unwrap()).unwrap()
}

fn op(s: &str) -> OperationId {
    OperationId::parse(s).unwrap()
}

fn active(nominal: i64) -> Certificate {
    let mut c = Certificate::issue(rub(nominal), None);
    c.activate(op("act"), SaleLinks::default(), None, T0).unwrap();
    c
}

#[test]
fn a_sale_activates_only_at_the_nominal_in_the_certificate_currency() {
    let eur = Amount::new(10_000, Currency::parse("EUR").unwrap()).unwrap();
    for (price, refused) in [
        (rub(1), CertificateError::NominalMismatch),
        (rub(10_001), CertificateError::NominalMismatch),
        (
            eur,
            CertificateError::CurrencyMismatch {
                expected: Currency::parse("RUB").unwrap(),
                got: eur.currency(),
            },
        ),
    ] {
        let mut c = Certificate::issue(rub(10_000), None);
        let sale = execute(
            &mut c,
            op("sale:o:1"),
            &Command::Activate {
                links: SaleLinks::default(),
                price: Some(price),
            },
            T0,
        );
        assert_eq!(sale, Err(refused.clone()), "{price}");
        assert_eq!(
            refused.code(),
            if price.currency() == eur.currency() {
                "currency-mismatch"
            } else {
                "nominal-mismatch"
            }
        );
        assert_eq!(c.state(), State::Issued);
    }
    let mut c = Certificate::issue(rub(10_000), None);
    let sold = Command::Activate {
        links: SaleLinks::default(),
        price: Some(rub(10_000)),
    };
    assert!(execute(&mut c, op("sale:o:1"), &sold, T0).is_ok());
    assert_eq!(c.state(), State::Active);
}

#[test]
fn sale_then_partial_use_then_full_use() {
    let mut c = Certificate::issue(rub(10_000), Some(T0 + Duration::days(365)));
    assert_eq!(c.state(), State::Issued);
    let links = SaleLinks {
        client_id: Some("c1".into()),
        order_id: Some("o1".into()),
        payment_id: Some("p1".into()),
    };
    c.activate(op("sale"), links.clone(), None, T0).unwrap();
    assert_eq!((c.state(), c.links()), (State::Active, &links));

    c.authorize(op("a1"), rub(3_000), T0 + Duration::minutes(15), T0)
        .unwrap();
    assert_eq!(c.available(T0), 7_000);
    let e = c.capture(op("c1"), op("a1"), rub(2_500), T0).unwrap();
    assert_eq!(
        (e.balance_before, e.balance_after, e.state_after),
        (10_000, 7_500, State::PartiallyRedeemed)
    );
    assert_eq!(
        c.available(T0),
        7_500,
        "the uncaptured rest of the hold is released"
    );

    c.authorize(op("a2"), rub(7_500), T0 + Duration::minutes(15), T0)
        .unwrap();
    c.capture(op("c2"), op("a2"), rub(7_500), T0).unwrap();
    assert_eq!((c.balance(), c.state()), (0, State::Redeemed));
    assert!(matches!(
        c.authorize(op("a3"), rub(1), T0 + Duration::minutes(1), T0),
        Err(CertificateError::InvalidTransition {
            state: State::Redeemed,
            ..
        })
    ));
}

#[test]
fn void_releases_a_hold_or_reverses_a_capture() {
    let mut c = active(1_000);
    c.authorize(op("a1"), rub(400), T0 + Duration::minutes(5), T0)
        .unwrap();
    c.void(op("v1"), op("a1"), T0).unwrap();
    assert_eq!(c.available(T0), 1_000);
    assert_eq!(
        c.void(op("v1b"), op("a1"), T0),
        Err(CertificateError::HoldNotActive(op("a1")))
    );

    c.authorize(op("a2"), rub(1_000), T0 + Duration::minutes(5), T0)
        .unwrap();
    c.capture(op("c2"), op("a2"), rub(1_000), T0).unwrap();
    assert_eq!(c.state(), State::Redeemed);
    let refund = c.void(op("v2"), op("c2"), T0).unwrap();
    assert_eq!((refund.amount, refund.state_after), (Some(1_000), State::Active));
    assert_eq!(
        c.void(op("v3"), op("c2"), T0),
        Err(CertificateError::AlreadyReversed(op("c2")))
    );
}

#[test]
fn refused_operations_say_why_and_change_nothing() {
    let mut c = active(1_000);
    let before = c.clone();
    let usd = Amount::new(10, Currency::parse("USD").unwrap()).unwrap();
    let cases = [
        c.authorize(op("x1"), rub(1_001), T0 + Duration::minutes(1), T0)
            .unwrap_err(),
        c.authorize(op("x2"), usd, T0 + Duration::minutes(1), T0)
            .unwrap_err(),
        c.authorize(op("x3"), rub(1), T0, T0).unwrap_err(),
        c.capture(op("x4"), op("nope"), rub(1), T0).unwrap_err(),
        c.activate(op("x5"), SaleLinks::default(), None, T0).unwrap_err(),
    ];
    assert!(matches!(
        cases[0],
        CertificateError::InsufficientFunds {
            available: 1_000,
            requested: 1_001
        }
    ));
    assert!(matches!(cases[1], CertificateError::CurrencyMismatch { .. }));
    assert_eq!(cases[2], CertificateError::HoldExpiryInPast);
    assert_eq!(cases[3], CertificateError::UnknownOperation(op("nope")));
    assert!(matches!(
        cases[4],
        CertificateError::InvalidTransition {
            state: State::Active,
            action: "activate"
        }
    ));
    assert_eq!(c, before);
}

#[test]
fn an_expired_hold_cannot_be_captured_and_is_swept_once() {
    let mut c = active(1_000);
    let expiry = T0 + Duration::minutes(15);
    c.authorize(op("a1"), rub(600), expiry, T0).unwrap();
    assert_eq!(
        c.available(expiry),
        1_000,
        "an expired hold no longer reserves money"
    );
    assert_eq!(
        c.capture(op("c1"), op("a1"), rub(600), expiry),
        Err(CertificateError::HoldExpired(op("a1")))
    );
    let swept = c.expire_holds(expiry);
    assert_eq!(swept.len(), 1);
    assert_eq!(swept[0].action, Action::Expire { hold: op("a1") });
    assert!(c.expire_holds(expiry + Duration::hours(1)).is_empty());
    assert_eq!(c.holds()[&op("a1")].status, HoldStatus::Expired);
}

#[test]
fn the_same_operation_id_replays_and_a_different_request_under_it_conflicts() {
    let mut c = active(1_000);
    let first = c
        .authorize(op("k"), rub(100), T0 + Duration::minutes(5), T0)
        .unwrap();
    let again = c
        .authorize(op("k"), rub(100), T0 + Duration::minutes(5), T0)
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(c.available(T0), 900, "one effect");
    assert_eq!(
        c.authorize(op("k"), rub(200), T0 + Duration::minutes(5), T0),
        Err(CertificateError::IdempotencyConflict(op("k")))
    );
}

#[test]
fn refund_and_cancel_end_the_certificate() {
    let mut c = active(1_000);
    c.refund(op("r"), T0).unwrap();
    assert_eq!(c.state(), State::Refunded);
    assert!(c.cancel(op("x"), T0).is_err());

    let mut spent = active(1_000);
    spent
        .authorize(op("a"), rub(10), T0 + Duration::minutes(5), T0)
        .unwrap();
    assert_eq!(spent.refund(op("r"), T0), Err(CertificateError::InUse));
    spent.cancel(op("x"), T0).unwrap();
    assert_eq!(spent.state(), State::Cancelled);
    assert_eq!(spent.holds()[&op("a")].status, HoldStatus::Released);
    assert!(spent
        .authorize(op("b"), rub(1), T0 + Duration::minutes(5), T0)
        .is_err());
}

#[test]
fn an_expired_certificate_cannot_be_activated_or_spent() {
    let mut c = Certificate::issue(rub(100), Some(T0));
    assert_eq!(
        c.activate(op("s"), SaleLinks::default(), None, T0),
        Err(CertificateError::CertificateExpired(T0))
    );
}

#[derive(Debug, Clone)]
enum Op {
    Authorize { key: u8, amount: i64, ttl_min: i64 },
    Capture { key: u8, hold: u8, amount: i64 },
    Void { key: u8, target: u8 },
    Sweep,
    Tick { minutes: i64 },
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        (0u8..20, 1i64..600, 1i64..30).prop_map(|(key, amount, ttl_min)| Op::Authorize {
            key,
            amount,
            ttl_min
        }),
        (20u8..40, 0u8..20, 1i64..600).prop_map(|(key, hold, amount)| Op::Capture { key, hold, amount }),
        (40u8..60, 0u8..40).prop_map(|(key, target)| Op::Void { key, target }),
        Just(Op::Sweep),
        (1i64..10).prop_map(|minutes| Op::Tick { minutes }),
    ];
    proptest::collection::vec(op, 1..80)
}

proptest! {
    /// Any sequence of operations keeps the money invariants, and repeating an operation id has
    /// no second effect.
    #[test]
    fn invariants_hold_for_any_sequence(ops in ops()) {
        let nominal = 1_000;
        let mut c = active(nominal);
        let mut now = T0;
        let id = |n: u8| op(&format!("op-{n}"));
        for o in ops {
            let before = c.clone();
            let result = match &o {
                Op::Authorize { key, amount, ttl_min } =>
                    c.authorize(id(*key), rub(*amount), now + Duration::minutes(*ttl_min), now).map(|_| ()),
                Op::Capture { key, hold, amount } => c.capture(id(*key), id(*hold), rub(*amount), now).map(|_| ()),
                Op::Void { key, target } => c.void(id(*key), id(*target), now).map(|_| ()),
                Op::Sweep => { c.expire_holds(now); Ok(()) }
                Op::Tick { minutes } => { now += Duration::minutes(*minutes); Ok(()) }
            };
            if result.is_err() {
                prop_assert_eq!(&c, &before, "a refused operation changed the certificate");
            }
            // Replaying the same request is a no-op.
            let replay = c.clone();
            let _ = match &o {
                Op::Authorize { key, amount, ttl_min } =>
                    c.authorize(id(*key), rub(*amount), now + Duration::minutes(*ttl_min), now).map(|_| ()),
                Op::Capture { key, hold, amount } => c.capture(id(*key), id(*hold), rub(*amount), now).map(|_| ()),
                Op::Void { key, target } => c.void(id(*key), id(*target), now).map(|_| ()),
                _ => Ok(()),
            };
            prop_assert_eq!(&c, &replay, "a replay had an effect");

            let captured: i64 = c.captures().values().map(|k| k.amount).sum();
            let returned: i64 = c.captures().values().filter(|k| k.reversed).map(|k| k.amount).sum();
            prop_assert!(c.balance() >= 0 && c.balance() <= nominal);
            prop_assert_eq!(c.balance(), nominal - captured + returned);
            prop_assert!(c.available(now) >= 0, "holds exceed the balance");
            let expected_state = match c.balance() {
                0 => State::Redeemed,
                b if b == nominal => State::Active,
                _ => State::PartiallyRedeemed,
            };
            prop_assert_eq!(c.state(), expected_state);
        }
    }
}
