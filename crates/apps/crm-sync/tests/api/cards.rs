//! Cards, tasks and interactions.

use super::*;

// ---------------------------------------------------------------------------------------------
// Cards

#[tokio::test]
async fn a_put_card_is_created_then_read_back() {
    let app = start().await;
    let (s, b) = app.put("/v1/clients/c-1", "k-1", &card("Ada")).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["client_id"], "c-1");
    assert_eq!(b["version"], 1);
    assert_eq!(b["fields"]["first_name"], "Ada");
    assert_eq!(b["fields"]["phone"], "+79991234567");
    assert_eq!(b["fields"]["consent_sms"], true);
    assert_eq!(b["fields"]["email"], Json::Null);
    assert_eq!(b["field_times"]["first_name"]["source"], "api");
    assert!(b["field_times"]["first_name"]["at"].as_str().is_some());
    assert_eq!(b["crm_id"], Json::Null);
    let mut changed: Vec<&str> = b["changed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Json::as_str)
        .collect();
    changed.sort_unstable();
    assert_eq!(changed, ["consent_sms", "first_name", "phone"]);
    assert_eq!(app.outbox().await, 1);

    let (s, got) = app.get("/v1/clients/c-1").await;
    assert_eq!(s, 200);
    assert_eq!(got["fields"], b["fields"]);
    assert_eq!(got["version"], 1);
    assert!(got.get("changed").is_none(), "{got}");

    // The whole card again, with another key: unchanged, nothing queued.
    let (s, b) = app.put("/v1/clients/c-1", "k-2", &card("Ada")).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["changed"], json!([]));
    assert_eq!(b["version"], 1);
    assert_eq!(app.outbox().await, 1);

    // A PUT is the whole card: the fields left out are cleared.
    let (s, b) = app
        .put(
            "/v1/clients/c-1",
            "k-3",
            &json!({"fields": {"first_name": "Ada"}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["fields"]["phone"], Json::Null);
    assert_eq!(b["version"], 2);
}

#[tokio::test]
async fn a_patch_changes_only_the_fields_given_and_needs_the_client() {
    let app = start().await;
    let patch = json!({"fields": {"segment": "vip"}});
    let (s, b) = send(app.write(reqwest::Method::PATCH, "/v1/clients/c-9", "p-1", &patch)).await;
    assert_problem(s, &b, 404, "client-not-found");
    assert_eq!(app.outbox().await, 0);

    app.put("/v1/clients/c-9", "k-1", &card("Ada")).await;
    let (s, b) = send(app.write(reqwest::Method::PATCH, "/v1/clients/c-9", "p-2", &patch)).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["fields"]["segment"], "vip");
    assert_eq!(b["fields"]["first_name"], "Ada");
    assert_eq!(b["changed"], json!(["segment"]));
    assert_eq!(b["version"], 2);
    let (s, b) = send(app.write(
        reqwest::Method::PATCH,
        "/v1/clients/c-9",
        "p-3",
        &json!({"fields": {"segment": null}}),
    ))
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["fields"]["segment"], Json::Null);
}

#[tokio::test]
async fn the_same_key_with_the_same_body_answers_the_first_answer_again() {
    let app = start().await;
    let first = app
        .write(reqwest::Method::PUT, "/v1/clients/c-1", "k-1", &card("Ada"))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Json = first.json().await.unwrap();

    let again = app
        .write(reqwest::Method::PUT, "/v1/clients/c-1", "k-1", &card("Ada"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Json>().await.unwrap(), first);
    assert_eq!(app.outbox().await, 1);

    let (s, b) = app.put("/v1/clients/c-1", "k-1", &card("Grace")).await;
    assert_problem(s, &b, 422, "idempotency-key-reused");
    assert_eq!(app.outbox().await, 1);
    let (_, got) = app.get("/v1/clients/c-1").await;
    assert_eq!(got["fields"]["first_name"], "Ada");

    // Keys are the caller's own: another caller's same key is another request.
    let (s, _) = send(
        app.http
            .put(app.url("/v1/clients/c-1"))
            .bearer_auth(DESK_TOKEN)
            .header("idempotency-key", "k-1")
            .json(&card("Grace")),
    )
    .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_have_one_effect() {
    let app = Arc::new(start().await);
    let mut joins = Vec::new();
    for _ in 0..20 {
        let app = app.clone();
        joins.push(tokio::spawn(async move {
            app.put("/v1/clients/c-1", "same-key", &card("Ada")).await
        }));
    }
    let mut answers = Vec::new();
    for j in joins {
        let (s, b) = j.await.unwrap();
        match s.as_u16() {
            201 => answers.push(b),
            409 => assert_eq!(b["code"], "idempotency-in-flight", "{b}"),
            other => panic!("unexpected {other}: {b}"),
        }
    }
    assert!(!answers.is_empty());
    assert!(answers.iter().all(|a| *a == answers[0]), "one answer for all");
    assert_eq!(app.outbox().await, 1);
    let (s, b) = app.put("/v1/clients/c-1", "same-key", &card("Ada")).await;
    assert_eq!(s, 201);
    assert_eq!(b, answers[0]);
}

#[tokio::test]
async fn invalid_values_are_422_naming_the_field_never_the_value() {
    let app = start().await;
    let cases = [
        (json!({"fields": {"phone": "secret-phone-1"}}), "phone"),
        (json!({"fields": {"email": "secret@@mail"}}), "email"),
        (json!({"fields": {"consent_sms": "secret-yes"}}), "consent_sms"),
        (
            json!({"fields": {"first_name": format!("secret{}", "x".repeat(200))}}),
            "first_name",
        ),
        (json!({"fields": {"secret-nickname": "x"}}), "fields"),
        (json!({"fields": "secret-not-an-object"}), "fields"),
    ];
    for (body, field) in cases {
        let (s, b) = app.put("/v1/clients/c-1", "k-1", &body).await;
        assert_problem(s, &b, 422, "invalid-field");
        assert_eq!(b["field"], field, "{b}");
        assert!(!b.to_string().contains("secret"), "echoed: {b}");
    }
    let (s, b) = app
        .put(&format!("/v1/clients/{}", "c".repeat(65)), "k-1", &card("Ada"))
        .await;
    assert_problem(s, &b, 422, "invalid-field");
    assert_eq!(b["field"], "client_id");
    // Not even JSON, or not the schema: 400, naming no input either.
    for body in [
        json!({"fields": {}, "secret-extra": 1}),
        json!({"secret-fields": {}}),
        json!("secret-string"),
    ] {
        let (s, b) = app.put("/v1/clients/c-1", "k-1", &body).await;
        assert_problem(s, &b, 400, "bad-request");
        assert!(!b.to_string().contains("secret"), "echoed: {b}");
    }
    assert_eq!(app.outbox().await, 0);
}

// ---------------------------------------------------------------------------------------------
// Tasks and interactions

#[tokio::test]
async fn tasks_are_created_updated_and_kept_to_their_client() {
    let app = start().await;
    let task =
        json!({"title": "Call back", "due_at": "2026-12-03T10:00:00Z", "state": "open", "assignee": "6"});
    let (s, b) = app.put("/v1/clients/c-1/tasks/t-1", "t-1", &task).await;
    assert_problem(s, &b, 404, "client-not-found");
    app.put("/v1/clients/c-1", "k-1", &card("Ada")).await;
    app.put("/v1/clients/c-2", "k-2", &card("Bob")).await;

    let (s, b) = app.put("/v1/clients/c-1/tasks/t-1", "t-2", &task).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["task_id"], "t-1");
    assert_eq!(b["client_id"], "c-1");
    assert_eq!(b["state"], "open");
    assert_eq!(b["due_at"], "2026-12-03T10:00:00Z");
    assert_eq!(b["changed"], true);
    let (s, b) = app.put("/v1/clients/c-1/tasks/t-1", "t-3", &task).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["changed"], false);
    let done = json!({"title": "Call back", "state": "done"});
    let (s, b) = app.put("/v1/clients/c-1/tasks/t-1", "t-4", &done).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["state"], "done");
    assert_eq!(b["due_at"], Json::Null);

    let (s, b) = app.put("/v1/clients/c-2/tasks/t-1", "t-5", &task).await;
    assert_problem(s, &b, 409, "task-of-another-client");

    for (body, field) in [
        (json!({"title": "x", "state": "secret-state"}), "state"),
        (json!({"title": "x", "due_at": "secret-tomorrow"}), "due_at"),
        (json!({"title": "  "}), "title"),
        (json!({"title": "x", "assignee": "secret assignee"}), "assignee"),
    ] {
        let (s, b) = app.put("/v1/clients/c-1/tasks/t-9", "t-9", &body).await;
        assert_problem(s, &b, 422, "invalid-field");
        assert_eq!(b["field"], field, "{b}");
        assert!(!b.to_string().contains("secret"), "echoed: {b}");
    }
}

#[tokio::test]
async fn interactions_are_append_only() {
    let app = start().await;
    app.put("/v1/clients/c-1", "k-1", &card("Ada")).await;
    let entry = json!({"channel": "call", "direction": "inbound", "text": "Asked about\nthe parcel", "at": "2026-12-02T10:00:00Z"});
    let (s, b) = app.put("/v1/clients/c-1/interactions/i-1", "i-1", &entry).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["channel"], "call");
    assert_eq!(b["direction"], "inbound");
    assert_eq!(b["at"], "2026-12-02T10:00:00Z");
    let (s, _) = app.put("/v1/clients/c-1/interactions/i-1", "i-2", &entry).await;
    assert_eq!(s, 200);
    let mut other = entry.clone();
    other["text"] = json!("Something else");
    let (s, b) = app.put("/v1/clients/c-1/interactions/i-1", "i-3", &other).await;
    assert_problem(s, &b, 409, "interaction-exists");
    assert_eq!(app.outbox().await, 2, "the card and one interaction");

    let mut bad = entry.clone();
    bad["channel"] = json!("secret-pigeon");
    let (s, b) = app.put("/v1/clients/c-1/interactions/i-4", "i-4", &bad).await;
    assert_problem(s, &b, 422, "invalid-field");
    assert_eq!(b["field"], "channel");
    assert!(!b.to_string().contains("secret"));
}
