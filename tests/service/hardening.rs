//! The API's limits and contracts as a client nobody here wrote meets them: limits that hold
//! under bursts, no oracle for codes, CVCs or holds, no input echoed, every documented answer
//! exact. Each test names the behaviour it pins down.

use crate::harness::{new_code, TestApp};
use futures::future::join_all;
use gift_certificates::auth::Channel;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::sync::Arc;

fn wrong_cvc(right: &str, n: usize) -> String {
    let guess = format!("{:04}", n % 10_000);
    if guess == right {
        format!("{:04}", (n + 1) % 10_000)
    } else {
        guess
    }
}

fn assert_problem(status: StatusCode, body: &Value, expected: u16, code: &str) {
    assert_eq!(status.as_u16(), expected, "{body}");
    assert_eq!(body["code"], code, "{body}");
}

/// 300 concurrent authorizes with different wrong CVCs on one certificate: at most the limit (5)
/// are verified (answered 404), every other one is refused with 429 before verification, and the
/// right CVC is locked out afterwards. (Before: all 300 were checked, none refused.)
#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn a_burst_of_wrong_cvcs_gets_no_more_than_the_limit_checked(pool: PgPool) {
    let app = Arc::new(TestApp::start(pool).await);
    let (code, cvc) = app.active_certificate(5_000).await;
    let guesses = (0..300).map(|i| {
        let (app, code, guess) = (app.clone(), code.clone(), wrong_cvc(&cvc, i));
        async move { app.authorize(&code, &guess, 100, &format!("guess-{i}")).await }
    });
    let answers = join_all(guesses).await;
    let checked = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::NOT_FOUND)
        .count();
    let refused = answers
        .iter()
        .filter(|(s, b)| *s == StatusCode::TOO_MANY_REQUESTS && b["code"] == "too-many-attempts")
        .count();
    assert_eq!(checked, 5, "wrong CVCs verified in the burst");
    assert_eq!(refused, 295, "the rest refused unverified");
    let (status, body) = app.authorize(&code, &cvc, 100, "right-after-the-burst").await;
    assert_problem(status, &body, 429, "too-many-attempts");
}

/// A Redis that refuses writes (read-only replica, full memory) cannot count failures: the
/// service refuses CVC checks with 503 instead of answering them uncounted. (Before: every wrong
/// CVC was answered 404 and none was ever counted, so no lockout.)
#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn cvc_checks_fail_closed_when_redis_refuses_writes(pool: PgPool) {
    let admin = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut admin = admin.get_multiplexed_async_connection().await.unwrap();
    let user = format!("gc-readonly-{}", uuid::Uuid::new_v4().simple());
    let password = uuid::Uuid::new_v4().simple().to_string();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(format!(">{password}"))
        .arg("~*")
        .arg(&["+@read", "+@scripting", "+@connection", "+time", "-@write"][..])
        .query_async(&mut admin)
        .await
        .unwrap();
    let url = format!("redis://{user}:{password}@127.0.0.1:6379");
    let app = TestApp::start_with(pool, |cfg| cfg.redis.url = secrecy::SecretString::from(url)).await;
    // Uploads and activations count nothing when they succeed: they work on this Redis.
    let (code, cvc) = app.active_certificate(5_000).await;
    let mut statuses = Vec::new();
    for i in 0..8 {
        let (status, _) = app
            .authorize(&code, &wrong_cvc(&cvc, i), 100, &format!("ro-{i}"))
            .await;
        statuses.push(status.as_u16());
    }
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(statuses, vec![503; 8], "uncountable guesses are refused");
}

/// A known Idempotency-Key is no CVC oracle: reusing the key of a successful authorize with a
/// wrong CVC is a counted `404` like any wrong CVC (before: an uncounted `422
/// idempotency-key-reused`, while the right CVC replayed the `201`), and the key itself is
/// published nowhere (before: `source_event` was `http:<key>`).
#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn a_known_idempotency_key_tells_nothing_about_a_cvc(pool: PgPool) {
    let app = TestApp::start(pool).await;
    let (code, cvc) = app.active_certificate(5_000).await;
    let key = format!("checkout-{}", uuid::Uuid::new_v4().simple());
    let (status, _) = app.authorize(&code, &cvc, 100, &key).await;
    assert_eq!(status, StatusCode::CREATED);
    for i in 0..5 {
        let (status, body) = app.authorize(&code, &wrong_cvc(&cvc, i), 100, &key).await;
        assert_problem(status, &body, 404, "certificate-not-found");
    }
    // Those were counted: the certificate is locked, even for the right CVC's replay.
    let (status, body) = app.authorize(&code, &cvc, 100, &key).await;
    assert_problem(status, &body, 429, "too-many-attempts");
    // The harness uploaded the certificate under the key `<batch>:0`: not published either.
    let batch: String = sqlx::query_scalar("SELECT batch_id FROM gift_certificate LIMIT 1")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let published: Vec<String> = sqlx::query_scalar(
        "SELECT payload::text FROM outbox UNION ALL SELECT coalesce(source_event, '') FROM audit_log",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(!published.is_empty());
    for raw in [key.clone(), format!("{batch}:0")] {
        assert!(
            published.iter().all(|p| !p.contains(&raw)),
            "the raw key {raw} is published: {published:?}"
        );
    }
    assert!(
        published.iter().any(|p| p.contains("http:")),
        "events still name their request"
    );
}

/// Capture and void with a made-up hold id answer the same for an existing code and an unknown
/// one (before: `unknown-hold` against `certificate-not-found`), and such lookups count toward
/// the channel's limit, as do activate and refund of unknown codes (before: 120 requests, no
/// 429).
#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn unknown_holds_and_unknown_codes_answer_alike_and_are_limited(pool: PgPool) {
    let app = TestApp::start_with(pool, |cfg| cfg.attempts.per_channel = 20).await;
    let (code, _) = app.active_certificate(5_000).await;
    let unknown = new_code();
    let mut answers = Vec::new();
    for (i, target) in [&code, &unknown].into_iter().enumerate() {
        let capture = app
            .call(app.post(
                Channel::Pos,
                &format!("/certificates/{target}/capture"),
                &format!("cap-{i}"),
                &json!({"hold_id": "0190-made-up", "amount_minor": 100, "currency": "RUB"}),
            ))
            .await;
        let void = app
            .call(app.post(
                Channel::Pos,
                &format!("/certificates/{target}/void"),
                &format!("void-{i}"),
                &json!({"target_id": "0190-made-up"}),
            ))
            .await;
        answers.push((capture, void));
    }
    assert_eq!(
        answers[0], answers[1],
        "an existing code is told apart from an unknown one"
    );
    let ((status, body), _) = &answers[0];
    assert_problem(*status, body, 404, "unknown-hold");
    // Retrying with the same key answers the same again, marked as nothing special.
    let again = app
        .post(
            Channel::Pos,
            &format!("/certificates/{code}/capture"),
            "cap-0",
            &json!({"hold_id": "0190-made-up", "amount_minor": 100, "currency": "RUB"}),
        )
        .send()
        .await
        .unwrap();
    assert!(again.headers().get("idempotent-replayed").is_none());
    // 5 lookups so far; Payments and POS have budgets of their own.
    let mut pos = 5;
    while pos < 20 {
        let (status, _) = app
            .call(app.post(
                Channel::Pos,
                &format!("/certificates/{code}/void"),
                &format!("void-more-{pos}"),
                &json!({"target_id": format!("made-up-{pos}")}),
            ))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        pos += 1;
    }
    let (status, body) = app
        .call(app.post(
            Channel::Pos,
            &format!("/certificates/{code}/void"),
            "void-over",
            &json!({"target_id": "made-up-over"}),
        ))
        .await;
    assert_problem(status, &body, 429, "too-many-attempts");
    for i in 0..20 {
        let route = if i % 2 == 0 { "activate" } else { "refund" };
        let (status, body) = app
            .call(app.post(
                Channel::Payments,
                &format!("/certificates/{}/{route}", new_code()),
                &format!("probe-{i}"),
                &json!({}),
            ))
            .await;
        assert_problem(status, &body, 404, "certificate-not-found");
    }
    let (status, body) = app
        .call(app.post(
            Channel::Payments,
            &format!("/certificates/{}/activate", new_code()),
            "probe-over",
            &json!({}),
        ))
        .await;
    assert_problem(status, &body, 429, "too-many-attempts");
}

/// A hold and its capture belong to the channel that made them: another front can neither
/// capture, void nor reverse them, and hears what it would for a hold that does not exist; the
/// owner and `internal` can. (Before: OnlineStore could void a POS capture.)
#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn holds_and_captures_belong_to_the_channel_that_made_them(pool: PgPool) {
    let app = TestApp::start(pool).await;
    let (code, cvc) = app.active_certificate(5_000).await;
    let (status, hold) = app.authorize(&code, &cvc, 1_000, "pos-hold").await;
    assert_eq!(status, StatusCode::CREATED);
    let hold = hold["operation_id"].as_str().unwrap().to_owned();
    let foreign_capture = app
        .call(app.post(
            Channel::OnlineStore,
            &format!("/certificates/{code}/capture"),
            "online-capture",
            &json!({"hold_id": hold, "amount_minor": 500, "currency": "RUB"}),
        ))
        .await;
    assert_problem(foreign_capture.0, &foreign_capture.1, 404, "unknown-hold");
    let (status, captured) = app.capture(&code, &hold, 500, "pos-capture").await;
    assert_eq!(status, StatusCode::OK, "{captured}");
    let capture_id = captured["operation_id"].as_str().unwrap().to_owned();
    for target in [&hold, &capture_id] {
        let (status, body) = app
            .call(app.post(
                Channel::OnlineStore,
                &format!("/certificates/{code}/void"),
                &format!("online-void-{target}"),
                &json!({"target_id": target}),
            ))
            .await;
        assert_problem(status, &body, 404, "unknown-hold");
    }
    let (status, body) = app
        .call(app.post(
            Channel::Internal,
            &format!("/certificates/{code}/void"),
            "internal-void",
            &json!({"target_id": capture_id}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["balance_minor"], 5_000,
        "the capture was reversed by internal"
    );
}

/// `Retry-After` tells the truth: a channel over its budget may try again when its window (60 s)
/// ends, a locked certificate when its lockout (900 s) does. (Before: 900 for both, while the
/// channel's lock lifted after 60 s.)
#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn retry_after_is_when_the_blocking_limit_ends(pool: PgPool) {
    let app = TestApp::start_with(pool, |cfg| cfg.attempts.per_channel = 3).await;
    for i in 0..3 {
        let (status, _) = app.balance(&new_code(), &format!("{:03}", i)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let response = app
        .get(Channel::Pos, &format!("/certificates/{}/balance", new_code()))
        .header("x-certificate-cvc", "123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert!(
        (1..=60).contains(&retry_after),
        "Retry-After {retry_after} for a 60 s window"
    );
    assert_eq!(body["retry_after_seconds"], retry_after);
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn a_locked_certificate_says_when_its_lockout_ends(pool: PgPool) {
    let app = TestApp::start(pool).await;
    let (code, cvc) = app.active_certificate(5_000).await;
    for i in 0..5 {
        app.balance(&code, &wrong_cvc(&cvc, i)).await;
    }
    let response = app
        .get(Channel::Pos, &format!("/certificates/{code}/balance"))
        .header("x-certificate-cvc", &cvc)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((61..=900).contains(&retry_after), "Retry-After {retry_after}");
}

/// No problem detail repeats what the caller sent: not a CVC sent as a number, not an unknown
/// field named like a code, not a value of the wrong type. (Before: ``invalid type: integer
/// `7436` ``, ``unknown field `<code>` ``.)
#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn problem_details_never_echo_the_input(pool: PgPool) {
    let app = TestApp::start(pool).await;
    let (code, _) = app.active_certificate(5_000).await;
    let secret = new_code();
    let bodies = [
        json!({"amount_minor": 100, "currency": "RUB", "cvc": 7436}),
        json!({"amount_minor": 100, "currency": "RUB", "cvc": "7436", secret.clone(): 1}),
        json!({"amount_minor": secret.clone(), "currency": "RUB", "cvc": "7436"}),
        json!({"amount_minor": 100, "currency": {"nested": secret.clone()}, "cvc": "7436"}),
        json!([secret.clone()]),
    ];
    for (i, body) in bodies.iter().enumerate() {
        let (status, problem) = app
            .call(app.post(
                Channel::Pos,
                &format!("/certificates/{code}/authorize"),
                &format!("echo-{i}"),
                body,
            ))
            .await;
        assert!(status.is_client_error(), "{status} {problem}");
        let text = problem.to_string();
        assert!(!text.contains("7436"), "{text}");
        assert!(!text.contains(&secret), "{text}");
        assert!(!text.contains(&secret[..8]), "{text}");
    }
    let raw = app
        .http
        .post(format!("{}/certificates/{code}/authorize", app.base))
        .bearer_auth(crate::harness::token(Channel::Pos))
        .header("idempotency-key", "echo-raw")
        .body(format!("{{\"cvc\": \"{secret}"))
        .send()
        .await
        .unwrap();
    let text = raw.text().await.unwrap();
    assert!(!text.contains(&secret[..8]), "{text}");
}

/// Times in problem details are RFC 3339, as everywhere else in the API. (Before:
/// `2026-12-01 10:00:00.0 +00:00:00`.)
#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn times_in_problem_details_are_rfc3339(pool: PgPool) {
    let app = TestApp::start(pool).await;
    let (code, cvc) = app.active_certificate(5_000).await;
    sqlx::query("UPDATE gift_certificate SET expires_at = '2026-01-31T20:59:59Z'")
        .execute(&app.pool)
        .await
        .unwrap();
    let (status, body) = app.authorize(&code, &cvc, 100, "expired").await;
    assert_problem(status, &body, 422, "certificate-expired");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.ends_with("2026-01-31T20:59:59Z"), "{detail}");
}

/// The key is checked before the body: a POST without `Idempotency-Key` is `400
/// idempotency-key-required` whatever else is wrong with it. (Before: 422 or 404.)
#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn a_post_without_a_key_is_told_so_first(pool: PgPool) {
    let app = TestApp::start(pool).await;
    let unknown = new_code();
    let routes = [
        (
            Channel::Pos,
            "authorize",
            json!({"amount_minor": -1, "currency": "rub", "cvc": "1"}),
        ),
        (
            Channel::Pos,
            "capture",
            json!({"hold_id": "", "amount_minor": 0, "currency": "RUB"}),
        ),
        (Channel::Pos, "void", json!({"target_id": "x"})),
        (Channel::Payments, "activate", json!({"phone": "555"})),
        (Channel::Payments, "refund", json!({"unexpected": true})),
        (Channel::Internal, "cancel", json!({})),
    ];
    for (channel, route, body) in routes {
        let (status, problem) = app
            .call(
                app.http
                    .post(format!("{}/certificates/{unknown}/{route}", app.base))
                    .bearer_auth(crate::harness::token(channel))
                    .json(&body),
            )
            .await;
        assert_problem(status, &problem, 400, "idempotency-key-required");
    }
}

/// The documented answers, exactly: a malformed hold or target id is `422 bad-operation-id`
/// (before: `404 unknown-hold`), an authorize without `cvc` is `400 cvc-required` (before:
/// `bad-request`), a wrong method is a `405` problem with `Allow` (before: an empty body), a
/// replayed stored refusal says `idempotent-replayed: true` (before: no header), a body over
/// the limit is a `413` problem.
#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn documented_answers_are_exact(pool: PgPool) {
    let app = TestApp::start_with(pool, |cfg| cfg.http.max_body_bytes = 64 * 1024).await;
    let (code, cvc) = app.active_certificate(5_000).await;
    for (i, id) in ["".to_owned(), "h".repeat(129)].into_iter().enumerate() {
        let (status, body) = app.capture(&code, &id, 100, &format!("bad-hold-{i}")).await;
        assert_problem(status, &body, 422, "bad-operation-id");
        let (status, body) = app
            .call(app.post(
                Channel::Pos,
                &format!("/certificates/{code}/void"),
                &format!("bad-target-{i}"),
                &json!({"target_id": id}),
            ))
            .await;
        assert_problem(status, &body, 422, "bad-operation-id");
    }
    let (status, body) = app
        .call(app.post(
            Channel::Pos,
            &format!("/certificates/{code}/authorize"),
            "no-cvc",
            &json!({"amount_minor": 100, "currency": "RUB"}),
        ))
        .await;
    assert_problem(status, &body, 400, "cvc-required");

    let response = app
        .http
        .delete(format!("{}/certificates/{code}/authorize", app.base))
        .bearer_auth(crate::harness::token(Channel::Pos))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    assert!(response.headers()["allow"].to_str().unwrap().contains("POST"));
    let body: Value = response.json().await.unwrap();
    assert_problem(StatusCode::METHOD_NOT_ALLOWED, &body, 405, "method-not-allowed");

    let first = app.authorize(&code, &cvc, 9_000, "too-much").await;
    assert_problem(first.0, &first.1, 422, "insufficient-funds");
    let again = app
        .post(
            Channel::Pos,
            &format!("/certificates/{code}/authorize"),
            "too-much",
            &json!({"amount_minor": 9_000, "currency": "RUB", "cvc": cvc}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 422);
    assert_eq!(again.headers()["idempotent-replayed"], "true");

    let response = app
        .http
        .post(format!("{}/certificates/{code}/activate", app.base))
        .bearer_auth(crate::harness::token(Channel::Payments))
        .header("idempotency-key", "huge")
        .header("content-type", "application/json")
        .body(vec![b' '; 128 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
}

/// Every id and free text is bounded at the edge: a 1.1 MB or NUL-bearing `client_id`, an
/// overlong `order_id`, an `X-Initiator` over 128 bytes are `400` problems, and nothing is
/// written. (Before: the 1.1 MB id was stored and its outbox row blocked the relay for good; a
/// NUL gave 503.)
#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn ids_and_texts_are_bounded_at_the_edge(pool: PgPool) {
    let app = TestApp::start(pool).await;
    let (code, cvc) = app.active_certificate(5_000).await;
    let bodies = [
        json!({"client_id": "c".repeat(1_100_000)}),
        json!({"client_id": "client\u{0}1"}),
        json!({"order_id": "o".repeat(65)}),
        json!({"payment_id": "pay 1"}),
    ];
    // An issued certificate that each of these would activate (before: the first did, with
    // its 1.1 MB client id in the outbox).
    let other = new_code();
    app.upload(
        &format!("edge-{}", uuid::Uuid::new_v4().simple()),
        0,
        &[(other.clone(), "123".into())],
        1_000,
    )
    .await;
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    for (i, body) in bodies.iter().enumerate() {
        let (status, problem) = app
            .call(app.post(
                Channel::Payments,
                &format!("/certificates/{other}/activate"),
                &format!("bounded-{i}"),
                body,
            ))
            .await;
        assert_problem(status, &problem, 400, "bad-request");
        assert!(problem.to_string().len() < 500, "{problem}");
    }
    let (status, problem) = app
        .call(
            app.post(
                Channel::Pos,
                &format!("/certificates/{code}/authorize"),
                "long-initiator",
                &json!({"amount_minor": 100, "currency": "RUB", "cvc": cvc}),
            )
            .header("x-initiator", "i".repeat(129)),
        )
        .await;
    assert_problem(status, &problem, 400, "bad-request");
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(before, after, "nothing was written");
}

/// The OpenAPI document declares what the service enforces, so a schema-driven client does not
/// send what is then refused: patterns, lengths and bounds of codes, CVCs, currencies, amounts,
/// ids, keys and phones. (Before: none declared.)
#[test]
fn the_openapi_document_declares_the_bounds_the_service_enforces() {
    let doc: Value = serde_json::from_str(&gift_certificates::openapi_json()).unwrap();
    let schema = |name: &str, field: &str| doc["components"]["schemas"][name]["properties"][field].clone();
    let expect = |v: Value, key: &str, want: Value| assert_eq!(v[key], want, "{key} of {v}");
    expect(
        schema("AuthorizeRequest", "cvc"),
        "pattern",
        json!("^[0-9]{3,4}$"),
    );
    expect(
        schema("AuthorizeRequest", "currency"),
        "pattern",
        json!("^[A-Z]{3}$"),
    );
    expect(schema("AuthorizeRequest", "amount_minor"), "minimum", json!(1));
    expect(schema("AuthorizeRequest", "hold_seconds"), "minimum", json!(1));
    expect(schema("CaptureRequest", "amount_minor"), "minimum", json!(1));
    expect(schema("CaptureRequest", "hold_id"), "maxLength", json!(128));
    expect(schema("VoidRequest", "target_id"), "maxLength", json!(128));
    expect(schema("ActivateRequest", "client_id"), "maxLength", json!(64));
    expect(
        schema("ActivateRequest", "phone"),
        "pattern",
        json!("^\\+[0-9]{8,15}$"),
    );
    expect(
        schema("UploadJob", "batch_id"),
        "pattern",
        json!("^[A-Za-z0-9._-]{1,64}$"),
    );
    expect(schema("UploadJob", "certificates"), "maxItems", json!(5000));
    expect(schema("UploadRow", "cvc"), "pattern", json!("^[0-9]{3,4}$"));
    expect(schema("UploadRow", "nominal_minor"), "minimum", json!(1));
    let authorize = &doc["paths"]["/certificates/{code}/authorize"]["post"]["parameters"];
    let param = |name: &str| {
        authorize
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} is declared"))["schema"]
            .clone()
    };
    expect(param("code"), "minLength", json!(16));
    assert!(param("code")["pattern"]
        .as_str()
        .unwrap()
        .starts_with("^[A-HJ-NP-Z"));
    expect(param("Idempotency-Key"), "maxLength", json!(255));
    expect(param("X-Initiator"), "maxLength", json!(128));
}
