//! gift-certificates configuration: defaults, then a TOML file, then `GIFT_CERTIFICATES_*`
//! environment variables (`GIFT_CERTIFICATES_TOKENS__POS` sets the POS channel's token,
//! `GIFT_CERTIFICATES_ADMIN__TOKEN` the admin API's).
//! Validated as a whole at start-up; errors name the setting, never its value.

use backbone_certificates::Channel;
use backbone_kafka::KafkaSettings;
use backbone_postgres::{DatabaseDefaults, PostgresConfig};
use backbone_redis::AttemptPolicy;
use backbone_telemetry::TelemetryConfig;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

pub const ENV_PREFIX: &str = "GIFT_CERTIFICATES_";

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub postgres: PostgresConfig<CertificatesDatabase>,
    pub redis: RedisConfig,
    pub kafka: KafkaConfig,
    pub topics: Topics,
    pub keys: KeysConfig,
    /// Service token per channel. A channel without a token cannot call the API.
    #[serde(skip_serializing)]
    pub tokens: BTreeMap<Channel, SecretString>,
    pub holds: HoldsConfig,
    pub operations: OperationsConfig,
    pub attempts: AttemptPolicy,
    pub sms: SmsConfig,
    /// The admin API (`/admin/v1/*`) for the operator console.
    pub admin: AdminConfig,
    pub telemetry: TelemetryConfig,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// The API, `/openapi.json`, `/metrics` and the health endpoints.
    pub listen: SocketAddr,
    /// Largest request body accepted (upload batches are the largest).
    pub max_body_bytes: usize,
    /// How long an `Idempotency-Key` and its response are kept.
    pub idempotency_retention_hours: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8088)),
            max_body_bytes: 8 * 1024 * 1024,
            idempotency_retention_hours: 24 * 7,
        }
    }
}

/// This service's own database, unless `[postgres]` says otherwise.
pub struct CertificatesDatabase;

impl DatabaseDefaults for CertificatesDatabase {
    const URL: &'static str = "postgres://postgres:postgres@127.0.0.1:5432/gift_certificates";
    const MAX_CONNECTIONS: u32 = 24;
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    #[serde(skip_serializing, default = "default_redis_url")]
    pub url: SecretString,
    /// Prefix of every key this service writes.
    pub key_prefix: String,
    /// How long a cached balance may be served.
    pub balance_ttl_seconds: u64,
}

fn default_redis_url() -> SecretString {
    SecretString::from("redis://127.0.0.1:6379")
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: default_redis_url(),
            key_prefix: "gc:".into(),
            balance_ttl_seconds: 30,
        }
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &"[redacted]")
            .field("key_prefix", &self.key_prefix)
            .field("balance_ttl_seconds", &self.balance_ttl_seconds)
            .finish()
    }
}

/// `[kafka]`: the shared client settings. gift-certificates' topics and consumer group are in
/// `[topics]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    #[serde(flatten)]
    pub client: KafkaSettings,
    /// crm-sync's topic names, which earlier example configurations listed here: read and
    /// ignored, so those configurations still load.
    #[serde(skip_serializing)]
    input_topic: Option<String>,
    #[serde(skip_serializing)]
    outcome_topic: Option<String>,
    #[serde(skip_serializing)]
    dead_letter_topic: Option<String>,
}

/// Topic names; the defaults are the ones the other services use.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Topics {
    pub orders: String,
    pub payments: String,
    pub uploads: String,
    pub dead_letters: String,
    /// Consumer group of the order, payment and upload consumers.
    pub group_id: String,
    /// Records of distinct keys (orders, payments, upload jobs) one consumer handles at once,
    /// 1 to 64; one key's records stay in order.
    pub concurrency: usize,
    /// Out: every state change.
    pub state: String,
    /// Out: every authorize, capture, void, refund and expiry.
    pub transactions: String,
    /// Out: the aggregated view for BI.
    pub bi: String,
}

impl Topics {
    /// Where an outbox record written for `topic` (an `events::*_TOPIC` name) is published.
    pub fn out<'a>(&'a self, topic: &'a str) -> &'a str {
        use backbone_certificates::events::{BI_TOPIC, STATE_TOPIC, TRANSACTION_TOPIC};
        match topic {
            STATE_TOPIC => &self.state,
            TRANSACTION_TOPIC => &self.transactions,
            BI_TOPIC => &self.bi,
            other => other,
        }
    }
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            orders: "All_SalesOrder".into(),
            payments: "All_Payments".into(),
            uploads: "GiftCertificateUpload".into(),
            dead_letters: "gift-certificates.dead.letters".into(),
            group_id: "gift-certificates".into(),
            concurrency: 4,
            state: backbone_certificates::events::STATE_TOPIC.into(),
            transactions: backbone_certificates::events::TRANSACTION_TOPIC.into(),
            bi: backbone_certificates::events::BI_TOPIC.into(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// Local master key file (development KMS adapter). `make run` creates one.
    pub key_file: PathBuf,
    /// Earlier master keys, still able to open what they sealed.
    pub retired_key_files: Vec<PathBuf>,
    /// Key id the code digests derive from, once the master key has been rotated.
    pub digest_key_id: Option<String>,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            key_file: PathBuf::from(".stack/keys/master.key"),
            retired_key_files: Vec::new(),
            digest_key_id: None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HoldsConfig {
    /// Hold lifetime when the caller does not ask for one.
    pub default_ttl_seconds: i64,
    /// Longest lifetime a caller may ask for.
    pub max_ttl_seconds: i64,
    /// How often the sweeper releases expired holds.
    pub sweep_interval_ms: u64,
}

impl Default for HoldsConfig {
    fn default() -> Self {
        Self {
            default_ttl_seconds: 15 * 60,
            max_ttl_seconds: 7 * 24 * 3600,
            sweep_interval_ms: 1000,
        }
    }
}

/// How the API's certificate operations reach PostgreSQL: in groups that commit once
/// (`docs/gift-certificates.md`, "Group commit").
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OperationsConfig {
    /// Groups in flight at once; each holds one connection while it runs.
    pub group_workers: usize,
    /// Operations one group takes at most.
    pub group_max_operations: usize,
}

impl Default for OperationsConfig {
    fn default() -> Self {
        Self {
            group_workers: 4,
            group_max_operations: 64,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmsConfig {
    /// The provider's base URL; `/v1/messages` is appended. Empty disables sending (deliveries
    /// stay queued).
    pub base_url: String,
    #[serde(skip_serializing, default = "empty_secret")]
    pub token: SecretString,
    pub sender: Option<String>,
    pub timeout_ms: u64,
    /// Attempts before a delivery is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay; doubles with jitter up to `max_backoff_ms`.
    pub min_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub poll_interval_ms: u64,
    /// Text of the message; `{cvc}` and `{last4}` are replaced.
    pub template: String,
}

fn empty_secret() -> SecretString {
    SecretString::from("")
}

impl Default for SmsConfig {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            token: empty_secret(),
            sender: None,
            timeout_ms: 10_000,
            max_attempts: 8,
            min_backoff_ms: 1_000,
            max_backoff_ms: 300_000,
            poll_interval_ms: 500,
            template: "Your gift certificate ****{last4}: security code {cvc}".into(),
        }
    }
}

impl std::fmt::Debug for SmsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmsConfig")
            .field("base_url", &self.base_url)
            .field("token", &"[redacted]")
            .field("sender", &self.sender)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

/// `[admin]`: the admin API (`/admin/v1/*`) the operator console calls.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The console's token (`Authorization: Bearer <token>`). Empty: no admin token, and every
    /// `/admin/v1/*` call is answered `401`.
    #[serde(skip_serializing, default = "empty_secret")]
    pub token: SecretString,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            token: empty_secret(),
        }
    }
}

impl AdminConfig {
    /// Whether a token is set, i.e. whether the admin API can be called at all.
    pub fn enabled(&self) -> bool {
        !self.token.expose_secret().is_empty()
    }
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &if self.enabled() { "[redacted]" } else { "[unset]" })
            .finish()
    }
}

/// Values this repository's configuration files once shipped as tokens: known to anyone, never
/// accepted.
pub(crate) const SHIPPED_TOKENS: &[&str] = &[
    "change-me-onlinestore-token-at-least-24-chars",
    "change-me-pos-token-at-least-24-chars",
    "change-me-payments-token-at-least-24-chars",
    "change-me-batchloader-token-at-least-24-chars",
    "change-me-internal-token-at-least-24-chars",
    "local-onlinestore-token-not-a-secret",
    "local-pos-token-not-a-secret",
    "local-payments-token-not-a-secret",
    "local-batchloader-token-not-a-secret",
    "local-internal-token-not-a-secret",
];

/// What gives a value away as a placeholder rather than a secret.
const PLACEHOLDER_WORDS: &[&str] = &[
    "change-me",
    "changeme",
    "change_me",
    "example",
    "placeholder",
    "replace",
    "not-a-secret",
    "dummy",
    "your-",
    "<",
    ">",
];

/// Fewer distinct characters than this is no random secret (`aaaa…`, `abab…`, `0000…`).
const MIN_DISTINCT_CHARACTERS: usize = 6;

const PLACEHOLDER_PROBLEM: &str =
    "a placeholder or example value, not a secret; generate one (e.g. `openssl rand -base64 32`)";

/// Whether `secret` is a value shipped in an example, or plainly a placeholder.
pub fn is_placeholder(secret: &str) -> bool {
    let lower = secret.to_ascii_lowercase();
    let distinct = secret.chars().collect::<std::collections::HashSet<_>>().len();
    SHIPPED_TOKENS.contains(&secret)
        || PLACEHOLDER_WORDS.iter().any(|w| lower.contains(w))
        || distinct < MIN_DISTINCT_CHARACTERS
}

impl Config {
    /// Every problem at once, one per line.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.tokens.is_empty() {
            problems.push("tokens: at least one channel needs a service token".to_owned());
        }
        if !(1..=64).contains(&self.topics.concurrency) {
            problems.push("topics.concurrency must be 1 to 64".to_owned());
        }
        for (channel, token) in &self.tokens {
            if token.expose_secret().len() < 24 {
                problems.push(format!(
                    "tokens.{channel}: a service token needs at least 24 characters"
                ));
            } else if is_placeholder(token.expose_secret()) {
                problems.push(format!("tokens.{channel}: {PLACEHOLDER_PROBLEM}"));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for token in self.tokens.values() {
            if !seen.insert(token.expose_secret()) {
                problems.push("tokens: two channels share a token".to_owned());
            }
        }
        problems.extend(self.admin_token_problem());
        if let Err(e) = self.postgres.validate() {
            problems.push(e);
        }
        if !(1..=self.holds.max_ttl_seconds).contains(&self.holds.default_ttl_seconds) {
            problems.push("holds.default_ttl_seconds must be in 1..=holds.max_ttl_seconds".into());
        }
        if !(1..=64).contains(&self.operations.group_workers)
            || self.operations.group_workers >= self.postgres.max_connections as usize
        {
            problems
                .push("operations.group_workers must be in 1..=64 and below postgres.max_connections".into());
        }
        if !(1..=1024).contains(&self.operations.group_max_operations) {
            problems.push("operations.group_max_operations must be in 1..=1024".into());
        }
        if self.attempts.per_certificate == 0 || self.attempts.per_channel == 0 {
            problems.push("attempts limits must be >= 1".into());
        }
        if !self.sms.base_url.is_empty() {
            if let Err(e) = self.sms_provider().validate() {
                problems.push(e.0);
            } else if is_placeholder(self.sms.token.expose_secret()) {
                problems.push(format!("sms.token: {PLACEHOLDER_PROBLEM}"));
            }
        }
        if self.sms.max_attempts == 0 || self.sms.min_backoff_ms > self.sms.max_backoff_ms {
            problems.push("sms: max_attempts >= 1 and min_backoff_ms <= max_backoff_ms".into());
        }
        if !self.sms.template.contains("{cvc}") {
            problems.push("sms.template must contain {cvc}".into());
        }
        if let Err(e) = self.kafka.client.validate() {
            problems.push(e);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    /// What is wrong with `admin.token`, when it is set: the rules of the channel tokens, and
    /// no channel may share it (a channel's token must never open the admin API).
    fn admin_token_problem(&self) -> Option<String> {
        if !self.admin.enabled() {
            return None;
        }
        let token = self.admin.token.expose_secret();
        if token.len() < 24 {
            Some("admin.token: the admin token needs at least 24 characters".to_owned())
        } else if is_placeholder(token) {
            Some(format!("admin.token: {PLACEHOLDER_PROBLEM}"))
        } else if self.tokens.values().any(|t| t.expose_secret() == token) {
            Some("admin.token: a channel has the same token".to_owned())
        } else {
            None
        }
    }

    pub fn sms_provider(&self) -> backbone_sms::SmsProviderConfig {
        let mut c = backbone_sms::SmsProviderConfig::new(self.sms.base_url.clone(), self.sms.token.clone());
        c.sender = self.sms.sender.clone();
        c.timeout_ms = self.sms.timeout_ms;
        c
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
