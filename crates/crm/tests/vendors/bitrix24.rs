//! Bitrix24: limits, OAuth refresh, timeouts on create, mapping checks.

use crate::fakes::Bitrix24Fake;
use crate::{bitrix24, bitrix24_config, bitrix24_fields, mapping, sid, write};
use backbone_crm::bitrix24::Bitrix24Auth;
use backbone_crm::Bitrix24Crm;
use backbone_sync::ports::{CrmErrorKind, CrmGateway};
use secrecy::SecretString;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use wiremock::matchers::{any, method, path, query_param};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const LIST: &str = "/rest/1/wh0123456789abcd/crm.item.list.json";
const BATCH: &str = "/rest/1/wh0123456789abcd/batch.json";

#[tokio::test]
async fn a_write_sends_mapped_fields_and_the_external_id_in_one_batch() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(LIST))
        .and(wiremock::matchers::body_partial_json(json!({"entityTypeId": 2,
            "filter": {"=originatorId": "backbone-crm-sync", "@originId": ["s-1"]}})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"result": {"items": []}, "total": 0})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(BATCH))
        .and(|r: &Request| {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            let cmd = body["cmd"]["w0"].as_str().unwrap_or_default().to_owned();
            let (m, q) = cmd.split_once('?').unwrap_or_default();
            let pairs: std::collections::BTreeMap<String, String> =
                form_urlencoded::parse(q.as_bytes()).into_owned().collect();
            let keys: Vec<&str> = pairs.keys().map(String::as_str).collect();
            body["halt"] == 0
                && m == "crm.item.add"
                && keys
                    == [
                        "entityTypeId",
                        "fields[originId]",
                        "fields[originatorId]",
                        "fields[stageId]",
                        "fields[title]",
                        "fields[ufCrmClientId]",
                        "fields[ufCrmEventId]",
                        "fields[ufCrmStatusAt]",
                    ]
                && pairs["fields[originId]"] == "s-1"
                && pairs["fields[stageId]"] == "in_transit"
        })
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"result": {
            "result": {"w0": {"item": {"id": 46}}}, "result_error": [], "result_total": [],
            "result_next": [], "result_time": {}}, "time": {}})))
        .expect(1)
        .mount(&server)
        .await;
    let out = bitrix24(&server)
        .write_statuses(&[write("e1", "s-1", "in_transit", 0)])
        .await
        .unwrap();
    assert!(out[0].result.is_ok(), "{out:?}");
}

#[tokio::test]
async fn query_limit_exceeded_backs_off_and_then_succeeds() {
    let server = MockServer::start().await;
    Mock::given(path(LIST))
        .respond_with(
            ResponseTemplate::new(503).set_body_json(json!({"error": "QUERY_LIMIT_EXCEEDED",
            "error_description": "Too many requests"})),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(path(LIST))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"result": {"items": []}, "total": 0})))
        .mount(&server)
        .await;
    let crm = bitrix24(&server);
    let e = crm.read_states(&[sid("s-1")]).await.unwrap_err();
    assert_eq!((e.kind, e.http_status), (CrmErrorKind::Transient, Some(503)));
    assert_eq!(e.retry_after, Some(Duration::from_secs(1)));
    let started = std::time::Instant::now();
    assert!(crm.read_states(&[sid("s-1")]).await.unwrap().is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the next call waited for the bucket"
    );
    assert!(crm.paused().is_none(), "a rate refusal is not a pause");
}

#[tokio::test]
async fn operation_time_limit_pauses_the_adapter_instead_of_dead_lettering() {
    let server = MockServer::start().await;
    let reset_at = time::OffsetDateTime::now_utc().unix_timestamp() + 120;
    Mock::given(path(LIST))
        .respond_with(
            ResponseTemplate::new(429).set_body_json(json!({"error": "OPERATION_TIME_LIMIT",
            "error_description": "Method is blocked due to operation time limit.",
            "time": {"operating_reset_at": reset_at, "operating": 480.5}})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let crm = bitrix24(&server);
    let e = crm.read_states(&[sid("s-1")]).await.unwrap_err();
    assert!(e.is_transient());
    let wait = e.retry_after.unwrap();
    assert!(
        wait >= Duration::from_secs(115) && wait <= Duration::from_secs(120),
        "{wait:?}"
    );
    assert!(crm.paused().is_some());
    // While paused nothing reaches the portal (the mock expects exactly one call).
    let again = crm
        .write_statuses(&[write("e1", "s-1", "in_transit", 0)])
        .await
        .unwrap_err();
    assert!(
        again.is_transient() && again.message.contains("paused"),
        "{again}"
    );
}

/// Answers the first matching request slowly (after the state change), the rest at once.
struct SlowFirst<T>(Arc<T>, std::sync::atomic::AtomicBool, Duration);

impl<T: Respond> Respond for SlowFirst<T> {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let r = self.0.respond(req);
        if req.url.path().ends_with("/batch.json") && !self.1.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return r.set_delay(self.2);
        }
        r
    }
}

#[tokio::test]
async fn a_create_that_timed_out_is_found_by_external_id_not_created_again() {
    let server = MockServer::start().await;
    let fake = Arc::new(Bitrix24Fake::default());
    Mock::given(any())
        .respond_with(SlowFirst(
            fake.clone(),
            Default::default(),
            Duration::from_millis(1500),
        ))
        .mount(&server)
        .await;
    let cfg = backbone_crm::Bitrix24Config {
        timeout_ms: 500,
        ..bitrix24_config(&server)
    };
    let crm = Bitrix24Crm::new(&cfg, mapping(bitrix24_fields())).unwrap();
    let w = write("e1", "s-1", "in_transit", 0);
    let e = crm.write_statuses(std::slice::from_ref(&w)).await.unwrap_err();
    assert!(e.is_transient() && e.message.contains("timeout"), "{e}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let out = crm.write_statuses(&[w]).await.unwrap();
    assert!(out[0].result.is_ok());
    assert_eq!(
        *fake.adds.lock().unwrap(),
        1,
        "the retry updated the item the timed-out create made"
    );
    assert_eq!(fake.items.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn oauth_refreshes_once_on_expired_token_and_uses_the_rotated_refresh_token() {
    let server = MockServer::start().await;
    Mock::given(path("/oauth/token/"))
        .and(query_param("grant_type", "refresh_token"))
        .and(query_param("refresh_token", "install-refresh"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"access_token": "access-1",
            "refresh_token": "rotated-1", "expires_in": 3600, "member_id": "m", "status": "L",
            "client_endpoint": "x", "server_endpoint": "y", "domain": "oauth.bitrix.info", "scope": "crm"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/oauth/token/"))
        .and(query_param("refresh_token", "rotated-1"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"access_token": "access-2",
            "refresh_token": "rotated-2", "expires_in": 3600})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/rest/crm.item.list.json"))
        .and(wiremock::matchers::body_partial_json(json!({"auth": "access-1"})))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(json!({"error": "expired_token",
            "error_description": "The access token provided has expired."})),
        )
        .mount(&server)
        .await;
    Mock::given(path("/rest/crm.item.list.json"))
        .and(wiremock::matchers::body_partial_json(json!({"auth": "access-2"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"result": {"items": []}, "total": 0})))
        .expect(4)
        .mount(&server)
        .await;
    let cfg = backbone_crm::Bitrix24Config {
        auth: Bitrix24Auth::Oauth,
        oauth_url: server.uri(),
        client_id: "local.app".into(),
        client_secret: SecretString::from("app-secret"),
        refresh_token: SecretString::from("install-refresh"),
        ..bitrix24_config(&server)
    };
    let crm = Arc::new(Bitrix24Crm::new(&cfg, mapping(bitrix24_fields())).unwrap());
    let first = crm.read_states(&[sid("s-1")]).await;
    assert!(first.unwrap().is_empty());
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let crm = crm.clone();
            tokio::spawn(async move { crm.read_states(&[sid("s-2")]).await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().is_ok());
    }
    assert_eq!(
        crm.token_fetches(),
        2,
        "one grant, one refresh, whatever the concurrency"
    );
}

#[tokio::test]
async fn a_mapping_with_a_field_the_portal_does_not_know_fails_at_start_up() {
    assert!(Bitrix24Crm::new(
        &bitrix24_config(&MockServer::start().await),
        mapping(crate::fields([
            "UF_CRM_CLIENT",
            "title",
            "STAGE_ID",
            "ufCrmStatusAt",
            "ufCrmEventId"
        ]))
    )
    .err()
    .unwrap()
    .contains("camelCase"));
    let server = MockServer::start().await;
    Mock::given(path("/rest/1/wh0123456789abcd/crm.item.fields.json"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"result": {"fields": {
            "id": {"type": "integer", "isReadOnly": true}, "title": {"type": "string", "isReadOnly": false},
            "stageId": {"type": "crm_status", "isReadOnly": false},
            "originatorId": {"type": "string", "isReadOnly": false},
            "originId": {"type": "string", "isReadOnly": false},
            "ufCrmClientId": {"type": "string", "isReadOnly": false},
            "ufCrmEventId": {"type": "string", "isReadOnly": false}}}})),
        )
        .mount(&server)
        .await;
    let err = bitrix24(&server).verify_mapping().await.unwrap_err();
    assert!(err.contains("ufCrmStatusAt") && err.lines().count() == 1, "{err}");
}

#[tokio::test]
async fn transport_faults_are_transient() {
    let server = MockServer::start().await;
    Mock::given(path(LIST))
        .respond_with(
            ResponseTemplate::new(500).set_body_json(json!({"error": "INTERNAL_SERVER_ERROR",
            "error_description": "Internal server error"})),
        )
        .mount(&server)
        .await;
    let e = bitrix24(&server).read_states(&[sid("s-1")]).await.unwrap_err();
    assert!(e.is_transient() && e.http_status == Some(500));
    let cfg = backbone_crm::Bitrix24Config {
        portal_url: format!("http://127.0.0.1:{}", crate::closed_port()),
        ..bitrix24_config(&server)
    };
    let crm = Bitrix24Crm::new(&cfg, mapping(bitrix24_fields())).unwrap();
    let e = crm.read_states(&[sid("s-1")]).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(
        !e.message.contains("wh0123456789abcd"),
        "the webhook token never appears: {e}"
    );
}

#[test]
fn debug_output_never_shows_the_webhook_token() {
    let cfg = backbone_crm::Bitrix24Config {
        webhook_token: SecretString::from("wh0123456789abcd"),
        ..Default::default()
    };
    assert!(!format!("{cfg:?}").contains("wh0123456789abcd"));
}
