//! Kommo: contacts with custom fields, tasks and notes on `/api/v4`, and the form-encoded
//! webhooks.

use super::*;

/// The default contact custom fields: client id, segment, SMS and e-mail consent.
const CLIENT_ID: u64 = 900001;
const SEGMENT: u64 = 900002;
const CONSENT_SMS: u64 = 900003;

async fn kommo(url: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method.parse().unwrap(), format!("{url}/api/v4{path}"))
        .bearer_auth(VENDOR_SECRET)
        .header("x-request-id", "req-k");
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn cf(r: &Value, id: u64) -> Option<Value> {
    r["custom_fields_values"]
        .as_array()?
        .iter()
        .find(|f| f["field_id"] == id)
        .map(|f| f["values"][0]["value"].clone())
}

fn code(r: &Value, code: &str) -> Option<Value> {
    r["custom_fields_values"]
        .as_array()?
        .iter()
        .find(|f| f["field_code"] == code)
        .map(|f| f["values"][0].clone())
}

fn new_contact(client: &str) -> Value {
    json!([{"first_name": "Anna", "last_name": "Petrova", "responsible_user_id": 6,
        "custom_fields_values": [
            {"field_code": "PHONE", "values": [{"value": "+79991234567", "enum_code": "WORK"}]},
            {"field_code": "EMAIL", "values": [{"value": "anna@example.com", "enum_code": "WORK"}]},
            {"field_id": CLIENT_ID, "values": [{"value": client}]},
            {"field_id": SEGMENT, "values": [{"value": "vip"}]},
            {"field_id": CONSENT_SMS, "values": [{"value": true}]}],
        "request_id": client}])
}

#[tokio::test]
async fn contacts_are_found_created_updated_and_cleared() {
    let (_sim, url) = start().await;
    let (status, _) = kommo(&url, "GET", "/contacts?query=c-1&limit=250", None).await;
    assert_eq!(status, 204, "none yet");

    let (status, created) = kommo(&url, "POST", "/contacts", Some(new_contact("c-1"))).await;
    assert_eq!(status, 200, "{created}");
    let entry = &created["_embedded"]["contacts"][0];
    assert_eq!(entry["request_id"], "c-1");
    let id = entry["id"].as_u64().unwrap();

    // `query` is loose: the exact client-id match is the caller's to check.
    kommo(&url, "POST", "/contacts", Some(new_contact("c-10"))).await;
    let (status, found) = kommo(&url, "GET", "/contacts?query=c-1&limit=250", None).await;
    assert_eq!(status, 200);
    let found = found["_embedded"]["contacts"].as_array().unwrap().clone();
    assert_eq!(found.len(), 2);
    let exact: Vec<&Value> = found
        .iter()
        .filter(|c| cf(c, CLIENT_ID) == Some(json!("c-1")))
        .collect();
    assert_eq!(exact.len(), 1);
    assert_eq!(exact[0]["id"], id);

    let (status, read) = kommo(&url, "GET", &format!("/contacts/{id}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(read["first_name"], "Anna");
    assert_eq!(read["responsible_user_id"], 6);
    assert_eq!(code(&read, "PHONE").unwrap()["value"], "+79991234567");
    assert_eq!(code(&read, "PHONE").unwrap()["enum_code"], "WORK");
    assert_eq!(cf(&read, SEGMENT), Some(json!("vip")));
    assert_eq!(cf(&read, CONSENT_SMS), Some(json!(true)));
    let modified = read["updated_at"].as_i64().unwrap();

    let change = json!([{"id": id, "first_name": "Anya",
        "custom_fields_values": [{"field_id": SEGMENT, "values": null},
            {"field_code": "PHONE", "values": null}]}]);
    let (status, updated) = kommo(&url, "PATCH", "/contacts", Some(change)).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["_embedded"]["contacts"][0]["id"], id);
    let (_, read) = kommo(&url, "GET", &format!("/contacts/{id}"), None).await;
    assert_eq!(read["first_name"], "Anya");
    assert_eq!(cf(&read, SEGMENT), None, "cleared");
    assert_eq!(code(&read, "PHONE"), None, "cleared");
    assert_eq!(code(&read, "EMAIL").unwrap()["value"], "anna@example.com");
    assert!(read["updated_at"].as_i64().unwrap() > modified);

    // Validated as a whole: an unknown field or contact writes nothing.
    let bad = json!([{"id": id, "first_name": "X"}, {"id": 1, "first_name": "Y"}]);
    let (status, refused) = kommo(&url, "PATCH", "/contacts", Some(bad)).await;
    assert_eq!(status, 400);
    assert_eq!(refused["validation-errors"][0]["request_id"], "1");
    let unknown = json!([{"custom_fields_values": [{"field_id": 999, "values": [{"value": "x"}]}]}]);
    assert_eq!(kommo(&url, "POST", "/contacts", Some(unknown)).await.0, 400);
    let (_, read) = kommo(&url, "GET", &format!("/contacts/{id}"), None).await;
    assert_eq!(read["first_name"], "Anya");
    let (status, _) = kommo(&url, "GET", "/contacts/1", None).await;
    assert_eq!(status, 204);

    let (_, view) = call("GET", &format!("{url}/sim/kommo/contacts?external_id=c-1"), None).await;
    assert_eq!(view["crm_id"], id.to_string());
    assert_eq!(view["manager"], "6");
    assert_eq!(view["segment"], Value::Null);
    assert_eq!(view["writes"], 2);
    assert_eq!(view["request_ids"], json!(["req-k", "req-k"]));
}

#[tokio::test]
async fn tasks_are_completed_or_cancelled_and_notes_added() {
    let (_sim, url) = start().await;
    let (_, created) = kommo(&url, "POST", "/contacts", Some(new_contact("c-1"))).await;
    let contact = created["_embedded"]["contacts"][0]["id"].as_u64().unwrap();
    let task = json!([{"text": "Call back", "complete_till": 1_796_205_600, "entity_id": contact,
        "entity_type": "contacts", "responsible_user_id": 6, "request_id": "t-1"}]);
    let (status, added) = kommo(&url, "POST", "/tasks", Some(task)).await;
    assert_eq!(status, 200, "{added}");
    assert_eq!(added["_embedded"]["tasks"][0]["request_id"], "t-1");
    let id = added["_embedded"]["tasks"][0]["id"].as_u64().unwrap();
    let (_, read) = kommo(&url, "GET", &format!("/tasks/{id}"), None).await;
    assert_eq!(read["text"], "Call back");
    assert_eq!(read["complete_till"], 1_796_205_600);
    assert_eq!(read["is_completed"], false);
    assert_eq!(read["entity_id"], contact);

    let cancel = json!([{"id": id, "is_completed": true, "result": {"text": "cancelled"}}]);
    let (status, _) = kommo(&url, "PATCH", "/tasks", Some(cancel)).await;
    assert_eq!(status, 200);
    let (_, read) = kommo(&url, "GET", &format!("/tasks/{id}"), None).await;
    assert_eq!(read["is_completed"], true);
    assert_eq!(read["result"]["text"], "cancelled");
    let (_, tasks) = call("GET", &format!("{url}/sim/kommo/tasks"), None).await;
    assert_eq!(tasks[0]["state"], "cancelled");
    assert_eq!(
        tasks[0]["external_id"],
        Value::Null,
        "Kommo tasks have no external id"
    );
    let orphan = json!([{"text": "x", "complete_till": 1, "entity_id": 1, "entity_type": "contacts"}]);
    assert_eq!(kommo(&url, "POST", "/tasks", Some(orphan)).await.0, 400);

    let note = json!([{"note_type": "common",
        "params": {"text": "[call/inbound 2026-12-01T09:00:00Z] Asked about the parcel"},
        "request_id": "i-1"}]);
    let (status, added) = kommo(&url, "POST", &format!("/contacts/{contact}/notes"), Some(note)).await;
    assert_eq!(status, 200, "{added}");
    assert_eq!(added["_embedded"]["notes"][0]["entity_id"], contact);
    assert_eq!(added["_embedded"]["notes"][0]["request_id"], "i-1");
    let (_, notes) = call("GET", &format!("{url}/sim/kommo/notes?contact={contact}"), None).await;
    assert_eq!(notes[0]["request_id"], "i-1");
    assert_eq!(notes[0]["request_ids"], json!(["req-k"]));
    let nowhere = json!([{"note_type": "common", "params": {"text": "x"}}]);
    assert_eq!(
        kommo(&url, "POST", "/contacts/1/notes", Some(nowhere)).await.0,
        404
    );
}

#[tokio::test]
async fn calls_without_the_token_are_refused() {
    let (_sim, url) = start().await;
    let (status, body) = call(
        "POST",
        &format!("{url}/api/v4/contacts"),
        Some(new_contact("c-1")),
    )
    .await;
    assert_eq!((status, body["status"].as_u64()), (401, Some(401)));
    let (_, contacts) = call("GET", &format!("{url}/sim/kommo/contacts"), None).await;
    assert_eq!(contacts, json!([]));
}

#[tokio::test]
async fn webhooks_name_the_entity_and_notify_repeats_the_same_last_modified() {
    let (_sim, url) = start().await;
    let rx = Receiver::start().await;
    hook(
        &url,
        "kommo",
        json!({"url": format!("{}/webhooks/kommo/s3cret", rx.url),
        "account_id": 7_039_099, "subdomain": "acme"}),
    )
    .await;
    let (_, created) = kommo(&url, "POST", "/contacts", Some(new_contact("c-1"))).await;
    let id = created["_embedded"]["contacts"][0]["id"]
        .as_u64()
        .unwrap()
        .to_string();
    let got = rx.wait(1).await;
    assert_eq!(got[0].path, "/webhooks/kommo/s3cret");
    assert_eq!(got[0].field("contacts[add][0][id]"), Some(id.clone()));
    assert_eq!(
        got[0].field("contacts[add][0][account_id]").as_deref(),
        Some("7039099")
    );
    assert_eq!(got[0].field("account[id]").as_deref(), Some("7039099"));
    assert_eq!(got[0].field("account[subdomain]").as_deref(), Some("acme"));

    let (status, view) = call(
        "PATCH",
        &format!("{url}/sim/kommo/contacts/{id}"),
        Some(json!({"manager": "9"})),
    )
    .await;
    assert_eq!(status, 200, "{view}");
    let got = rx.wait(2).await;
    assert_eq!(got[1].field("contacts[update][0][id]"), Some(id.clone()));
    let first: i64 = got[0]
        .field("contacts[add][0][last_modified]")
        .unwrap()
        .parse()
        .unwrap();
    let second: i64 = got[1]
        .field("contacts[update][0][last_modified]")
        .unwrap()
        .parse()
        .unwrap();
    assert!(second > first);
    let (_, read) = kommo(&url, "GET", &format!("/contacts/{id}"), None).await;
    assert_eq!(read["responsible_user_id"], 9);
    assert_eq!(read["updated_at"], second);
    let (status, _) = call(
        "PATCH",
        &format!("{url}/sim/kommo/contacts/{id}"),
        Some(json!({"manager": "x"})),
    )
    .await;
    assert_eq!(status, 400, "Kommo user ids are numbers");

    let task = json!([{"text": "x", "complete_till": 1, "entity_id": id.parse::<u64>().unwrap(),
        "entity_type": "contacts"}]);
    let (_, added) = kommo(&url, "POST", "/tasks", Some(task)).await;
    let task_id = added["_embedded"]["tasks"][0]["id"].to_string();
    let got = rx.wait(3).await;
    assert_eq!(got[2].field("tasks[update][0][id]"), Some(task_id.clone()));
    let edit = json!({"state": "done"});
    let (status, _) = call("PATCH", &format!("{url}/sim/kommo/tasks/{task_id}"), Some(edit)).await;
    assert_eq!(status, 200);
    rx.wait(4).await;
    let (_, read) = kommo(&url, "GET", &format!("/tasks/{task_id}"), None).await;
    assert_eq!(read["is_completed"], true);

    let one = notify_50(&url, "kommo", "contacts", &id, &rx).await;
    assert_eq!(
        one.field("contacts[update][0][last_modified]"),
        Some(second.to_string())
    );
    let one = notify_50(&url, "kommo", "tasks", &task_id, &rx).await;
    assert_eq!(one.field("tasks[update][0][id]"), Some(task_id));
}

#[tokio::test]
async fn tasks_and_notes_of_a_contact_are_listed_newest_first_and_none_is_204() {
    let (_sim, url) = start().await;
    let (_, created) = kommo(&url, "POST", "/contacts", Some(new_contact("c-1"))).await;
    let contact = created["_embedded"]["contacts"][0]["id"].as_u64().unwrap();
    let (_, other) = kommo(&url, "POST", "/contacts", Some(new_contact("c-2"))).await;
    let other = other["_embedded"]["contacts"][0]["id"].as_u64().unwrap();
    let tasks = format!(
        "/tasks?filter[entity_type]=contacts&filter[entity_id][]={contact}&order[created_at]=desc&limit=50"
    );
    let notes = format!("/contacts/{contact}/notes?order[id]=desc&limit=50");
    assert_eq!(kommo(&url, "GET", &tasks, None).await.0, 204);
    assert_eq!(kommo(&url, "GET", &notes, None).await.0, 204);
    for (on, text) in [(contact, "first"), (other, "elsewhere"), (contact, "second")] {
        let task = json!([{"text": text, "complete_till": 1_796_205_600, "entity_id": on,
            "entity_type": "contacts"}]);
        assert_eq!(kommo(&url, "POST", "/tasks", Some(task)).await.0, 200);
        let note = json!([{"note_type": "common", "params": {"text": text}}]);
        assert_eq!(
            kommo(&url, "POST", &format!("/contacts/{on}/notes"), Some(note))
                .await
                .0,
            200
        );
    }
    let (status, listed) = kommo(&url, "GET", &tasks, None).await;
    assert_eq!(status, 200, "{listed}");
    let texts: Vec<&str> = listed["_embedded"]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["second", "first"]);
    let (_, listed) = kommo(&url, "GET", &notes, None).await;
    let texts: Vec<&str> = listed["_embedded"]["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["params"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["second", "first"]);
    let (_, one) = kommo(&url, "GET", &tasks.replace("limit=50", "limit=1"), None).await;
    assert_eq!(one["_embedded"]["tasks"].as_array().unwrap().len(), 1);
}
