//! Kommo: contacts with our client id in a custom field, tasks, notes; `query` is full text.

use crate::{
    at, client, ctx, full_card, has_fresh_request_id, has_request_id, interaction, kommo, task, DUE_UNIX,
    INTERACTION_LINE, MARKED_INTERACTION_LINE,
};
use backbone_sync::clients::{Card, ClientCrm, Field, TaskState, Value};
use backbone_sync::ports::CrmErrorKind;
use serde_json::json;
use wiremock::matchers::{body_json, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The default contact custom fields: client id, segment, SMS and e-mail consent.
const CLIENT_FIELD: u64 = 900_001;
const SEGMENT_FIELD: u64 = 900_002;
const SMS_FIELD: u64 = 900_003;
const EMAIL_FIELD: u64 = 900_004;

fn contact_json(id: u64, client_id: &str, phone: &str) -> serde_json::Value {
    json!({"id": id, "name": "Ada Lovelace", "first_name": "Ada", "last_name": "Lovelace",
        "responsible_user_id": 6, "updated_at": 1_796_205_600,
        "custom_fields_values": [
            {"field_id": 11, "field_code": "PHONE", "values": [
                {"value": "+74950000000", "enum_code": "HOME"},
                {"value": phone, "enum_code": "WORK"}]},
            {"field_id": 12, "field_code": "EMAIL", "values": [{"value": "ada@example.com", "enum_code": "WORK"}]},
            {"field_id": CLIENT_FIELD, "values": [{"value": client_id}]},
            {"field_id": SEGMENT_FIELD, "values": [{"value": "vip"}]},
            {"field_id": SMS_FIELD, "values": [{"value": true}]},
            {"field_id": EMAIL_FIELD, "values": [{"value": false}]}]})
}

#[tokio::test]
async fn a_new_contact_carries_every_mapped_field_our_client_id_and_request_id() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v4/contacts"))
        .and(has_request_id)
        .and(body_json(
            json!([{"first_name": "Ada", "last_name": "Lovelace", "responsible_user_id": 6,
            "custom_fields_values": [
                {"field_code": "PHONE", "values": [{"value": "+79991234567", "enum_code": "WORK"}]},
                {"field_code": "EMAIL", "values": [{"value": "ada@example.com", "enum_code": "WORK"}]},
                {"field_id": SEGMENT_FIELD, "values": [{"value": "vip"}]},
                {"field_id": SMS_FIELD, "values": [{"value": true}]},
                {"field_id": EMAIL_FIELD, "values": [{"value": false}]},
                {"field_id": CLIENT_FIELD, "values": [{"value": "c-1"}]}],
            "request_id": "c-1"}]),
        ))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"_embedded": {"contacts": [
            {"id": 456, "request_id": "c-1"}]}})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let id = kommo(&server)
        .write_contact(&client("c-1"), None, &full_card(), &Field::ALL, ctx())
        .await
        .unwrap();
    assert_eq!(id, "456");
}

#[tokio::test]
async fn an_update_patches_the_written_fields_only_and_null_values_clear() {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .and(path("/api/v4/contacts"))
        .and(has_request_id)
        .and(body_json(
            json!([{"id": 456, "first_name": "Ada", "custom_fields_values": [
            {"field_id": SEGMENT_FIELD, "values": null},
            {"field_code": "PHONE", "values": null}]}]),
        ))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"_embedded": {"contacts": [{"id": 456}]}})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let card = Card::default().with(Field::FirstName, Value::text("Ada"));
    let id = kommo(&server)
        .write_contact(
            &client("c-1"),
            Some("456"),
            &card,
            &[Field::FirstName, Field::Segment, Field::Phone],
            ctx(),
        )
        .await
        .unwrap();
    assert_eq!(id, "456");
}

#[tokio::test]
async fn the_search_keeps_only_the_contact_whose_client_id_is_exactly_ours() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v4/contacts"))
        .and(query_param("query", "c-1"))
        .and(query_param("limit", "250"))
        .and(has_fresh_request_id)
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"_embedded": {"contacts": [
            contact_json(455, "c-10", "+79991234567"), contact_json(456, "c-1", "+7 999 123")]}})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v4/contacts"))
        .and(query_param("query", "c-2"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"_embedded": {"contacts": [
            contact_json(457, "c-20", "+79991234567")]}})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v4/contacts"))
        .and(query_param("query", "c-3"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let crm = kommo(&server);
    let found = crm.read_contact(&client("c-1")).await.unwrap().unwrap();
    assert_eq!(found.crm_id, "456");
    assert_eq!(found.client_id, Some(client("c-1")));
    assert_eq!(
        found.card,
        full_card().with(Field::Phone, Value::Empty),
        "the WORK phone is not E.164: left out"
    );
    assert_eq!(found.modified_at, Some(at()));
    assert!(crm.read_contact(&client("c-2")).await.unwrap().is_none());
    assert!(crm.read_contact(&client("c-3")).await.unwrap().is_none());
}

#[tokio::test]
async fn a_contact_is_read_by_its_crm_id_and_gone_is_none() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v4/contacts/456"))
        .respond_with(ResponseTemplate::new(200).set_body_json(contact_json(456, "c-1", "+79991234567")))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v4/contacts/457"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let crm = kommo(&server);
    let c = crm.read_contact_by_crm_id("456").await.unwrap().unwrap();
    assert_eq!(c.card, full_card());
    assert!(crm.read_contact_by_crm_id("457").await.unwrap().is_none());
}

/// The look-up a create makes first, answered with `tasks` (none: `204`, as Kommo does).
async fn task_lookup(server: &MockServer, tasks: serde_json::Value) {
    let answer = if tasks.as_array().is_some_and(|a| a.is_empty()) {
        ResponseTemplate::new(204)
    } else {
        ResponseTemplate::new(200).set_body_json(json!({"_embedded": {"tasks": tasks}}))
    };
    Mock::given(method("GET"))
        .and(path("/api/v4/tasks"))
        .and(has_request_id)
        .and(query_param("filter[entity_type]", "contacts"))
        .and(query_param("filter[entity_id][]", "456"))
        .and(query_param("order[created_at]", "desc"))
        .and(query_param("limit", "50"))
        .respond_with(answer)
        .expect(1)
        .mount(server)
        .await;
}

async fn note_lookup(server: &MockServer, notes: serde_json::Value) {
    let answer = if notes.as_array().is_some_and(|a| a.is_empty()) {
        ResponseTemplate::new(204)
    } else {
        ResponseTemplate::new(200).set_body_json(json!({"_embedded": {"notes": notes}}))
    };
    Mock::given(method("GET"))
        .and(path("/api/v4/contacts/456/notes"))
        .and(has_request_id)
        .and(query_param("order[id]", "desc"))
        .and(query_param("limit", "50"))
        .respond_with(answer)
        .expect(1)
        .mount(server)
        .await;
}

#[tokio::test]
async fn a_task_is_added_on_the_contact_then_cancelled_and_read_back() {
    let server = MockServer::start().await;
    task_lookup(&server, json!([])).await;
    Mock::given(method("POST"))
        .and(path("/api/v4/tasks"))
        .and(has_request_id)
        .and(body_json(
            json!([{"text": "Call back [ref t-1]", "complete_till": DUE_UNIX, "entity_id": 456,
            "entity_type": "contacts", "responsible_user_id": 6, "request_id": "t-1"}]),
        ))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"_embedded": {"tasks": [
            {"id": 77, "request_id": "t-1"}]}})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/api/v4/tasks"))
        .and(has_request_id)
        .and(body_json(
            json!([{"id": 77, "text": "Call back [ref t-1]", "complete_till": DUE_UNIX,
            "responsible_user_id": 6, "is_completed": true, "result": {"text": "cancelled"}}]),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"_embedded": {"tasks": [{"id": 77}]}})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v4/tasks/77"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"id": 77, "text": "Call back [ref t-1]",
            "complete_till": DUE_UNIX, "is_completed": true, "result": {"text": "cancelled"},
            "responsible_user_id": 6, "updated_at": 1_796_205_600, "entity_id": 456}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let crm = kommo(&server);
    let id = crm
        .write_task(&task(TaskState::Open), "456", None, ctx())
        .await
        .unwrap();
    assert_eq!(id, "77");
    crm.write_task(&task(TaskState::Cancelled), "456", Some("77"), ctx())
        .await
        .unwrap();
    let read = crm.read_task("77").await.unwrap().unwrap();
    assert_eq!(read.state, TaskState::Cancelled);
    assert_eq!(
        read.task_id.map(|t| t.to_string()).as_deref(),
        Some("t-1"),
        "our id, from the end of the text"
    );
    assert_eq!(read.title.as_deref(), Some("Call back"));
    assert_eq!(read.due_at, task(TaskState::Open).due_at);
    assert_eq!(read.assignee.as_deref(), Some("6"));
    assert_eq!(read.modified_at, Some(at()));
}

#[tokio::test]
async fn a_task_created_done_is_completed_right_after() {
    let server = MockServer::start().await;
    task_lookup(&server, json!([])).await;
    Mock::given(method("POST"))
        .and(path("/api/v4/tasks"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"_embedded": {"tasks": [
            {"id": 78, "request_id": "t-1"}]}})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/api/v4/tasks"))
        .and(body_json(
            json!([{"id": 78, "text": "Call back [ref t-1]", "complete_till": DUE_UNIX,
            "responsible_user_id": 6, "is_completed": true}]),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"_embedded": {"tasks": [{"id": 78}]}})))
        .expect(1)
        .mount(&server)
        .await;
    let id = kommo(&server)
        .write_task(&task(TaskState::Done), "456", None, ctx())
        .await
        .unwrap();
    assert_eq!(id, "78");
}

#[tokio::test]
async fn an_interaction_is_a_common_note_on_the_contact() {
    let server = MockServer::start().await;
    note_lookup(&server, json!([])).await;
    Mock::given(method("POST"))
        .and(path("/api/v4/contacts/456/notes"))
        .and(has_request_id)
        .and(body_json(
            json!([{"note_type": "common", "params": {"text": MARKED_INTERACTION_LINE},
            "request_id": "i-1"}]),
        ))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"_embedded": {"notes": [
            {"id": 5, "entity_id": 456, "request_id": "i-1"}]}})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let id = kommo(&server)
        .add_interaction(&interaction(), "456", ctx())
        .await
        .unwrap();
    assert_eq!(id, "5");
}

/// A crash between the CRM's create and our commit redelivers the change: what the first create
/// made is found by our id and not made again.
#[tokio::test]
async fn a_task_or_note_made_before_a_crash_is_found_and_not_made_again() {
    let server = MockServer::start().await;
    task_lookup(
        &server,
        json!([{"id": 80, "text": "Another [ref t-9]"}, {"id": 79, "text": "Call back [ref t-1]"}]),
    )
    .await;
    note_lookup(
        &server,
        json!([{"id": 6, "params": {"text": INTERACTION_LINE}},
            {"id": 5, "params": {"text": MARKED_INTERACTION_LINE}}]),
    )
    .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&server)
        .await;
    // The open task found is brought up to date, as any existing one.
    Mock::given(method("PATCH"))
        .and(path("/api/v4/tasks"))
        .and(body_json(
            json!([{"id": 79, "text": "Call back [ref t-1]", "complete_till": DUE_UNIX,
            "responsible_user_id": 6, "is_completed": false}]),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"_embedded": {"tasks": [{"id": 79}]}})))
        .expect(1)
        .mount(&server)
        .await;
    let crm = kommo(&server);
    let task_id = crm
        .write_task(&task(TaskState::Open), "456", None, ctx())
        .await
        .unwrap();
    assert_eq!(task_id, "79");
    let note_id = crm.add_interaction(&interaction(), "456", ctx()).await.unwrap();
    assert_eq!(note_id, "5", "the note without our id is someone else's");
}

#[tokio::test]
async fn rate_refusals_and_faults_are_transient_validation_errors_permanent() {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .and(path("/api/v4/contacts"))
        .respond_with(ResponseTemplate::new(429))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/api/v4/contacts"))
        .respond_with(ResponseTemplate::new(502))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/api/v4/contacts"))
        .respond_with(
            ResponseTemplate::new(400).set_body_json(json!({"validation-errors": [
            {"request_id": "0", "errors": [{"code": "InvalidPhone",
                "path": "custom_fields_values.0.values.0.value",
                "detail": "+79991234567 is not a phone number"}]}],
            "title": "Bad Request", "status": 400, "detail": "Request validation failed"})),
        )
        .mount(&server)
        .await;
    let crm = kommo(&server);
    let mut errors = Vec::new();
    for _ in 0..3 {
        errors.push(
            crm.write_contact(&client("c-1"), Some("456"), &full_card(), &[Field::Phone], ctx())
                .await
                .unwrap_err(),
        );
    }
    assert_eq!(
        (errors[0].kind, errors[0].http_status),
        (CrmErrorKind::Transient, Some(429))
    );
    assert_eq!(
        (errors[1].kind, errors[1].http_status),
        (CrmErrorKind::Transient, Some(502))
    );
    assert_eq!(
        (errors[2].kind, errors[2].http_status),
        (CrmErrorKind::Permanent, Some(400))
    );
    assert!(
        errors[2]
            .message
            .contains("InvalidPhone at custom_fields_values.0.values.0.value"),
        "{}",
        errors[2]
    );
    assert!(!errors[2].message.contains("+7999"), "{}", errors[2]);
}
