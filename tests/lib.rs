//! Test harness for end-to-end tests: every test gets its own topics, consumer group and database
//! on the real local stack (`deploy/stack.sh up`; `make test` points `KAFKA_BROKERS` at a fresh
//! broker from `deploy/with-broker.sh`), an in-process crm-sim on a random port, and crm-sync
//! either in process or as a child process (for kill -9).

pub mod gift;
pub mod tls;

use backbone_kafka::KafkaSettings;
use crm_sim::Sim;
use crm_sync::kafka::KafkaConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;
use sqlx::PgPool;
use std::time::{Duration, Instant};

pub const TOKEN: &str = "e2e-token-0123456789";
pub const SECRET: &str = "e2e-signing-secret-0123456789";

pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn pg_base() -> String {
    std::env::var("TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432".into())
}

/// A binary of the workspace built beside the running test binary (`target/<profile>/<name>`;
/// `make test` builds them first).
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/<name>
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join(name);
    assert!(
        bin.exists(),
        "{} missing: build it first (`cargo build --bins`, done by `make test`)",
        bin.display()
    );
    bin
}

/// Names unique to one test.
pub struct Scope {
    pub id: String,
    pub kafka: KafkaConfig,
    pub db_url: String,
}

impl Scope {
    pub fn new(name: &str) -> Self {
        let id = format!("{name}_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let kafka = KafkaConfig {
            client: KafkaSettings {
                brokers: brokers(),
                group_id: Some(format!("crm-sync-{id}")),
                create_topics: true,
                topic_partitions: 3,
                ..KafkaSettings::default()
            },
            input_topic: format!("tracking.events.{id}"),
            outcome_topic: format!("crm.sync.{id}"),
            dead_letter_topic: format!("dead.letters.{id}"),
            replay_topics: Vec::new(),
        };
        Self {
            db_url: format!("{}/e2e_{id}", pg_base()),
            id,
            kafka,
        }
    }

    /// crm-sync configuration for this scope, pointing at `crm_url`.
    pub fn config(&self, crm_url: &str) -> crm_sync::Config {
        let mut cfg = crm_sync::Config {
            kafka: self.kafka.clone(),
            ..Default::default()
        };
        cfg.postgres.url = secrecy::SecretString::from(self.db_url.clone());
        cfg.crm.generic.base_url = crm_url.into();
        cfg.crm.generic.token = secrecy::SecretString::from(TOKEN);
        cfg.crm.generic.signing_secret = secrecy::SecretString::from(SECRET);
        cfg.crm.generic.timeout_ms = 2_000;
        cfg.http.listen = "127.0.0.1:0".parse().expect("static address");
        cfg.retry.base_delay = Duration::from_millis(50);
        cfg.retry.max_delay = Duration::from_millis(400);
        cfg.retry.max_attempts = 30;
        cfg.breaker.open_for = Duration::from_millis(300);
        cfg.pipeline.retry_poll_ms = 50;
        cfg
    }

    /// The same configuration as environment variables, for a child process.
    pub fn env(&self, crm_url: &str, metrics_port: u16) -> Vec<(String, String)> {
        let k = &self.kafka;
        [
            ("CRM_SYNC_KAFKA__BROKERS", k.client.brokers.clone()),
            ("CRM_SYNC_KAFKA__GROUP_ID", k.group().to_owned()),
            ("CRM_SYNC_KAFKA__INPUT_TOPIC", k.input_topic.clone()),
            ("CRM_SYNC_KAFKA__OUTCOME_TOPIC", k.outcome_topic.clone()),
            ("CRM_SYNC_KAFKA__DEAD_LETTER_TOPIC", k.dead_letter_topic.clone()),
            ("CRM_SYNC_KAFKA__CREATE_TOPICS", "true".into()),
            (
                "CRM_SYNC_KAFKA__TOPIC_PARTITIONS",
                k.client.topic_partitions.to_string(),
            ),
            ("CRM_SYNC_POSTGRES__URL", self.db_url.clone()),
            ("CRM_SYNC_CRM__GENERIC__BASE_URL", crm_url.into()),
            ("CRM_SYNC_CRM__GENERIC__TOKEN", TOKEN.into()),
            ("CRM_SYNC_CRM__GENERIC__SIGNING_SECRET", SECRET.into()),
            ("CRM_SYNC_HTTP__LISTEN", format!("127.0.0.1:{metrics_port}")),
            ("CRM_SYNC_RETRY__BASE_DELAY_MS", "50".into()),
            ("CRM_SYNC_RETRY__MAX_DELAY_MS", "400".into()),
            ("CRM_SYNC_RETRY__MAX_ATTEMPTS", "30".into()),
            ("CRM_SYNC_PIPELINE__RETRY_POLL_MS", "50".into()),
            ("CRM_SYNC_PIPELINE__MAX_BATCH", "200".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    pub async fn create_topics(&self) -> anyhow::Result<()> {
        let k = &self.kafka;
        let topics = [
            k.input_topic.as_str(),
            k.outcome_topic.as_str(),
            k.dead_letter_topic.as_str(),
        ];
        backbone_kafka::ensure_topics(&k.client, &topics, k.client.topic_partitions).await?;
        Ok(())
    }

    /// Waits until the service has created this scope's database and schema.
    pub async fn wait_for_schema(&self) -> anyhow::Result<PgPool> {
        let start = Instant::now();
        loop {
            if let Ok(pool) = sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .connect(&self.db_url)
                .await
            {
                if sqlx::query("SELECT 1 FROM processed_events LIMIT 1")
                    .execute(&pool)
                    .await
                    .is_ok()
                {
                    return Ok(pool);
                }
            }
            if start.elapsed() > Duration::from_secs(30) {
                anyhow::bail!("crm-sync did not create its schema in {}", self.db_url);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn outcome_of(&self, pool: &PgPool, event_id: &str) -> anyhow::Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT outcome FROM processed_events WHERE event_id = $1")
                .bind(event_id)
                .fetch_optional(pool)
                .await?,
        )
    }

    /// Every dead letter of this scope's dead-letter topic present now.
    pub fn dead_letters(&self) -> anyhow::Result<Vec<backbone_kafka::DeadLetterView>> {
        Ok(backbone_kafka::read_dead_letters(
            &self.kafka.client,
            &format!("{}-dlq-reader", self.kafka.group()),
            &self.kafka.dead_letter_topic,
            &backbone_kafka::ReplayFilter::default(),
        )?)
    }

    pub async fn drop_database(&self) {
        if let Ok(admin) = PgPool::connect(&format!("{}/postgres", pg_base())).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"e2e_{}\" WITH (FORCE)",
                self.id
            ))
            .execute(&admin)
            .await;
        }
    }
}

/// Starts crm-sim on a random port.
pub async fn start_sim() -> anyhow::Result<(Sim, String)> {
    let sim = Sim::new(TOKEN, SECRET);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let router = sim.router();
    tokio::spawn(crm_sim::serve(listener, router));
    Ok((sim, url))
}

pub fn producer() -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?)
}

/// A tracking event document.
pub fn event_json(event_id: &str, shipment: &str, status: &str, occurred_at: &str) -> String {
    format!(
        r#"{{"event_id":"{event_id}","client_id":"client-{shipment}","shipment_id":"{shipment}","status":"{status}","occurred_at":"{occurred_at}","version":1}}"#
    )
}

pub async fn send(producer: &FutureProducer, topic: &str, key: &str, payload: &str) -> anyhow::Result<()> {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Timeout::After(Duration::from_secs(10)),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("produce failed: {e}"))?;
    Ok(())
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let start = Instant::now();
    loop {
        if check().await.unwrap_or(false) {
            return Ok(());
        }
        if start.elapsed() > timeout {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
