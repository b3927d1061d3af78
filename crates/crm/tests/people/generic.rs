//! The generic REST CRM: `PUT` by external id, reads by either id, signed requests.

use crate::{
    at, client, ctx, full_card, generic, has_fresh_request_id, has_request_id, interaction, task,
    GENERIC_SECRET, GENERIC_TOKEN,
};
use backbone_crm::signing::{verify, SignedParts};
use backbone_sync::clients::{Card, ClientCrm, Field, TaskState, Value};
use backbone_sync::ports::CrmErrorKind;
use serde_json::json;
use std::time::Duration;
use wiremock::matchers::{body_json, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

fn header_of(req: &Request, name: &str) -> String {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Bearer token and a `v2` signature over this very request.
fn signed(req: &Request) -> bool {
    let target = match req.url.query() {
        Some(q) => format!("{}?{q}", req.url.path()),
        None => req.url.path().to_owned(),
    };
    header_of(req, "authorization") == format!("Bearer {GENERIC_TOKEN}")
        && verify(
            GENERIC_SECRET.as_bytes(),
            &SignedParts {
                method: req.method.as_str(),
                target: &target,
                timestamp: &header_of(req, "x-timestamp"),
                nonce: &header_of(req, "x-nonce"),
                body: &req.body,
            },
            &header_of(req, "x-signature"),
            time::OffsetDateTime::now_utc().unix_timestamp(),
        )
        .is_ok()
}

fn contact_json(external_id: &str, phone: &str) -> serde_json::Value {
    json!({"id": "g-1", "externalId": external_id, "firstName": "Ada", "lastName": "Lovelace",
        "phone": phone, "email": "ada@example.com", "manager": "6", "segment": "vip",
        "consentSms": true, "consentEmail": false, "updatedAt": "2026-12-02T10:00:00Z"})
}

#[tokio::test]
async fn a_contact_is_put_by_external_id_with_every_written_field_signed_and_with_the_request_id() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path("/api/v1/contacts/c-1"))
        .and(signed)
        .and(has_request_id)
        .and(body_json(json!({"firstName": "Ada", "lastName": "Lovelace",
            "phone": "+79991234567", "email": "ada@example.com", "manager": "6", "segment": "vip",
            "consentSms": true, "consentEmail": false})))
        .respond_with(ResponseTemplate::new(201).set_body_json(contact_json("c-1", "+79991234567")))
        .expect(1)
        .mount(&server)
        .await;
    let id = generic(&server)
        .write_contact(&client("c-1"), None, &full_card(), &Field::ALL, ctx())
        .await
        .unwrap();
    assert_eq!(id, "g-1");
}

#[tokio::test]
async fn an_update_sends_only_the_written_fields_and_null_clears_one() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path("/api/v1/contacts/c-1"))
        .and(signed)
        .and(body_json(json!({"segment": "vip", "phone": null})))
        .respond_with(ResponseTemplate::new(200).set_body_json(contact_json("c-1", "+79991234567")))
        .expect(1)
        .mount(&server)
        .await;
    let card = Card::default().with(Field::Segment, Value::text("vip"));
    let id = generic(&server)
        .write_contact(
            &client("c-1"),
            Some("g-1"),
            &card,
            &[Field::Segment, Field::Phone],
            ctx(),
        )
        .await
        .unwrap();
    assert_eq!(id, "g-1");
}

#[tokio::test]
async fn reads_by_external_id_and_by_crm_id_map_the_record_and_404_is_none() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/contacts/c-1"))
        .and(signed)
        .and(has_fresh_request_id)
        .respond_with(ResponseTemplate::new(200).set_body_json(contact_json("c-1", "8 999 123-45-67")))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/contacts/by-id/g-1"))
        .and(signed)
        .respond_with(ResponseTemplate::new(200).set_body_json(contact_json("c-1", "+79991234567")))
        .expect(1)
        .mount(&server)
        .await;
    for p in ["/api/v1/contacts/c-2", "/api/v1/contacts/by-id/g-9"] {
        Mock::given(method("GET"))
            .and(path(p))
            .respond_with(ResponseTemplate::new(404).set_body_json(json!({"code": "not_found"})))
            .expect(1)
            .mount(&server)
            .await;
    }
    let crm = generic(&server);
    let found = crm.read_contact(&client("c-1")).await.unwrap().unwrap();
    assert_eq!(found.crm_id, "g-1");
    assert_eq!(found.client_id, Some(client("c-1")));
    assert_eq!(
        found.card,
        full_card().with(Field::Phone, Value::Empty),
        "a phone outside E.164 is left out of the card"
    );
    assert_eq!(found.modified_at, Some(at()));
    let by_id = crm.read_contact_by_crm_id("g-1").await.unwrap().unwrap();
    assert_eq!(by_id.card, full_card());
    assert!(crm.read_contact(&client("c-2")).await.unwrap().is_none());
    assert!(crm.read_contact_by_crm_id("g-9").await.unwrap().is_none());
}

#[tokio::test]
async fn an_answer_for_another_client_is_refused() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/contacts/c-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(contact_json("c-10", "+79991234567")))
        .mount(&server)
        .await;
    let e = generic(&server).read_contact(&client("c-1")).await.unwrap_err();
    assert_eq!(e.kind, CrmErrorKind::Permanent);
}

#[tokio::test]
async fn tasks_are_put_by_external_id_completed_and_read_by_crm_id() {
    let server = MockServer::start().await;
    for (state, status) in [("open", 201), ("done", 200)] {
        Mock::given(method("PUT"))
            .and(path("/api/v1/tasks/t-1"))
            .and(signed)
            .and(has_request_id)
            .and(body_json(json!({"contactId": "g-1", "title": "Call back",
                "dueAt": "2026-12-05T15:00:00Z", "state": state, "assignee": "6"})))
            .respond_with(ResponseTemplate::new(status).set_body_json(json!({"id": "gt-1",
                "externalId": "t-1", "contactId": "g-1", "title": "Call back", "state": state})))
            .expect(1)
            .mount(&server)
            .await;
    }
    Mock::given(method("GET"))
        .and(path("/api/v1/tasks/by-id/gt-1"))
        .and(signed)
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "gt-1",
            "externalId": "t-1", "contactId": "g-1", "title": "Call back",
            "dueAt": "2026-12-05T15:00:00Z", "state": "done", "assignee": "6",
            "updatedAt": "2026-12-02T10:00:00Z"})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/tasks/by-id/gt-9"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    let crm = generic(&server);
    let id = crm
        .write_task(&task(TaskState::Open), "g-1", None, ctx())
        .await
        .unwrap();
    assert_eq!(id, "gt-1");
    let id = crm
        .write_task(&task(TaskState::Done), "g-1", Some("gt-1"), ctx())
        .await
        .unwrap();
    assert_eq!(id, "gt-1");
    let read = crm.read_task("gt-1").await.unwrap().unwrap();
    assert_eq!(read.task_id.unwrap().as_str(), "t-1");
    assert_eq!(read.state, TaskState::Done);
    assert_eq!(read.title.as_deref(), Some("Call back"));
    assert_eq!(read.due_at, task(TaskState::Done).due_at);
    assert_eq!(read.assignee.as_deref(), Some("6"));
    assert_eq!(read.modified_at, Some(at()));
    assert!(crm.read_task("gt-9").await.unwrap().is_none());
}

#[tokio::test]
async fn an_interaction_is_put_by_its_external_id() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path("/api/v1/interactions/i-1"))
        .and(signed)
        .and(has_request_id)
        .and(body_json(
            json!({"contactId": "g-1", "channel": "call", "direction": "inbound",
            "text": "Asked about the delivery", "at": "2026-12-02T10:00:00Z"}),
        ))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": "gi-1"})))
        .expect(1)
        .mount(&server)
        .await;
    let id = generic(&server)
        .add_interaction(&interaction(), "g-1", ctx())
        .await
        .unwrap();
    assert_eq!(id, "gi-1");
}

#[tokio::test]
async fn refusals_are_classified_and_never_repeat_the_crm_s_detail() {
    let server = MockServer::start().await;
    let cases = [
        (
            "c-503",
            ResponseTemplate::new(503).insert_header("retry-after", "7"),
        ),
        ("c-429", ResponseTemplate::new(429)),
        (
            "c-400",
            ResponseTemplate::new(400).set_body_json(json!({"code": "validation_failed",
                "detail": "phone +79991234567 is not reachable"})),
        ),
    ];
    for (id, resp) in cases {
        Mock::given(method("PUT"))
            .and(path(format!("/api/v1/contacts/{id}")))
            .respond_with(resp)
            .mount(&server)
            .await;
    }
    let crm = generic(&server);
    let write = |id: &'static str| {
        let crm = &crm;
        async move {
            crm.write_contact(&client(id), None, &full_card(), &Field::ALL, ctx())
                .await
                .unwrap_err()
        }
    };
    let e = write("c-503").await;
    assert_eq!(e.kind, CrmErrorKind::Transient);
    assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
    assert_eq!(write("c-429").await.kind, CrmErrorKind::Transient);
    let e = write("c-400").await;
    assert_eq!((e.kind, e.http_status), (CrmErrorKind::Permanent, Some(400)));
    assert!(e.message.contains("validation_failed"), "{}", e.message);
    assert!(!e.message.contains("+7999"), "{}", e.message);
}
