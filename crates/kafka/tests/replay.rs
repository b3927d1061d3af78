//! The shared dead-letter replay against librdkafka's in-process mock cluster: what a dry run
//! lists, what the allow-list refuses, and the headers a replayed record carries.

#![allow(clippy::unwrap_used)]

use backbone_kafka::{
    read_dead_letters, replay_letters, DeadLetter, DeadLetterPublisher, DeadLetterSource, KafkaPublisher,
    KafkaSettings, RecordPosition, ReplayFilter, ReplayPolicy, ReplayRequest, HEADER_REPLAYED_BY,
    HEADER_REPLAYED_FROM, HEADER_REPLAY_COUNT, REFUSED_NO_SOURCE_TOPIC,
};
use rdkafka::mocking::MockCluster;

fn letter(source: Option<&str>, event_id: Option<&str>, payload: &str) -> DeadLetter {
    DeadLetter {
        source: source.map(|topic| RecordPosition {
            topic: topic.into(),
            partition: 0,
            offset: 5,
        }),
        key: Some(b"order-7".to_vec()),
        payload: Some(payload.as_bytes().to_vec()),
        withheld_bytes: None,
        reason_code: "invalid_field".into(),
        reason: "lines[0].certificate_code: missing".into(),
        attempts: 1,
        replay_count: None,
        event_id: event_id.map(str::to_owned),
    }
}

#[tokio::test]
async fn letters_go_back_to_allowed_topics_only_with_the_replay_headers() {
    let cluster = MockCluster::new(1).unwrap();
    let s = KafkaSettings {
        brokers: cluster.bootstrap_servers(),
        ..KafkaSettings::default()
    };
    for topic in ["dlq", "orders", "elsewhere"] {
        cluster.create_topic(topic, 1, 1).unwrap();
    }
    let letters = DeadLetterPublisher::new(KafkaPublisher::new(&s).unwrap(), "dlq");
    letters
        .publish(&[
            letter(Some("orders"), Some("ev-header"), r#"{"event_id": "ignored"}"#),
            letter(
                Some("orders"),
                None,
                r#"{"event_id": "ev-payload", "order_id": "o-7"}"#,
            ),
            letter(Some("elsewhere"), None, "{}"),
            letter(None, None, r#"{"kind": "cvc_sms"}"#),
        ])
        .await
        .unwrap();
    let source = DeadLetterSource::new(s.clone(), "g-replay", "dlq").with_payload_event_ids();
    let policy = ReplayPolicy::new(vec!["orders".into()], "not orders");
    let orders = || read_dead_letters(&s, "g-orders", "orders", &ReplayFilter::default()).unwrap();

    let dry = ReplayRequest {
        dry_run: true,
        by: Some("alice"),
        ..ReplayRequest::default()
    };
    let listed = replay_letters(&source, &policy, dry).await.unwrap();
    assert_eq!((listed.matched, listed.replayed, listed.refused), (4, 0, 2));
    let refusals: Vec<Option<&str>> = listed.letters.iter().map(|l| l.refused.as_deref()).collect();
    assert_eq!(
        refusals,
        [None, None, Some("not orders"), Some(REFUSED_NO_SOURCE_TOPIC)]
    );
    let ids: Vec<Option<&str>> = listed.letters.iter().map(|l| l.event_id.as_deref()).collect();
    assert_eq!(ids, [Some("ev-header"), Some("ev-payload"), None, None]);
    assert!(orders().is_empty(), "a dry run sends nothing");

    let one = ReplayRequest {
        filter: ReplayFilter {
            event_id: Some("ev-payload".into()),
            ..ReplayFilter::default()
        },
        by: Some("alice"),
        ..ReplayRequest::default()
    };
    let sent = replay_letters(&source, &policy, one).await.unwrap();
    assert_eq!((sent.matched, sent.replayed, sent.refused), (1, 1, 0));
    let back = orders();
    assert_eq!(back.len(), 1);
    let record = &back[0];
    assert_eq!(record.key.as_deref(), Some(&b"order-7"[..]));
    assert_eq!(
        record.payload.as_deref(),
        Some(br#"{"event_id": "ev-payload", "order_id": "o-7"}"#.as_slice())
    );
    assert_eq!(record.header(HEADER_REPLAY_COUNT), Some("1"));
    assert_eq!(record.header(HEADER_REPLAYED_FROM), Some("dlq/0/1"));
    assert_eq!(record.header(HEADER_REPLAYED_BY), Some("alice"));

    let everything = replay_letters(&source, &policy, ReplayRequest::default())
        .await
        .unwrap();
    assert_eq!(
        (everything.matched, everything.replayed, everything.refused),
        (4, 2, 2)
    );
    let back = orders();
    assert_eq!(back.len(), 3, "the refused letters went nowhere");
    assert_eq!(back[1].header(HEADER_REPLAYED_BY), None, "nobody named");
    assert_eq!(
        read_dead_letters(&s, "g-else", "elsewhere", &ReplayFilter::default())
            .unwrap()
            .len(),
        0
    );

    let limited = ReplayRequest {
        filter: ReplayFilter {
            event_id: Some("ev-header".into()),
            ..ReplayFilter::default()
        },
        limit: Some(1),
        dry_run: true,
        by: None,
    };
    let header_named = replay_letters(&source, &policy, limited).await.unwrap();
    assert_eq!(header_named.letters.len(), 1);
    assert_eq!(header_named.letters[0].offset, 0);
}

/// A broker that does not answer is an error of the read and of the replay (a service answers
/// it `503`), never an empty list.
#[tokio::test]
async fn an_unreachable_broker_is_an_error_not_an_empty_topic() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let brokers = closed.local_addr().unwrap().to_string();
    drop(closed);
    let s = KafkaSettings {
        brokers,
        ..KafkaSettings::default()
    };
    let source = DeadLetterSource::new(s, "g-away", "dlq");
    let policy = ReplayPolicy::new(vec!["orders".into()], "not orders");
    let dry = ReplayRequest {
        dry_run: true,
        ..ReplayRequest::default()
    };
    let (read, replayed) = tokio::join!(
        source.read(ReplayFilter::default(), 10),
        replay_letters(&source, &policy, dry)
    );
    assert!(read.is_err());
    assert!(replayed.is_err());
}
