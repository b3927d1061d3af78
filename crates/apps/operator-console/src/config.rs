//! Configuration: TOML file, then `OPERATOR_CONSOLE_*` environment variables
//! (`OPERATOR_CONSOLE_CRM_SYNC__ADMIN_TOKEN` sets `crm_sync.admin_token`). Validated as a whole
//! at start-up; secrets are never serialized and never logged.

use crate::auth::Role;
use backbone_telemetry::TelemetryConfig;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

pub const ENV_PREFIX: &str = "OPERATOR_CONSOLE_";

fn empty_secret() -> SecretString {
    SecretString::from(String::new())
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    /// The people who may log in.
    pub users: Vec<User>,
    pub crm_sync: ServiceConfig,
    /// The two-way API (`/v1/operator-tasks`), for conflicts; off when `url` is empty.
    pub crm_sync_two_way: ServiceConfig,
    pub gift_certificates: ServiceConfig,
    /// Single sign-on through an OpenID Connect provider, beside the configured users.
    pub oidc: crate::oidc::OidcConfig,
    pub telemetry: TelemetryConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            http: HttpConfig::default(),
            users: Vec::new(),
            crm_sync: ServiceConfig::at("http://127.0.0.1:9464"),
            crm_sync_two_way: ServiceConfig::at(""),
            gift_certificates: ServiceConfig::at("http://127.0.0.1:8080"),
            oidc: crate::oidc::OidcConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Mark the session cookie `Secure` (sent over HTTPS only). Off only for a local run over
    /// plain HTTP.
    pub secure_cookies: bool,
    /// A session ends this long after its login.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Each call to a service gives up after this long.
    #[serde(with = "humantime_serde")]
    pub backend_timeout: Duration,
    /// Failed logins allowed per user name per minute (a burst of this many, then one per
    /// `60 / n` seconds).
    pub logins_per_minute: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8095)),
            secure_cookies: true,
            session_ttl: Duration::from_secs(8 * 3600),
            backend_timeout: Duration::from_secs(10),
            logins_per_minute: 5,
        }
    }
}

/// One person: a name, a role, and an argon2 password hash (PHC string, from
/// `operator-console hash-password`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub role: Role,
    #[serde(skip_serializing, default = "empty_secret")]
    pub password_hash: SecretString,
}

/// One service's admin API.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Base URL, without a trailing slash.
    pub url: String,
    /// The bearer token for it.
    #[serde(skip_serializing, default = "empty_secret")]
    pub admin_token: SecretString,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self::at("")
    }
}

impl ServiceConfig {
    fn at(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            admin_token: empty_secret(),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    fn validate(&self, name: &str, problems: &mut Vec<String>) {
        if !self.enabled() {
            return;
        }
        match reqwest::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => problems.push(format!("{name}.url must be an http(s) URL")),
        }
        if self.admin_token.expose_secret().trim().len() < 16 {
            problems.push(format!("{name}.admin_token must be at least 16 characters"));
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.users.is_empty() && !self.oidc.enabled() {
            problems.push("users: at least one user is needed (or [oidc])".to_owned());
        }
        self.oidc.validate(&mut problems);
        let mut names = std::collections::HashSet::new();
        for u in &self.users {
            if !crate::auth::valid_name(&u.name) {
                problems.push(format!(
                    "users: `{}` is not a user name (1 to 64 of a-z A-Z 0-9 . _ @ -)",
                    u.name
                ));
            }
            if !names.insert(u.name.as_str()) {
                problems.push(format!("users: `{}` is listed twice", u.name));
            }
            if argon2::PasswordHash::new(u.password_hash.expose_secret()).is_err() {
                problems.push(format!(
                    "users: the password_hash of `{}` is not a PHC string (make one with `operator-console hash-password`)",
                    u.name
                ));
            }
        }
        if self.http.logins_per_minute == 0 {
            problems.push("http.logins_per_minute must be at least 1".to_owned());
        }
        if self.http.session_ttl < Duration::from_secs(60) {
            problems.push("http.session_ttl must be at least 1m".to_owned());
        }
        if !self.crm_sync.enabled() {
            problems.push("crm_sync.url is required".to_owned());
        }
        if !self.gift_certificates.enabled() {
            problems.push("gift_certificates.url is required".to_owned());
        }
        self.crm_sync.validate("crm_sync", &mut problems);
        self.crm_sync_two_way.validate("crm_sync_two_way", &mut problems);
        self.gift_certificates
            .validate("gift_certificates", &mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Config {
        let mut c = Config::default();
        c.users.push(User {
            name: "alice".into(),
            role: Role::Admin,
            password_hash: SecretString::from(crate::auth::hash_password("correct horse").expect("hash")),
        });
        c.crm_sync.admin_token = SecretString::from("a".repeat(20));
        c.gift_certificates.admin_token = SecretString::from("g".repeat(20));
        c
    }

    #[test]
    fn a_complete_configuration_passes_and_each_gap_is_named() {
        assert_eq!(valid().validate(), Ok(()));
        let mut c = valid();
        c.users[0].password_hash = SecretString::from("plain-text-password".to_owned());
        c.crm_sync.admin_token = SecretString::from("short".to_owned());
        c.crm_sync_two_way.url = "ftp://x".into();
        let err = c.validate().unwrap_err();
        assert!(err.contains("password_hash of `alice`"), "{err}");
        assert!(err.contains("crm_sync.admin_token"), "{err}");
        assert!(err.contains("crm_sync_two_way.url"), "{err}");
    }

    #[test]
    fn secrets_stay_out_of_the_printed_configuration() {
        let mut c = valid();
        c.gift_certificates.admin_token = SecretString::from("very-secret-admin-token".to_owned());
        let printed = format!("{c:?}");
        assert!(!printed.contains("very-secret-admin-token"), "{printed}");
        assert!(!printed.contains("$argon2"), "{printed}");
    }

    #[test]
    fn environment_variables_override_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "OPERATOR_CONSOLE_GIFT_CERTIFICATES__ADMIN_TOKEN",
                "from-the-environment-1",
            );
            let c: Config = backbone_telemetry::load_config(None, ENV_PREFIX).expect("load");
            assert_eq!(
                c.gift_certificates.admin_token.expose_secret(),
                "from-the-environment-1"
            );
            Ok(())
        });
    }
}
