//! 100 clients at once on one certificate, each retrying its requests: never overspent, and
//! every retried request has exactly one effect.

use crate::harness::TestApp;
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use std::sync::Arc;

const CLIENTS: usize = 100;
const NOMINAL: i64 = 10_000;
const PRICE: i64 = 150;

#[derive(Debug)]
struct Outcome {
    /// The hold id when the authorize succeeded.
    hold: Option<String>,
    captured: bool,
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn concurrent_authorize_capture_never_overspends(pool: PgPool) {
    let app = Arc::new(TestApp::start(pool).await);
    let (code, cvc) = app.active_certificate(NOMINAL).await;

    let clients = (0..CLIENTS).map(|i| {
        let app = app.clone();
        let (code, cvc) = (code.clone(), cvc.clone());
        async move {
            let key = format!("a-{i}");
            // The same authorize twice at once (a client retrying after a timeout): one is
            // applied, the other is answered 409 in flight or replayed.
            let (first, second) = tokio::join!(
                app.authorize(&code, &cvc, PRICE, &key),
                app.authorize(&code, &cvc, PRICE, &key)
            );
            for (status, body) in [&first, &second] {
                // 429: every place in flight on the certificate stayed taken for the wait (a
                // loaded machine); nothing was applied and the client tries again.
                assert!(
                    matches!(status.as_u16(), 201 | 409 | 422)
                        || (status.as_u16() == 429 && body["code"] == "too-many-attempts"),
                    "authorize {i}: {status} {body}"
                );
            }
            // Retry until the key has a final answer; it must be the same every time.
            let (status, body) = loop {
                let (status, body) = app.authorize(&code, &cvc, PRICE, &key).await;
                if status != StatusCode::CONFLICT && status != StatusCode::TOO_MANY_REQUESTS {
                    break (status, body);
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            };
            for (s, b) in [&first, &second] {
                if *s != StatusCode::CONFLICT && *s != StatusCode::TOO_MANY_REQUESTS {
                    assert_eq!((s, b), (&status, &body), "a replay differs from the first answer");
                }
            }
            if status != StatusCode::CREATED {
                assert_eq!(body["code"], "insufficient-funds", "{body}");
                return Outcome {
                    hold: None,
                    captured: false,
                };
            }
            let hold = body["operation_id"].as_str().unwrap().to_owned();
            let ckey = format!("c-{i}");
            let (status, capture) = app.capture(&code, &hold, PRICE, &ckey).await;
            assert_eq!(status, StatusCode::OK, "capture {i}: {capture}");
            let (again, replay) = app.capture(&code, &hold, PRICE, &ckey).await;
            assert_eq!(again, StatusCode::OK);
            assert_eq!(replay["operation_id"], capture["operation_id"]);
            // A second capture of the same hold under a new key is refused.
            let (status, body): (StatusCode, Value) =
                app.capture(&code, &hold, PRICE, &format!("c2-{i}")).await;
            assert_eq!(status.as_u16(), 409, "{body}");
            Outcome {
                hold: Some(hold),
                captured: true,
            }
        }
    });
    let outcomes = join_all(clients).await;

    let captured = outcomes.iter().filter(|o| o.captured).count() as i64;
    let holds: std::collections::HashSet<&String> = outcomes.iter().filter_map(|o| o.hold.as_ref()).collect();
    assert_eq!(holds.len() as i64, captured, "hold ids are distinct");
    assert!(captured > 0, "some clients must have succeeded");
    assert!(captured * PRICE <= NOMINAL, "overspent: {captured} captures");
    // With all clients done, every capture that fit did: what is left is less than one price.
    let (status, balance) = app.balance(&code, &cvc).await;
    assert_eq!(status, StatusCode::OK);
    let left = balance["balance_minor"].as_i64().unwrap();
    assert_eq!(left, NOMINAL - captured * PRICE);
    assert_eq!(balance["available_minor"], left, "no hold is left behind");
    assert!(
        left < PRICE * 2,
        "authorizes were refused while money was left: {left}"
    );

    // PostgreSQL agrees: one operation row per applied request, the balance is the sum.
    let (authorizes, captures, spent): (i64, i64, Option<i64>) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE action = 'authorize'),
                count(*) FILTER (WHERE action = 'capture'),
                sum(amount) FILTER (WHERE action = 'capture')::bigint
           FROM gift_certificate_operation",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(authorizes, captured);
    assert_eq!(captures, captured);
    assert_eq!(spent, Some(captured * PRICE));
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'capture'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(audited, captured);
}
