//! The OpenAPI document.

use super::*;

// ---------------------------------------------------------------------------------------------
// The document

/// The committed document is what the code generates (`UPDATE_OPENAPI=1` rewrites it), and the
/// API serves the same at `/openapi.json`.
#[tokio::test]
async fn the_openapi_document_is_committed_and_served() {
    let committed = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../docs/openapi/crm-sync-v1.json"
    );
    let generated = api::openapi_json() + "\n";
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(committed, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(committed).unwrap_or_default();
    assert!(
        on_disk == generated,
        "docs/openapi/crm-sync-v1.json is out of date: run UPDATE_OPENAPI=1 cargo test -p crm-sync --test api openapi"
    );
    let app = start().await;
    let res = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let served: Json = res.json().await.unwrap();
    assert_eq!(served, serde_json::from_str::<Json>(&generated).unwrap());
    for path in [
        "/v1/clients/{client_id}",
        "/v1/clients/{client_id}/tasks/{task_id}",
        "/v1/clients/{client_id}/interactions/{interaction_id}",
        "/v1/operator-tasks",
        "/v1/operator-tasks/{id}",
        "/v1/operator-tasks/{id}/resolve",
        "/webhooks/{vendor}",
        "/webhooks/{vendor}/{secret}",
    ] {
        assert!(served["paths"][path].is_object(), "{path} is not documented");
    }
}

#[test]
fn the_openapi_document_declares_the_bounds_the_api_enforces() {
    let doc: Json = serde_json::from_str(&api::openapi_json()).unwrap();
    let prop = |schema: &str, field: &str| doc["components"]["schemas"][schema]["properties"][field].clone();
    let expect = |v: Json, key: &str, want: Json| assert_eq!(v[key], want, "{key} of {v}");
    expect(prop("CardFields", "phone"), "pattern", json!("^\\+[0-9]{8,15}$"));
    expect(prop("CardFields", "first_name"), "maxLength", json!(128));
    expect(prop("CardFields", "email"), "maxLength", json!(254));
    expect(prop("CardFields", "manager"), "maxLength", json!(64));
    expect(prop("CardFields", "segment"), "maxLength", json!(64));
    expect(prop("TaskRequest", "title"), "maxLength", json!(255));
    expect(prop("TaskRequest", "assignee"), "maxLength", json!(64));
    expect(prop("InteractionRequest", "text"), "maxLength", json!(4000));
    expect(prop("ResolveRequest", "by"), "maxLength", json!(64));
    let put = &doc["paths"]["/v1/clients/{client_id}"]["put"]["parameters"];
    let param = |name: &str| {
        put.as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} is declared"))["schema"]
            .clone()
    };
    expect(param("client_id"), "maxLength", json!(64));
    expect(param("Idempotency-Key"), "maxLength", json!(255));
    expect(param("X-Request-Id"), "pattern", json!("^[A-Za-z0-9._:-]+$"));
    let list = &doc["paths"]["/v1/operator-tasks"]["get"]["parameters"];
    let limit = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap()["schema"]
        .clone();
    expect(limit.clone(), "minimum", json!(1));
    expect(limit, "maximum", json!(500));
    for path in ["/webhooks/{vendor}", "/webhooks/{vendor}/{secret}"] {
        let said = doc["paths"][path]["post"]["requestBody"]["description"]
            .as_str()
            .unwrap_or_default();
        assert!(
            said.contains(&format!("at most {} KiB", MAX_WEBHOOK_BYTES / 1024)),
            "{path}: {said}"
        );
    }
}

/// The admin API's document is committed as generated (`UPDATE_OPENAPI=1` rewrites it) and
/// documents every admin route with the admin token.
#[test]
fn the_admin_openapi_document_is_committed_and_covers_every_route() {
    let committed = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../docs/openapi/crm-sync-admin-v1.json"
    );
    let generated = crm_sync::admin::openapi_json() + "\n";
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(committed, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(committed).unwrap_or_default();
    assert!(
        on_disk == generated,
        "docs/openapi/crm-sync-admin-v1.json is out of date: run UPDATE_OPENAPI=1 cargo test -p crm-sync --test api openapi"
    );
    let doc: Json = serde_json::from_str(&generated).unwrap();
    for (path, method) in [
        ("/admin/v1/overview", "get"),
        ("/admin/v1/dead-letters", "get"),
        ("/admin/v1/dead-letters/{partition}/{offset}", "get"),
        ("/admin/v1/dead-letters/replay", "post"),
        ("/admin/v1/trace", "get"),
    ] {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not documented");
        assert_eq!(op["security"], json!([{"admin_bearer": []}]), "{path}");
        assert!(op["responses"]["401"].is_object(), "{path} documents 401");
    }
    let limit = doc["paths"]["/admin/v1/dead-letters"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap()["schema"]
        .clone();
    assert_eq!(
        (limit["minimum"].clone(), limit["maximum"].clone()),
        (json!(1), json!(500))
    );
}
