//! Bitrix24: `crm.contact.*` by `ORIGINATOR_ID` + `ORIGIN_ID`, to-dos, timeline comments.

use crate::{
    at, bitrix24, client, ctx, full_card, has_request_id, interaction, task, INTERACTION_LINE,
    MARKED_INTERACTION_LINE,
};
use backbone_sync::clients::{Card, ClientCrm, Field, TaskState, Value};
use backbone_sync::ports::CrmErrorKind;
use serde_json::json;
use std::time::Duration;
use wiremock::matchers::{any, body_json, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

fn m(name: &str) -> String {
    format!("/rest/1/wh0123456789abcd/{name}.json")
}

/// The contact keys our mapping may send; Bitrix24 drops any other without an error.
const KNOWN: [&str; 10] = [
    "NAME",
    "LAST_NAME",
    "PHONE",
    "EMAIL",
    "ASSIGNED_BY_ID",
    "UF_CRM_SEGMENT",
    "UF_CRM_CONSENT_SMS",
    "UF_CRM_CONSENT_EMAIL",
    "ORIGINATOR_ID",
    "ORIGIN_ID",
];

fn only_known_keys(req: &Request) -> bool {
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
    body["fields"]
        .as_object()
        .is_some_and(|f| f.keys().all(|k| KNOWN.contains(&k.as_str())))
}

fn ok(result: serde_json::Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"result": result, "time": {"start": 1.0}}))
}

fn contact_record(id: &str, origin: &str) -> serde_json::Value {
    json!({"ID": id, "NAME": "Ada", "LAST_NAME": "Lovelace",
        "PHONE": [{"ID": "1", "VALUE": "+79991234567", "VALUE_TYPE": "WORK"}],
        "EMAIL": [{"ID": "2", "VALUE": "ada@example.com", "VALUE_TYPE": "WORK"}],
        "ASSIGNED_BY_ID": "6", "UF_CRM_SEGMENT": "vip", "UF_CRM_CONSENT_SMS": "Y",
        "UF_CRM_CONSENT_EMAIL": "N", "ORIGINATOR_ID": "backbone", "ORIGIN_ID": origin,
        "DATE_MODIFY": "2026-12-02T13:00:00+03:00"})
}

#[tokio::test]
async fn a_new_contact_is_added_with_every_mapped_field_our_external_id_and_nothing_else() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(m("crm.contact.add")))
        .and(has_request_id)
        .and(only_known_keys)
        .and(body_json(
            json!({"fields": {"NAME": "Ada", "LAST_NAME": "Lovelace",
            "PHONE": [{"VALUE": "+79991234567", "VALUE_TYPE": "WORK"}],
            "EMAIL": [{"VALUE": "ada@example.com", "VALUE_TYPE": "WORK"}],
            "ASSIGNED_BY_ID": "6", "UF_CRM_SEGMENT": "vip", "UF_CRM_CONSENT_SMS": "Y",
            "UF_CRM_CONSENT_EMAIL": "N", "ORIGINATOR_ID": "backbone", "ORIGIN_ID": "c-1"},
            "params": {"REGISTER_SONET_EVENT": "N"}}),
        ))
        .respond_with(ok(json!(82)))
        .expect(1)
        .mount(&server)
        .await;
    let id = bitrix24(&server)
        .write_contact(&client("c-1"), None, &full_card(), &Field::ALL, ctx())
        .await
        .unwrap();
    assert_eq!(id, "82");
}

#[tokio::test]
async fn an_update_sends_only_the_written_fields_and_empty_values_clear() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(m("crm.contact.update")))
        .and(has_request_id)
        .and(only_known_keys)
        .and(body_json(json!({"id": 82, "fields": {"UF_CRM_SEGMENT": "vip",
            "PHONE": [{"VALUE": "+79991234567", "VALUE_TYPE": "WORK"}]},
            "params": {"REGISTER_SONET_EVENT": "N"}})))
        .respond_with(ok(json!(true)))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(m("crm.contact.update")))
        .and(only_known_keys)
        .and(body_json(json!({"id": 82, "fields": {"NAME": "", "PHONE": [],
            "ASSIGNED_BY_ID": "", "UF_CRM_CONSENT_SMS": "", "UF_CRM_SEGMENT": ""},
            "params": {"REGISTER_SONET_EVENT": "N"}})))
        .respond_with(ok(json!(true)))
        .expect(1)
        .mount(&server)
        .await;
    let crm = bitrix24(&server);
    let id = crm
        .write_contact(
            &client("c-1"),
            Some("82"),
            &full_card(),
            &[Field::Segment, Field::Phone],
            ctx(),
        )
        .await
        .unwrap();
    assert_eq!(id, "82");
    let cleared = [
        Field::FirstName,
        Field::Phone,
        Field::Manager,
        Field::ConsentSms,
        Field::Segment,
    ];
    crm.write_contact(&client("c-1"), Some("82"), &Card::default(), &cleared, ctx())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_contact_is_found_by_its_exact_external_id_and_read_by_crm_id() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(m("crm.contact.list")))
        .and(body_json(
            json!({"filter": {"ORIGINATOR_ID": "backbone", "ORIGIN_ID": "c-1"},
            "select": ["ID"]}),
        ))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"result": [{"ID": "82"}, {"ID": "83"}],
            "total": 2, "time": {}})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(m("crm.contact.list")))
        .and(body_json(
            json!({"filter": {"ORIGINATOR_ID": "backbone", "ORIGIN_ID": "c-2"},
            "select": ["ID"]}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"result": [], "total": 0, "time": {}})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(m("crm.contact.get")))
        .and(body_json(json!({"id": 82})))
        .respond_with(ok(contact_record("82", "c-1")))
        .expect(2)
        .mount(&server)
        .await;
    // The list matched without regard to case: this one is another client's.
    Mock::given(method("POST"))
        .and(path(m("crm.contact.get")))
        .and(body_json(json!({"id": 83})))
        .respond_with(ok(contact_record("83", "C-1")))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(m("crm.contact.get")))
        .and(body_json(json!({"id": 99})))
        .respond_with(
            ResponseTemplate::new(400)
                .set_body_json(json!({"error": "NOT_FOUND", "error_description": "Not found"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let crm = bitrix24(&server);
    let found = crm.read_contact(&client("c-1")).await.unwrap().unwrap();
    assert_eq!(found.crm_id, "82");
    assert_eq!(found.client_id, Some(client("c-1")));
    assert_eq!(found.card, full_card());
    assert_eq!(found.modified_at, Some(at()));
    assert!(crm.read_contact(&client("c-2")).await.unwrap().is_none());
    let by_id = crm.read_contact_by_crm_id("82").await.unwrap().unwrap();
    assert_eq!(by_id.card, full_card());
    assert!(crm.read_contact_by_crm_id("99").await.unwrap().is_none());
}

#[tokio::test]
async fn a_todo_is_added_on_the_contact_then_updated_and_completed() {
    let server = MockServer::start().await;
    todo_lookup(&server, json!([])).await;
    Mock::given(method("POST"))
        .and(path(m("crm.activity.todo.add")))
        .and(has_request_id)
        .and(body_json(
            json!({"ownerTypeId": 3, "ownerId": 82, "deadline": "2026-12-05T15:00:00Z",
            "title": "Call back", "description": "backbone:t-1", "responsibleId": 6}),
        ))
        .respond_with(ok(json!({"id": 9100})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(m("crm.activity.todo.update")))
        .and(has_request_id)
        .and(body_json(json!({"id": 9100, "ownerTypeId": 3, "ownerId": 82,
            "deadline": "2026-12-05T15:00:00Z", "title": "Call back", "responsibleId": 6})))
        .respond_with(ok(json!({"id": 9100})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(m("crm.activity.update")))
        .and(has_request_id)
        .and(body_json(json!({"id": 9100, "fields": {"COMPLETED": "Y"}})))
        .respond_with(ok(json!(true)))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(m("crm.activity.get")))
        .and(body_json(json!({"id": 9100})))
        .respond_with(ok(json!({"ID": "9100", "SUBJECT": "Call back",
            "DESCRIPTION": "backbone:t-1", "DEADLINE": "2026-12-05T18:00:00+03:00", "COMPLETED": "Y",
            "RESPONSIBLE_ID": "6", "OWNER_ID": "82", "LAST_UPDATED": "2026-12-02T13:00:00+03:00"})))
        .expect(1)
        .mount(&server)
        .await;
    let crm = bitrix24(&server);
    let id = crm
        .write_task(&task(TaskState::Open), "82", None, ctx())
        .await
        .unwrap();
    assert_eq!(id, "9100");
    crm.write_task(&task(TaskState::Done), "82", Some("9100"), ctx())
        .await
        .unwrap();
    let read = crm.read_task("9100").await.unwrap().unwrap();
    assert_eq!(read.task_id.unwrap().as_str(), "t-1");
    assert_eq!(read.state, TaskState::Done);
    assert_eq!(read.due_at, task(TaskState::Done).due_at);
    assert_eq!(read.assignee.as_deref(), Some("6"));
    assert_eq!(read.title.as_deref(), Some("Call back"));
    assert_eq!(read.modified_at, Some(at()));
}

/// The look-ups a create makes first, answered with `listed`.
async fn todo_lookup(server: &MockServer, listed: serde_json::Value) {
    Mock::given(method("POST"))
        .and(path(m("crm.activity.list")))
        .and(has_request_id)
        .and(body_json(json!({"filter": {"OWNER_TYPE_ID": 3, "OWNER_ID": 82},
            "order": {"ID": "DESC"}, "select": ["ID", "DESCRIPTION"]})))
        .respond_with(ok(listed))
        .expect(1)
        .mount(server)
        .await;
}

async fn comment_lookup(server: &MockServer, listed: serde_json::Value) {
    Mock::given(method("POST"))
        .and(path(m("crm.timeline.comment.list")))
        .and(has_request_id)
        .and(body_json(
            json!({"filter": {"ENTITY_ID": 82, "ENTITY_TYPE": "contact"},
            "order": {"ID": "DESC"}, "select": ["ID", "COMMENT"]}),
        ))
        .respond_with(ok(listed))
        .expect(1)
        .mount(server)
        .await;
}

/// A crash between the CRM's create and our commit redelivers the change: what the first create
/// made is found by our id and not made again.
#[tokio::test]
async fn a_todo_or_comment_made_before_a_crash_is_found_and_not_made_again() {
    let server = MockServer::start().await;
    todo_lookup(
        &server,
        json!([{"ID": "9101", "DESCRIPTION": "backbone:t-9"}, {"ID": "9100", "DESCRIPTION": "backbone:t-1"}]),
    )
    .await;
    comment_lookup(
        &server,
        json!([{"ID": "1000", "COMMENT": INTERACTION_LINE}, {"ID": "999", "COMMENT": MARKED_INTERACTION_LINE}]),
    )
    .await;
    for create in ["crm.activity.todo.add", "crm.timeline.comment.add"] {
        Mock::given(method("POST"))
            .and(path(m(create)))
            .respond_with(ok(json!(1)))
            .expect(0)
            .mount(&server)
            .await;
    }
    // The to-do found is brought up to date, as any existing one.
    Mock::given(method("POST"))
        .and(path(m("crm.activity.todo.update")))
        .and(body_json(json!({"id": 9100, "ownerTypeId": 3, "ownerId": 82,
            "deadline": "2026-12-05T15:00:00Z", "title": "Call back", "responsibleId": 6})))
        .respond_with(ok(json!({"id": 9100})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(m("crm.activity.update")))
        .and(body_json(json!({"id": 9100, "fields": {"COMPLETED": "N"}})))
        .respond_with(ok(json!(true)))
        .expect(1)
        .mount(&server)
        .await;
    let crm = bitrix24(&server);
    let id = crm
        .write_task(&task(TaskState::Open), "82", None, ctx())
        .await
        .unwrap();
    assert_eq!(id, "9100");
    let comment = crm.add_interaction(&interaction(), "82", ctx()).await.unwrap();
    assert_eq!(comment, "999", "the comment without our id is someone else's");
}

#[tokio::test]
async fn an_interaction_is_a_timeline_comment_on_the_contact() {
    let server = MockServer::start().await;
    comment_lookup(&server, json!([])).await;
    Mock::given(method("POST"))
        .and(path(m("crm.timeline.comment.add")))
        .and(has_request_id)
        .and(body_json(
            json!({"fields": {"ENTITY_ID": 82, "ENTITY_TYPE": "contact",
            "COMMENT": MARKED_INTERACTION_LINE}}),
        ))
        .respond_with(ok(json!(999)))
        .expect(1)
        .mount(&server)
        .await;
    let id = bitrix24(&server)
        .add_interaction(&interaction(), "82", ctx())
        .await
        .unwrap();
    assert_eq!(id, "999");
}

#[tokio::test]
async fn query_limit_exceeded_is_transient_and_a_validation_error_permanent() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(m("crm.contact.add")))
        .respond_with(ResponseTemplate::new(503).set_body_json(
            json!({"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"}),
        ))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(m("crm.contact.add")))
        .respond_with(ResponseTemplate::new(400).set_body_json(
            json!({"error": "ERROR_CORE", "error_description": "field Work e-mail contains an invalid address"}),
        ))
        .mount(&server)
        .await;
    let crm = bitrix24(&server);
    let e = crm
        .write_contact(&client("c-1"), None, &full_card(), &Field::ALL, ctx())
        .await
        .unwrap_err();
    assert_eq!((e.kind, e.http_status), (CrmErrorKind::Transient, Some(503)));
    assert_eq!(e.retry_after, Some(Duration::from_secs(1)));
    let e = crm
        .write_contact(&client("c-1"), None, &full_card(), &Field::ALL, ctx())
        .await
        .unwrap_err();
    assert_eq!((e.kind, e.http_status), (CrmErrorKind::Permanent, Some(400)));
    assert_eq!(e.message, "crm.contact.add: HTTP 400 ERROR_CORE");
}

#[tokio::test]
async fn an_update_of_a_contact_deleted_since_it_was_read_is_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(m("crm.contact.update")))
        .respond_with(
            ResponseTemplate::new(400)
                .set_body_json(json!({"error": "NOT_FOUND", "error_description": "Not found"})),
        )
        .mount(&server)
        .await;
    let e = bitrix24(&server)
        .write_contact(&client("c-1"), Some("82"), &full_card(), &[Field::Segment], ctx())
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e}");
}

#[tokio::test]
async fn a_manager_that_is_no_user_id_is_refused_before_any_call() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ok(json!(true)))
        .expect(0)
        .mount(&server)
        .await;
    let card = Card::default().with(Field::Manager, Value::text("anna.k"));
    let e = bitrix24(&server)
        .write_contact(&client("c-1"), Some("82"), &card, &[Field::Manager], ctx())
        .await
        .unwrap_err();
    assert_eq!(e.kind, CrmErrorKind::Permanent);
    assert!(!e.message.contains("anna"), "{}", e.message);
}
