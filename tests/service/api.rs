//! The HTTP API: the happy paths, idempotency, authentication, and every refusal as a problem
//! document with a stable code.

use crate::harness::{logs, new_code, TestApp};
use gift_certificates::auth::Channel;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

fn assert_problem(status: StatusCode, body: &Value, expected_status: u16, code: &str) {
    assert_eq!(status.as_u16(), expected_status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], expected_status, "{body}");
    assert_eq!(body["type"], format!("/problems/{code}"), "{body}");
    assert!(body["title"].as_str().is_some_and(|t| !t.is_empty()), "{body}");
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn authorize_capture_void_and_history(pool: PgPool) {
    let app = TestApp::start(pool).await;
    let (code, cvc) = app.active_certificate(10_000).await;

    let (status, hold) = app.authorize(&code, &cvc, 3_000, "auth-1").await;
    assert_eq!(status, StatusCode::CREATED, "{hold}");
    assert_eq!(hold["action"], "authorize");
    assert_eq!(hold["balance_minor"], 10_000);
    assert_eq!(hold["available_minor"], 7_000);
    assert!(hold["expires_at"].is_string());
    let hold_id = hold["operation_id"].as_str().unwrap().to_owned();

    // Partial capture: 2,000 of the 3,000 held; the other 1,000 is released.
    let (status, capture) = app.capture(&code, &hold_id, 2_000, "cap-1").await;
    assert_eq!(status, StatusCode::OK, "{capture}");
    assert_eq!(capture["balance_minor"], 8_000);
    assert_eq!(capture["available_minor"], 8_000);
    assert_eq!(capture["state"], "PartiallyRedeemed");
    let capture_id = capture["operation_id"].as_str().unwrap().to_owned();

    let (status, balance) = app.balance(&code, &cvc).await;
    assert_eq!(status, StatusCode::OK, "{balance}");
    assert_eq!(balance["balance_minor"], 8_000);
    assert_eq!(balance["code_masked"], format!("****-****-****-{}", &code[12..]));

    // Void of a capture reverses it: the money returns to the certificate.
    let (status, void) = app
        .call(app.post(
            Channel::Pos,
            &format!("/certificates/{code}/void"),
            "void-1",
            &json!({"target_id": capture_id}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{void}");
    assert_eq!(void["balance_minor"], 10_000);
    assert_eq!(void["state"], "Active");

    let (status, view) = app
        .call(app.get(Channel::Internal, &format!("/certificates/{code}")))
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    let text = view.to_string();
    assert!(!text.contains(&code), "the view shows the whole code: {text}");
    assert!(
        !backbone_tests::gift::without_generated_fields(&view).contains(&cvc),
        "the view shows the CVC: {text}"
    );
    let actions: Vec<&str> = view["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["activate", "authorize", "capture", "void"]);
    assert_eq!(view["state"], "Active");
    assert_eq!(view["client_id"], "client-1");

    // Every operation has its audit row with the balance before and after, and its events.
    let audit: Vec<(String, Option<i64>, Option<i64>, String)> = sqlx::query_as(
        "SELECT action, balance_before, balance_after, channel FROM audit_log
          WHERE certificate_id = $1::uuid AND action IN ('authorize', 'capture', 'void') ORDER BY id",
    )
    .bind(view["certificate_id"].as_str().unwrap())
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        audit,
        [
            ("authorize".into(), Some(10_000), Some(10_000), "POS".into()),
            ("capture".into(), Some(10_000), Some(8_000), "POS".into()),
            ("void".into(), Some(8_000), Some(10_000), "POS".into()),
        ]
    );
    let transactions: Vec<String> = sqlx::query_scalar(
        "SELECT payload->>'type' FROM outbox WHERE topic = 'GiftCertificateTransaction' AND key = $1 ORDER BY id",
    )
    .bind(view["certificate_id"].as_str().unwrap())
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(transactions, ["activate", "authorize", "capture", "void"]);
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn the_same_key_replays_and_a_different_body_is_refused(pool: PgPool) {
    let app = TestApp::start(pool).await;
    let (code, cvc) = app.active_certificate(10_000).await;

    let (status, first) = app.authorize(&code, &cvc, 1_000, "same-key").await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let response = app
        .post(
            Channel::Pos,
            &format!("/certificates/{code}/authorize"),
            "same-key",
            &json!({"amount_minor": 1_000, "currency": "RUB", "cvc": cvc}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["idempotent-replayed"], "true");
    let replay: Value = response.json().await.unwrap();
    assert_eq!(replay["operation_id"], first["operation_id"]);
    assert_eq!(replay["available_minor"], 9_000);

    let (status, body) = app.authorize(&code, &cvc, 2_000, "same-key").await;
    assert_problem(status, &body, 422, "idempotency-key-reused");

    // One effect: one hold of 1,000.
    let (_, balance) = app.balance(&code, &cvc).await;
    assert_eq!(balance["available_minor"], 9_000);
    let holds: i64 = sqlx::query_scalar("SELECT count(*) FROM gift_certificate_hold")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(holds, 1);

    // A refusal is replayed too: the same key cannot later succeed with the same body.
    let (status, body) = app.authorize(&code, &cvc, 50_000, "too-much").await;
    assert_problem(status, &body, 422, "insufficient-funds");
    let (status, again) = app.authorize(&code, &cvc, 50_000, "too-much").await;
    assert_problem(status, &again, 422, "insufficient-funds");
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn a_key_still_in_flight_is_409(pool: PgPool) {
    let app = TestApp::start(pool).await;
    let (code, cvc) = app.active_certificate(10_000).await;
    // Hold the certificate's row lock in another transaction, so the first request waits
    // inside its transaction with the key claimed; the second with the same key must not wait.
    let mut blocker = app.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM gift_certificate FOR UPDATE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let first = {
        let app_base = app.base.clone();
        let http = app.http.clone();
        let (code, cvc) = (code.clone(), cvc.clone());
        tokio::spawn(async move {
            http.post(format!("{app_base}/certificates/{code}/authorize"))
                .bearer_auth(crate::harness::token(Channel::Pos))
                .header("idempotency-key", "slow")
                .json(&json!({"amount_minor": 500, "currency": "RUB", "cvc": cvc}))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    // Wait until the first request holds the key's lock.
    let mut waited = 0;
    loop {
        // Waiting on the row lock means it already holds its key (this database only: other
        // tests hold locks of their own).
        let locks: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if locks > 0 {
            break;
        }
        waited += 1;
        assert!(waited < 200, "the first request never claimed its key");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (status, body) = app.authorize(&code, &cvc, 500, "slow").await;
    assert_problem(status, &body, 409, "idempotency-in-flight");
    blocker.rollback().await.unwrap();
    assert_eq!(first.await.unwrap(), StatusCode::CREATED);
    let (status, _) = app.authorize(&code, &cvc, 500, "slow").await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "after the first finished, the key replays"
    );
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn every_bad_input_is_a_4xx_problem(pool: PgPool) {
    let app = TestApp::start(pool).await;
    let (code, cvc) = app.active_certificate(10_000).await;
    let authorize = format!("/certificates/{code}/authorize");
    let raw = |body: &'static str, key: &str| {
        app.http
            .post(format!("{}{authorize}", app.base))
            .bearer_auth(crate::harness::token(Channel::Pos))
            .header("idempotency-key", key)
            .header("content-type", "application/json")
            .body(body)
    };
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        ("bad JSON", raw("{\"amount_minor\": 1", "k1"), 400, "bad-request"),
        ("not an object", raw("[1,2]", "k2"), 400, "bad-request"),
        (
            "unknown field",
            app.post(Channel::Pos, &authorize, "k3", &json!({"amount_minor": 1, "currency": "RUB", "cvc": cvc, "tip": 5})),
            400,
            "bad-request",
        ),
        (
            "zero amount",
            app.post(Channel::Pos, &authorize, "k4", &json!({"amount_minor": 0, "currency": "RUB", "cvc": cvc})),
            422,
            "invalid-amount",
        ),
        (
            "negative amount",
            app.post(Channel::Pos, &authorize, "k5", &json!({"amount_minor": -5, "currency": "RUB", "cvc": cvc})),
            422,
            "invalid-amount",
        ),
        (
            "amount as a string",
            app.post(Channel::Pos, &authorize, "k6", &json!({"amount_minor": "10", "currency": "RUB", "cvc": cvc})),
            400,
            "bad-request",
        ),
        (
            "bad currency",
            app.post(Channel::Pos, &authorize, "k7", &json!({"amount_minor": 10, "currency": "rubles", "cvc": cvc})),
            422,
            "invalid-currency",
        ),
        (
            "currency mismatch",
            app.post(Channel::Pos, &authorize, "k8", &json!({"amount_minor": 10, "currency": "EUR", "cvc": cvc})),
            422,
            "currency-mismatch",
        ),
        (
            "insufficient funds",
            app.post(Channel::Pos, &authorize, "k9", &json!({"amount_minor": 10_001, "currency": "RUB", "cvc": cvc})),
            422,
            "insufficient-funds",
        ),
        (
            "hold lifetime out of range",
            app.post(Channel::Pos, &authorize, "k10", &json!({"amount_minor": 10, "currency": "RUB", "cvc": cvc, "hold_seconds": 0})),
            422,
            "bad-hold-expiry",
        ),
        (
            "missing CVC",
            app.post(Channel::Pos, &authorize, "k11", &json!({"amount_minor": 10, "currency": "RUB", "cvc": ""})),
            400,
            "cvc-required",
        ),
        (
            "wrong CVC",
            app.post(Channel::Pos, &authorize, "k12", &json!({"amount_minor": 10, "currency": "RUB", "cvc": if cvc == "999" { "998" } else { "999" }})),
            404,
            "certificate-not-found",
        ),
        (
            "unknown code",
            app.post(Channel::Pos, &format!("/certificates/{}/authorize", new_code()), "k13", &json!({"amount_minor": 10, "currency": "RUB", "cvc": cvc})),
            404,
            "certificate-not-found",
        ),
        (
            "malformed code",
            app.post(Channel::Pos, "/certificates/NOT-A-CODE/authorize", "k14", &json!({"amount_minor": 10, "currency": "RUB", "cvc": cvc})),
            404,
            "certificate-not-found",
        ),
        (
            "no Idempotency-Key",
            app.http.post(format!("{}{authorize}", app.base)).bearer_auth(crate::harness::token(Channel::Pos)).json(&json!({"amount_minor": 10, "currency": "RUB", "cvc": cvc})),
            400,
            "idempotency-key-required",
        ),
        (
            "no token",
            app.http.post(format!("{}{authorize}", app.base)).header("idempotency-key", "k15").json(&json!({"amount_minor": 10, "currency": "RUB", "cvc": cvc})),
            401,
            "unauthenticated",
        ),
        (
            "unknown token",
            app.http.post(format!("{}{authorize}", app.base)).bearer_auth("not-a-token-of-any-channel-at-all").header("idempotency-key", "k16").json(&json!({"amount_minor": 10, "currency": "RUB", "cvc": cvc})),
            401,
            "unauthenticated",
        ),
        (
            "a channel without the scope",
            app.post(Channel::BatchLoader, &authorize, "k17", &json!({"amount_minor": 10, "currency": "RUB", "cvc": cvc})),
            403,
            "forbidden",
        ),
        (
            "capture of an unknown hold",
            app.post(Channel::Pos, &format!("/certificates/{code}/capture"), "k18", &json!({"hold_id": "no-such-hold", "amount_minor": 10, "currency": "RUB"})),
            404,
            "unknown-hold",
        ),
        (
            "activate twice",
            app.post(Channel::Payments, &format!("/certificates/{code}/activate"), "k19", &json!({})),
            409,
            "wrong-state",
        ),
        (
            "activate with a bad phone",
            app.post(Channel::Payments, &format!("/certificates/{code}/activate"), "k20", &json!({"phone": "call me"})),
            400,
            "bad-request",
        ),
        (
            "no such endpoint",
            app.get(Channel::Pos, "/certificates"),
            400,
            "bad-request",
        ),
    ];
    for (what, request, status, code) in cases {
        let response = request.send().await.unwrap();
        let got = response.status();
        let content_type = response.headers().get("content-type").cloned();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(got.as_u16(), status, "{what}: {body}");
        assert_eq!(body["code"], code, "{what}: {body}");
        assert_eq!(
            content_type.unwrap().to_str().unwrap(),
            "application/problem+json",
            "{what}"
        );
    }
    // None of that moved money.
    let (_, balance) = app.balance(&code, &cvc).await;
    assert_eq!(balance["available_minor"], 10_000);
    assert_eq!(balance["balance_minor"], 10_000);
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn wrong_state_and_expired_hold_are_refused(pool: PgPool) {
    let app = TestApp::start(pool).await;
    // Issued, not sold yet: nothing can be spent from it.
    let code = new_code();
    app.upload("state-batch", 0, &[(code.clone(), "123".into())], 5_000)
        .await;
    let (status, body) = app.authorize(&code, "123", 100, "issued-1").await;
    assert_problem(status, &body, 409, "wrong-state");

    let (code, cvc) = app.active_certificate(5_000).await;
    let (status, hold) = app
        .call(app.post(
            Channel::Pos,
            &format!("/certificates/{code}/authorize"),
            "short-hold",
            &json!({"amount_minor": 1_000, "currency": "RUB", "cvc": cvc, "hold_seconds": 1}),
        ))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hold}");
    let hold_id = hold["operation_id"].as_str().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let (status, body) = app.capture(&code, hold_id, 1_000, "late-capture").await;
    assert_problem(status, &body, 422, "hold-expired");
    // The refusal released the hold on the way: the money is available again.
    let (_, balance) = app.balance(&code, &cvc).await;
    assert_eq!(balance["available_minor"], 5_000);

    // Capture more than held.
    let (_, hold) = app.authorize(&code, &cvc, 1_000, "hold-2").await;
    let (status, body) = app
        .capture(&code, hold["operation_id"].as_str().unwrap(), 1_001, "cap-2")
        .await;
    assert_problem(status, &body, 422, "capture-exceeds-hold");

    // Cancel ends the certificate; the hold is released and nothing else works.
    let (status, cancelled) = app
        .call(app.post(
            Channel::Internal,
            &format!("/certificates/{code}/cancel"),
            "cancel-1",
            &json!({}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["state"], "Cancelled");
    assert_eq!(cancelled["available_minor"], cancelled["balance_minor"]);
    let (status, body) = app.authorize(&code, &cvc, 10, "after-cancel").await;
    assert_problem(status, &body, 409, "wrong-state");
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn the_sweeper_releases_expired_holds_with_an_event(pool: PgPool) {
    let app = TestApp::start(pool).await;
    let (code, cvc) = app.active_certificate(5_000).await;
    let (status, hold) = app
        .call(app.post(
            Channel::Pos,
            &format!("/certificates/{code}/authorize"),
            "sweep-hold",
            &json!({"amount_minor": 2_000, "currency": "RUB", "cvc": cvc, "hold_seconds": 1}),
        ))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hold}");
    assert_eq!(
        gift_certificates::sweep_once(&app.state).await.unwrap(),
        0,
        "not due yet"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    assert_eq!(gift_certificates::sweep_once(&app.state).await.unwrap(), 1);
    assert_eq!(
        gift_certificates::sweep_once(&app.state).await.unwrap(),
        0,
        "released once"
    );
    let (_, balance) = app.balance(&code, &cvc).await;
    assert_eq!(balance["available_minor"], 5_000);
    let expired: Vec<Value> = sqlx::query_scalar(
        "SELECT payload FROM outbox WHERE topic = 'GiftCertificateTransaction' AND payload->>'type' = 'expire'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0]["target_id"], hold["operation_id"], "{}", expired[0]);
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn wrong_cvcs_lock_the_certificate_with_a_generic_error(pool: PgPool) {
    let app = TestApp::start(pool).await;
    let (code, cvc) = app.active_certificate(5_000).await;
    let wrong = if cvc == "0000" { "0001" } else { "0000" };
    // Four failures, then the right CVC: it is not a failure, and it does not wipe the others
    // (as documented: the lockout runs from the first failure).
    for i in 0..4 {
        let (status, _) = app.authorize(&code, wrong, 100, &format!("early-{i}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let (status, _) = app.authorize(&code, &cvc, 100, "right-in-between").await;
    assert_eq!(status, StatusCode::CREATED);
    for i in 0..1 {
        let (status, body) = app.authorize(&code, wrong, 100, &format!("wrong-{i}")).await;
        // The same answer as an unknown code: nothing tells a guesser which part was wrong.
        assert_problem(status, &body, 404, "certificate-not-found");
    }
    let (status, body) = app.authorize(&code, &cvc, 100, "right-but-locked").await;
    assert_problem(status, &body, 429, "too-many-attempts");
    assert!(body["retry_after_seconds"].as_u64().unwrap() > 0);
    let (status, body) = app.balance(&code, &cvc).await;
    assert_problem(status, &body, 429, "too-many-attempts");
    // Another certificate on the same channel still works.
    let (other, other_cvc) = app.active_certificate(5_000).await;
    let (status, _) = app.authorize(&other, &other_cvc, 100, "other").await;
    assert_eq!(status, StatusCode::CREATED);
}

/// A cached certificate's balance check is verified in Redis in one round trip: the same answer
/// as the long way, and wrong CVCs counted toward the same lockout.
#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn cached_balance_checks_answer_alike_and_count_wrong_cvcs(pool: PgPool) {
    let app = TestApp::start(pool).await;
    let (code, cvc) = app.active_certificate(5_000).await;
    let wrong = if cvc == "0000" { "0001" } else { "0000" };
    let hits = || app.state.metrics.cache.with_label_values(&["hit"]).get();
    let (status, long_way) = app.balance(&code, &cvc).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(hits(), 0, "the first check fills the cache");
    let (status, cached) = app.balance(&code, &cvc).await;
    assert_eq!((status, &cached), (StatusCode::OK, &long_way));
    assert_eq!(hits(), 1);
    for _ in 0..5 {
        let (status, body) = app.balance(&code, wrong).await;
        assert_problem(status, &body, 404, "certificate-not-found");
    }
    assert_eq!(hits(), 6, "the wrong CVCs were checked against the cache");
    let (status, body) = app.balance(&code, &cvc).await;
    assert_problem(status, &body, 429, "too-many-attempts");
    let (status, body) = app.authorize(&code, &cvc, 100, "locked").await;
    assert_problem(status, &body, 429, "too-many-attempts");
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn a_stale_cache_cannot_allow_overspending(pool: PgPool) {
    use backbone_certificates::store::BalanceView;
    let app = TestApp::start(pool).await;
    let (code, cvc) = app.active_certificate(5_000).await;
    let digest = hex::encode(
        app.state
            .keys
            .code_digest(&backbone_certificates::GiftCode::parse(&code).unwrap())
            .0,
    );
    // A balance check fills the cache.
    let (_, checked) = app.balance(&code, &cvc).await;
    assert_eq!(checked["available_minor"], 5_000);
    let stale: BalanceView = app.state.cache.get(&digest).await.unwrap().expect("cached");
    // Spend 4,000, then put the old entry back, as if the invalidation had been lost.
    let (status, hold) = app.authorize(&code, &cvc, 4_000, "spend").await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = app
        .capture(&code, hold["operation_id"].as_str().unwrap(), 4_000, "spend-cap")
        .await;
    assert_eq!(status, StatusCode::OK);
    app.state
        .cache
        .put(&digest, &stale.cvc_verifier, &stale)
        .await
        .unwrap();
    let (_, shown) = app.balance(&code, &cvc).await;
    assert_eq!(
        shown["available_minor"], 5_000,
        "balance checks see the stale entry"
    );
    // A debit never reads the cache: PostgreSQL has 1,000 left.
    let (status, body) = app.authorize(&code, &cvc, 2_000, "overspend").await;
    assert_problem(status, &body, 422, "insufficient-funds");
    let id = shown["certificate_id"].as_str().unwrap().to_owned();
    assert_eq!(app.stored(&id).await, (1_000, "PartiallyRedeemed".to_owned()));
    // A committed debit drops the stale entry.
    let (status, _) = app.authorize(&code, &cvc, 500, "fits").await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, fresh) = app.balance(&code, &cvc).await;
    assert_eq!(fresh["available_minor"], 500);
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn logs_never_show_codes_or_cvcs(pool: PgPool) {
    let app = TestApp::start(pool).await;
    let (code, cvc) = app.active_certificate(5_000).await;
    let (_, hold) = app.authorize(&code, &cvc, 100, "log-1").await;
    app.capture(&code, hold["operation_id"].as_str().unwrap(), 100, "log-2")
        .await;
    app.authorize(&code, "0001", 100, "log-3").await;
    app.authorize(&code, &cvc, 100, "log-1").await;
    app.balance(&code, &cvc).await;
    app.balance(&code, "0002").await;
    app.call(app.get(Channel::Internal, &format!("/certificates/{code}")))
        .await;
    let unknown = new_code();
    app.authorize(&unknown, &cvc, 100, "log-4").await;
    app.call(
        app.http
            .post(format!("{}/certificates/{code}/authorize", app.base))
            .bearer_auth(crate::harness::token(Channel::Pos))
            .header("idempotency-key", "log-5")
            .header("content-type", "application/json")
            .body(format!("{{\"cvc\": \"{cvc}\", \"amount_minor\": ")),
    )
    .await;
    let text = logs().text();
    assert!(
        text.contains("\"route\":\"/certificates/{code}/authorize\""),
        "request spans are logged by route template"
    );
    for secret in [code.as_str(), &code[..12], unknown.as_str()] {
        assert!(!text.contains(secret), "a code reached the logs");
    }
    let grouped = backbone_certificates::GiftCode::parse(&code).unwrap().grouped();
    assert!(!text.contains(&grouped), "a grouped code reached the logs");
    for pattern in [
        format!("\"{cvc}\""),
        format!("cvc={cvc}"),
        format!("cvc\\\":\\\"{cvc}"),
    ] {
        assert!(!text.contains(&pattern), "the CVC reached the logs as {pattern}");
    }
}

/// The committed document is what the code generates (`UPDATE_OPENAPI=1` rewrites it), and the
/// service serves the same at `/openapi.json`.
#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn the_openapi_document_is_committed_and_served(pool: PgPool) {
    let committed = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/openapi/gift-certificates-v1.json"
    );
    let generated = gift_certificates::openapi_json() + "\n";
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(committed, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(committed).unwrap_or_default();
    assert!(
        on_disk == generated,
        "docs/openapi/gift-certificates-v1.json is out of date: run UPDATE_OPENAPI=1 cargo test -p backbone-tests --test service openapi"
    );
    let app = TestApp::start(pool).await;
    let served: Value = app
        .http
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served, serde_json::from_str::<Value>(&generated).unwrap());
    for path in [
        "/certificates/upload/batch",
        "/certificates/{code}/activate",
        "/certificates/{code}/authorize",
        "/certificates/{code}/capture",
        "/certificates/{code}/void",
        "/certificates/{code}/balance",
        "/certificates/{code}",
    ] {
        assert!(served["paths"][path].is_object(), "{path} is not documented");
    }
}
