//! The operator console in a real browser (Debian's headless Chromium, driven by
//! `tests/console/console.mjs` with playwright-core and axe-core, installed by
//! `deploy/browser-deps.sh`): crm-sync with its two-way sync and gift-certificates run here on
//! the real broker and PostgreSQL; this test makes a dead letter, a conflict and a certificate,
//! the browser acts on them through the console, and this test checks what the services did.

use crate::two_way::{TwoWay, API_TOKEN};
use backbone_tests::gift;
use backbone_tests::*;
use crm_sim::Dialect;
use secrecy::SecretString;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const CRM_ADMIN_TOKEN: &str = "crm-sync-admin-token-for-the-console-e2e";
const GIFT_ADMIN_TOKEN: &str = "gift-admin-token-for-the-console-e2e-0123";
const USER: &str = "alice";
const PASSWORD: &str = "correct horse battery staple";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_replays_traces_resolves_and_cancels_in_a_real_browser() -> anyhow::Result<()> {
    let script = workspace().join("tests/console/console.mjs");
    let deps = workspace().join("tests/console/node_modules/playwright-core");
    anyhow::ensure!(
        deps.exists() && std::path::Path::new("/usr/bin/chromium").exists(),
        "the browser test needs chromium and tests/console/node_modules: run deploy/browser-deps.sh (make test does)"
    );

    // crm-sync: the two-way sync in the generic dialect, the admin API, two attempts per event.
    let admin_port = crate::two_way::free_port();
    let tw = TwoWay::start_with("console", Dialect::Generic, |cfg| {
        cfg.http.listen = format!("127.0.0.1:{admin_port}").parse().expect("address");
        cfg.http.admin_token = Some(SecretString::from(CRM_ADMIN_TOKEN));
        cfg.retry.max_attempts = 2;
    })
    .await?;
    let pool = tw.scope.wait_for_schema().await?;
    let crm_id = tw.card_in_crm("c-console").await?;
    let task = tw.conflict_on_segment(&pool, "c-console", &crm_id).await?;
    tw.webhooks_on().await?;
    let task_id = task["id"].as_i64().unwrap_or_default();

    // A parcel status that meets a CRM outage until it is dead-lettered.
    let http = reqwest::Client::new();
    let faults = |f: Value| {
        let (http, url) = (http.clone(), format!("{}/sim/faults", tw.sim_url));
        async move {
            http.post(url)
                .json(&f)
                .send()
                .await?
                .error_for_status()
                .map(|_| ())
        }
    };
    faults(json!({"outage_for_ms": 600_000, "retry_after_s": 0})).await?;
    let producer = producer()?;
    let event = "ev-console-1";
    let doc = event_json(event, "ship-console-1", "DELIVERED", "2026-11-01T10:00:00Z");
    send(&producer, &tw.scope.kafka.input_topic, "ship-console-1", &doc).await?;
    eventually(Duration::from_secs(60), "the event dead-lettered", || async {
        Ok(tw.scope.outcome_of(&pool, event).await?.as_deref() == Some("dead_lettered"))
    })
    .await?;
    faults(json!({})).await?;

    // gift-certificates with its admin API and one certificate.
    let sms = gift::sms_provider(200).await;
    let certificates = gift::Service::start(&sms.uri(), |cfg| {
        cfg.admin.token = SecretString::from(GIFT_ADMIN_TOKEN);
    })
    .await;
    let code = gift::new_code();
    certificates.upload(&code, "123", 500_000).await;

    // The console, with one admin.
    let mut cfg = operator_console::Config::default();
    cfg.http.secure_cookies = false;
    cfg.users = serde_json::from_value(json!([{
        "name": USER, "role": "admin",
        "password_hash": operator_console::auth::hash_password(PASSWORD).map_err(anyhow::Error::msg)?,
    }]))?;
    cfg.crm_sync.url = format!("http://127.0.0.1:{admin_port}");
    cfg.crm_sync.admin_token = SecretString::from(CRM_ADMIN_TOKEN);
    cfg.crm_sync_two_way.url = tw.api.clone();
    cfg.crm_sync_two_way.admin_token = SecretString::from(API_TOKEN);
    cfg.gift_certificates.url = certificates.base.clone();
    cfg.gift_certificates.admin_token = SecretString::from(GIFT_ADMIN_TOKEN);
    cfg.validate().map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let console_url = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    let console = tokio::spawn({
        let stop = stop.clone();
        async move { operator_console::serve(listener, &cfg, stop).await }
    });

    let screenshots = workspace().join("target/console-screenshots");
    // This run's pictures only (a failure.png of an earlier run would mislead).
    let _ = std::fs::remove_dir_all(&screenshots);
    let run = tokio::process::Command::new("node")
        .arg(&script)
        .env("CONSOLE_URL", &console_url)
        .env("CONSOLE_USER", USER)
        .env("CONSOLE_PASSWORD", PASSWORD)
        .env("EVENT_ID", event)
        .env("CONFLICT_ID", task_id.to_string())
        .env("CERT_CODE", &code)
        .env("SCREENSHOT_DIR", &screenshots)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), run).await??;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{said}");
    assert!(
        out.status.success(),
        "the browser run failed (screenshots in target/console-screenshots):\n{said}"
    );

    // What the services did, read from them, not from the page.
    assert_eq!(
        tw.scope.outcome_of(&pool, event).await?.as_deref(),
        Some("success"),
        "the replayed event reached the CRM"
    );
    let (_, resolved) = tw
        .call(
            reqwest::Method::GET,
            &format!("/v1/operator-tasks/{task_id}"),
            None,
        )
        .await?;
    assert_eq!(resolved["state"], "resolved", "{resolved}");
    assert_eq!(resolved["resolved_by"], USER, "the resolution names who decided");
    tw.wait_theirs("c-console", "the resolution in the CRM", |c| {
        c["segment"] == "vip-returning"
    })
    .await?;
    let view = certificates.view(&code).await;
    assert!(
        view["state"]
            .as_str()
            .is_some_and(|s| s.eq_ignore_ascii_case("cancelled")),
        "{view}"
    );
    let admin_view: Value = http
        .get(format!("{}/admin/v1/certificates/{code}", certificates.base))
        .bearer_auth(GIFT_ADMIN_TOKEN)
        .send()
        .await?
        .json()
        .await?;
    let audited = admin_view["audit"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|a| a["actor"] == USER && a["detail"]["reason"] == "customer asked, ticket 42");
    assert!(
        audited,
        "the cancel is audited with who did it and why: {admin_view}"
    );
    for page in [
        "login",
        "overview",
        "dead-letters",
        "trace",
        "conflict",
        "certificate",
    ] {
        assert!(
            screenshots.join(format!("{page}.png")).exists(),
            "a screenshot of {page} is kept"
        );
    }

    stop.cancel();
    console.await??;
    certificates.stop().await;
    tw.stop().await
}
