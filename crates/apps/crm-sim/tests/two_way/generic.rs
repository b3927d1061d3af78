//! The generic CRM API: contacts, tasks and interactions by our external id, signed like every
//! call, and its signed JSON webhooks.

use super::*;
use backbone_crm::signing::{self, SignedParts};

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A request signed for exactly what it sends, with a fresh nonce.
async fn signed(
    url: &str,
    method: &str,
    target: &str,
    body: Option<Value>,
    request_id: &str,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let timestamp = now().to_string();
    let nonce = signing::new_nonce();
    let signature = signing::sign(
        SECRET.as_bytes(),
        &SignedParts {
            method,
            target,
            timestamp: &timestamp,
            nonce: &nonce,
            body: body.as_bytes(),
        },
    );
    let mut req = reqwest::Client::new()
        .request(method.parse().unwrap(), format!("{url}{target}"))
        .bearer_auth(TOKEN)
        .header(signing::TIMESTAMP_HEADER, timestamp)
        .header(signing::NONCE_HEADER, nonce)
        .header(signing::SIGNATURE_HEADER, signature)
        .header("x-request-id", request_id);
    if !body.is_empty() {
        req = req.header("content-type", "application/json").body(body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn contacts_round_trip_by_external_id_with_null_clearing_and_absent_keys_kept() {
    let (_sim, url) = start().await;
    let card = json!({"firstName": "Anna", "lastName": "Petrova", "phone": "+79991234567",
        "email": "anna@example.com", "manager": "6", "segment": "vip", "consentSms": true,
        "consentEmail": false});
    let (status, created) = signed(&url, "PUT", "/api/v1/contacts/c-1", Some(card), "r-1").await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["id"], "ct-1");
    assert_eq!(created["externalId"], "c-1");
    assert_eq!(created["consentSms"], true);
    let (status, read) = signed(&url, "GET", "/api/v1/contacts/c-1", None, "r-2").await;
    assert_eq!(status, 200);
    assert_eq!(read, created);

    let change = json!({"phone": null, "segment": "churned"});
    let (status, updated) = signed(&url, "PUT", "/api/v1/contacts/c-1", Some(change), "r-3").await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["phone"], Value::Null, "null clears");
    assert_eq!(updated["segment"], "churned");
    assert_eq!(updated["firstName"], "Anna", "absent keys stay");
    assert!(updated["updatedAt"].as_str() > created["updatedAt"].as_str());
    let (status, by_id) = signed(&url, "GET", "/api/v1/contacts/by-id/ct-1", None, "r-4").await;
    assert_eq!((status, &by_id), (200, &updated));

    let (status, missing) = signed(&url, "GET", "/api/v1/contacts/c-404", None, "r-5").await;
    assert_eq!((status, missing["code"].as_str()), (404, Some("not_found")));
    let (status, _) = signed(&url, "GET", "/api/v1/contacts/by-id/ct-404", None, "r-6").await;
    assert_eq!(status, 404);
    let wrong = json!({"consentSms": "yes"});
    let (status, refused) = signed(&url, "PUT", "/api/v1/contacts/c-1", Some(wrong), "r-7").await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (422, Some("validation_failed"))
    );

    // Our view: the writes and the request id of each.
    let (_, view) = call(
        "GET",
        &format!("{url}/sim/generic/contacts?external_id=c-1"),
        None,
    )
    .await;
    assert_eq!(view["crm_id"], "ct-1");
    assert_eq!(view["first_name"], "Anna");
    assert_eq!(view["phone"], Value::Null);
    assert_eq!(view["segment"], "churned");
    assert_eq!(view["consent_email"], false);
    assert_eq!(view["writes"], 2);
    assert_eq!(view["request_ids"], json!(["r-1", "r-3"]));
    assert_eq!(view["updated_at"], updated["updatedAt"]);
}

#[tokio::test]
async fn tasks_and_interactions_hang_on_a_contact() {
    let (_sim, url) = start().await;
    let (_, contact) = signed(&url, "PUT", "/api/v1/contacts/c-1", Some(json!({})), "r-1").await;
    let contact_id = contact["id"].as_str().unwrap();
    let task = json!({"contactId": contact_id, "title": "Call back", "dueAt": "2026-12-02T10:00:00Z",
        "state": "open", "assignee": "6"});
    let (status, created) = signed(&url, "PUT", "/api/v1/tasks/t-1", Some(task), "r-2").await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["id"], "tk-1");
    assert_eq!(created["dueAt"], "2026-12-02T10:00:00.000Z");
    let (status, done) = signed(
        &url,
        "PUT",
        "/api/v1/tasks/t-1",
        Some(json!({"state": "done"})),
        "r-3",
    )
    .await;
    assert_eq!((status, done["state"].as_str()), (200, Some("done")));
    assert_eq!(done["title"], "Call back");
    let (status, read) = signed(&url, "GET", "/api/v1/tasks/by-id/tk-1", None, "r-4").await;
    assert_eq!((status, &read), (200, &done));
    let orphan = json!({"contactId": "ct-404", "title": "x"});
    let (status, _) = signed(&url, "PUT", "/api/v1/tasks/t-2", Some(orphan), "r-5").await;
    assert_eq!(status, 422);
    let untitled = json!({"contactId": contact_id});
    let (status, _) = signed(&url, "PUT", "/api/v1/tasks/t-2", Some(untitled), "r-6").await;
    assert_eq!(status, 422);

    let entry = json!({"contactId": contact_id, "channel": "call", "direction": "inbound",
        "text": "Asked about the parcel", "at": "2026-12-01T09:00:00Z"});
    let (status, note) = signed(&url, "PUT", "/api/v1/interactions/i-1", Some(entry), "r-7").await;
    assert_eq!(status, 201, "{note}");
    assert_eq!(note["id"], "in-1");
    assert_eq!(note["channel"], "call");
    let bad = json!({"contactId": contact_id, "channel": "fax", "direction": "inbound", "text": "x",
        "at": "2026-12-01T09:00:00Z"});
    assert_eq!(
        signed(&url, "PUT", "/api/v1/interactions/i-2", Some(bad), "r-8")
            .await
            .0,
        422
    );

    let (_, tasks) = call("GET", &format!("{url}/sim/generic/tasks"), None).await;
    assert_eq!(tasks[0]["state"], "done");
    assert_eq!(tasks[0]["contact"], contact_id);
    assert_eq!(tasks[0]["request_ids"], json!(["r-2", "r-3"]));
    let (_, notes) = call("GET", &format!("{url}/sim/generic/notes"), None).await;
    assert_eq!(notes.as_array().unwrap().len(), 1);
    assert_eq!(notes[0]["contact"], contact_id);
    assert_eq!(notes[0]["text"], "Asked about the parcel");
    assert_eq!(notes[0]["request_ids"], json!(["r-7"]));
}

#[tokio::test]
async fn calls_without_a_token_or_signature_are_refused() {
    let (_sim, url) = start().await;
    let (status, body) = call("PUT", &format!("{url}/api/v1/contacts/c-1"), Some(json!({}))).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    let resp = reqwest::Client::new()
        .get(format!("{url}/api/v1/contacts/c-1"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "invalid_signature");
    let (_, contacts) = call("GET", &format!("{url}/sim/generic/contacts"), None).await;
    assert_eq!(contacts, json!([]));
}

fn verify(got: &Got) {
    let header = |n: &str| got.headers[n].to_str().unwrap().to_owned();
    let parts = SignedParts {
        method: "POST",
        target: &got.path,
        timestamp: &header(signing::TIMESTAMP_HEADER),
        nonce: &header(signing::NONCE_HEADER),
        body: &got.body,
    };
    let signature = header(signing::SIGNATURE_HEADER);
    assert_eq!(
        signing::verify(HOOK_SECRET.as_bytes(), &parts, &signature, now()),
        Ok(())
    );
    assert!(signing::verify(b"other", &parts, &signature, now()).is_err());
}

#[tokio::test]
async fn every_change_sends_a_signed_webhook_and_notify_repeats_one_delivery() {
    let (_sim, url) = start().await;
    let rx = Receiver::start().await;
    let target = format!("{}/webhooks/generic?v=1", rx.url);
    hook(&url, "generic", json!({"url": target, "secret": HOOK_SECRET})).await;

    let (_, contact) = signed(
        &url,
        "PUT",
        "/api/v1/contacts/c-1",
        Some(json!({"firstName": "A"})),
        "r-1",
    )
    .await;
    let got = rx.wait(1).await;
    assert_eq!(got[0].path, "/webhooks/generic?v=1");
    assert_eq!(got[0].headers["content-type"], "application/json");
    verify(&got[0]);
    let created = got[0].json();
    assert_eq!(created["event"], "contact.created");
    assert_eq!(created["entity"], "contact");
    assert_eq!(created["id"], "ct-1");
    assert_eq!(created["externalId"], "c-1");
    assert_eq!(created["occurredAt"], contact["updatedAt"]);
    assert_eq!(created["deliveryId"].as_str().unwrap().len(), 36);

    // An edit by a CRM user: the record changes, its time moves, the webhook follows.
    let edit = json!({"manager": "9", "segment": "churned"});
    let (status, view) = call("PATCH", &format!("{url}/sim/generic/contacts/ct-1"), Some(edit)).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["manager"], "9");
    assert_eq!(view["writes"], 1, "a CRM user's edit is not an API write");
    let got = rx.wait(2).await;
    verify(&got[1]);
    let updated = got[1].json();
    assert_eq!(updated["event"], "contact.updated");
    assert_eq!(updated["externalId"], "c-1");
    assert_eq!(updated["occurredAt"], view["updated_at"]);
    assert!(updated["occurredAt"].as_str() > created["occurredAt"].as_str());
    assert_ne!(updated["deliveryId"], created["deliveryId"]);
    let (_, read) = signed(&url, "GET", "/api/v1/contacts/c-1", None, "r-2").await;
    assert_eq!(read["manager"], "9");
    assert_eq!(read["segment"], "churned");

    // A CRM user's new contact has no external id.
    let (status, own) = call(
        "POST",
        &format!("{url}/sim/generic/contacts"),
        Some(json!({"first_name": "B"})),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(own["external_id"], Value::Null);
    let got = rx.wait(3).await;
    assert_eq!(got[2].json()["event"], "contact.created");
    assert_eq!(got[2].json()["externalId"], Value::Null);

    let task = json!({"contactId": "ct-1", "title": "Call"});
    signed(&url, "PUT", "/api/v1/tasks/t-1", Some(task), "r-3").await;
    let got = rx.wait(4).await;
    assert_eq!(got[3].json()["event"], "task.updated");
    assert_eq!(got[3].json()["entity"], "task");
    assert_eq!(got[3].json()["externalId"], "t-1");

    // The same delivery 50 times at once: one deliveryId, each copy signed anew.
    let one = notify_50(&url, "generic", "contacts", "ct-1", &rx).await;
    assert_eq!(one.json()["deliveryId"], rx.got()[4].json()["deliveryId"]);
    assert_eq!(one.json()["occurredAt"], view["updated_at"]);
    let copies = &rx.got()[4..];
    copies.iter().for_each(verify);
    let mut nonces: Vec<String> = copies
        .iter()
        .map(|g| g.headers[signing::NONCE_HEADER].to_str().unwrap().to_owned())
        .collect();
    nonces.sort();
    nonces.dedup();
    assert_eq!(nonces.len(), 50);
    let s = stats_until(&url, "generic", |s| s["sent"] == 54).await;
    assert_eq!((s["sent"].as_u64(), s["failed"].as_u64()), (Some(54), Some(0)));
}
