//! Webhooks: verified by the vendor's own credential, stored once, answered at once.

use super::*;

// ---------------------------------------------------------------------------------------------
// Webhooks

fn generic_delivery(delivery: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "deliveryId": delivery,
        "event": "contact.updated",
        "entity": "contact",
        "id": "crm-1",
        "externalId": "c-1",
        "occurredAt": "2026-12-02T10:00:00Z",
    }))
    .unwrap()
}

fn signed_generic(app: &App, body: Vec<u8>, secret: &str) -> reqwest::RequestBuilder {
    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
    let nonce = signing::new_nonce();
    let signature = signing::sign(
        secret.as_bytes(),
        &SignedParts {
            method: "POST",
            target: "/webhooks/generic",
            timestamp: &timestamp,
            nonce: &nonce,
            body: &body,
        },
    );
    app.http
        .post(app.url("/webhooks/generic"))
        .header("content-type", "application/json")
        .header(signing::TIMESTAMP_HEADER, timestamp)
        .header(signing::NONCE_HEADER, nonce)
        .header(signing::SIGNATURE_HEADER, signature)
        .body(body)
}

#[tokio::test]
async fn a_signed_generic_webhook_is_stored_once_and_answered_202() {
    let app = start().await;
    let res = signed_generic(&app, generic_delivery("d-1"), GENERIC_SECRET)
        .header("x-request-id", "hook-1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    assert_eq!(res.headers()["x-request-id"], "hook-1");
    let stored = app.store.webhook(1).expect("stored");
    assert_eq!(stored.hint.vendor, "generic");
    assert_eq!(stored.hint.delivery_id, "d-1");
    assert_eq!(stored.request_id, "hook-1");
    assert!(app.store.webhook(2).is_none());
    assert_eq!(app.outbox().await, 1);

    // The same delivery again (a fresh signature): acknowledged, nothing new.
    let res = signed_generic(&app, generic_delivery("d-1"), GENERIC_SECRET)
        .header("x-request-id", "not a valid id")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202, "a malformed request id never refuses a vendor");
    assert_ne!(res.headers()["x-request-id"], "not a valid id");
    assert!(app.store.webhook(2).is_none());
    assert_eq!(app.outbox().await, 1);
}

#[tokio::test]
async fn a_wrong_or_missing_signature_stores_nothing() {
    let app = start().await;
    let (s, b) = send(signed_generic(
        &app,
        generic_delivery("d-1"),
        "another-secret-0123456789",
    ))
    .await;
    assert_problem(s, &b, 403, "forbidden");
    let (s, b) = send(
        app.http
            .post(app.url("/webhooks/generic"))
            .body(generic_delivery("d-1")),
    )
    .await;
    assert_problem(s, &b, 401, "unauthenticated");
    // Signed, but not the vendor's shape.
    let (s, b) = send(signed_generic(
        &app,
        b"{\"secret-shape\":1}".to_vec(),
        GENERIC_SECRET,
    ))
    .await;
    assert_problem(s, &b, 400, "bad-request");
    assert!(!b.to_string().contains("secret-shape"), "{b}");
    assert!(app.store.webhook(1).is_none());
    assert_eq!(app.outbox().await, 0);
}

pub(super) fn bitrix_form(token: &str) -> String {
    format!(
        "event=ONCRMCONTACTUPDATE&event_handler_id=12&data%5BFIELDS%5D%5BID%5D=82&ts=1764669600&auth%5Bdomain%5D=example.bitrix24.ru&auth%5Bmember_id%5D={BITRIX_MEMBER}&auth%5Bapplication_token%5D={token}"
    )
}

pub(super) fn bitrix(app: &App, token: &str) -> reqwest::RequestBuilder {
    app.http
        .post(app.url("/webhooks/bitrix24"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(bitrix_form(token))
}

#[tokio::test]
async fn a_bitrix24_form_with_a_wrong_token_is_403() {
    let app = start().await;
    let (s, b) = send(bitrix(&app, "wrong-app-token-0123456789")).await;
    assert_problem(s, &b, 403, "forbidden");
    assert!(app.store.webhook(1).is_none());
    assert_eq!(app.outbox().await, 0);
}

#[tokio::test]
async fn fifty_identical_bitrix24_deliveries_at_once_store_one() {
    let app = Arc::new(start().await);
    let mut joins = Vec::new();
    for _ in 0..50 {
        let app = app.clone();
        joins.push(tokio::spawn(async move {
            bitrix(&app, BITRIX_TOKEN).send().await.unwrap().status()
        }));
    }
    for j in joins {
        assert_eq!(j.await.unwrap(), 200);
    }
    let stored = app.store.webhook(1).expect("stored");
    assert_eq!(stored.hint.vendor, "bitrix24");
    assert_eq!(stored.hint.crm_id, "82");
    assert!(app.store.webhook(2).is_none());
    assert_eq!(app.outbox().await, 1);
}

#[tokio::test]
async fn kommo_and_salesforce_are_verified_by_their_path_secret() {
    let app = start().await;
    let form = format!(
        "contacts%5Bupdate%5D%5B0%5D%5Bid%5D=456&contacts%5Bupdate%5D%5B0%5D%5Blast_modified%5D=1764669600&contacts%5Bupdate%5D%5B0%5D%5Baccount_id%5D={KOMMO_ACCOUNT}&account%5Bsubdomain%5D=acme&account%5Bid%5D={KOMMO_ACCOUNT}"
    );
    let kommo = |secret: &str| {
        app.http
            .post(app.url(&format!("/webhooks/kommo/{secret}")))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.clone())
    };
    let (s, b) = send(kommo("wrong-path-secret-0123456789")).await;
    assert_problem(s, &b, 403, "forbidden");
    let (s, b) = send(kommo(KOMMO_SECRET)).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(app.store.webhook(1).expect("stored").hint.vendor, "kommo");

    let soap = salesforce_message();
    let res = app
        .http
        .post(app.url(&format!("/webhooks/salesforce/{SALESFORCE_SECRET}")))
        .header("content-type", "text/xml; charset=utf-8")
        .body(soap)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/xml"));
    let text = res.text().await.unwrap();
    assert!(text.contains("<Ack>true</Ack>"), "{text}");
    assert_eq!(app.store.webhook(2).expect("stored").hint.vendor, "salesforce");
    assert_eq!(app.outbox().await, 2);
}

fn salesforce_message() -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   <OrganizationId>{SALESFORCE_ORG}</OrganizationId>
   <ActionId>04k000000000001AAA</ActionId>
   <SessionId xsi:nil="true"/>
   <EnterpriseUrl>https://example.my.salesforce.com/services/Soap/c/62.0/00D000000000001</EnterpriseUrl>
   <PartnerUrl>https://example.my.salesforce.com/services/Soap/u/62.0/00D000000000001</PartnerUrl>
   <Notification>
    <Id>04l000000000001AAA</Id>
    <sObject xsi:type="sf:Contact" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
     <sf:Id>003000000000001AAA</sf:Id>
     <sf:Backbone_Client_Id__c>c-1</sf:Backbone_Client_Id__c>
     <sf:LastModifiedDate>2026-12-02T10:00:00.000Z</sf:LastModifiedDate>
    </sObject>
   </Notification>
  </notifications>
 </soapenv:Body>
</soapenv:Envelope>"#
    )
}

#[tokio::test]
async fn an_unconfigured_vendor_is_404_and_an_oversized_webhook_413() {
    let app = start_with(json!({"generic": {"secret": GENERIC_SECRET}})).await;
    let (s, b) = send(bitrix(&app, BITRIX_TOKEN)).await;
    assert_problem(s, &b, 404, "not-found");
    let (s, b) = send(app.http.post(app.url("/webhooks/secret-vendor")).body("x")).await;
    assert_problem(s, &b, 404, "not-found");
    assert!(!b.to_string().contains("secret-vendor"));
    let (s, b) = send(
        app.http
            .post(app.url("/webhooks/generic"))
            .body(vec![b'x'; MAX_WEBHOOK_BYTES + 1]),
    )
    .await;
    assert_problem(s, &b, 413, "payload-too-large");
    let (s, b) = send(app.http.get(app.url("/webhooks/generic"))).await;
    assert_problem(s, &b, 405, "method-not-allowed");
    assert_eq!(app.outbox().await, 0);
}
