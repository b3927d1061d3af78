//! Salesforce: `Contact` and `Task` upserted by External ID and read back, and the SOAP
//! Outbound Messages.

use super::*;

const V: &str = "/services/data/v62.0/sobjects";

async fn token(url: &str) -> String {
    let resp = reqwest::Client::new()
        .post(format!("{url}/services/oauth2/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "backbone"),
            ("client_secret", VENDOR_SECRET),
        ])
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

async fn sf(url: &str, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method.parse().unwrap(), format!("{url}{V}{path}"))
        .bearer_auth(token)
        .header("sforce-call-options", "client=backbone-crm-sync")
        .header("x-request-id", "req-sf");
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn contacts_are_upserted_by_external_id_read_back_and_cleared() {
    let (_sim, url) = start().await;
    let t = token(&url).await;
    let (status, missing) = sf(&url, &t, "GET", "/Contact/Backbone_Client_Id__c/c-1", None).await;
    assert_eq!(
        (status, missing[0]["errorCode"].as_str()),
        (404, Some("NOT_FOUND"))
    );

    let card = json!({"FirstName": "Anna", "LastName": "Petrova", "Phone": "+79991234567",
        "Email": "anna@example.com", "OwnerId": "005000000000006AAA", "Segment__c": "vip",
        "Sms_Consent__c": true, "HasOptedOutOfEmail": true});
    let (status, created) = sf(
        &url,
        &t,
        "PATCH",
        "/Contact/Backbone_Client_Id__c/c-1",
        Some(card),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        (created["success"].clone(), created["created"].clone()),
        (json!(true), json!(true))
    );
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("003") && id.len() == 18, "{id}");

    let (status, read) = sf(&url, &t, "GET", "/Contact/Backbone_Client_Id__c/c-1", None).await;
    assert_eq!(status, 200);
    assert_eq!(read["attributes"]["type"], "Contact");
    assert_eq!(read["Id"], id);
    assert_eq!(read["Backbone_Client_Id__c"], "c-1");
    assert_eq!(read["Phone"], "+79991234567");
    assert_eq!(read["Sms_Consent__c"], true);
    assert_eq!(read["HasOptedOutOfEmail"], true);
    let modified = read["LastModifiedDate"].as_str().unwrap().to_owned();
    assert!(modified.ends_with("+0000") && modified.len() == 28, "{modified}");

    let change = json!({"Phone": null, "Segment__c": "churned"});
    let (status, updated) = sf(
        &url,
        &t,
        "PATCH",
        "/Contact/Backbone_Client_Id__c/c-1",
        Some(change),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(
        (updated["id"].as_str(), updated["created"].clone()),
        (Some(id.as_str()), json!(false))
    );
    let (status, by_id) = sf(&url, &t, "GET", &format!("/Contact/{id}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(by_id["Phone"], Value::Null);
    assert_eq!(by_id["Segment__c"], "churned");
    assert_eq!(by_id["FirstName"], "Anna");
    assert!(by_id["LastModifiedDate"].as_str().unwrap() > modified.as_str());

    // As in an org: a contact needs a last name, fields must exist, and the owner stays.
    let nameless = json!({"FirstName": "B"});
    let (status, body) = sf(
        &url,
        &t,
        "PATCH",
        "/Contact/Backbone_Client_Id__c/c-2",
        Some(nameless),
    )
    .await;
    assert_eq!(
        (status, body[0]["errorCode"].as_str()),
        (400, Some("REQUIRED_FIELD_MISSING"))
    );
    let unknown = json!({"LastName": "B", "Nickname__c": "x"});
    let (status, body) = sf(
        &url,
        &t,
        "PATCH",
        "/Contact/Backbone_Client_Id__c/c-2",
        Some(unknown),
    )
    .await;
    assert_eq!(
        (status, body[0]["errorCode"].as_str()),
        (400, Some("INVALID_FIELD"))
    );
    let ownerless = json!({"OwnerId": null});
    let (status, _) = sf(
        &url,
        &t,
        "PATCH",
        "/Contact/Backbone_Client_Id__c/c-1",
        Some(ownerless),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = sf(&url, &t, "GET", "/Contact/003SIM000000999AAA", None).await;
    assert_eq!(status, 404);

    let (_, view) = call(
        "GET",
        &format!("{url}/sim/salesforce/contacts?external_id=C-1"),
        None,
    )
    .await;
    assert_eq!(view["crm_id"], id, "external ids match case-insensitively");
    assert_eq!(view["consent_email"], false);
    assert_eq!(view["writes"], 2);
    assert_eq!(view["request_ids"], json!(["req-sf", "req-sf"]));
}

#[tokio::test]
async fn a_data_call_without_a_session_is_refused() {
    let (_sim, url) = start().await;
    let (status, body) = sf(
        &url,
        "not-a-session",
        "GET",
        "/Contact/Backbone_Client_Id__c/c-1",
        None,
    )
    .await;
    assert_eq!(
        (status, body[0]["errorCode"].as_str()),
        (401, Some("INVALID_SESSION_ID"))
    );
    let card = json!({"LastName": "X"});
    let (status, _) = sf(
        &url,
        "",
        "PATCH",
        "/Contact/Backbone_Client_Id__c/c-1",
        Some(card),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn tasks_and_interactions_are_tasks_on_the_contact() {
    let (_sim, url) = start().await;
    let t = token(&url).await;
    let (_, contact) = sf(
        &url,
        &t,
        "PATCH",
        "/Contact/Backbone_Client_Id__c/c-1",
        Some(json!({"LastName": "Petrova"})),
    )
    .await;
    let who = contact["id"].as_str().unwrap().to_owned();
    let task = json!({"Subject": "Call back", "ActivityDate": "2026-12-02", "Status": "Not Started",
        "OwnerId": "005000000000006AAA", "WhoId": who});
    let (status, created) = sf(&url, &t, "PATCH", "/Task/Backbone_Task_Id__c/t-1", Some(task)).await;
    assert_eq!(status, 201, "{created}");
    let task_id = created["id"].as_str().unwrap().to_owned();
    assert!(task_id.starts_with("00T") && task_id.len() == 18);
    let done = json!({"Status": "Completed"});
    let (status, _) = sf(&url, &t, "PATCH", "/Task/Backbone_Task_Id__c/t-1", Some(done)).await;
    assert_eq!(status, 200);
    let (_, read) = sf(&url, &t, "GET", &format!("/Task/{task_id}"), None).await;
    assert_eq!(read["Status"], "Completed");
    assert_eq!(read["Subject"], "Call back");
    assert_eq!(read["ActivityDate"], "2026-12-02");
    assert_eq!(read["WhoId"], who);
    assert_eq!(read["Backbone_Task_Id__c"], "t-1");
    assert!(read["LastModifiedDate"].is_string());
    let bad = json!({"Status": "Maybe"});
    let (status, body) = sf(&url, &t, "PATCH", "/Task/Backbone_Task_Id__c/t-1", Some(bad)).await;
    assert_eq!(
        (status, body[0]["errorCode"].as_str()),
        (400, Some("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"))
    );
    let orphan = json!({"Subject": "x", "WhoId": "003SIM000000999AAA"});
    let (status, _) = sf(&url, &t, "PATCH", "/Task/Backbone_Task_Id__c/t-2", Some(orphan)).await;
    assert_eq!(status, 400);

    let entry = json!({"Subject": "call inbound", "Description": "Asked about the parcel",
        "Status": "Completed", "ActivityDate": "2026-12-01", "WhoId": who});
    let (status, note) = sf(
        &url,
        &t,
        "PATCH",
        "/Task/Backbone_Interaction_Id__c/i-1",
        Some(entry),
    )
    .await;
    assert_eq!(status, 201, "{note}");
    let note_id = note["id"].as_str().unwrap();
    let (_, read) = sf(&url, &t, "GET", &format!("/Task/{note_id}"), None).await;
    assert_eq!(read["Backbone_Interaction_Id__c"], "i-1");
    assert_eq!(read["Description"], "Asked about the parcel");
    let (_, tasks) = call("GET", &format!("{url}/sim/salesforce/tasks"), None).await;
    assert_eq!(
        tasks.as_array().unwrap().len(),
        1,
        "an interaction is a note, not a task"
    );
    assert_eq!(tasks[0]["state"], "done");
    let (_, notes) = call("GET", &format!("{url}/sim/salesforce/notes"), None).await;
    assert_eq!(notes[0]["contact"], who);
    assert_eq!(notes[0]["text"], "Asked about the parcel");
}

#[tokio::test]
async fn outbound_messages_carry_the_organization_and_are_retried_then_counted() {
    let (_sim, url) = start().await;
    let rx = Receiver::start().await;
    hook(
        &url,
        "salesforce",
        json!({"url": format!("{}/webhooks/salesforce/s3cret", rx.url),
        "organization_id": "00D000000000042AAA"}),
    )
    .await;
    let t = token(&url).await;
    let (_, contact) = sf(
        &url,
        &t,
        "PATCH",
        "/Contact/Backbone_Client_Id__c/c-1",
        Some(json!({"LastName": "Petrova"})),
    )
    .await;
    let id = contact["id"].as_str().unwrap().to_owned();
    let got = rx.wait(1).await;
    assert!(got[0].headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/xml"));
    let xml = got[0].text();
    assert!(
        xml.contains("<OrganizationId>00D000000000042AAA</OrganizationId>"),
        "{xml}"
    );
    assert!(xml.contains(r#"<sObject xsi:type="sf:Contact""#), "{xml}");
    assert!(xml.contains(&format!("<sf:Id>{id}</sf:Id>")), "{xml}");
    assert!(
        xml.contains("<sf:Backbone_Client_Id__c>c-1</sf:Backbone_Client_Id__c>"),
        "{xml}"
    );
    assert!(xml.contains("<sf:LastModifiedDate>"), "{xml}");
    let notification = |x: &str| {
        let start = x.find("<Notification>\n    <Id>").unwrap() + "<Notification>\n    <Id>".len();
        x[start..start + 18].to_owned()
    };
    let first = notification(&xml);
    assert!(first.starts_with("04l"));

    // A CRM user's edit: a new notification.
    let (status, _) = call(
        "PATCH",
        &format!("{url}/sim/salesforce/contacts/{id}"),
        Some(json!({"segment": "vip"})),
    )
    .await;
    assert_eq!(status, 200);
    let got = rx.wait(2).await;
    assert_ne!(notification(&got[1].text()), first);

    // The same notification 50 times at once.
    let one = notify_50(&url, "salesforce", "contacts", &id, &rx).await;
    let repeated = notification(&one.text());
    assert_ne!(repeated, first);

    // A receiver that fails is tried three times for one change, then counted as failed.
    rx.status.store(503, Ordering::SeqCst);
    let before = rx.got().len();
    sf(
        &url,
        &t,
        "PATCH",
        "/Task/Backbone_Task_Id__c/t-1",
        Some(json!({"Subject": "x", "WhoId": id})),
    )
    .await;
    let s = stats_until(&url, "salesforce", |s| s["failed"] == 1).await;
    assert_eq!(s["failed"], 1);
    assert_eq!(s["last_status"], 503);
    let got = rx.got();
    assert_eq!(got.len(), before + 3);
    assert!(got[before].text().contains(r#"xsi:type="sf:Task""#));
    assert!(
        got[before..].iter().all(|g| g.body == got[before].body),
        "the same message retried"
    );
}
