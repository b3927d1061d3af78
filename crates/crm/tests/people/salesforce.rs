//! Salesforce: `Contact` and `Task` upserts by External ID, `Sforce-Call-Options` on writes.

use crate::{
    at, client, ctx, full_card, has_fresh_request_id, has_request_id, interaction, salesforce, task,
};
use backbone_sync::clients::{Card, ClientCrm, Field, TaskState, Value};
use backbone_sync::ports::CrmErrorKind;
use serde_json::json;
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const CONTACT_C1: &str = "/services/data/v62.0/sobjects/Contact/Backbone_Client_Id__c/c-1";
const TASK_T1: &str = "/services/data/v62.0/sobjects/Task/Backbone_Task_Id__c/t-1";

fn upserted(status: u16, id: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({"id": id, "success": true, "errors": [],
        "created": status == 201}))
}

fn contact_record(external_id: &str) -> serde_json::Value {
    json!({"attributes": {"type": "Contact", "url": "/services/data/v62.0/sobjects/Contact/003A"},
        "Id": "003A", "Backbone_Client_Id__c": external_id, "FirstName": "Ada", "LastName": "Lovelace",
        "Phone": "+79991234567", "Email": "ada@example.com", "OwnerId": "6", "Segment__c": "vip",
        "Sms_Consent__c": true, "HasOptedOutOfEmail": true,
        "LastModifiedDate": "2026-12-02T10:00:00.000+0000"})
}

#[tokio::test]
async fn a_contact_is_upserted_by_our_external_id_with_the_call_options_and_request_id() {
    let server = MockServer::start().await;
    let crm = salesforce(&server).await;
    Mock::given(method("PATCH"))
        .and(path(CONTACT_C1))
        .and(header("authorization", "Bearer 00Dxx!AR.session"))
        .and(header("sforce-call-options", "client=backbone-crm-sync"))
        .and(has_request_id)
        .and(body_json(
            json!({"FirstName": "Ada", "LastName": "Lovelace", "Phone": "+79991234567",
            "Email": "ada@example.com", "OwnerId": "6", "Segment__c": "vip", "Sms_Consent__c": true,
            "HasOptedOutOfEmail": true}),
        ))
        .respond_with(upserted(201, "003A"))
        .expect(1)
        .mount(&server)
        .await;
    let id = crm
        .write_contact(&client("c-1"), None, &full_card(), &Field::ALL, ctx())
        .await
        .unwrap();
    assert_eq!(id, "003A");
}

#[tokio::test]
async fn an_update_sends_the_written_fields_only_and_null_clears() {
    let server = MockServer::start().await;
    let crm = salesforce(&server).await;
    Mock::given(method("PATCH"))
        .and(path(CONTACT_C1))
        .and(header("sforce-call-options", "client=backbone-crm-sync"))
        .and(body_json(
            json!({"Segment__c": null, "HasOptedOutOfEmail": false}),
        ))
        .respond_with(upserted(200, "003A"))
        .expect(1)
        .mount(&server)
        .await;
    let card = Card::default().with(Field::ConsentEmail, Value::Flag(true));
    let id = crm
        .write_contact(
            &client("c-1"),
            Some("003A"),
            &card,
            &[Field::Segment, Field::ConsentEmail],
            ctx(),
        )
        .await
        .unwrap();
    assert_eq!(id, "003A");
}

#[tokio::test]
async fn a_204_upsert_learns_the_id_by_reading_the_record() {
    let server = MockServer::start().await;
    let crm = salesforce(&server).await;
    Mock::given(method("PATCH"))
        .and(path(CONTACT_C1))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(CONTACT_C1))
        .respond_with(ResponseTemplate::new(200).set_body_json(contact_record("c-1")))
        .expect(1)
        .mount(&server)
        .await;
    let id = crm
        .write_contact(&client("c-1"), None, &full_card(), &[Field::FirstName], ctx())
        .await
        .unwrap();
    assert_eq!(id, "003A");
}

#[tokio::test]
async fn reads_by_external_id_and_by_id_map_the_record_and_404_is_none() {
    let server = MockServer::start().await;
    let crm = salesforce(&server).await;
    Mock::given(method("GET"))
        .and(path(CONTACT_C1))
        .and(has_fresh_request_id)
        .respond_with(ResponseTemplate::new(200).set_body_json(contact_record("c-1")))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/services/data/v62.0/sobjects/Contact/003A"))
        .respond_with(ResponseTemplate::new(200).set_body_json(contact_record("c-1")))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(
            "/services/data/v62.0/sobjects/Contact/Backbone_Client_Id__c/c-2",
        ))
        .respond_with(
            ResponseTemplate::new(404).set_body_json(json!([{"errorCode": "NOT_FOUND",
            "message": "Provided external ID field does not exist or is not accessible: c-2"}])),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/services/data/v62.0/sobjects/Contact/003Z"))
        .respond_with(
            ResponseTemplate::new(404).set_body_json(json!([{"errorCode": "ENTITY_IS_DELETED",
            "message": "entity is deleted"}])),
        )
        .expect(1)
        .mount(&server)
        .await;
    let found = crm.read_contact(&client("c-1")).await.unwrap().unwrap();
    assert_eq!(found.crm_id, "003A");
    assert_eq!(found.client_id, Some(client("c-1")));
    assert_eq!(
        found.card,
        full_card(),
        "HasOptedOutOfEmail true is consent_email false"
    );
    assert_eq!(found.modified_at, Some(at()));
    let by_id = crm.read_contact_by_crm_id("003A").await.unwrap().unwrap();
    assert_eq!(by_id.card, full_card());
    assert!(crm.read_contact(&client("c-2")).await.unwrap().is_none());
    assert!(crm.read_contact_by_crm_id("003Z").await.unwrap().is_none());
}

#[tokio::test]
async fn a_contact_found_for_an_id_differing_in_case_is_refused() {
    let server = MockServer::start().await;
    let crm = salesforce(&server).await;
    Mock::given(method("GET"))
        .and(path(CONTACT_C1))
        .respond_with(ResponseTemplate::new(200).set_body_json(contact_record("C-1")))
        .mount(&server)
        .await;
    let e = crm.read_contact(&client("c-1")).await.unwrap_err();
    assert_eq!(e.kind, CrmErrorKind::Permanent);
    assert!(e.message.contains("another client id"), "{}", e.message);
}

#[tokio::test]
async fn tasks_are_upserted_by_their_external_id_on_the_contact_and_read_by_id() {
    let server = MockServer::start().await;
    let crm = salesforce(&server).await;
    for (sf_status, answer) in [("Not Started", 201), ("Completed", 200), ("Deferred", 200)] {
        Mock::given(method("PATCH"))
            .and(path(TASK_T1))
            .and(header("sforce-call-options", "client=backbone-crm-sync"))
            .and(has_request_id)
            .and(body_json(
                json!({"Subject": "Call back", "ActivityDate": "2026-12-05",
                "Status": sf_status, "OwnerId": "6", "WhoId": "003A"}),
            ))
            .respond_with(upserted(answer, "00T1"))
            .expect(1)
            .mount(&server)
            .await;
    }
    Mock::given(method("GET"))
        .and(path("/services/data/v62.0/sobjects/Task/00T1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "attributes": {"type": "Task"}, "Id": "00T1", "Backbone_Task_Id__c": "t-1",
            "Subject": "Call back", "ActivityDate": "2026-12-05", "Status": "Deferred", "OwnerId": "6",
            "WhoId": "003A", "LastModifiedDate": "2026-12-02T10:00:00.000+0000"})))
        .expect(1)
        .mount(&server)
        .await;
    for (state, existing) in [
        (TaskState::Open, None),
        (TaskState::Done, Some("00T1")),
        (TaskState::Cancelled, Some("00T1")),
    ] {
        let id = crm
            .write_task(&task(state), "003A", existing, ctx())
            .await
            .unwrap();
        assert_eq!(id, "00T1");
    }
    let read = crm.read_task("00T1").await.unwrap().unwrap();
    assert_eq!(read.task_id.unwrap().as_str(), "t-1");
    assert_eq!(read.state, TaskState::Cancelled);
    assert_eq!(read.title.as_deref(), Some("Call back"));
    assert_eq!(
        read.due_at,
        Some(time::macros::datetime!(2026-12-05 00:00 UTC)),
        "ActivityDate is a date"
    );
    assert_eq!(read.modified_at, Some(at()));
}

#[tokio::test]
async fn an_interaction_is_a_completed_task_upserted_by_its_own_external_id() {
    let server = MockServer::start().await;
    let crm = salesforce(&server).await;
    Mock::given(method("PATCH"))
        .and(path(
            "/services/data/v62.0/sobjects/Task/Backbone_Interaction_Id__c/i-1",
        ))
        .and(header("sforce-call-options", "client=backbone-crm-sync"))
        .and(has_request_id)
        .and(body_json(
            json!({"Subject": "call inbound", "Description": "Asked about the delivery",
            "Status": "Completed", "ActivityDate": "2026-12-02", "WhoId": "003A"}),
        ))
        .respond_with(upserted(201, "00T2"))
        .expect(1)
        .mount(&server)
        .await;
    let id = crm.add_interaction(&interaction(), "003A", ctx()).await.unwrap();
    assert_eq!(id, "00T2");
}

#[tokio::test]
async fn several_matches_are_refused_for_good_with_a_message_for_the_operator() {
    let server = MockServer::start().await;
    let crm = salesforce(&server).await;
    Mock::given(method("PATCH"))
        .and(path(CONTACT_C1))
        .respond_with(ResponseTemplate::new(300).set_body_json(json!([
            "/services/data/v62.0/sobjects/Contact/003A",
            "/services/data/v62.0/sobjects/Contact/003B"
        ])))
        .mount(&server)
        .await;
    let e = crm
        .write_contact(&client("c-1"), None, &full_card(), &Field::ALL, ctx())
        .await
        .unwrap_err();
    assert_eq!((e.kind, e.http_status), (CrmErrorKind::Permanent, Some(300)));
    assert_eq!(
        e.message,
        "several Salesforce Contact records carry this Backbone_Client_Id__c: an operator must merge them"
    );
}

#[tokio::test]
async fn server_faults_and_row_locks_are_transient_validation_errors_permanent() {
    let server = MockServer::start().await;
    let crm = salesforce(&server).await;
    let cases = [
        (
            "c-503",
            ResponseTemplate::new(503)
                .set_body_json(json!([{"errorCode": "SERVER_UNAVAILABLE", "message": "x"}])),
        ),
        (
            "c-lock",
            ResponseTemplate::new(400).set_body_json(json!([{"errorCode": "UNABLE_TO_LOCK_ROW",
            "message": "unable to obtain exclusive access to this record"}])),
        ),
        (
            "c-400",
            ResponseTemplate::new(400).set_body_json(json!([{"errorCode": "INVALID_EMAIL_ADDRESS",
            "message": "Email: invalid email address: ada@example.com", "fields": ["Email"]}])),
        ),
    ];
    for (id, resp) in cases {
        Mock::given(method("PATCH"))
            .and(path(format!(
                "/services/data/v62.0/sobjects/Contact/Backbone_Client_Id__c/{id}"
            )))
            .respond_with(resp)
            .mount(&server)
            .await;
    }
    let mut errors = Vec::new();
    for id in ["c-503", "c-lock", "c-400"] {
        errors.push(
            crm.write_contact(&client(id), None, &full_card(), &Field::ALL, ctx())
                .await
                .unwrap_err(),
        );
    }
    assert_eq!(errors[0].kind, CrmErrorKind::Transient);
    assert_eq!(errors[1].kind, CrmErrorKind::Transient, "{}", errors[1]);
    assert_eq!(
        (errors[2].kind, errors[2].http_status),
        (CrmErrorKind::Permanent, Some(400))
    );
    assert!(
        errors[2].message.contains("INVALID_EMAIL_ADDRESS (Email)"),
        "{}",
        errors[2]
    );
    assert!(!errors[2].message.contains("ada@"), "{}", errors[2]);
}
