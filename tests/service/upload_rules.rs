//! What the upload contract (`docs/batch-upload-contract.md`) forbids is refused over HTTP and
//! from the topic alike; a past expiry is a rejected row; a batch is opened over the
//! authenticated API before the topic may issue into it; the issued counter counts jobs whose
//! client hung up.

use crate::harness::{new_code, token, TestApp};
use backbone_certificates::DeadLetterReason;
use gift_certificates::auth::Channel;
use gift_certificates::config::Config;
use gift_certificates::sales::{handle, Handled};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::{Duration, Instant};

fn row(code: &str, cvc: &str) -> Value {
    json!({"code": code, "cvc": cvc, "nominal_minor": 1_000, "currency": "RUB"})
}

fn job(batch: &str, job: u32, rows: usize) -> (Value, Vec<String>) {
    let codes: Vec<String> = (0..rows).map(|_| new_code()).collect();
    let certificates: Vec<Value> = codes.iter().map(|c| row(c, "4821")).collect();
    (
        json!({"version": 1, "batch_id": batch, "job": job, "certificates": certificates}),
        codes,
    )
}

async fn stored_in(app: &TestApp, batch: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM gift_certificate WHERE batch_id = $1")
        .bind(batch)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// The job as the consumer of the upload topic handles it.
async fn from_topic(app: &TestApp, job: &Value) -> Handled {
    let topics = Config::default().topics;
    let payload = serde_json::to_vec(job).unwrap();
    handle(&app.state, &topics, &topics.uploads, &payload)
        .await
        .unwrap()
}

fn dead_letter(handled: &Handled) -> (DeadLetterReason, String) {
    match handled {
        Handled::Rejected(r) => (r.code, r.reason.clone()),
        other => panic!("not dead-lettered: {other:?}"),
    }
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn jobs_the_upload_contract_forbids_are_refused_over_http_and_from_the_topic(pool: PgPool) {
    let app = TestApp::start(pool).await;
    let long = "b".repeat(65);
    let (too_big, big_codes) = job("too-big", 0, 5_001);
    let mut cases: Vec<(&str, Value, &str)> = vec![("5,001 rows", too_big, "certificates")];
    for bad in ["bad id!", "ü-batch", long.as_str(), "", "tab\there", "a/b"] {
        let (body, _) = job(bad, 0, 1);
        cases.push((bad, body, "batch_id"));
    }
    for (what, body, field) in &cases {
        let (status, problem) = app
            .call(app.post(
                Channel::BatchLoader,
                "/certificates/upload/batch",
                &format!("forbidden-{}", uuid::Uuid::new_v4()),
                body,
            ))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {problem}");
        assert_eq!(problem["code"], "bad-request", "{what}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.starts_with(field), "{what}: {problem}");
        let batch_id = body["batch_id"].as_str().unwrap();
        assert!(
            batch_id.is_empty() || !problem.to_string().contains(batch_id),
            "{what}: the value is quoted: {problem}"
        );

        // The same job from the topic: a dead letter, for the same reason, whether or not a
        // batch of that name could be open.
        let (code, reason) = dead_letter(&from_topic(&app, body).await);
        assert_eq!(code, DeadLetterReason::InvalidJob, "{what}");
        assert_eq!(reason, detail, "{what}: one validation for both paths");
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM gift_certificate")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0, "nothing of a refused job is issued");
    assert!(!big_codes.is_empty());

    // The limits themselves are allowed: 5,000 rows, a batch id of 64 characters.
    let longest = "B.b_9-".repeat(11)[..64].to_owned();
    let (largest, _) = job(&longest, 0, 5_000);
    let (status, outcome) = app
        .call(app.post(
            Channel::BatchLoader,
            "/certificates/upload/batch",
            &format!("{longest}:0"),
            &largest,
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{outcome}");
    assert_eq!(outcome["issued"], 5_000);
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn rows_that_have_expired_are_rejected_at_upload_not_issued(pool: PgPool) {
    let app = TestApp::start(pool).await;
    let (past, future, none) = (new_code(), new_code(), new_code());
    let body = json!({"version": 1, "batch_id": "expiries", "job": 0, "certificates": [
        {"code": future, "cvc": "123", "nominal_minor": 1_000, "currency": "RUB", "expires_at": "2099-12-31T20:59:59Z"},
        {"code": past, "cvc": "4567", "nominal_minor": 1_000, "currency": "RUB", "expires_at": "2020-01-31T20:59:59Z"},
        {"code": none, "cvc": "890", "nominal_minor": 1_000, "currency": "RUB", "expires_at": null},
    ]});
    let (status, outcome) = app
        .call(app.post(
            Channel::BatchLoader,
            "/certificates/upload/batch",
            "expiries:0",
            &body,
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{outcome}");
    assert_eq!(
        (&outcome["issued"], &outcome["rejected"]),
        (&json!(2), &json!(1)),
        "{outcome}"
    );
    assert_eq!(
        outcome["rejected_rows"],
        json!([{"index": 1, "reason": "expires_at is not in the future"}])
    );
    assert!(!outcome.to_string().contains(&past) && !outcome.to_string().contains("4567"));
    let (status, _) = app
        .call(app.get(Channel::Internal, &format!("/certificates/{past}")))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the expired row was not issued");
    assert_eq!(stored_in(&app, "expiries").await, 2);

    // From the topic the same: a rejected row, the rest issued.
    let opened = app
        .http
        .put(format!("{}/certificates/upload/batches/expiries-kafka", app.base))
        .bearer_auth(token(Channel::BatchLoader))
        .send()
        .await
        .unwrap();
    assert_eq!(opened.status(), StatusCode::CREATED);
    let (kafka_past, kafka_future) = (new_code(), new_code());
    let kafka_job = json!({"version": 1, "batch_id": "expiries-kafka", "job": 0, "certificates": [
        {"code": kafka_past, "cvc": "123", "nominal_minor": 1_000, "currency": "RUB", "expires_at": "2001-01-01T00:00:00+03:00"},
        {"code": kafka_future, "cvc": "123", "nominal_minor": 1_000, "currency": "RUB", "expires_at": "2099-01-01T00:00:00Z"},
    ]});
    match from_topic(&app, &kafka_job).await {
        Handled::Uploaded {
            issued,
            rejected_rows,
        } => {
            assert_eq!(issued, 1);
            assert_eq!(rejected_rows.len(), 1);
            assert_eq!(
                (rejected_rows[0].index, rejected_rows[0].reason.as_str()),
                (0, "expires_at is not in the future")
            );
        }
        other => panic!("{other:?}"),
    }
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn a_batch_is_opened_over_the_api_and_only_then_taken_from_the_topic(pool: PgPool) {
    let app = TestApp::start(pool).await;
    let put = |channel: Option<Channel>, batch: &str| {
        let request = app
            .http
            .put(format!("{}/certificates/upload/batches/{batch}", app.base));
        match channel {
            Some(c) => request.bearer_auth(token(c)),
            None => request,
        }
    };

    // A job from the topic for a batch nobody opened: dead-lettered, nothing issued, and the
    // letter's reason carries nothing of the job.
    let (unopened, codes) = job("spring", 0, 3);
    let (code, reason) = dead_letter(&from_topic(&app, &unopened).await);
    assert_eq!(code, DeadLetterReason::InvalidJob);
    assert_eq!(reason, "batch not opened over the API");
    assert!(codes.iter().all(|c| !reason.contains(c.as_str())));
    assert_eq!(stored_in(&app, "spring").await, 0);

    // Opening needs a token with the upload scope and a valid batch id.
    let (status, problem) = app.call(put(None, "spring")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{problem}");
    let (status, problem) = app.call(put(Some(Channel::Pos), "spring")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    let (status, problem) = app.call(put(Some(Channel::BatchLoader), "bad%20id!")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().starts_with("batch_id"),
        "{problem}"
    );
    assert!(!problem.to_string().contains("bad id"), "{problem}");

    // 201 when it opens the batch, 200 with the same record afterwards.
    let (status, first) = app.call(put(Some(Channel::BatchLoader), "spring")).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["batch_id"], "spring");
    assert_eq!(first["opened_by"], "BatchLoader");
    let opened_at = first["opened_at"].as_str().unwrap();
    assert!(
        time::OffsetDateTime::parse(opened_at, &time::format_description::well_known::Rfc3339).is_ok(),
        "{first}"
    );
    let (status, again) = app.call(put(Some(Channel::Internal), "spring")).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again, first, "the first opener and time stand");

    // Now the same job from the topic issues.
    match from_topic(&app, &unopened).await {
        Handled::Uploaded { issued, .. } => assert_eq!(issued, 3),
        other => panic!("{other:?}"),
    }
    assert_eq!(stored_in(&app, "spring").await, 3);

    // An upload over HTTP opens its batch: later jobs of it are taken from the topic.
    let (over_http, _) = job("autumn", 0, 1);
    let (status, outcome) = app
        .call(app.post(
            Channel::BatchLoader,
            "/certificates/upload/batch",
            "autumn:0",
            &over_http,
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{outcome}");
    let (status, opened) = app.call(put(Some(Channel::BatchLoader), "autumn")).await;
    assert_eq!(status, StatusCode::OK, "{opened}");
    let (later, _) = job("autumn", 1, 2);
    match from_topic(&app, &later).await {
        Handled::Uploaded { issued, .. } => assert_eq!(issued, 2),
        other => panic!("{other:?}"),
    }
}

/// `gift_certificates_issued_total` as `/metrics` shows it.
async fn issued_metric(app: &TestApp) -> Option<u64> {
    let text = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("gift_certificates_issued_total "))
        .and_then(|v| v.trim().parse().ok())
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn certificates_issued_for_a_client_that_hung_up_are_counted(pool: PgPool) {
    let app = TestApp::start(pool).await;
    // Hold the job's write at its batch record, so that the client hangs up while the write
    // runs: the service's statement waits on this lock until it is released below.
    let mut blocker = app.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE certificate_batch_job IN SHARE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();

    let (body, _) = job("hung-up", 0, 5_000);
    let body = serde_json::to_vec(&body).unwrap();
    let address = app.base.trim_start_matches("http://").to_owned();
    let head = format!(
        "POST /certificates/upload/batch HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
         Idempotency-Key: hung-up:0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        token(Channel::BatchLoader),
        body.len()
    );
    let socket = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut socket = std::net::TcpStream::connect(&address).unwrap();
        socket.write_all(head.as_bytes()).unwrap();
        socket.write_all(&body).unwrap();
        socket.flush().unwrap();
        socket
    })
    .await
    .unwrap();

    // Wait until the write is under way (its statement waits on the lock), then hang up
    // without reading the answer.
    let started = Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the job's write never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(socket);
    // Let the server see the closed connection (it drops the request), then let the write go.
    tokio::time::sleep(Duration::from_millis(500)).await;
    blocker.rollback().await.unwrap();

    let started = Instant::now();
    while stored_in(&app, "hung-up").await < 5_000 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the job was not stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The counter follows the commit at once; give it a moment, not a deadline on speed.
    let stored_at = Instant::now();
    loop {
        let counted = issued_metric(&app).await;
        if counted == Some(5_000) {
            break;
        }
        assert!(
            stored_at.elapsed() < Duration::from_secs(10),
            "5,000 stored, counted {counted:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
