//! The gift-certificates service as a child process of a benchmark: its own database, Redis key
//! prefix, topics, master key and tokens, on a free port; and random valid codes to feed it.

use crate::harness::{free_port, sibling_bin};
use anyhow::Context;
use backbone_certificates::code::{GiftCode, ALPHABET, CODE_LEN};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Service tokens of the benchmark (at least 24 characters each, one per channel).
pub const POS_TOKEN: &str = "bench-pos-token-0123456789abcdef";
pub const PAYMENTS_TOKEN: &str = "bench-payments-token-0123456789abcdef";
pub const LOADER_TOKEN: &str = "bench-loader-token-0123456789abcdef";

/// Nominal and currency of every benchmark certificate.
pub const NOMINAL_MINOR: i64 = 500_000;
pub const CURRENCY: &str = "RUB";

/// `n` random valid codes (distinct with overwhelming probability: 75 random bits each) with a
/// random 4-digit CVC each.
pub fn random_codes(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|_| {
            let a = *uuid::Uuid::new_v4().as_bytes();
            let b = *uuid::Uuid::new_v4().as_bytes();
            let mut payload = [0u8; CODE_LEN - 1];
            for (p, r) in payload.iter_mut().zip(a.iter()) {
                *p = ALPHABET[usize::from(r & 0x1f)];
            }
            let code = GiftCode::from_payload(&payload)
                .map(|c| c.expose().to_owned())
                .unwrap_or_default();
            let cvc = format!("{:04}", u16::from_be_bytes([b[0], b[1]]) % 10_000);
            (code, cvc)
        })
        .collect()
}

/// The run's `GiftCertificateTransaction` topic.
pub fn transactions_topic(id: &str) -> String {
    format!("bench.transactions.{id}")
}

pub struct ServiceSpec<'a> {
    /// `postgres://user@host:port`, without a database.
    pub pg: &'a str,
    pub database: String,
    pub redis: &'a str,
    pub brokers: &'a str,
    /// Suffix of the Redis key prefix, topics and consumer group.
    pub id: &'a str,
    pub dir: &'a Path,
    /// `postgres.max_connections`; the service's default when `None`.
    pub max_connections: Option<u32>,
}

/// A running gift-certificates service; stopped (SIGTERM, then wait) when dropped.
pub struct Service {
    child: Option<Child>,
    pub pid: u32,
    pub port: u16,
    pub base_url: String,
    pub db_url: String,
    pub log: PathBuf,
}

impl Service {
    /// Generates a master key and starts the release binary, configured by environment variables.
    pub fn start(spec: &ServiceSpec<'_>) -> anyhow::Result<Self> {
        let bin = sibling_bin("gift-certificates", "gift-certificates")?;
        let key = spec.dir.join("master.key");
        if !key.exists() {
            let out = Command::new(&bin)
                .args(["keys", "generate", "--out"])
                .arg(&key)
                .output()
                .context("gift-certificates keys generate")?;
            anyhow::ensure!(
                out.status.success(),
                "keys generate failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let port = free_port()?;
        let db_url = format!("{}/{}", spec.pg, spec.database);
        let id = spec.id;
        let mut env: Vec<(String, String)> = vec![
            ("GIFT_CERTIFICATES_TOKENS__POS".into(), POS_TOKEN.into()),
            ("GIFT_CERTIFICATES_TOKENS__PAYMENTS".into(), PAYMENTS_TOKEN.into()),
            (
                "GIFT_CERTIFICATES_TOKENS__BATCHLOADER".into(),
                LOADER_TOKEN.into(),
            ),
            (
                "GIFT_CERTIFICATES_HTTP__LISTEN".into(),
                format!("127.0.0.1:{port}"),
            ),
            ("GIFT_CERTIFICATES_POSTGRES__URL".into(), db_url.clone()),
            ("GIFT_CERTIFICATES_REDIS__URL".into(), spec.redis.to_owned()),
            (
                "GIFT_CERTIFICATES_REDIS__KEY_PREFIX".into(),
                format!("bench:{id}:"),
            ),
            ("GIFT_CERTIFICATES_KAFKA__BROKERS".into(), spec.brokers.to_owned()),
            ("GIFT_CERTIFICATES_KAFKA__CREATE_TOPICS".into(), "true".into()),
            (
                "GIFT_CERTIFICATES_TOPICS__ORDERS".into(),
                format!("bench.orders.{id}"),
            ),
            (
                "GIFT_CERTIFICATES_TOPICS__PAYMENTS".into(),
                format!("bench.payments.{id}"),
            ),
            (
                "GIFT_CERTIFICATES_TOPICS__UPLOADS".into(),
                format!("bench.uploads.{id}"),
            ),
            (
                "GIFT_CERTIFICATES_TOPICS__TRANSACTIONS".into(),
                transactions_topic(id),
            ),
            (
                "GIFT_CERTIFICATES_TOPICS__STATE".into(),
                format!("bench.state.{id}"),
            ),
            ("GIFT_CERTIFICATES_TOPICS__BI".into(), format!("bench.bi.{id}")),
            (
                "GIFT_CERTIFICATES_TOPICS__DEAD_LETTERS".into(),
                format!("bench.dead.letters.{id}"),
            ),
            (
                "GIFT_CERTIFICATES_TOPICS__GROUP_ID".into(),
                format!("bench-gc-{id}"),
            ),
            (
                "GIFT_CERTIFICATES_KEYS__KEY_FILE".into(),
                key.display().to_string(),
            ),
            ("RUST_LOG".into(), "warn".into()),
        ];
        if let Some(n) = spec.max_connections {
            env.push((
                "GIFT_CERTIFICATES_POSTGRES__MAX_CONNECTIONS".into(),
                n.to_string(),
            ));
        }
        let log = spec.dir.join(format!("gift-certificates-{port}.log"));
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new(&bin)
            .arg("run")
            .envs(env)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .context("starting gift-certificates")?;
        Ok(Self {
            pid: child.id(),
            child: Some(child),
            port,
            base_url: format!("http://127.0.0.1:{port}"),
            db_url,
            log,
        })
    }

    /// Waits for `/health/ready` (migrations applied, topics created).
    pub async fn wait_ready(&mut self, client: &reqwest::Client, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    anyhow::bail!(
                        "gift-certificates exited ({status}) while starting:\n{}",
                        self.log_tail()
                    );
                }
            }
            let ready = client
                .get(format!("{}/health/ready", self.base_url))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            if started.elapsed() > limit {
                anyhow::bail!(
                    "gift-certificates not ready after {limit:?}:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The service's Prometheus text.
    pub async fn metrics(&self, client: &reqwest::Client) -> anyhow::Result<String> {
        Ok(client
            .get(format!("{}/metrics", self.base_url))
            .send()
            .await?
            .text()
            .await?)
    }

    /// SIGKILL and wait: no draining, connections cut.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait (the service drains: relay, consumers).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_codes_are_valid() {
        for (code, cvc) in random_codes(200) {
            assert!(GiftCode::parse(&code).is_ok(), "{code}");
            assert_eq!(cvc.len(), 4);
        }
    }
}
