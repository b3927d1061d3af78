//! The service on a random port over a fresh database (`#[sqlx::test]`), the real Redis (a
//! key prefix per test) and a key file in a temporary directory. Kafka is only needed by the
//! event tests, which run the whole service with [`gift_certificates::serve`].

pub use backbone_tests::gift::{new_code, token, CHANNELS};
use gift_certificates::auth::Channel;
use gift_certificates::config::Config;
use gift_certificates::AppState;
use reqwest::{RequestBuilder, StatusCode};
use secrecy::SecretString;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::sync::{Arc, Mutex, OnceLock};

/// Everything logged by this test binary, for the masking test.
pub fn logs() -> &'static LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = LogBuffer::default();
        let writer = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .json()
            .with_env_filter("debug")
            .with_writer(move || writer.clone())
            .try_init();
        buffer
    })
}

#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        if std::env::var_os("TEST_LOG").is_some() {
            std::io::stderr().write_all(buf)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A configuration for tests: every channel's token, a Redis prefix of its own, a key file.
pub fn config(keys: &tempfile::TempDir) -> Config {
    let mut cfg = Config::default();
    for (channel, token) in CHANNELS {
        cfg.tokens.insert(channel, SecretString::from(token));
    }
    cfg.redis.key_prefix = format!("gc-test-{}:", uuid::Uuid::new_v4().simple());
    cfg.keys.key_file = keys.path().join("master.key");
    if !cfg.keys.key_file.exists() {
        backbone_kms::generate_key_file(&cfg.keys.key_file).expect("key file");
    }
    cfg.http.listen = "127.0.0.1:0".parse().expect("static address");
    cfg
}

/// The URL of the fresh database `#[sqlx::test]` made: the service connects to it as it would
/// in production (its migrations are already applied).
pub fn url_of(pool: &PgPool) -> String {
    let database = pool
        .connect_options()
        .get_database()
        .expect("sqlx::test names its database")
        .to_owned();
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL (the Makefile sets it)");
    let (server, _) = base.rsplit_once('/').expect("a postgres:// URL with a database");
    format!("{server}/{database}")
}

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub state: Arc<AppState>,
    pub pool: PgPool,
    database: String,
    _keys: tempfile::TempDir,
}

/// The service keeps its own pool open to the test's database; `#[sqlx::test]` then waits for
/// it in vain before it drops the database. Drop it here, ending the service's sessions.
impl Drop for TestApp {
    fn drop(&mut self) {
        let database = std::mem::take(&mut self.database);
        let Ok(admin) = std::env::var("DATABASE_URL") else {
            return;
        };
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                use sqlx::Connection;
                let mut c = sqlx::PgConnection::connect(&admin).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"))
                    .execute(&mut c)
                    .await?;
                anyhow::Ok(())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop the test database: {e:#}");
        }
    }
}

impl TestApp {
    pub async fn start(pool: PgPool) -> Self {
        Self::start_with(pool, |_| {}).await
    }

    pub async fn start_with(pool: PgPool, tune: impl FnOnce(&mut Config)) -> Self {
        logs();
        let keys = tempfile::tempdir().expect("temp dir");
        let mut cfg = config(&keys);
        tune(&mut cfg);
        cfg.validate().expect("valid test configuration");
        cfg.postgres.url = SecretString::from(url_of(&pool));
        cfg.postgres.max_connections = 8;
        let state = gift_certificates::build_state(&cfg).await.expect("state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let app = gift_certificates::router(state.clone(), cfg.http.max_body_bytes);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            base,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(200)
                .build()
                .expect("client"),
            state,
            database: pool
                .connect_options()
                .get_database()
                .unwrap_or_default()
                .to_owned(),
            pool,
            _keys: keys,
        }
    }

    pub fn post(&self, channel: Channel, path: &str, key: &str, body: &Value) -> RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token(channel))
            .header("idempotency-key", key)
            .json(body)
    }

    pub fn get(&self, channel: Channel, path: &str) -> RequestBuilder {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token(channel))
    }

    /// Uploads `codes` (with their CVCs) as one job of a batch; returns the response body.
    pub async fn upload(&self, batch: &str, job: u32, rows: &[(String, String)], nominal: i64) -> Value {
        let certificates: Vec<Value> = rows
            .iter()
            .map(|(code, cvc)| json!({"code": code, "cvc": cvc, "nominal_minor": nominal, "currency": "RUB"}))
            .collect();
        let body = json!({"version": 1, "batch_id": batch, "job": job, "certificates": certificates});
        let response = self
            .post(
                Channel::BatchLoader,
                "/certificates/upload/batch",
                &format!("{batch}:{job}"),
                &body,
            )
            .send()
            .await
            .expect("upload");
        assert_eq!(response.status(), StatusCode::OK, "upload refused");
        response.json().await.expect("upload body")
    }

    /// Issues and activates one certificate; returns its code and CVC.
    pub async fn active_certificate(&self, nominal: i64) -> (String, String) {
        let code = new_code();
        let cvc = format!("{:04}", uuid::Uuid::new_v4().as_u128() % 10_000);
        let batch = format!("b-{}", uuid::Uuid::new_v4().simple());
        let issued = self
            .upload(&batch, 0, &[(code.clone(), cvc.clone())], nominal)
            .await;
        assert_eq!(issued["issued"], 1, "{issued}");
        let (status, body) = self
            .call(self.post(
                Channel::Payments,
                &format!("/certificates/{code}/activate"),
                &format!("activate-{code}"),
                &json!({"client_id": "client-1", "order_id": "order-1", "payment_id": "payment-1"}),
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["state"], "Active");
        (code, cvc)
    }

    /// Sends a request; returns the status and the JSON body (`null` when there is none).
    pub async fn call(&self, request: RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("request");
        let status = response.status();
        let body = response.bytes().await.expect("body");
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    pub async fn authorize(&self, code: &str, cvc: &str, amount: i64, key: &str) -> (StatusCode, Value) {
        self.call(self.post(
            Channel::Pos,
            &format!("/certificates/{code}/authorize"),
            key,
            &json!({"amount_minor": amount, "currency": "RUB", "cvc": cvc}),
        ))
        .await
    }

    pub async fn capture(&self, code: &str, hold: &str, amount: i64, key: &str) -> (StatusCode, Value) {
        self.call(self.post(
            Channel::Pos,
            &format!("/certificates/{code}/capture"),
            key,
            &json!({"hold_id": hold, "amount_minor": amount, "currency": "RUB"}),
        ))
        .await
    }

    pub async fn balance(&self, code: &str, cvc: &str) -> (StatusCode, Value) {
        self.call(
            self.get(Channel::Pos, &format!("/certificates/{code}/balance"))
                .header("x-certificate-cvc", cvc),
        )
        .await
    }

    /// The certificate's row as PostgreSQL has it: (balance, state).
    pub async fn stored(&self, certificate_id: &str) -> (i64, String) {
        sqlx::query_as("SELECT balance, state FROM gift_certificate WHERE id = $1::uuid")
            .bind(certificate_id)
            .fetch_one(&self.pool)
            .await
            .expect("certificate row")
    }
}
