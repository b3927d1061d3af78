//! The admin API (`/admin/v1/*`) the operator console calls: only the admin token opens it,
//! writes name their operator, the overview counts what the service did, the certificate view
//! shows holds, history and audit, a cancel is audited once with its operator and reason, and a
//! CVC requeue can be counted before it is done.

use crate::harness::{logs, new_code, TestApp};
use backbone_certificates::store::{SmsOutcome, SmsQueue};
use backbone_certificates::GiftCode;
use gift_certificates::auth::Channel;
use reqwest::{RequestBuilder, StatusCode};
use secrecy::SecretString;
use serde_json::{json, Value};
use sqlx::PgPool;

/// The admin token of these tests (no channel has it).
const ADMIN_TOKEN: &str = "service-admin-token-7Qm2xW9zKp4";

async fn admin_app(pool: PgPool) -> TestApp {
    TestApp::start_with(pool, |cfg| {
        cfg.admin.token = SecretString::from(ADMIN_TOKEN);
    })
    .await
}

fn admin_get(app: &TestApp, path: &str) -> RequestBuilder {
    app.http
        .get(format!("{}{path}", app.base))
        .bearer_auth(ADMIN_TOKEN)
}

fn admin_post(app: &TestApp, path: &str, operator: &str, body: &Value) -> RequestBuilder {
    app.http
        .post(format!("{}{path}", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .header("x-operator", operator)
        .json(body)
}

fn assert_problem(status: StatusCode, body: &Value, expected: u16, code: &str) {
    assert_eq!(status.as_u16(), expected, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["type"], format!("/problems/{code}"), "{body}");
}

/// A certificate uploaded and not activated yet; returns its code and CVC.
async fn issued_certificate(app: &TestApp, nominal: i64) -> (String, String) {
    let code = new_code();
    let cvc = "4821".to_owned();
    let batch = format!("admin-{}", uuid::Uuid::new_v4().simple());
    let issued = app
        .upload(&batch, 0, &[(code.clone(), cvc.clone())], nominal)
        .await;
    assert_eq!(issued["issued"], 1, "{issued}");
    (code, cvc)
}

/// Rows of `audit_log` with this action for the certificate with `id`.
async fn audit_rows(app: &TestApp, id: &str, action: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE certificate_id = $1::uuid AND action = $2")
        .bind(id)
        .bind(action)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

fn sum(buckets: &Value, field: &str) -> i64 {
    buckets
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b[field].as_i64().unwrap())
        .sum()
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn only_the_admin_token_opens_the_admin_api(pool: PgPool) {
    let app = admin_app(pool.clone()).await;
    let (code, _) = app.active_certificate(1_000).await;
    let routes = [
        ("GET", "/admin/v1/overview".to_owned()),
        ("GET", format!("/admin/v1/certificates/{code}")),
        ("POST", format!("/admin/v1/certificates/{code}/cancel")),
        ("GET", "/admin/v1/uploads".to_owned()),
        ("GET", "/admin/v1/sms?state=failed".to_owned()),
        ("POST", "/admin/v1/sms/requeue".to_owned()),
    ];
    let request = |app: &TestApp, method: &str, path: &str| {
        let url = format!("{}{path}", app.base);
        let body = if path.ends_with("/cancel") {
            json!({"reason": "closed by the console"})
        } else {
            json!({"certificate": null, "dry_run": true})
        };
        if method == "GET" {
            app.http.get(url)
        } else {
            app.http.post(url).header("x-operator", "mallory").json(&body)
        }
    };
    for (method, path) in &routes {
        let (status, body) = app.call(request(&app, method, path)).await;
        assert_problem(status, &body, 401, "unauthenticated");
        for token in [
            "not-the-admin-token-0123456789",
            crate::harness::token(Channel::Internal),
        ] {
            let (status, body) = app.call(request(&app, method, path).bearer_auth(token)).await;
            assert_problem(status, &body, 401, "unauthenticated");
        }
        let (status, body) = app
            .call(request(&app, method, path).bearer_auth(ADMIN_TOKEN))
            .await;
        assert!(status.is_success(), "{method} {path}: {status} {body}");
    }
    let (status, view) = app
        .call(admin_get(&app, &format!("/admin/v1/certificates/{code}")))
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["state"], "Cancelled", "the admin cancel above went through");

    // The admin token is no channel token.
    let (status, body) = app
        .call(
            app.http
                .get(format!("{}/certificates/{code}", app.base))
                .bearer_auth(ADMIN_TOKEN),
        )
        .await;
    assert_problem(status, &body, 401, "unauthenticated");

    // Writes name their operator.
    for operator in [None, Some(""), Some(&"x".repeat(65)[..])] {
        let mut r = app
            .http
            .post(format!("{}/admin/v1/sms/requeue", app.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"dry_run": true}));
        if let Some(operator) = operator {
            r = r.header("x-operator", operator);
        }
        let (status, body) = app.call(r).await;
        assert_problem(status, &body, 400, "bad-request");
    }

    // Without an admin token configured, no token opens it.
    let closed = TestApp::start(pool).await;
    for token in [ADMIN_TOKEN, crate::harness::token(Channel::Internal)] {
        let (status, body) = closed
            .call(admin_get(&closed, "/admin/v1/overview").bearer_auth(token))
            .await;
        assert_problem(status, &body, 401, "unauthenticated");
    }
    assert!(
        !logs().text().contains(ADMIN_TOKEN),
        "the admin token reached the logs"
    );
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn the_overview_counts_change_after_an_activation(pool: PgPool) {
    let app = admin_app(pool).await;
    let (code, cvc) = issued_certificate(&app, 10_000).await;
    let (status, before) = app.call(admin_get(&app, "/admin/v1/overview")).await;
    assert_eq!(status, StatusCode::OK, "{before}");
    assert_eq!(before["certificates_by_state"]["Issued"], 1, "{before}");
    assert_eq!(before["certificates_by_state"]["Active"], 0, "{before}");
    assert_eq!(before["certificates_by_state"]["Cancelled"], 0, "{before}");
    assert_eq!(before["series"]["bucket_seconds"], 300);
    let buckets = before["series"]["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 72);
    assert_eq!(sum(&before["series"]["buckets"], "operations"), 0);
    // No relay runs here: the Issued event waits in the outbox.
    assert_eq!(before["outbox"]["pending"], 1, "{before}");
    assert!(before["outbox"]["oldest_pending_age_seconds"].is_number());
    assert_eq!(before["outbox"]["parked"], 0);
    assert_eq!(
        (
            before["uploads"]["open"].as_i64(),
            before["uploads"]["recent"].as_i64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(before["sms"], json!({"pending": 0, "failed": 0}));

    let (status, body) = app
        .call(app.post(
            Channel::Payments,
            &format!("/certificates/{code}/activate"),
            "activate-overview",
            &json!({"phone": "+79990004455"}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A refusal by the rules, stored under its key: more than the balance.
    let (status, body) = app.authorize(&code, &cvc, 20_000, "too-much").await;
    assert_eq!(status.as_u16(), 422, "{body}");

    let (status, after) = app.call(admin_get(&app, "/admin/v1/overview")).await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_eq!(after["certificates_by_state"]["Issued"], 0, "{after}");
    assert_eq!(after["certificates_by_state"]["Active"], 1, "{after}");
    assert_eq!(sum(&after["series"]["buckets"], "operations"), 1, "{after}");
    assert_eq!(sum(&after["series"]["buckets"], "refused"), 1, "{after}");
    let last = &after["series"]["buckets"][71];
    assert_eq!(
        last["operations"], 1,
        "the activation is in the bucket of now: {after}"
    );
    let start = time::OffsetDateTime::parse(
        last["start"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(start.unix_timestamp() % 300, 0);
    assert!(last["start"].as_str().unwrap().ends_with('Z'));
    assert_eq!(after["sms"], json!({"pending": 1, "failed": 0}));
    assert!(after["outbox"]["pending"].as_i64().unwrap() > 1, "{after}");
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn the_certificate_view_shows_holds_history_and_audit(pool: PgPool) {
    let app = admin_app(pool).await;
    let (code, cvc) = app.active_certificate(10_000).await;
    let (status, hold) = app
        .call(
            app.post(
                Channel::Pos,
                &format!("/certificates/{code}/authorize"),
                "hold-1",
                &json!({"amount_minor": 3_000, "currency": "RUB", "cvc": cvc}),
            )
            .header("x-initiator", "cashier-7"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hold}");
    let hold_id = hold["operation_id"].as_str().unwrap();

    let (status, view) = app
        .call(admin_get(&app, &format!("/admin/v1/certificates/{code}")))
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["code_masked"], GiftCode::parse(&code).unwrap().masked());
    assert_eq!(view["certificate_id"], hold["certificate_id"]);
    assert_eq!(
        (
            &view["state"],
            &view["currency"],
            &view["balance_minor"],
            &view["available_minor"]
        ),
        (&json!("Active"), &json!("RUB"), &json!(10_000), &json!(7_000))
    );
    assert!(view["expires_at"].is_null());
    let holds = view["holds"].as_array().unwrap();
    assert_eq!(holds.len(), 1, "{view}");
    assert_eq!(holds[0]["hold_id"], hold_id);
    assert_eq!(holds[0]["amount_minor"], 3_000);
    assert_eq!(holds[0]["state"], "active");
    assert!(holds[0]["created_at"].is_string() && holds[0]["expires_at"].is_string());

    // Newest first: the authorize, then the activation.
    let history = view["history"].as_array().unwrap();
    let operations: Vec<&str> = history.iter().map(|h| h["operation"].as_str().unwrap()).collect();
    assert_eq!(operations, ["authorize", "activate"], "{view}");
    assert_eq!(history[0]["amount_minor"], 3_000);
    assert_eq!(history[0]["channel"], "POS");
    assert_eq!(history[1]["channel"], "Payments");
    assert!(history[1]["amount_minor"].is_null());
    let key_ref = history[0]["idempotency_key"].as_str().unwrap();
    assert_eq!(
        key_ref,
        gift_certificates::desk::source_event(Channel::Pos, "hold-1")
    );
    assert!(
        !view.to_string().contains("\"hold-1\""),
        "the key itself is never shown"
    );
    let audit = view["audit"].as_array().unwrap();
    assert_eq!(audit[0]["action"], "authorize", "{view}");
    assert_eq!(audit[0]["actor"], "cashier-7");
    assert_eq!(audit[0]["detail"]["amount"], 3_000);
    assert!(audit[1]["actor"].is_null());
    assert!(!view.to_string().contains(&code), "the code is masked");

    // Unknown and malformed codes: what GET /certificates/{code} answers.
    for unknown in [new_code(), "not-a-code".to_owned()] {
        let (status, body) = app
            .call(admin_get(&app, &format!("/admin/v1/certificates/{unknown}")))
            .await;
        assert_problem(status, &body, 404, "certificate-not-found");
        let (status, body) = app
            .call(app.get(Channel::Internal, &format!("/certificates/{unknown}")))
            .await;
        assert_problem(status, &body, 404, "certificate-not-found");
    }
    assert!(!logs().text().contains(&code), "a code reached the logs");
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn an_operator_cancel_is_audited_once_with_its_actor_and_reason(pool: PgPool) {
    let app = admin_app(pool).await;
    let (code, cvc) = app.active_certificate(10_000).await;
    let (status, hold) = app.authorize(&code, &cvc, 2_500, "hold-before-cancel").await;
    assert_eq!(status, StatusCode::CREATED, "{hold}");
    let id = hold["certificate_id"].as_str().unwrap().to_owned();
    let path = format!("/admin/v1/certificates/{code}/cancel");

    // Refused before anything is done: no operator, a bad reason, an unknown field.
    let no_operator = app
        .http
        .post(format!("{}{path}", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"reason": "stolen"}));
    for (request, what) in [
        (no_operator, "no X-Operator"),
        (
            admin_post(&app, &path, "alice", &json!({"reason": ""})),
            "empty reason",
        ),
        (
            admin_post(&app, &path, "alice", &json!({"reason": "x".repeat(201)})),
            "long reason",
        ),
        (admin_post(&app, &path, "alice", &json!({})), "no reason"),
        (
            admin_post(&app, &path, "alice", &json!({"reason": "r", "extra": 1})),
            "unknown field",
        ),
    ] {
        let (status, body) = app.call(request).await;
        assert_problem(status, &body, 400, "bad-request");
        assert!(body.to_string().len() < 1_000, "{what}: {body}");
    }
    assert_eq!(app.stored(&id).await.1, "Active");

    let cancel = || {
        admin_post(
            &app,
            &path,
            "alice",
            &json!({"reason": "reported stolen at the till"}),
        )
        .header("idempotency-key", "console-cancel-1")
    };
    let response = cancel().send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("idempotent-replayed").is_none());
    let cancelled: Value = response.json().await.unwrap();
    assert_eq!(cancelled["state"], "Cancelled", "{cancelled}");
    assert_eq!(cancelled["available_minor"], 10_000);
    assert_eq!(cancelled["holds"][0]["state"], "released", "{cancelled}");
    assert_eq!(cancelled["history"][0]["operation"], "cancel");
    assert_eq!(cancelled["history"][0]["channel"], "internal");
    let audit = &cancelled["audit"][0];
    assert_eq!(audit["action"], "cancel", "{cancelled}");
    assert_eq!(audit["actor"], "alice");
    assert_eq!(audit["channel"], "internal");
    assert_eq!(audit["detail"]["reason"], "reported stolen at the till");
    assert_eq!(audit["detail"]["state_after"], "Cancelled");
    // The same JSON as the certificate view.
    let (_, view) = app
        .call(admin_get(&app, &format!("/admin/v1/certificates/{code}")))
        .await;
    assert_eq!(cancelled, view);
    assert_eq!(audit_rows(&app, &id, "cancel").await, 1);

    // A retry with the same key answers the same, changing nothing.
    let response = cancel().send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let replayed: Value = response.json().await.unwrap();
    assert_eq!(replayed, view);

    // A new cancel of the cancelled certificate: what POST /certificates/{code}/cancel answers.
    let (status, again) = app
        .call(admin_post(&app, &path, "bob", &json!({"reason": "second try"})))
        .await;
    assert_problem(status, &again, 409, "wrong-state");
    let (status, channel) = app
        .call(app.post(
            Channel::Internal,
            &format!("/certificates/{code}/cancel"),
            "internal-cancel-again",
            &json!({}),
        ))
        .await;
    assert_problem(status, &channel, 409, "wrong-state");
    assert_eq!(
        audit_rows(&app, &id, "cancel").await,
        1,
        "one audit row of the cancellation"
    );

    // An unknown code is answered as the channels' cancel answers it.
    let (status, body) = app
        .call(admin_post(
            &app,
            &format!("/admin/v1/certificates/{}/cancel", new_code()),
            "alice",
            &json!({"reason": "unknown"}),
        ))
        .await;
    assert_problem(status, &body, 404, "certificate-not-found");
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn an_sms_requeue_dry_run_counts_without_changing_then_requeues(pool: PgPool) {
    let app = admin_app(pool).await;
    let (code, _) = issued_certificate(&app, 5_000).await;
    let phone = "+79990001267";
    let (status, body) = app
        .call(app.post(
            Channel::Payments,
            &format!("/certificates/{code}/activate"),
            "activate-sms",
            &json!({"phone": phone}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["certificate_id"].as_str().unwrap().to_owned();

    let (status, pending) = app.call(admin_get(&app, "/admin/v1/sms?state=pending")).await;
    assert_eq!(status, StatusCode::OK, "{pending}");
    let delivery = &pending["deliveries"][0];
    assert_eq!(delivery["id"], id.as_str());
    assert_eq!(
        delivery["certificate_masked"],
        GiftCode::parse(&code).unwrap().masked()
    );
    assert_eq!(delivery["phone_masked"], "*******67");
    assert_eq!(
        (delivery["state"].as_str(), delivery["attempts"].as_i64()),
        (Some("pending"), Some(0))
    );
    assert!(delivery["last_error"].is_null() && delivery["updated_at"].is_string());
    assert!(
        !pending.to_string().contains(&phone[1..]),
        "the phone number is masked"
    );

    // The provider refuses it for good.
    let store = app.state.store();
    let job = store
        .claim_sms(time::Duration::seconds(30))
        .await
        .unwrap()
        .expect("queued");
    let failed = SmsOutcome::Failed {
        error: "provider refused: HTTP 400".into(),
    };
    assert!(store.finish_sms(&job, &failed, None).await.unwrap());
    let (_, listed) = app
        .call(admin_get(&app, "/admin/v1/sms?state=failed&limit=10"))
        .await;
    assert_eq!(listed["deliveries"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["deliveries"][0]["state"], "failed");
    assert_eq!(listed["deliveries"][0]["attempts"], 1);
    assert_eq!(
        listed["deliveries"][0]["last_error"],
        "provider refused: HTTP 400"
    );
    let (_, none_pending) = app.call(admin_get(&app, "/admin/v1/sms?state=pending")).await;
    assert_eq!(none_pending["deliveries"], json!([]));
    for bad in [
        "/admin/v1/sms?state=sent",
        "/admin/v1/sms?limit=0",
        "/admin/v1/sms?limit=201",
    ] {
        let (status, body) = app.call(admin_get(&app, bad)).await;
        assert_problem(status, &body, 400, "bad-request");
    }

    let stored = || async {
        sqlx::query_as::<_, (String, i32)>(
            "SELECT status, attempts FROM sms_delivery WHERE certificate_id = $1::uuid",
        )
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    let requeue = |body: Value| admin_post(&app, "/admin/v1/sms/requeue", "carol", &body);
    let (status, dry) = app
        .call(requeue(json!({"certificate": null, "dry_run": true})))
        .await;
    assert_eq!(status, StatusCode::OK, "{dry}");
    assert_eq!(dry, json!({"matched": 1, "requeued": 0, "dry_run": true}));
    assert_eq!(
        stored().await,
        ("failed".to_owned(), 1),
        "a dry run changes nothing"
    );
    assert_eq!(audit_rows(&app, &id, "cvc_sms_requeued").await, 0);

    let (status, body) = app
        .call(requeue(json!({"certificate": new_code(), "dry_run": true})))
        .await;
    assert_problem(status, &body, 404, "certificate-not-found");

    let (status, done) = app
        .call(requeue(
            json!({"certificate": code.to_lowercase(), "dry_run": false}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done, json!({"matched": 1, "requeued": 1, "dry_run": false}));
    assert_eq!(stored().await, ("pending".to_owned(), 0));
    let (_, view) = app
        .call(admin_get(&app, &format!("/admin/v1/certificates/{code}")))
        .await;
    assert_eq!(view["audit"][0]["action"], "cvc_sms_requeued", "{view}");
    assert_eq!(view["audit"][0]["actor"], "carol");
    let (_, again) = app.call(requeue(json!({"dry_run": false}))).await;
    assert_eq!(again, json!({"matched": 0, "requeued": 0, "dry_run": false}));
    assert!(
        !logs().text().contains(&phone[1..]),
        "a phone number reached the logs"
    );
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn uploads_are_listed_newest_first_as_the_batch_endpoint_shows_them(pool: PgPool) {
    let app = admin_app(pool).await;
    app.upload("older-batch", 0, &[(new_code(), "111".into())], 1_000)
        .await;
    app.upload(
        "newer-batch",
        0,
        &[(new_code(), "222".into()), (new_code(), "333".into())],
        1_000,
    )
    .await;
    app.upload("newer-batch", 1, &[(new_code(), "444".into())], 1_000)
        .await;

    let (status, listed) = app.call(admin_get(&app, "/admin/v1/uploads")).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let uploads = listed["uploads"].as_array().unwrap();
    let ids: Vec<&str> = uploads.iter().map(|u| u["batch_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["newer-batch", "older-batch"]);
    let (status, batch) = app
        .call(app.get(Channel::BatchLoader, "/certificates/upload/batches/newer-batch"))
        .await;
    assert_eq!(status, StatusCode::OK, "{batch}");
    let mut first = uploads[0].as_object().unwrap().clone();
    assert_eq!(first.remove("opened_by"), Some(json!("BatchLoader")));
    assert!(first.remove("opened_at").is_some_and(|at| at.is_string()));
    assert_eq!(Value::Object(first), batch);

    let (_, one) = app.call(admin_get(&app, "/admin/v1/uploads?limit=1")).await;
    assert_eq!(one["uploads"].as_array().unwrap().len(), 1);
    assert_eq!(one["uploads"][0]["batch_id"], "newer-batch");
    for bad in ["0", "101", "many"] {
        let (status, body) = app
            .call(admin_get(&app, &format!("/admin/v1/uploads?limit={bad}")))
            .await;
        assert_problem(status, &body, 400, "bad-request");
    }
}
