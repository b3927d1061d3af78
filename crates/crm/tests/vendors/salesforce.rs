//! Salesforce: JWT bearer grant, session renewal, upsert status codes, quota handling.

use crate::{mapping, salesforce, salesforce_config, sid, write};
use backbone_crm::SalesforceCrm;
use backbone_sync::ports::{CrmErrorKind, CrmGateway};
use base64::Engine;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::signature::Verifier;
use serde_json::json;
use std::time::Duration;
use wiremock::matchers::{header, method, path, path_regex};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const UPSERT_ONE: &str = "/services/data/v62.0/sobjects/Shipment__c/Shipment_Id__c/s-1";
const COLLECTION: &str = "/services/data/v62.0/composite/sobjects/Shipment__c/Shipment_Id__c";

fn assertion_is_valid(req: &Request) -> bool {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    let form: std::collections::HashMap<String, String> =
        form_urlencoded::parse(&req.body).into_owned().collect();
    if form.get("grant_type").map(String::as_str) != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return false;
    }
    let jwt = form.get("assertion").cloned().unwrap_or_default();
    let parts: Vec<&str> = jwt.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let key = rsa::RsaPrivateKey::from_pkcs1_pem(crate::TEST_RSA_KEY).unwrap();
    let verifying = VerifyingKey::<sha2::Sha256>::new(key.to_public_key());
    let sig = Signature::try_from(b64.decode(parts[2]).unwrap().as_slice()).unwrap();
    let signed = verifying
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
        .is_ok();
    let claims: serde_json::Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    signed
        && claims["iss"] == "3MVG9consumerkey"
        && claims["sub"] == "integration@example.com"
        && claims["aud"] == "https://login.salesforce.com"
        && claims["exp"].as_i64().is_some_and(|e| e > now && e <= now + 180)
}

async fn token_endpoint(server: &MockServer, expect: u64) {
    Mock::given(method("POST"))
        .and(path("/services/oauth2/token"))
        .and(assertion_is_valid)
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"access_token": "00Dxx!AR.session",
            "scope": "api", "instance_url": server.uri(), "id": "https://login.salesforce.com/id/00D/005",
            "token_type": "Bearer"})),
        )
        .expect(expect)
        .mount(server)
        .await;
}

#[tokio::test]
async fn upsert_answers_201_200_and_204_are_success_300_and_404_are_refusals() {
    let server = MockServer::start().await;
    token_endpoint(&server, 1).await;
    let crm = salesforce(&server);
    for (status, body) in [
        (
            201,
            json!({"id": "a01", "success": true, "errors": [], "created": true}),
        ),
        (
            200,
            json!({"id": "a01", "success": true, "errors": [], "created": false}),
        ),
        (204, serde_json::Value::Null),
    ] {
        let mock = Mock::given(method("PATCH"))
            .and(path(UPSERT_ONE))
            .and(header("authorization", "Bearer 00Dxx!AR.session"))
            .and(header("sforce-call-options", "client=backbone-crm-sync"))
            .and(wiremock::matchers::body_json(
                json!({"Client_Id__c": "c-1", "Status__c": "in_transit",
                "Status_At__c": "2026-11-01T10:00:00.123Z", "Event_Id__c": "e1"}),
            ));
        let resp = if body.is_null() {
            ResponseTemplate::new(204)
        } else {
            ResponseTemplate::new(status).set_body_json(body)
        };
        let guard = mock.respond_with(resp).expect(1).mount_as_scoped(&server).await;
        let out = crm
            .write_statuses(&[write("e1", "s-1", "in_transit", 0)])
            .await
            .unwrap();
        assert!(out[0].result.is_ok(), "{status}: {out:?}");
        drop(guard);
    }
    let multiple = Mock::given(path(UPSERT_ONE))
        .respond_with(ResponseTemplate::new(300).set_body_json(json!([
            "/services/data/v62.0/sobjects/Shipment__c/a01",
            "/services/data/v62.0/sobjects/Shipment__c/a02"
        ])))
        .mount_as_scoped(&server)
        .await;
    let out = crm
        .write_statuses(&[write("e1", "s-1", "in_transit", 0)])
        .await
        .unwrap();
    let e = out[0].result.as_ref().unwrap_err();
    assert_eq!(e.kind, CrmErrorKind::Permanent);
    assert!(e.message.contains("operator"), "{e}");
    drop(multiple);
    Mock::given(path(UPSERT_ONE))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!([{"message":
            "The requested resource does not exist", "errorCode": "NOT_FOUND"}])))
        .mount(&server)
        .await;
    let out = crm
        .write_statuses(&[write("e1", "s-1", "in_transit", 0)])
        .await
        .unwrap();
    assert_eq!(out[0].result.as_ref().unwrap_err().kind, CrmErrorKind::Permanent);
}

#[tokio::test]
async fn an_expired_session_is_renewed_with_a_new_jwt_grant_and_the_call_repeated() {
    let server = MockServer::start().await;
    token_endpoint(&server, 2).await;
    Mock::given(path(UPSERT_ONE))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!([{"message":
            "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}])))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(path(UPSERT_ONE))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let crm = salesforce(&server);
    let out = crm
        .write_statuses(&[write("e1", "s-1", "in_transit", 0)])
        .await
        .unwrap();
    assert!(out[0].result.is_ok());
    assert_eq!(crm.token_fetches(), 2);
}

#[tokio::test]
async fn a_spent_daily_quota_pauses_calls_rather_than_failing_records() {
    let server = MockServer::start().await;
    token_endpoint(&server, 1).await;
    Mock::given(path(COLLECTION))
        .respond_with(ResponseTemplate::new(403).set_body_json(json!([{"message":
            "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}])))
        .expect(1)
        .mount(&server)
        .await;
    let crm = salesforce(&server);
    let writes = [
        write("e1", "s-1", "in_transit", 0),
        write("e2", "s-2", "in_transit", 0),
    ];
    let e = crm.write_statuses(&writes).await.unwrap_err();
    assert!(e.is_transient(), "a quota refusal must never dead-letter: {e:?}");
    assert_eq!(e.retry_after, Some(Duration::from_secs(3600)));
    assert!(crm.paused().is_some());
    assert!(crm
        .write_statuses(&writes)
        .await
        .unwrap_err()
        .message
        .contains("paused"));
}

#[tokio::test]
async fn usage_near_the_daily_limit_throttles_before_salesforce_refuses() {
    let server = MockServer::start().await;
    token_endpoint(&server, 1).await;
    Mock::given(method("GET"))
        .and(path_regex("/query$"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("sforce-limit-info", "api-usage=91000/100000")
                .set_body_json(json!({"totalSize": 0, "done": true, "records": []})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let crm = salesforce(&server);
    assert!(crm.read_states(&[sid("s-1")]).await.unwrap().is_empty());
    let e = crm.read_states(&[sid("s-1")]).await.unwrap_err();
    assert!(e.is_transient() && e.message.contains("paused"), "{e}");
}

#[tokio::test]
async fn collection_results_are_classified_one_by_one() {
    let server = MockServer::start().await;
    token_endpoint(&server, 1).await;
    Mock::given(method("PATCH"))
        .and(path(COLLECTION))
        .and(wiremock::matchers::body_partial_json(json!({"allOrNone": false})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            {"id": "a01", "success": true, "errors": [], "created": true},
            {"success": false, "errors": [{"statusCode": "UNABLE_TO_LOCK_ROW", "message": "unable to obtain exclusive access to this record", "fields": []}]},
            {"success": false, "errors": [{"statusCode": "DUPLICATE_EXTERNAL_ID", "message": "Shipment Id: more than one record found for external id field", "fields": []}]},
            {"success": false, "errors": [{"statusCode": "DUPLICATE_VALUE", "message": "duplicate value found", "fields": []}]}
        ])))
        .expect(1)
        .mount(&server)
        .await;
    let writes: Vec<_> = (1..=4)
        .map(|i| write(&format!("e{i}"), &format!("s-{i}"), "in_transit", 0))
        .collect();
    let out = salesforce(&server).write_statuses(&writes).await.unwrap();
    assert!(out[0].result.is_ok());
    assert!(
        out[1].result.as_ref().unwrap_err().is_transient(),
        "row lock: retry"
    );
    let dup = out[2].result.as_ref().unwrap_err();
    assert!(
        dup.kind == CrmErrorKind::Permanent && dup.message.contains("operator"),
        "{dup}"
    );
    assert!(
        out[3].result.as_ref().unwrap_err().is_transient(),
        "concurrent create: retry as update"
    );
}

#[tokio::test]
async fn describe_check_refuses_unknown_fields_and_a_non_external_id() {
    let server = MockServer::start().await;
    token_endpoint(&server, 1).await;
    Mock::given(path("/services/data/v62.0/sobjects/Shipment__c/describe"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"name": "Shipment__c", "fields": [
            {"name": "Shipment_Id__c", "externalId": false, "updateable": true},
            {"name": "Status__c", "externalId": false, "updateable": true},
            {"name": "Client_Id__c", "externalId": false, "updateable": true},
            {"name": "Event_Id__c", "externalId": false, "updateable": true}]})),
        )
        .mount(&server)
        .await;
    let err = salesforce(&server).verify_mapping().await.unwrap_err();
    assert!(
        err.contains("Status_At__c") && err.contains("External ID"),
        "{err}"
    );
    let bad = SalesforceCrm::new(
        &salesforce_config(&server),
        mapping(crate::fields([
            "Client_Id__c",
            "ShipmentId",
            "Status__c",
            "Status_At__c",
            "Event_Id__c",
        ])),
    );
    assert!(bad.err().unwrap().contains("__c"));
}
