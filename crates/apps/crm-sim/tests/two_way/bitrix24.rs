//! Bitrix24: `crm.contact.*`, to-do activities and timeline comments through the incoming
//! webhook, and the form-encoded events with `auth[application_token]`.

use super::*;

async fn b24(url: &str, method: &str, params: Value) -> (u16, Value) {
    let (status, body) = call(
        "POST",
        &format!("{url}/rest/1/{VENDOR_SECRET}/{method}"),
        Some(params),
    )
    .await;
    (status, body)
}

fn contact_fields() -> Value {
    json!({"NAME": "Anna", "LAST_NAME": "Petrova",
        "PHONE": [{"VALUE": "+79991234567", "VALUE_TYPE": "WORK"}],
        "EMAIL": [{"VALUE": "anna@example.com", "VALUE_TYPE": "WORK"}], "ASSIGNED_BY_ID": "6",
        "UF_CRM_SEGMENT": "vip", "UF_CRM_CONSENT_SMS": "Y", "UF_CRM_CONSENT_EMAIL": "N",
        "ORIGINATOR_ID": "backbone", "ORIGIN_ID": "c-1"})
}

#[tokio::test]
async fn contacts_are_added_found_by_origin_id_updated_and_cleared() {
    let (_sim, url) = start().await;
    let (_, none) = b24(
        &url,
        "crm.contact.list",
        json!({"filter": {"ORIGINATOR_ID": "backbone",
        "ORIGIN_ID": "c-1"}, "select": ["ID"]}),
    )
    .await;
    assert_eq!(
        (none["result"].clone(), none["total"].clone()),
        (json!([]), json!(0))
    );

    let add = json!({"fields": contact_fields(), "params": {"REGISTER_SONET_EVENT": "N"}});
    let (status, added) = b24(&url, "crm.contact.add", add).await;
    assert_eq!(status, 200, "{added}");
    let id = added["result"].as_u64().unwrap();
    assert!(added["time"]["start"].is_number());
    let (_, found) = b24(
        &url,
        "crm.contact.list",
        json!({"filter": {"ORIGINATOR_ID": "backbone",
        "ORIGIN_ID": "c-1"}, "select": ["ID"]}),
    )
    .await;
    assert_eq!(found["result"], json!([{"ID": id.to_string()}]));
    assert_eq!(found["total"], 1);

    let (_, got) = b24(&url, "crm.contact.get", json!({ "id": id })).await;
    let c = &got["result"];
    assert_eq!(c["ID"], id.to_string());
    assert_eq!(c["NAME"], "Anna");
    assert_eq!(c["PHONE"][0]["VALUE"], "+79991234567");
    assert_eq!(c["PHONE"][0]["VALUE_TYPE"], "WORK");
    assert!(c["PHONE"][0]["ID"].is_string());
    assert_eq!(c["EMAIL"][0]["VALUE"], "anna@example.com");
    assert_eq!(c["ASSIGNED_BY_ID"], "6");
    assert_eq!(
        (c["UF_CRM_CONSENT_SMS"].clone(), c["UF_CRM_CONSENT_EMAIL"].clone()),
        (json!("Y"), json!("N"))
    );
    assert_eq!(
        (c["ORIGINATOR_ID"].clone(), c["ORIGIN_ID"].clone()),
        (json!("backbone"), json!("c-1"))
    );
    let modified = c["DATE_MODIFY"].as_str().unwrap().to_owned();

    let clear = json!({"id": id, "fields": {"NAME": "", "PHONE": [], "ASSIGNED_BY_ID": "",
        "UF_CRM_SEGMENT": "", "UF_CRM_CONSENT_SMS": "N"}, "params": {"REGISTER_SONET_EVENT": "N"}});
    let (status, updated) = b24(&url, "crm.contact.update", clear).await;
    assert_eq!((status, updated["result"].clone()), (200, json!(true)));
    let (_, got) = b24(&url, "crm.contact.get", json!({ "id": id })).await;
    let c = &got["result"];
    assert_eq!(c["NAME"], Value::Null);
    assert!(c.get("PHONE").is_none(), "{c}");
    assert_eq!(c["HAS_PHONE"], "N");
    assert_eq!(c["ASSIGNED_BY_ID"], Value::Null, "unassigned");
    assert_eq!(c["UF_CRM_SEGMENT"], Value::Null);
    assert_eq!(c["UF_CRM_CONSENT_SMS"], "N");
    assert_eq!(c["LAST_NAME"], "Petrova", "fields not sent stay");
    assert_eq!(c["EMAIL"][0]["VALUE"], "anna@example.com");
    assert!(c["DATE_MODIFY"].as_str().unwrap() > modified.as_str());

    let (status, missing) = b24(&url, "crm.contact.get", json!({"id": 999})).await;
    assert_eq!(status, 400);
    assert_eq!(
        missing,
        json!({"error": "NOT_FOUND", "error_description": "Not found"})
    );
    let (status, _) = b24(
        &url,
        "crm.contact.update",
        json!({"id": 999, "fields": {"NAME": "x"}}),
    )
    .await;
    assert_eq!(status, 400);

    let (_, view) = call(
        "GET",
        &format!("{url}/sim/bitrix24/contacts?external_id=c-1"),
        None,
    )
    .await;
    assert_eq!(view["crm_id"], id.to_string());
    assert_eq!(view["first_name"], Value::Null);
    assert_eq!(view["manager"], Value::Null);
    assert_eq!(view["consent_sms"], false);
    assert_eq!(view["writes"], 2);
}

#[tokio::test]
async fn todos_are_added_updated_completed_and_comments_added() {
    let (_sim, url) = start().await;
    let (_, added) = b24(&url, "crm.contact.add", json!({"fields": contact_fields()})).await;
    let contact = added["result"].as_u64().unwrap();
    let todo = json!({"ownerTypeId": 3, "ownerId": contact, "deadline": "2026-12-02T10:00:00+03:00",
        "title": "Call back", "description": "backbone:t-1", "responsibleId": 6});
    let (status, created) = b24(&url, "crm.activity.todo.add", todo).await;
    assert_eq!(status, 200, "{created}");
    let task = created["result"]["id"].as_u64().unwrap();
    let moved = json!({"id": task, "ownerTypeId": 3, "ownerId": contact,
        "deadline": "2026-12-03T10:00:00+03:00", "title": "Call back later", "responsibleId": 7});
    let (_, updated) = b24(&url, "crm.activity.todo.update", moved).await;
    assert_eq!(updated["result"]["id"], task);
    let (_, done) = b24(
        &url,
        "crm.activity.update",
        json!({"id": task, "fields": {"COMPLETED": "Y"}}),
    )
    .await;
    assert_eq!(done["result"], true);
    let (_, got) = b24(&url, "crm.activity.get", json!({ "id": task })).await;
    let a = &got["result"];
    assert_eq!(a["ID"], task.to_string());
    assert_eq!(a["SUBJECT"], "Call back later");
    assert_eq!(a["DESCRIPTION"], "backbone:t-1");
    assert_eq!(a["DEADLINE"], "2026-12-03T07:00:00+00:00");
    assert_eq!(a["COMPLETED"], "Y");
    assert_eq!(a["RESPONSIBLE_ID"], "7");
    assert_eq!(a["OWNER_ID"], contact.to_string());
    assert!(a["LAST_UPDATED"].is_string());
    let (_, tasks) = call("GET", &format!("{url}/sim/bitrix24/tasks?external_id=t-1"), None).await;
    assert_eq!(tasks[0]["state"], "done");
    assert_eq!(tasks[0]["writes"], 3);

    // A to-do needs a deadline and a contact that exists.
    let no_deadline = json!({"ownerTypeId": 3, "ownerId": contact, "title": "x"});
    assert_eq!(b24(&url, "crm.activity.todo.add", no_deadline).await.0, 400);
    let orphan = json!({"ownerTypeId": 3, "ownerId": 999, "deadline": "2026-12-02T10:00:00Z"});
    let (status, refused) = b24(&url, "crm.activity.todo.add", orphan).await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (400, Some("OWNER_NOT_FOUND"))
    );

    let comment = json!({"fields": {"ENTITY_ID": contact, "ENTITY_TYPE": "contact",
        "COMMENT": "[call/inbound 2026-12-01T09:00:00Z] Asked about the parcel"}});
    let (status, note) = b24(&url, "crm.timeline.comment.add", comment).await;
    assert_eq!(status, 200, "{note}");
    assert!(note["result"].is_u64());
    let empty = json!({"fields": {"ENTITY_ID": contact, "ENTITY_TYPE": "contact", "COMMENT": ""}});
    assert_eq!(b24(&url, "crm.timeline.comment.add", empty).await.0, 400);
    let (_, notes) = call("GET", &format!("{url}/sim/bitrix24/notes"), None).await;
    assert_eq!(notes[0]["contact"], contact.to_string());
    assert!(notes[0]["text"]
        .as_str()
        .unwrap()
        .ends_with("Asked about the parcel"));
}

#[tokio::test]
async fn a_wrong_webhook_code_is_refused() {
    let (_sim, url) = start().await;
    let (status, body) = call(
        "POST",
        &format!("{url}/rest/1/wrong-code/crm.contact.add"),
        Some(json!({"fields": contact_fields()})),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("INVALID_CREDENTIALS"))
    );
    let (_, contacts) = call("GET", &format!("{url}/sim/bitrix24/contacts"), None).await;
    assert_eq!(contacts, json!([]));
}

#[tokio::test]
async fn events_carry_the_application_token_and_notify_repeats_the_same_ts() {
    let (_sim, url) = start().await;
    let rx = Receiver::start().await;
    hook(
        &url,
        "bitrix24",
        json!({"url": format!("{}/webhooks/bitrix24", rx.url),
        "member_id": "m-1", "application_token": "app-token-1", "domain": "acme.bitrix24.ru"}),
    )
    .await;
    let (_, added) = b24(&url, "crm.contact.add", json!({"fields": contact_fields()})).await;
    let id = added["result"].as_u64().unwrap().to_string();
    let got = rx.wait(1).await;
    assert_eq!(
        got[0].headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(got[0].field("event").as_deref(), Some("ONCRMCONTACTADD"));
    assert_eq!(got[0].field("data[FIELDS][ID]"), Some(id.clone()));
    assert_eq!(
        got[0].field("auth[application_token]").as_deref(),
        Some("app-token-1")
    );
    assert_eq!(got[0].field("auth[member_id]").as_deref(), Some("m-1"));
    assert_eq!(got[0].field("auth[domain]").as_deref(), Some("acme.bitrix24.ru"));
    assert!(got[0].field("event_handler_id").is_some());

    // crm-sync's own update is echoed, and so is a CRM user's edit, each with a later ts.
    b24(
        &url,
        "crm.contact.update",
        json!({"id": id, "fields": {"NAME": "Anya"}}),
    )
    .await;
    // Deliveries run concurrently: wait for each before the next change, to compare in order.
    rx.wait(2).await;
    let (status, _) = call(
        "PATCH",
        &format!("{url}/sim/bitrix24/contacts/{id}"),
        Some(json!({"manager": "9"})),
    )
    .await;
    assert_eq!(status, 200);
    let got = rx.wait(3).await;
    let ts: Vec<i64> = got
        .iter()
        .map(|g| g.field("ts").unwrap().parse().unwrap())
        .collect();
    assert!(ts[0] < ts[1] && ts[1] < ts[2], "{ts:?}");
    assert_eq!(got[2].field("event").as_deref(), Some("ONCRMCONTACTUPDATE"));
    let (_, c) = b24(&url, "crm.contact.get", json!({ "id": id })).await;
    assert_eq!(c["result"]["ASSIGNED_BY_ID"], "9");

    let todo = json!({"ownerTypeId": 3, "ownerId": id, "deadline": "2026-12-02T10:00:00Z", "title": "x"});
    let (_, task) = b24(&url, "crm.activity.todo.add", todo).await;
    let got = rx.wait(4).await;
    assert_eq!(got[3].field("event").as_deref(), Some("ONCRMACTIVITYUPDATE"));
    assert_eq!(
        got[3].field("data[FIELDS][ID]"),
        Some(task["result"]["id"].to_string())
    );

    let one = notify_50(&url, "bitrix24", "contacts", &id, &rx).await;
    assert_eq!(one.field("ts"), got[2].field("ts"), "the latest change's ts");
    assert_eq!(one.field("event").as_deref(), Some("ONCRMCONTACTUPDATE"));
}

#[tokio::test]
async fn todos_and_comments_of_a_contact_are_listed_by_filter_newest_first() {
    let (_sim, url) = start().await;
    let (_, added) = b24(&url, "crm.contact.add", json!({"fields": contact_fields()})).await;
    let contact = added["result"].as_u64().unwrap();
    let (_, other) = b24(&url, "crm.contact.add", json!({"fields": contact_fields()})).await;
    let other = other["result"].as_u64().unwrap();
    for (on, marker) in [
        (contact, "backbone:t-1"),
        (other, "backbone:t-2"),
        (contact, "backbone:t-3"),
    ] {
        let todo = json!({"ownerTypeId": 3, "ownerId": on, "deadline": "2026-12-02T10:00:00+03:00",
            "title": "Call", "description": marker});
        assert_eq!(b24(&url, "crm.activity.todo.add", todo).await.0, 200);
        let comment = json!({"fields": {"ENTITY_ID": on, "ENTITY_TYPE": "contact", "COMMENT": marker}});
        assert_eq!(b24(&url, "crm.timeline.comment.add", comment).await.0, 200);
    }
    let (status, listed) = b24(
        &url,
        "crm.activity.list",
        json!({"filter": {"OWNER_TYPE_ID": 3, "OWNER_ID": contact}, "order": {"ID": "DESC"},
            "select": ["ID", "DESCRIPTION"]}),
    )
    .await;
    assert_eq!(status, 200, "{listed}");
    let found: Vec<&str> = listed["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["DESCRIPTION"].as_str().unwrap())
        .collect();
    assert_eq!(found, ["backbone:t-3", "backbone:t-1"]);
    assert!(listed["result"][0]["ID"].is_string());
    assert!(
        listed["result"][0].get("SUBJECT").is_none(),
        "only what was selected"
    );
    let (_, listed) = b24(
        &url,
        "crm.timeline.comment.list",
        json!({"filter": {"ENTITY_ID": contact, "ENTITY_TYPE": "contact"}, "order": {"ID": "DESC"},
            "select": ["ID", "COMMENT"]}),
    )
    .await;
    let found: Vec<&str> = listed["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["COMMENT"].as_str().unwrap())
        .collect();
    assert_eq!(found, ["backbone:t-3", "backbone:t-1"]);
}
