//! Kommo: rate refusals, blocks, rotating refresh tokens, empty lists.

use crate::{kommo, kommo_config, kommo_fields, mapping, sid, write};
use backbone_crm::kommo::KommoAuth;
use backbone_crm::KommoCrm;
use backbone_sync::ports::CrmGateway;
use secrecy::SecretString;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use wiremock::matchers::{body_partial_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test]
async fn too_many_requests_backs_off_then_succeeds_and_an_empty_list_is_204() {
    let server = MockServer::start().await;
    Mock::given(path("/api/v4/leads"))
        .respond_with(ResponseTemplate::new(429))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v4/leads"))
        .and(query_param("query", "s-1"))
        .and(header("authorization", "Bearer long-lived-token-0123456789"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let crm = kommo(&server);
    let e = crm.read_states(&[sid("s-1")]).await.unwrap_err();
    assert!(e.is_transient() && e.http_status == Some(429));
    let started = std::time::Instant::now();
    assert!(crm.read_states(&[sid("s-1")]).await.unwrap().is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "waited after the refusal"
    );
}

#[tokio::test]
async fn a_403_block_opens_the_adapter_and_stops_calling() {
    let server = MockServer::start().await;
    Mock::given(path("/api/v4/leads"))
        .respond_with(ResponseTemplate::new(403).set_body_json(json!({"title": "Forbidden", "status": 403})))
        .expect(1)
        .mount(&server)
        .await;
    let crm = kommo(&server);
    let e = crm.read_states(&[sid("s-1")]).await.unwrap_err();
    assert!(e.is_transient());
    assert_eq!(e.retry_after, Some(Duration::from_secs(900)));
    assert!(crm.paused().unwrap().reason.contains("403"));
    assert!(crm
        .write_statuses(&[write("e1", "s-1", "in_transit", 0)])
        .await
        .is_err());
}

#[tokio::test]
async fn concurrent_401s_refresh_once_and_the_rotated_token_is_kept() {
    let server = MockServer::start().await;
    let dir = std::env::temp_dir().join(format!("kommo-token-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("refresh").to_string_lossy().into_owned();
    for (old, access, next) in [("r0", "a1", "r1"), ("r1", "a2", "r2")] {
        Mock::given(method("POST"))
            .and(path("/oauth2/access_token"))
            .and(body_partial_json(
                json!({"grant_type": "refresh_token", "refresh_token": old,
                "client_id": "cid", "redirect_uri": "https://example.com/cb"}),
            ))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(json!({"token_type": "Bearer",
                "expires_in": 86400, "access_token": access, "refresh_token": next})),
            )
            .expect(1)
            .mount(&server)
            .await;
    }
    Mock::given(path("/api/v4/leads"))
        .and(header("authorization", "Bearer a1"))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(json!({"title": "Unauthorized", "status": 401})),
        )
        .mount(&server)
        .await;
    Mock::given(path("/api/v4/leads"))
        .and(header("authorization", "Bearer a2"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    let cfg = backbone_crm::KommoConfig {
        auth: KommoAuth::Oauth,
        client_id: "cid".into(),
        client_secret: SecretString::from("csecret"),
        refresh_token: SecretString::from("r0"),
        redirect_uri: "https://example.com/cb".into(),
        token_file: Some(token_file.clone()),
        per_second: 7.0,
        ..kommo_config(&server)
    };
    let crm = Arc::new(KommoCrm::new(&cfg, mapping(kommo_fields())).unwrap());
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let crm = crm.clone();
            tokio::spawn(async move { crm.read_states(&[sid(&format!("s-{i}"))]).await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().is_ok());
    }
    assert_eq!(
        crm.token_fetches(),
        2,
        "one first grant and one refresh for all four callers"
    );
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), "r2");
    // A restart starts from the stored token, not the spent one in the configuration.
    let restarted = KommoCrm::new(&cfg, mapping(kommo_fields())).unwrap();
    drop(restarted);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn mappings_must_name_lead_fields_and_a_custom_external_id() {
    let server_uri = "https://acme.kommo.com";
    let cfg = backbone_crm::KommoConfig {
        base_url: server_uri.into(),
        access_token: SecretString::from("long-lived-token-0123456789"),
        ..Default::default()
    };
    let bad = KommoCrm::new(
        &cfg,
        mapping(crate::fields(["cf:1", "name", "status_id", "cf:4", "cf:5"])),
    );
    assert!(bad.err().unwrap().contains("external id"));
    let bad = KommoCrm::new(
        &cfg,
        mapping(crate::fields(["cf:1", "cf:2", "stage", "cf:4", "cf:5"])),
    );
    assert!(bad.err().unwrap().contains("stage"));
    let too_fast = backbone_crm::KommoConfig {
        per_second: 10.0,
        ..cfg
    };
    assert!(too_fast.validate().unwrap_err().contains("7"));
}
