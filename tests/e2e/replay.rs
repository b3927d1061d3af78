use backbone_kafka::ReplayFilter;
use backbone_tests::*;
use crm_sim::Faults;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// An event that exhausted its attempts while the CRM was down is dead-lettered; a dry run lists
/// it without sending; a replay sends it through again and it reaches the CRM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_can_be_replayed_after_the_crm_recovers() -> anyhow::Result<()> {
    let scope = Scope::new("replay");
    scope.create_topics().await?;
    let (sim, crm_url) = start_sim().await?;
    sim.set_faults(Faults {
        outage_for_ms: 600_000,
        retry_after_s: 0,
        ..Faults::default()
    });
    let mut cfg = scope.config(&crm_url);
    cfg.retry.max_attempts = 2;
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(crm_sync::run(cfg, shutdown.clone()));

    let producer = producer()?;
    let doc = event_json("ev-r1", "ship-r1", "DELIVERED", "2026-11-01T10:00:00Z");
    send(&producer, &scope.kafka.input_topic, "ship-r1", &doc).await?;
    send(
        &producer,
        &scope.kafka.input_topic,
        "ship-r2",
        &event_json("ev-r2", "ship-r2", "LOST", "2026-11-01T10:00:00Z"),
    )
    .await?;

    let pool = scope.wait_for_schema().await?;
    let outcome = |id: &'static str| {
        let (pool, scope) = (&pool, &scope);
        async move { scope.outcome_of(pool, id).await }
    };
    eventually(Duration::from_secs(60), "both events dead-lettered", || async {
        Ok(outcome("ev-r1").await?.as_deref() == Some("dead_lettered")
            && outcome("ev-r2").await?.as_deref() == Some("dead_lettered"))
    })
    .await?;
    sim.set_faults(Faults::default());

    let only_r1 = ReplayFilter {
        event_id: Some("ev-r1".into()),
        reason_code: Some("attempts_exhausted".into()),
        ..Default::default()
    };
    let dry = crm_sync::replay_dead_letters(&scope.kafka, only_r1.clone(), None, true).await?;
    assert_eq!((dry.matched, dry.replayed), (1, 0));
    assert_eq!(dry.letters[0].replay_count, 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sim.record("ship-r1").is_none(), "a dry run sends nothing");

    let real = crm_sync::replay_dead_letters(&scope.kafka, only_r1, None, false).await?;
    assert_eq!(real.replayed, 1);
    eventually(
        Duration::from_secs(30),
        "the replayed event reaches the CRM",
        || async { Ok(outcome("ev-r1").await?.as_deref() == Some("success")) },
    )
    .await?;
    assert_eq!(sim.record("ship-r1").expect("written")["status"], "delivered");
    assert!(
        sim.record("ship-r2").is_none(),
        "the filter left the other letter alone"
    );
    assert_eq!(outcome("ev-r2").await?.as_deref(), Some("dead_lettered"));

    // A letter whose x-source-topic names another topic is not followed there: replay only
    // publishes to the input topic and kafka.replay_topics.
    let elsewhere = format!("elsewhere.{}", scope.id);
    backbone_kafka::ensure_topics(&scope.kafka.client, &[elsewhere.as_str()], 1).await?;
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&scope.kafka.dead_letter_topic)
                .key("ship-x")
                .payload(&event_json(
                    "ev-forged",
                    "ship-x",
                    "DELIVERED",
                    "2026-11-01T10:00:00Z",
                ))
                .headers(
                    rdkafka::message::OwnedHeaders::new()
                        .insert(rdkafka::message::Header {
                            key: "x-source-topic",
                            value: Some(elsewhere.as_bytes()),
                        })
                        .insert(rdkafka::message::Header {
                            key: "x-event-id",
                            value: Some("ev-forged".as_bytes()),
                        }),
                ),
            std::time::Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
    let forged = ReplayFilter {
        event_id: Some("ev-forged".into()),
        ..Default::default()
    };
    let refused = crm_sync::replay_dead_letters(&scope.kafka, forged, None, false).await?;
    assert_eq!((refused.matched, refused.replayed, refused.refused), (1, 0, 1));
    assert!(refused.letters[0].refused.is_some());
    let mut allowed = scope.kafka.clone();
    allowed.replay_topics = vec![elsewhere.clone()];
    let forged = ReplayFilter {
        event_id: Some("ev-forged".into()),
        ..Default::default()
    };
    let sent = crm_sync::replay_dead_letters(&allowed, forged, Some(1), false).await?;
    assert_eq!((sent.replayed, sent.refused), (1, 0), "allowed once listed");
    shutdown.cancel();
    service.await??;
    scope.drop_database().await;
    Ok(())
}
