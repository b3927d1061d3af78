//! Sales in PostgreSQL: an order and its payments in any order, delivered more than once, even
//! stored at the same moment by two consumers, activate the certificate exactly once.

use crate::harness::{new_code, TestApp};
use backbone_certificates::sale::{OrderLine, PaymentRecord, SaleOrder};
use backbone_certificates::GiftCode;
use futures::future::join_all;
use sqlx::PgPool;

fn sale(app: &TestApp, order_id: &str, code: &str) -> SaleOrder {
    SaleOrder {
        order_id: order_id.into(),
        client_id: Some("client-1".into()),
        phone: None,
        currency: "RUB".into(),
        total_minor: 3_000,
        lines: vec![OrderLine {
            line_id: "1".into(),
            code_digest: app.state.keys.code_digest(&GiftCode::parse(code).unwrap()),
            code_last4: Some(code[12..].to_owned()),
            amount_minor: 3_000,
        }],
        source_event: format!("order-event-{order_id}"),
    }
}

fn paid(order_id: &str, n: u8, amount: i64) -> PaymentRecord {
    PaymentRecord {
        payment_id: format!("{order_id}-p{n}"),
        order_id: order_id.into(),
        currency: "RUB".into(),
        amount_minor: amount,
        source_event: format!("payment-event-{order_id}-{n}"),
    }
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn orders_and_payments_at_the_same_moment_activate_exactly_once(pool: PgPool) {
    let app = TestApp::start(pool).await;
    let certificates = &app.state.certificates;
    let orders = 30;
    let codes: Vec<(String, String)> = (0..orders).map(|_| (new_code(), "555".to_owned())).collect();
    app.upload("sales", 0, &codes, 3_000).await;

    // Per order: the first payment part, then the order and the last part (twice) at once.
    let runs = codes.iter().enumerate().map(|(i, (code, _))| {
        let order_id = format!("order-{i}");
        let order = sale(&app, &order_id, code);
        async move {
            certificates
                .record_payment(&paid(&order_id, 1, 1_000))
                .await
                .unwrap();
            let last = paid(&order_id, 2, 2_000);
            let (a, b, c) = tokio::join!(
                certificates.record_order(&order),
                certificates.record_payment(&last),
                certificates.record_payment(&last),
            );
            [a.unwrap(), b.unwrap(), c.unwrap()]
                .into_iter()
                .flatten()
                .filter(|x| !x.activated.is_empty())
                .count()
        }
    });
    let activations: Vec<usize> = join_all(runs).await;
    assert!(
        activations.iter().all(|n| *n == 1),
        "activations per order: {activations:?}"
    );
    let active: i64 = sqlx::query_scalar("SELECT count(*) FROM gift_certificate WHERE state = 'Active'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(active, orders as i64);
    let operations: i64 =
        sqlx::query_scalar("SELECT count(*) FROM gift_certificate_operation WHERE action = 'activate'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(operations, orders as i64);

    // Everything delivered again: nothing changes.
    let order = sale(&app, "order-0", &codes[0].0);
    let again = certificates.record_order(&order).await.unwrap();
    assert!(again.is_none_or(|a| a.activated.is_empty()));
    let again = certificates
        .record_payment(&paid("order-0", 2, 2_000))
        .await
        .unwrap();
    assert!(again.is_none_or(|a| a.activated.is_empty()));
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn an_order_for_an_unknown_or_sold_certificate_is_reported(pool: PgPool) {
    let app = TestApp::start(pool).await;
    let certificates = &app.state.certificates;
    let (sold, _) = app.active_certificate(3_000).await;
    let unknown = new_code();
    for (order_id, code) in [("o-sold", sold.as_str()), ("o-unknown", unknown.as_str())] {
        certificates
            .record_order(&sale(&app, order_id, code))
            .await
            .unwrap();
        let outcome = certificates
            .record_payment(&paid(order_id, 1, 3_000))
            .await
            .unwrap()
            .expect("the payment completes the sale");
        assert!(outcome.activated.is_empty(), "{outcome:?}");
        assert_eq!(outcome.problems.len(), 1, "{outcome:?}");
    }
}
