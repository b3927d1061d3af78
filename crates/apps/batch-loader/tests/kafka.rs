//! The Kafka path against librdkafka's mock cluster: the batch opened over the service's API
//! (a wiremock service) before anything is published, one record per job on the upload topic,
//! keyed by batch id, the job JSON as value; a re-run publishes nothing new; a batch the service
//! refuses to open publishes nothing.
#![allow(clippy::unwrap_used)]

use backbone_kafka::KafkaSettings;
use batch_loader::contract::UploadJob;
use batch_loader::generate::{generate, GenerateOptions};
use batch_loader::load::{load, LoadOptions};
use batch_loader::progress::ProgressMode;
use batch_loader::sink::{KafkaSink, ServiceApi, Sink};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::mocking::MockCluster;
use rdkafka::{ClientConfig, Message};
use secrecy::SecretString;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN: &str = "kafka-test-token";

fn api(server: &MockServer) -> ServiceApi {
    ServiceApi::new(&server.uri(), SecretString::from(TOKEN), Duration::from_secs(5)).unwrap()
}

/// A service that opens `batch` (201 the first time, 200 after).
async fn opening(batch: &str) -> MockServer {
    let server = MockServer::start().await;
    let put = || {
        Mock::given(method("PUT"))
            .and(path(format!("/certificates/upload/batches/{batch}")))
            .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
    };
    put()
        .respond_with(ResponseTemplate::new(201))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    put()
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    server
}

fn generated(dir: &std::path::Path, count: u64) -> std::path::PathBuf {
    let file = dir.join("batch.csv");
    generate(
        &file,
        &GenerateOptions {
            count,
            nominal_minor: 300_000,
            currency: "RUB".into(),
            expires_at: None,
            overwrite: false,
        },
    )
    .unwrap();
    file
}

/// Every record on the topic: (key, idempotency header, value).
fn read_all(brokers: &str, topic: &str, expected: usize) -> Vec<(String, String, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("check-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    // Read until the expected count, then a little longer to see any extra record.
    let mut quiet_until: Option<Instant> = None;
    while Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            let header = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "idempotency-key"))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8(v.to_vec()).unwrap())
                .unwrap_or_default();
            out.push((
                String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
                header,
                m.payload().unwrap().to_vec(),
            ));
        }
        if out.len() >= expected {
            let until = *quiet_until.get_or_insert_with(|| Instant::now() + Duration::from_millis(500));
            if Instant::now() > until {
                break;
            }
        }
    }
    out
}

#[tokio::test]
async fn jobs_are_published_keyed_by_batch_and_job_and_not_again_on_a_rerun() {
    let cluster = MockCluster::new(1).unwrap();
    let topic = "GiftCertificateUpload";
    cluster.create_topic(topic, 3, 1).unwrap();
    let settings = KafkaSettings {
        brokers: cluster.bootstrap_servers(),
        ..KafkaSettings::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let file = generated(dir.path(), 250);
    let service = opening("kafka-1").await;
    let options = LoadOptions {
        job_size: 100,
        progress: ProgressMode::Off,
        ..LoadOptions::new(&file, "kafka-1")
    };
    let sink = || {
        Arc::new(Sink::Kafka(
            KafkaSink::new(&settings, topic, "kafka-1", api(&service)).unwrap(),
        ))
    };

    let summary = load(options.clone(), sink()).await.unwrap();
    assert_eq!((summary.accepted, summary.jobs, summary.jobs_sent), (250, 3, 3));
    assert_eq!(
        summary.issued, None,
        "the broker does not know what the service issued"
    );

    assert_eq!(
        service.received_requests().await.unwrap().len(),
        1,
        "the batch is opened once, before its jobs"
    );
    let records = read_all(&settings.brokers, topic, 3);
    assert_eq!(records.len(), 3);
    let mut jobs: Vec<UploadJob> = records
        .iter()
        .map(|(key, header, value)| {
            let job: UploadJob = serde_json::from_slice(value).unwrap();
            // One key per job, so a batch's jobs spread over the partitions.
            assert_eq!(key, &format!("kafka-1:{}", job.job));
            assert_eq!(header, &format!("kafka-1:{}", job.job));
            job
        })
        .collect();
    jobs.sort_by_key(|j| j.job);
    let sizes: Vec<usize> = jobs.iter().map(|j| j.certificates.len()).collect();
    assert_eq!(sizes, [100, 100, 50]);
    assert!(jobs.iter().all(|j| j.version == 1 && j.batch_id == "kafka-1"));

    let again = load(options, sink()).await.unwrap();
    assert_eq!((again.jobs_sent, again.jobs_skipped), (0, 3));
    assert_eq!(
        read_all(&settings.brokers, topic, 3).len(),
        3,
        "nothing new on the topic"
    );
}

#[tokio::test]
async fn a_batch_the_service_does_not_open_publishes_nothing() {
    let cluster = MockCluster::new(1).unwrap();
    let topic = "GiftCertificateUpload";
    cluster.create_topic(topic, 1, 1).unwrap();
    let settings = KafkaSettings {
        brokers: cluster.bootstrap_servers(),
        ..KafkaSettings::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let file = generated(dir.path(), 20);
    let refusing = MockServer::start().await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(403).set_body_raw(
            r#"{"code":"forbidden","title":"This channel may not perform this operation","status":403}"#,
            "application/problem+json",
        ))
        .mount(&refusing)
        .await;
    let options = LoadOptions {
        job_size: 10,
        progress: ProgressMode::Off,
        ..LoadOptions::new(&file, "refused-1")
    };
    let sink = Arc::new(Sink::Kafka(
        KafkaSink::new(&settings, topic, "refused-1", api(&refusing)).unwrap(),
    ));
    let err = load(options, sink).await.unwrap_err();
    let shown = format!("{err:#}");
    assert!(
        shown.contains("opening batch refused-1") && shown.contains("HTTP 403 forbidden"),
        "{shown}"
    );
    assert!(
        read_all(&settings.brokers, topic, 1).is_empty(),
        "nothing published"
    );
}
