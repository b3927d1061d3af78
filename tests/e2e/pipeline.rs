use backbone_tests::*;
use crm_sim::Faults;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const STATUSES: [&str; 4] = ["CREATED", "IN_TRANSIT", "OUT_FOR_DELIVERY", "DELIVERED"];

/// A stream with duplicates, out-of-order statuses, malformed events and a flaky CRM ends with
/// every shipment at its newest status, one write per effective change, every event logged and
/// exactly the bad events in dead.letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_messy_stream_converges_to_the_newest_status_exactly_once() -> anyhow::Result<()> {
    let scope = Scope::new("messy");
    scope.create_topics().await?;
    let (sim, crm_url) = start_sim().await?;
    sim.set_faults(Faults {
        error_rate: 0.2,
        retry_after_s: 0,
        ..Faults::default()
    });

    let producer = producer()?;
    let topic = scope.kafka.input_topic.clone();
    let shipments = 40;
    let mut valid_ids = HashSet::new();
    for s in 0..shipments {
        let shipment = format!("ship-{s}");
        // Newest first for odd shipments, shuffled for the others: delivery order != event order.
        let order: Vec<usize> = if s % 2 == 1 {
            vec![3, 2, 1, 0]
        } else {
            vec![1, 0, 3, 2]
        };
        for i in order {
            let id = format!("ev-{s}-{i}");
            let doc = event_json(&id, &shipment, STATUSES[i], &format!("2026-11-01T10:0{i}:00Z"));
            send(&producer, &topic, &shipment, &doc).await?;
            if (s + i) % 5 == 0 {
                send(&producer, &topic, &shipment, &doc).await?; // duplicate delivery
            }
            valid_ids.insert(id);
        }
    }
    let bad = [
        "{not json".to_owned(),
        r#"{"event_id":"x1","client_id":"c","shipment_id":"s"}"#.to_owned(),
        event_json("bad-status", "ship-bad", "TELEPORTED", "2026-11-01T10:00:00Z"),
        event_json("", "ship-bad", "CREATED", "2026-11-01T10:00:00Z"),
        event_json("v2", "ship-bad", "CREATED", "2026-11-01T10:00:00Z")
            .replace("\"version\":1", "\"version\":2"),
    ];
    for b in &bad {
        send(&producer, &topic, "ship-bad", b).await?;
    }

    let shutdown = CancellationToken::new();
    let service = tokio::spawn(crm_sync::run(scope.config(&crm_url), shutdown.clone()));

    let pool = scope.wait_for_schema().await?;
    let expected = valid_ids.len() as i64;
    eventually(
        Duration::from_secs(90),
        "every valid event at a final outcome",
        || {
            let pool = pool.clone();
            async move {
                let finals: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM processed_events WHERE outcome IN ('success', 'stale', 'unchanged')",
            )
            .fetch_one(&pool)
            .await?;
                let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM sync_retry")
                    .fetch_one(&pool)
                    .await?;
                Ok(finals == expected && parked == 0)
            }
        },
    )
    .await?;
    shutdown.cancel();
    service.await??;

    // Newest status everywhere, never an older one written over a newer one, no event twice.
    let stats = sim.stats();
    assert_eq!(stats.duplicate_writes, 0, "an event was written twice");
    for s in 0..shipments {
        let shipment = format!("ship-{s}");
        let record = sim.record(&shipment).expect("shipment reached the CRM");
        assert_eq!(record["status"], "delivered", "{shipment}");
        assert_eq!(record["timestamp"], "2026-11-01T10:03:00Z");
        let stamps: Vec<String> = sim
            .history(&shipment)
            .iter()
            .map(|r| r["timestamp"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert!(
            stamps.windows(2).all(|w| w[0] < w[1]),
            "{shipment} went back in time: {stamps:?}"
        );
    }

    // Every event is in the log.
    let logged: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT event_id FROM integrations_log WHERE event_id IS NOT NULL")
            .fetch_all(&pool)
            .await?;
    let logged: HashSet<String> = logged.into_iter().collect();
    assert!(
        valid_ids.iter().all(|id| logged.contains(id)),
        "an event is missing from integrations_log"
    );
    let dead_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM integrations_log WHERE outcome = 'dead_lettered'")
            .fetch_one(&pool)
            .await?;
    assert_eq!(dead_rows, bad.len() as i64);

    // Exactly the bad events are in dead.letters, each with its reason and source.
    let letters = scope.dead_letters()?;
    let mut got: Vec<String> = letters
        .iter()
        .map(|l| String::from_utf8_lossy(l.payload.as_deref().unwrap_or_default()).into_owned())
        .collect();
    let mut want: Vec<String> = bad.to_vec();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    let reasons: BTreeMap<String, usize> = letters.iter().fold(BTreeMap::new(), |mut m, l| {
        *m.entry(l.header("x-dlq-reason-code").unwrap_or("none").to_owned())
            .or_default() += 1;
        m
    });
    assert_eq!(reasons.get("malformed_json"), Some(&2));
    assert_eq!(reasons.get("invalid_field"), Some(&1));
    assert_eq!(reasons.get("unmapped_status"), Some(&1));
    assert_eq!(reasons.get("unsupported_version"), Some(&1));
    assert!(letters
        .iter()
        .all(|l| l.header("x-source-topic") == Some(topic.as_str())
            && l.header("x-source-offset").is_some()
            && l.header("x-attempts") == Some("1")));
    scope.drop_database().await;
    Ok(())
}
