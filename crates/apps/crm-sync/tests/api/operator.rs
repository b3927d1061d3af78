//! Operator tasks: listed, read, resolved once.

use super::*;

// ---------------------------------------------------------------------------------------------
// Operator tasks

async fn open_operator_task(store: &MemoryClients, client: &str, field: Field) -> i64 {
    let client = ClientId::parse(client).unwrap();
    let session = store.session(&client).await.unwrap();
    let conflict = Conflict {
        field,
        ours: Value::text("vip"),
        ours_at: Some(time::OffsetDateTime::now_utc()),
        ours_source: Some(Source::Api),
        theirs: Value::text("regular"),
        theirs_at: Some(time::OffsetDateTime::now_utc()),
        rule: Owner::Ask,
        resolution: Resolution::OperatorTask,
        reason: "both sides changed the field".into(),
    };
    session
        .commit(SyncWrite {
            conflicts: vec![conflict],
            request_id: "r-conflict".into(),
            ..SyncWrite::default()
        })
        .await
        .unwrap();
    let tasks = store.operator_tasks(None, 500).await.unwrap();
    tasks.last().unwrap().id
}

async fn resolve(app: &App, id: i64, key: &str, body: &Json) -> (StatusCode, Json) {
    send(app.write(
        reqwest::Method::POST,
        &format!("/v1/operator-tasks/{id}/resolve"),
        key,
        body,
    ))
    .await
}

#[tokio::test]
async fn operator_tasks_are_listed_and_resolved_once() {
    let app = start().await;
    app.put("/v1/clients/c-1", "k-1", &card("Ada")).await;
    let segment = open_operator_task(&app.store, "c-1", Field::Segment).await;
    let phone = open_operator_task(&app.store, "c-1", Field::Phone).await;

    let (s, b) = app.get("/v1/operator-tasks?state=open").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["tasks"].as_array().unwrap().len(), 2);
    assert_eq!(b["tasks"][0]["state"], "open");
    assert_eq!(b["tasks"][0]["ours"], "vip");
    assert_eq!(b["tasks"][0]["theirs"], "regular");
    let (_, b) = app.get("/v1/operator-tasks?limit=1").await;
    assert_eq!(b["tasks"].as_array().unwrap().len(), 1);
    let (s, b) = app.get(&format!("/v1/operator-tasks/{segment}")).await;
    assert_eq!(s, 200);
    assert_eq!(b["field"], "segment");
    let (s, b) = app.get("/v1/operator-tasks/999").await;
    assert_problem(s, &b, 404, "operator-task-not-found");
    let (s, b) = app.get("/v1/operator-tasks/not-a-number").await;
    assert_problem(s, &b, 404, "operator-task-not-found");
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("state=secret", "state"),
    ] {
        let (s, b) = app.get(&format!("/v1/operator-tasks?{query}")).await;
        assert_problem(s, &b, 422, "invalid-field");
        assert_eq!(b["field"], field);
        assert!(!b.to_string().contains("secret"));
    }

    // A value that does not fit the field is refused, and the task stays open.
    let (s, b) = resolve(
        &app,
        phone,
        "r-1",
        &json!({"choice": "value", "value": "secret-phone", "by": "ann"}),
    )
    .await;
    assert_problem(s, &b, 422, "invalid-field");
    assert!(!b.to_string().contains("secret-phone"), "{b}");
    let (s, b) = resolve(&app, phone, "r-2", &json!({"choice": "value", "by": "ann"})).await;
    assert_problem(s, &b, 422, "invalid-field");
    assert_eq!(b["field"], "value");
    let (s, b) = resolve(&app, phone, "r-3", &json!({"choice": "ours", "by": ""})).await;
    assert_problem(s, &b, 422, "invalid-field");
    assert_eq!(b["field"], "by");

    let before = app.outbox().await;
    let (s, b) = resolve(
        &app,
        segment,
        "r-4",
        &json!({"choice": "value", "value": "gold", "by": "ann"}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["state"], "resolved");
    assert_eq!(b["resolution"], "gold");
    assert_eq!(b["resolved_by"], "ann");
    assert_eq!(app.outbox().await, before + 1, "the resolution goes to the CRM");
    let (_, card) = app.get("/v1/clients/c-1").await;
    assert_eq!(card["fields"]["segment"], "gold");
    assert_eq!(card["field_times"]["segment"]["source"], "operator");

    let (s, b) = resolve(&app, segment, "r-5", &json!({"choice": "theirs", "by": "bob"})).await;
    assert_problem(s, &b, 409, "operator-task-resolved");
    let (s, b) = resolve(&app, 999, "r-6", &json!({"choice": "theirs", "by": "bob"})).await;
    assert_problem(s, &b, 404, "operator-task-not-found");

    let (_, b) = app.get("/v1/operator-tasks?state=resolved").await;
    assert_eq!(b["tasks"].as_array().unwrap().len(), 1);
    let (_, b) = app.get("/v1/operator-tasks?state=open").await;
    assert_eq!(b["tasks"].as_array().unwrap().len(), 1);
}
