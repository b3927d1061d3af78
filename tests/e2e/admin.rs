use backbone_tests::tls::free_port;
use backbone_tests::*;
use crm_sim::Faults;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const ADMIN_TOKEN: &str = "admin-token-for-the-e2e-test";

/// crm-sync's admin API over real connections: the overview counts what the ledger holds, the
/// dead letters are listed and shown masked, a replay needs the operator's name, lists on a
/// dry run and sends when confirmed, and the trace by shipment shows every attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_lists_shows_masked_replays_and_traces_dead_letters() -> anyhow::Result<()> {
    let scope = Scope::new("admin");
    scope.create_topics().await?;
    let (sim, crm_url) = start_sim().await?;
    sim.set_faults(Faults {
        outage_for_ms: 600_000,
        retry_after_s: 0,
        ..Faults::default()
    });
    let mut cfg = scope.config(&crm_url);
    cfg.retry.max_attempts = 2;
    let port = free_port()?;
    cfg.http.listen = format!("127.0.0.1:{port}").parse()?;
    cfg.http.admin_token = Some(secrecy::SecretString::from(ADMIN_TOKEN));
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(crm_sync::run(cfg, shutdown.clone()));

    let producer = producer()?;
    let doc = event_json("ev-a1", "ship-a1", "DELIVERED", "2026-11-01T10:00:00Z");
    send(&producer, &scope.kafka.input_topic, "ship-a1", &doc).await?;
    send(&producer, &scope.kafka.input_topic, "bad-1", "{not json").await?;
    let pool = scope.wait_for_schema().await?;
    eventually(Duration::from_secs(60), "ev-a1 dead-lettered", || async {
        Ok(scope.outcome_of(&pool, "ev-a1").await?.as_deref() == Some("dead_lettered"))
    })
    .await?;

    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}/admin/v1");
    let get = |path: String| {
        let http = http.clone();
        async move {
            let r = http.get(path).bearer_auth(ADMIN_TOKEN).send().await?;
            let status = r.status().as_u16();
            anyhow::Ok((status, r.json::<Value>().await?))
        }
    };

    // The document is public; every call is checked.
    let doc: Value = http
        .get(format!("http://127.0.0.1:{port}/admin/openapi.json"))
        .send()
        .await?
        .json()
        .await?;
    assert!(doc["paths"]["/admin/v1/dead-letters/replay"]["post"].is_object());
    // Every call is checked.
    for token in [None, Some("wrong-token-wrong-token")] {
        let mut req = http.get(format!("{base}/overview"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await?;
        assert_eq!(r.status().as_u16(), 401);
        assert_eq!(r.json::<Value>().await?["code"], "unauthenticated");
    }

    // The malformed record is dead-lettered too; the overview counts both by reason.
    eventually(
        Duration::from_secs(30),
        "both letters in the overview",
        || async {
            let (status, o) = get(format!("{base}/overview?hours=1")).await?;
            assert_eq!(status, 200, "{o}");
            let reasons = &o["window"]["dead_letters_by_reason"];
            Ok(reasons["attempts_exhausted"] == 1 && reasons["malformed_json"] == 1)
        },
    )
    .await?;
    let (_, o) = get(format!("{base}/overview")).await?;
    assert_eq!(o["service"], "crm-sync");
    assert_eq!(o["series"]["buckets"].as_array().map(Vec::len), Some(72));
    assert_eq!(o["window"]["attempts"]["retry_scheduled"], 1, "{o}");
    assert_eq!(o["window"]["attempts"]["dead_lettered"], 2, "{o}");
    assert_eq!(o["window"]["success_ratio"], 0.0, "{o}");
    let charted: u64 = o["series"]["buckets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| b["dead_lettered"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(charted, 2, "the chart holds what the window counts");
    let (status, bad) = get(format!("{base}/overview?hours=0")).await?;
    assert_eq!((status, bad["code"].as_str()), (422, Some("invalid-field")));

    // The list, filtered by reason; one letter with its payload masked.
    let (status, listed) = get(format!("{base}/dead-letters?reason=attempts_exhausted")).await?;
    assert_eq!(status, 200, "{listed}");
    let letters = listed["letters"].as_array().cloned().unwrap_or_default();
    assert_eq!(letters.len(), 1, "{listed}");
    assert_eq!(letters[0]["event_id"], "ev-a1");
    assert!(letters[0].get("payload").is_none(), "a list carries no payloads");
    let (partition, offset) = (letters[0]["partition"].clone(), letters[0]["offset"].clone());
    let (status, letter) = get(format!("{base}/dead-letters/{partition}/{offset}")).await?;
    assert_eq!(status, 200, "{letter}");
    assert_eq!(letter["payload"]["event_id"], "ev-a1");
    assert_eq!(letter["payload"]["status"], "DELIVERED");
    assert_eq!(letter["payload"]["client_id"], "***p-a1", "masked: {letter}");
    assert_eq!(letter["headers"]["x-dlq-reason-code"], "attempts_exhausted");
    assert!(!letter.to_string().contains("client-ship-a1"), "{letter}");
    let (status, none) = get(format!("{base}/dead-letters/{partition}/999999")).await?;
    assert_eq!(
        (status, none["code"].as_str()),
        (404, Some("dead-letter-not-found"))
    );

    // A replay names the person; the dry run sends nothing.
    let replay = |body: Value, operator: Option<&'static str>| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let mut req = http
                .post(format!("{base}/dead-letters/replay"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&body);
            if let Some(o) = operator {
                req = req.header("x-operator", o);
            }
            let r = req.send().await?;
            let status = r.status().as_u16();
            anyhow::Ok((status, r.json::<Value>().await?))
        }
    };
    let one = json!({"letters": [{"partition": partition, "offset": offset}], "dry_run": true});
    let (status, p) = replay(one.clone(), None).await?;
    assert_eq!((status, p["code"].as_str()), (400, Some("bad-request")), "{p}");
    let (status, dry) = replay(one, Some("alice")).await?;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(
        (dry["matched"].as_u64(), dry["replayed"].as_u64()),
        (Some(1), Some(0))
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        scope.outcome_of(&pool, "ev-a1").await?.as_deref(),
        Some("dead_lettered"),
        "a dry run sends nothing"
    );

    sim.set_faults(Faults::default());
    let (status, sent) = replay(
        json!({"letters": [{"partition": partition, "offset": offset}], "dry_run": false}),
        Some("alice"),
    )
    .await?;
    assert_eq!(status, 200, "{sent}");
    assert_eq!(sent["replayed"], 1, "{sent}");
    eventually(Duration::from_secs(60), "the replayed event synced", || async {
        Ok(scope.outcome_of(&pool, "ev-a1").await?.as_deref() == Some("success"))
    })
    .await?;

    // The trace by shipment: the failed attempts, the dead letter, the replay's success.
    let (status, found) = get(format!("{base}/trace?shipment_id=ship-a1")).await?;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["by"], "shipment_id");
    let event = &found["events"][0];
    assert_eq!(event["event_id"], "ev-a1", "{found}");
    assert_eq!(event["outcome"], "success");
    assert_eq!(event["replay_count"], 1);
    let outcomes: Vec<&str> = event["attempts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["outcome"].as_str())
        .collect();
    assert_eq!(
        outcomes,
        ["retry_scheduled", "dead_lettered", "success"],
        "{found}"
    );
    let (_, by_client) = get(format!("{base}/trace?client_id=client-ship-a1")).await?;
    assert_eq!(by_client["events"][0]["event_id"], "ev-a1", "{by_client}");
    let (status, two) = get(format!("{base}/trace?event_id=ev-a1&client_id=x")).await?;
    assert_eq!((status, two["code"].as_str()), (400, Some("bad-request")));
    let (status, unknown) = get(format!("{base}/trace?event_id=ev-never")).await?;
    assert_eq!(status, 200);
    assert_eq!(unknown["events"], json!([]));

    shutdown.cancel();
    service.await??;
    scope.drop_database().await;
    Ok(())
}
