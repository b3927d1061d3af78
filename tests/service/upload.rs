//! Uploads over HTTP: validation with reasons, idempotent jobs, duplicates across batches never
//! overwritten, the batch record.

use crate::harness::{new_code, TestApp};
use gift_certificates::auth::Channel;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn duplicates_across_batches_are_reported_never_overwritten(pool: PgPool) {
    let app = TestApp::start(pool).await;
    let codes: Vec<(String, String)> = (0..3).map(|i| (new_code(), format!("{i}{i}{i}"))).collect();
    let first = app.upload("batch-a", 0, &codes, 1_000).await;
    assert_eq!(first["issued"], 3, "{first}");
    assert_eq!(first["duplicates"], 0);

    // Batch b repeats one code of batch a (with another CVC and nominal) and adds a new one.
    let fresh = new_code();
    let second = app
        .upload(
            "batch-b",
            0,
            &[(codes[1].0.clone(), "999".into()), (fresh, "777".into())],
            5_000,
        )
        .await;
    assert_eq!(second["issued"], 1, "{second}");
    assert_eq!(second["duplicates"], 1, "{second}");
    let (nominal, batch): (i64, String) = sqlx::query_as(
        "SELECT nominal, batch_id FROM gift_certificate WHERE code_last4 = $1 AND batch_id = 'batch-a'",
    )
    .bind(&codes[1].0[12..])
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (nominal, batch.as_str()),
        (1_000, "batch-a"),
        "the first issue stands"
    );

    // The same job again (a loader retry): the first outcome, nothing issued twice.
    let retry = app
        .post(
            Channel::BatchLoader,
            "/certificates/upload/batch",
            "batch-a:0",
            &json!({"version": 1, "batch_id": "batch-a", "job": 0, "certificates": codes.iter().map(|(c, v)| json!({"code": c, "cvc": v, "nominal_minor": 1_000, "currency": "RUB"})).collect::<Vec<_>>()}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), StatusCode::OK);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM gift_certificate")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(total, 4);
    // Every issued certificate has its Issued event in the outbox.
    let issued_events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE topic = 'GiftCertificateState' AND payload->>'state' = 'Issued'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(issued_events, 4);

    let (status, a) = app
        .call(app.get(Channel::BatchLoader, "/certificates/upload/batches/batch-b"))
        .await;
    assert_eq!(status, StatusCode::OK, "{a}");
    assert_eq!(a["issued"], 1, "{a}");
    assert_eq!(a["duplicates"], 1, "{a}");
    let (status, missing) = app
        .call(app.get(Channel::BatchLoader, "/certificates/upload/batches/no-such-batch"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
}

#[sqlx::test(migrator = "backbone_postgres::certificates::MIGRATOR")]
async fn invalid_rows_are_listed_with_reasons_and_never_echoed(pool: PgPool) {
    let app = TestApp::start(pool).await;
    let good = new_code();
    let mut bad_check = new_code().into_bytes();
    bad_check[15] = if bad_check[15] == b'A' { b'B' } else { b'A' };
    let bad_check = String::from_utf8(bad_check).unwrap();
    let body = json!({"version": 1, "batch_id": "mixed", "job": 7, "certificates": [
        {"code": good, "cvc": "123", "nominal_minor": 1_000, "currency": "RUB"},
        {"code": bad_check, "cvc": "123", "nominal_minor": 1_000, "currency": "RUB"},
        {"code": new_code(), "cvc": "12", "nominal_minor": 1_000, "currency": "RUB"},
        {"code": new_code(), "cvc": "123", "nominal_minor": 0, "currency": "RUB"},
        {"code": new_code(), "cvc": "123", "nominal_minor": 1_000, "currency": "R"},
        {"code": good, "cvc": "456", "nominal_minor": 1_000, "currency": "RUB"},
    ]});
    let (status, outcome) = app
        .call(app.post(
            Channel::BatchLoader,
            "/certificates/upload/batch",
            "mixed:7",
            &body,
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{outcome}");
    assert_eq!(outcome["issued"], 1);
    assert_eq!(outcome["rejected"], 5);
    let indexes: Vec<u64> = outcome["rejected_rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [1, 2, 3, 4, 5]);
    let text = outcome.to_string();
    assert!(
        !text.contains(&good) && !text.contains(&bad_check),
        "a code is echoed: {text}"
    );
    assert!(text.contains("check character"), "{text}");

    // Whole-job problems are problem documents.
    for (what, body, code) in [
        (
            "bad version",
            json!({"version": 2, "batch_id": "x", "job": 0, "certificates": [{"code": good, "cvc": "123", "nominal_minor": 1, "currency": "RUB"}]}),
            "bad-request",
        ),
        (
            "empty job",
            json!({"version": 1, "batch_id": "x", "job": 0, "certificates": []}),
            "bad-request",
        ),
        (
            "unknown field",
            json!({"version": 1, "batch_id": "x", "job": 0, "certificates": [], "extra": 1}),
            "bad-request",
        ),
    ] {
        let (status, problem) = app
            .call(app.post(
                Channel::BatchLoader,
                "/certificates/upload/batch",
                &format!("x-{what}"),
                &body,
            ))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {problem}");
        assert_eq!(problem["code"], code, "{what}");
    }
    let (status, problem) = app
        .call(app.post(Channel::Pos, "/certificates/upload/batch", "pos-upload", &body))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
}
