//! crm-sync against records and CRMs that used to stall or mislead it: each test is named for the
//! behaviour it holds the service to.

use backbone_sync::retry::RetryPolicy;
use backbone_tests::gift::read_until;
use backbone_tests::*;
use crm_sim::Faults;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn big_producer() -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("message.max.bytes", "4000000")
        .create()?)
}

async fn ready(port: u16) -> bool {
    reqwest::get(format!("http://127.0.0.1:{port}/health/ready"))
        .await
        .is_ok_and(|r| r.status() == 200)
}

/// A 1 MiB record and a 600 KB event whose `version` is a long string are set aside with their
/// own reasons (the first without its value, neither with the input quoted in its reason); every
/// event after them, on every partition, reaches the CRM with an outcome, and readiness stays up.
/// Before, the 1 MiB record's dead letter was refused as too large and the batch was retried for
/// ever, with readiness at 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_record_is_set_aside_and_the_flow_goes_on() -> anyhow::Result<()> {
    let scope = Scope::new("oversized");
    scope.create_topics().await?;
    let (sim, crm_url) = start_sim().await?;
    let topic = scope.kafka.input_topic.clone();
    let big = big_producer()?;
    let huge = "x".repeat(1024 * 1024);
    big.send(
        FutureRecord::to(&topic).key("ship-big").payload(&huge),
        Timeout::After(Duration::from_secs(30)),
    )
    .await
    .map_err(|(e, _)| anyhow::anyhow!("produce failed: {e}"))?;
    let long_version = event_json("ev-long", "ship-long", "CREATED", "2026-11-01T10:00:00Z").replace(
        "\"version\":1",
        &format!("\"version\":\"{}\"", "9".repeat(600_000)),
    );
    big.send(
        FutureRecord::to(&topic).key("ship-long").payload(&long_version),
        Timeout::After(Duration::from_secs(30)),
    )
    .await
    .map_err(|(e, _)| anyhow::anyhow!("produce failed: {e}"))?;
    let producer = producer()?;
    for s in 0..12 {
        let shipment = format!("ship-after-{s}");
        let doc = event_json(
            &format!("ev-after-{s}"),
            &shipment,
            "IN_TRANSIT",
            "2026-11-01T10:00:00Z",
        );
        send(&producer, &topic, &shipment, &doc).await?;
    }

    let port = free_port();
    let mut cfg = scope.config(&crm_url);
    cfg.http.listen = format!("127.0.0.1:{port}").parse()?;
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(crm_sync::run(cfg, shutdown.clone()));
    let pool = scope.wait_for_schema().await?;
    eventually(Duration::from_secs(60), "every later event synced", || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM processed_events WHERE event_id LIKE 'ev-after-%' AND outcome = 'success'",
            )
            .fetch_one(&pool)
            .await?;
            Ok(n == 12)
        }
    })
    .await?;
    for s in 0..12 {
        assert!(sim.record(&format!("ship-after-{s}")).is_some());
    }
    eventually(Duration::from_secs(20), "ready", || async {
        Ok(ready(port).await)
    })
    .await?;

    let letters = scope.dead_letters()?;
    assert_eq!(letters.len(), 2, "both set aside, once each");
    let too_large = letters
        .iter()
        .find(|l| l.header("x-dlq-reason-code") == Some("record_too_large"))
        .expect("the 1 MiB record");
    assert_eq!(too_large.payload, None, "its value is withheld");
    assert_eq!(too_large.header("x-dlq-value-withheld"), Some("1048584"));
    assert_eq!(too_large.key.as_deref(), Some(&b"ship-big"[..]));
    let long = letters
        .iter()
        .find(|l| l.header("x-dlq-reason-code") == Some("malformed_json"))
        .expect("the long version");
    let reason = long.header("x-dlq-reason").unwrap_or_default();
    assert!(reason.len() < 200 && !reason.contains("9999"), "{reason}");
    assert_eq!(long.payload.as_ref().map(Vec::len), Some(long_version.len()));

    // Every record has its outcome on crm.sync, the refused ones too.
    let outcomes = read_until(&scope.kafka.outcome_topic, |got| got.len() >= 14).await;
    let refused: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|r| serde_json::from_str(&r.payload).unwrap())
        .filter(|o: &serde_json::Value| o["outcome"] == "dead_lettered")
        .collect();
    assert_eq!(refused.len(), 2);
    assert!(refused.iter().any(|o| o["reason_code"] == "record_too_large"));
    assert!(refused
        .iter()
        .any(|o| o["reason_code"] == "malformed_json" && o["event_id"] == "ev-long"));
    shutdown.cancel();
    service.await??;
    scope.drop_database().await;
    Ok(())
}

/// IN_TRANSIT@10:00, IN_TRANSIT@12:00, then AT_PICKUP_POINT@11:00, each in its own batch: the CRM
/// keeps IN_TRANSIT (before, it ended at the 11:00 status for every shipment); and an event dated
/// in the year 2999 is refused (`event_in_future`) instead of freezing its shipment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_older_status_and_no_future_event_wins() -> anyhow::Result<()> {
    let scope = Scope::new("older");
    scope.create_topics().await?;
    let (sim, crm_url) = start_sim().await?;
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(crm_sync::run(scope.config(&crm_url), shutdown.clone()));
    let pool = scope.wait_for_schema().await?;
    let producer = producer()?;
    let topic = scope.kafka.input_topic.clone();
    let shipments = 20;
    let steps = [
        ("IN_TRANSIT", "10:00", "a"),
        ("IN_TRANSIT", "12:00", "b"),
        ("AT_PICKUP_POINT", "11:00", "c"),
    ];
    for (status, at, step) in steps {
        for s in 0..shipments {
            let shipment = format!("ship-{s}");
            let doc = event_json(
                &format!("ev-{s}-{step}"),
                &shipment,
                status,
                &format!("2026-11-01T{at}:00Z"),
            );
            send(&producer, &topic, &shipment, &doc).await?;
        }
        let pool = pool.clone();
        let pattern = format!("ev-%-{step}");
        eventually(Duration::from_secs(60), "the step is handled", move || {
            let (pool, pattern) = (pool.clone(), pattern.clone());
            async move {
                let n: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM processed_events WHERE event_id LIKE $1")
                        .bind(&pattern)
                        .fetch_one(&pool)
                        .await?;
                Ok(n == shipments)
            }
        })
        .await?;
    }
    for s in 0..shipments {
        let record = sim.record(&format!("ship-{s}")).expect("in the CRM");
        assert_eq!(record["status"], "in_transit", "ship-{s}");
        assert_eq!(
            scope.outcome_of(&pool, &format!("ev-{s}-c")).await?.as_deref(),
            Some("stale")
        );
    }

    let future = event_json("ev-future", "ship-f", "DELIVERED", "2999-01-01T00:00:00Z");
    send(&producer, &topic, "ship-f", &future).await?;
    let now = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?;
    send(
        &producer,
        &topic,
        "ship-f",
        &event_json("ev-now", "ship-f", "IN_TRANSIT", &now),
    )
    .await?;
    eventually(Duration::from_secs(60), "the valid event written", || async {
        Ok(scope.outcome_of(&pool, "ev-now").await?.as_deref() == Some("success"))
    })
    .await?;
    assert_eq!(sim.record("ship-f").expect("written")["status"], "in_transit");
    let letters = scope.dead_letters()?;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].header("x-dlq-reason-code"), Some("event_in_future"));
    shutdown.cancel();
    service.await??;
    scope.drop_database().await;
    Ok(())
}

/// With the default retry policy (only the delays shortened), a CRM that answers 503 for 8 s
/// loses nothing: every event sent during the outage reaches it afterwards and none is
/// dead-lettered. Before, the budget was 8 attempts and breaker refusals counted as attempts, so
/// the events were dead-lettered (`attempts_exhausted`) within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_outlast_a_crm_outage_with_the_default_budget() -> anyhow::Result<()> {
    let scope = Scope::new("outage");
    scope.create_topics().await?;
    let (sim, crm_url) = start_sim().await?;
    sim.set_faults(Faults {
        outage_for_ms: 8_000,
        retry_after_s: 0,
        ..Faults::default()
    });
    let mut cfg = scope.config(&crm_url);
    cfg.retry = RetryPolicy {
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(400),
        ..RetryPolicy::default()
    };
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(crm_sync::run(cfg, shutdown.clone()));
    let pool = scope.wait_for_schema().await?;
    let producer = producer()?;
    for s in 0..30 {
        let shipment = format!("ship-{s}");
        let doc = event_json(&format!("ev-{s}"), &shipment, "DELIVERED", "2026-11-01T10:00:00Z");
        send(&producer, &scope.kafka.input_topic, &shipment, &doc).await?;
    }
    eventually(
        Duration::from_secs(90),
        "every event synced after the outage",
        || {
            let pool = pool.clone();
            async move {
                let n: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM processed_events WHERE outcome = 'success'")
                        .fetch_one(&pool)
                        .await?;
                Ok(n == 30)
            }
        },
    )
    .await?;
    let dead: i64 =
        sqlx::query_scalar("SELECT count(*) FROM integrations_log WHERE outcome = 'dead_lettered'")
            .fetch_one(&pool)
            .await?;
    assert_eq!(dead, 0, "nothing dead-lettered");
    let retried: i64 =
        sqlx::query_scalar("SELECT count(*) FROM integrations_log WHERE outcome = 'retry_scheduled'")
            .fetch_one(&pool)
            .await?;
    assert!(retried > 0, "the outage was seen");
    shutdown.cancel();
    service.await??;
    scope.drop_database().await;
    Ok(())
}

/// A CRM error body with a NUL byte is stored without it: the retry queue's commit succeeds and
/// the event reaches the CRM once it recovers. Before, PostgreSQL refused the commit and the batch
/// was retried for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_byte_in_a_crm_error_never_stalls_the_pipeline() -> anyhow::Result<()> {
    use wiremock::matchers::{method, path_regex};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let scope = Scope::new("nul");
    scope.create_topics().await?;
    let crm = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path_regex("^/api/v1/shipments/.+/status$"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&crm)
        .await;
    Mock::given(method("PUT"))
        .and(path_regex("^/api/v1/shipments/.+/status$"))
        .respond_with(ResponseTemplate::new(503).set_body_bytes(b"upstream\0failed \x01 badly".to_vec()))
        .up_to_n_times(2)
        .mount(&crm)
        .await;
    Mock::given(method("PUT"))
        .and(path_regex("^/api/v1/shipments/.+/status$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"status": "ok"})))
        .mount(&crm)
        .await;
    let mut cfg = scope.config(&crm.uri());
    cfg.crm.verify_mapping = false;
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(crm_sync::run(cfg, shutdown.clone()));
    let pool = scope.wait_for_schema().await?;
    let producer = producer()?;
    let doc = event_json("ev-nul", "ship-nul", "DELIVERED", "2026-11-01T10:00:00Z");
    send(&producer, &scope.kafka.input_topic, "ship-nul", &doc).await?;
    eventually(
        Duration::from_secs(60),
        "the event synced after two failures",
        || async { Ok(scope.outcome_of(&pool, "ev-nul").await?.as_deref() == Some("success")) },
    )
    .await?;
    let errors: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT response_excerpt FROM integrations_log WHERE event_id = 'ev-nul' AND outcome = 'retry_scheduled'",
    )
    .fetch_all(&pool)
    .await?;
    assert!(!errors.is_empty(), "the failures were logged");
    shutdown.cancel();
    service.await??;
    scope.drop_database().await;
    Ok(())
}
