//! gift-certificates in this process with topics, consumer group and database of its own, on
//! the real local stack; helpers to produce and read records and to fake the SMS provider.

use backbone_certificates::code::{GiftCode, ALPHABET};
pub use gift_certificates::auth::Channel;
use gift_certificates::config::Config;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;
use secrecy::SecretString;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::{brokers, pg_base};

pub const CHANNELS: [(Channel, &str); 5] = [
    (Channel::OnlineStore, "e2e-online-store-token-0000000001"),
    (Channel::Pos, "e2e-pos-token-000000000000000000002"),
    (Channel::Payments, "e2e-payments-token-00000000000003"),
    (Channel::BatchLoader, "e2e-batch-loader-token-000000004"),
    (Channel::Internal, "e2e-internal-token-00000000000005"),
];

pub fn token(channel: Channel) -> &'static str {
    CHANNELS
        .iter()
        .find(|(c, _)| *c == channel)
        .map(|(_, t)| *t)
        .expect("every channel has a test token")
}

/// The text of `value` without the fields the system generates (`*_id`, `*_at`,
/// `source_event`, at any depth) and with numbers as `null`: random ids, digests, times and
/// amounts can hold a short secret such as a 4-digit CVC by chance. What is left, the keys and
/// the other strings, is where a leaked secret would show.
pub fn without_generated_fields(value: &Value) -> String {
    fn strip(v: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .filter(|(k, _)| !(k.ends_with("_id") || k.ends_with("_at") || *k == "source_event"))
                    .map(|(k, v)| (k.clone(), strip(v)))
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.iter().map(strip).collect()),
            Value::Number(_) => Value::Null,
            other => other.clone(),
        }
    }
    strip(value).to_string()
}

/// A fresh, valid code: 15 random payload characters and the check character.
pub fn new_code() -> String {
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    let mut payload = [0u8; 15];
    for (i, p) in payload.iter_mut().enumerate() {
        *p = ALPHABET[usize::from(bytes[i]) % ALPHABET.len()];
    }
    GiftCode::from_payload(&payload)
        .expect("alphabet payload")
        .expose()
        .to_owned()
}

/// The service running in this process with topics, group and database of its own.
pub struct Service {
    pub id: String,
    pub topics: gift_certificates::config::Topics,
    pub base: String,
    pub http: reqwest::Client,
    pub pool: PgPool,
    /// The service's database.
    pub db_url: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The master key file: tests compute code digests with it.
    pub key_file: std::path::PathBuf,
    _keys: tempfile::TempDir,
}

impl Service {
    pub async fn start(sms_url: &str, tune: impl FnOnce(&mut Config)) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let keys = tempfile::tempdir().expect("test setup");
        let mut cfg = Config::default();
        for (channel, token) in CHANNELS {
            cfg.tokens.insert(channel, SecretString::from(token));
        }
        cfg.redis.key_prefix = format!("gc-e2e-{id}:");
        cfg.keys.key_file = keys.path().join("master.key");
        backbone_kms::generate_key_file(&cfg.keys.key_file).expect("key file");
        cfg.kafka.client.brokers = brokers();
        cfg.kafka.client.create_topics = true;
        cfg.kafka.client.topic_partitions = 3;
        cfg.topics.orders = format!("All_SalesOrder.{id}");
        cfg.topics.payments = format!("All_Payments.{id}");
        cfg.topics.uploads = format!("GiftCertificateUpload.{id}");
        cfg.topics.dead_letters = format!("dead.letters.{id}");
        cfg.topics.state = format!("GiftCertificateState.{id}");
        cfg.topics.transactions = format!("GiftCertificateTransaction.{id}");
        cfg.topics.bi = format!("GiftCertificateBI.{id}");
        cfg.topics.group_id = format!("gift-certificates-{id}");
        let db_url = format!("{}/gc_e2e_{id}", pg_base());
        cfg.postgres.url = SecretString::from(db_url.clone());
        cfg.postgres.max_connections = 8;
        cfg.sms.base_url = sms_url.into();
        cfg.sms.token = SecretString::from("sms-provider-test-token");
        cfg.sms.min_backoff_ms = 20;
        cfg.sms.max_backoff_ms = 100;
        cfg.sms.poll_interval_ms = 50;
        cfg.sms.timeout_ms = 2_000;
        cfg.holds.sweep_interval_ms = 100;
        tune(&mut cfg);
        // A test may point the service at another PostgreSQL (TLS): follow it.
        let db_url = secrecy::ExposeSecret::expose_secret(&cfg.postgres.url).to_owned();
        let cfg_key_file = cfg.keys.key_file.clone();
        let topics = cfg.topics.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("test setup");
        let base = format!("http://{}", listener.local_addr().expect("test setup"));
        let stop = CancellationToken::new();
        let task = tokio::spawn(gift_certificates::serve(cfg, listener, stop.clone()));
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Ok(r) = http.get(format!("{base}/health/ready")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            if task.is_finished() {
                let result = task.await;
                panic!("the service stopped during start-up: {result:?}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the service did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let pool = PgPool::connect(&db_url).await.expect("test setup");
        Self {
            id,
            topics,
            base,
            http,
            pool,
            db_url,
            stop,
            task,
            key_file: cfg_key_file,
            _keys: keys,
        }
    }

    pub async fn stop(self) {
        let (_, result) = self.stop_timed(Duration::from_secs(30)).await;
        assert!(result.is_ok(), "the service did not stop cleanly: {result:?}");
    }

    /// Asks the service to stop; returns how long `serve` took to return (waiting at most
    /// `limit`) and what it returned.
    pub async fn stop_timed(self, limit: Duration) -> (Duration, Result<(), String>) {
        self.stop.cancel();
        let asked = Instant::now();
        let result = match tokio::time::timeout(limit, self.task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(format!("serve failed: {e:#}")),
            Ok(Err(e)) => Err(format!("serve panicked: {e}")),
            Err(_) => Err(format!("serve had not returned after {limit:?}")),
        };
        let took = asked.elapsed();
        self.pool.close().await;
        if let Ok(admin) = PgPool::connect(&format!("{}/postgres", pg_base())).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"gc_e2e_{}\" WITH (FORCE)",
                self.id
            ))
            .execute(&admin)
            .await;
        }
        (took, result)
    }

    pub async fn upload(&self, code: &str, cvc: &str, nominal: i64) {
        let batch = format!("e2e-{}", uuid::Uuid::new_v4().simple());
        let body = json!({"version": 1, "batch_id": batch, "job": 0,
            "certificates": [{"code": code, "cvc": cvc, "nominal_minor": nominal, "currency": "RUB"}]});
        let response = self
            .http
            .post(format!("{}/certificates/upload/batch", self.base))
            .bearer_auth(token(Channel::BatchLoader))
            .header("idempotency-key", format!("{batch}:0"))
            .json(&body)
            .send()
            .await
            .expect("test setup");
        assert_eq!(response.status(), 200);
    }

    /// Opens an upload batch over the API (`PUT /certificates/upload/batches/{batch}`): the
    /// service takes jobs from the upload topic only for an opened batch.
    pub async fn open_batch(&self, batch: &str) {
        let response = self
            .http
            .put(format!("{}/certificates/upload/batches/{batch}", self.base))
            .bearer_auth(token(Channel::BatchLoader))
            .send()
            .await
            .expect("test setup");
        assert!(
            matches!(response.status().as_u16(), 200 | 201),
            "opening {batch}: {}",
            response.status()
        );
    }

    pub async fn view(&self, code: &str) -> Value {
        self.http
            .get(format!("{}/certificates/{code}", self.base))
            .bearer_auth(token(Channel::Internal))
            .send()
            .await
            .expect("test setup")
            .json()
            .await
            .expect("test setup")
    }

    /// Waits until the count `sql` (with `$1` bound to `param`, if any) returns `n`.
    pub async fn wait_for_count(&self, sql: &str, param: Option<&str>, n: i64, what: &str) {
        crate::eventually(Duration::from_secs(30), what, || async {
            let mut query = sqlx::query_scalar::<_, i64>(sql);
            if let Some(p) = param {
                query = query.bind(p);
            }
            Ok(query.fetch_one(&self.pool).await? == n)
        })
        .await
        .expect(what);
    }

    /// Waits until the certificate's CVC was delivered (its ciphertext erased).
    pub async fn wait_until_cvc_delivered(&self, code: &str) {
        crate::eventually(Duration::from_secs(30), "the CVC SMS delivered", || async {
            Ok(self.view(code).await["cvc_pending_delivery"] == false)
        })
        .await
        .expect("the CVC SMS delivered");
    }

    pub async fn wait_for_state(&self, code: &str, state: &str) -> Value {
        let started = Instant::now();
        loop {
            let view = self.view(code).await;
            if view["state"] == state {
                return view;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "never {state}: {view}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .create()
        .expect("test setup")
}

pub async fn send(producer: &FutureProducer, topic: &str, key: &str, payload: &str) {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Timeout::After(Duration::from_secs(10)),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("test setup");
}

pub struct Received {
    pub key: String,
    pub payload: String,
    pub headers: BTreeMap<String, String>,
}

/// Reads `topic` from the beginning until `done` holds for what was read (or 30 s pass).
pub async fn read_until(topic: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("test setup");
    consumer.subscribe(&[topic]).expect("test setup");
    let mut got = Vec::new();
    let started = Instant::now();
    while !done(&got) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{topic}: only {:?}",
            got.iter()
                .map(|r: &Received| r.payload.clone())
                .collect::<Vec<_>>()
        );
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| {
                            (
                                x.key.to_owned(),
                                String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            got.push(Received {
                key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                payload: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                headers,
            });
        }
    }
    got
}

pub fn order(order_id: &str, code: &str, amount: i64, phone: &str) -> String {
    json!({"version": 1, "event_id": format!("order-event-{order_id}"), "order_id": order_id,
        "client_id": "client-77", "currency": "RUB", "total_minor": amount, "recipient_phone": phone,
        "lines": [{"line_id": "1", "kind": "gift_certificate", "certificate_code": code, "amount_minor": amount}]})
    .to_string()
}

pub fn payment(payment_id: &str, order_id: &str, amount: i64) -> String {
    json!({"version": 1, "event_id": format!("payment-event-{payment_id}"), "payment_id": payment_id,
        "order_id": order_id, "status": "captured", "amount_minor": amount, "currency": "RUB"})
    .to_string()
}

pub async fn sms_provider(status: u16) -> MockServer {
    let sms = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(ResponseTemplate::new(status).set_body_json(json!({"id": "msg-1", "status": "queued"})))
        .mount(&sms)
        .await;
    sms
}

pub async fn sms_texts(sms: &MockServer) -> Vec<Value> {
    sms.received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).expect("the SMS request is JSON"))
        .collect()
}

/// The service as a child process (for kill -9), configured through environment variables.
pub struct ChildConfig {
    pub id: String,
    pub port: u16,
    pub db_url: String,
    pub key_file: std::path::PathBuf,
    pub topics: gift_certificates::config::Topics,
}

impl ChildConfig {
    pub fn new(dir: &std::path::Path) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let key_file = dir.join("master.key");
        backbone_kms::generate_key_file(&key_file).expect("key file");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let topics = gift_certificates::config::Topics {
            orders: format!("All_SalesOrder.{id}"),
            payments: format!("All_Payments.{id}"),
            uploads: format!("GiftCertificateUpload.{id}"),
            dead_letters: format!("dead.letters.{id}"),
            group_id: format!("gift-certificates-{id}"),
            state: format!("GiftCertificateState.{id}"),
            transactions: format!("GiftCertificateTransaction.{id}"),
            bi: format!("GiftCertificateBI.{id}"),
            ..Default::default()
        };
        Self {
            db_url: format!("{}/gc_crash_{id}", pg_base()),
            id,
            port,
            key_file,
            topics,
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn env(&self) -> Vec<(String, String)> {
        let t = &self.topics;
        let mut env: Vec<(String, String)> = [
            ("HTTP__LISTEN", format!("127.0.0.1:{}", self.port)),
            ("POSTGRES__URL", self.db_url.clone()),
            ("REDIS__KEY_PREFIX", format!("gc-crash-{}:", self.id)),
            ("KEYS__KEY_FILE", self.key_file.display().to_string()),
            ("KAFKA__BROKERS", brokers()),
            ("KAFKA__CREATE_TOPICS", "true".into()),
            ("TOPICS__ORDERS", t.orders.clone()),
            ("TOPICS__PAYMENTS", t.payments.clone()),
            ("TOPICS__UPLOADS", t.uploads.clone()),
            ("TOPICS__DEAD_LETTERS", t.dead_letters.clone()),
            ("TOPICS__GROUP_ID", t.group_id.clone()),
            ("TOPICS__STATE", t.state.clone()),
            ("TOPICS__TRANSACTIONS", t.transactions.clone()),
            ("TOPICS__BI", t.bi.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("{}{k}", gift_certificates::config::ENV_PREFIX), v))
        .collect();
        for (channel, token) in CHANNELS {
            env.push((
                format!(
                    "{}TOKENS__{}",
                    gift_certificates::config::ENV_PREFIX,
                    channel.as_str()
                ),
                token.to_owned(),
            ));
        }
        env
    }

    /// Starts the binary and waits until it answers `/health/ready`.
    pub async fn spawn(&self, binary: &std::path::Path, log: &std::path::Path) -> std::process::Child {
        let log = std::fs::File::create(log).expect("log file");
        let mut child = std::process::Command::new(binary)
            .envs(self.env())
            .env("RUST_LOG", "info")
            .stdout(log)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn gift-certificates");
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Ok(r) = http.get(format!("{}/health/ready", self.base())).send().await {
                if r.status().is_success() {
                    return child;
                }
            }
            assert!(
                child.try_wait().expect("child status").is_none(),
                "gift-certificates exited during start-up"
            );
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "gift-certificates did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::without_generated_fields;
    use serde_json::json;

    /// A dead letter whose random certificate id held the CVC's digits (seen in CI) does not
    /// show the CVC; one whose reason holds it does.
    #[test]
    fn a_secret_shows_in_what_the_system_does_not_generate() {
        let letter = json!({"kind": "cvc_sms", "attempts": 2, "phone_last2": "33",
            "certificate_id": "01a24d7d-9157-7750-a287-91f692c044f8", "sent_at": "2026-12-06T09:15:57Z"});
        assert!(!without_generated_fields(&letter).contains("9157"));
        let leaked = json!({"kind": "cvc_sms", "reason": "cvc 9157 refused", "nested": [{"cvc": "1234"}]});
        let shown = without_generated_fields(&leaked);
        assert!(shown.contains("9157") && shown.contains("1234"), "{shown}");
    }
}
