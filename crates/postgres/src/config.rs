use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;

/// What a service's `[postgres]` section defaults to.
pub trait DatabaseDefaults {
    const URL: &'static str;
    const MAX_CONNECTIONS: u32;
}

/// `[postgres]`: where the service's own database is and how many connections it may hold.
/// The URL is a secret (it may carry a password): never serialised, redacted in `Debug`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, bound = "")]
pub struct PostgresConfig<D: DatabaseDefaults> {
    #[serde(skip_serializing, default = "default_url::<D>")]
    pub url: SecretString,
    #[serde(default = "default_max_connections::<D>")]
    pub max_connections: u32,
    #[serde(skip)]
    defaults: PhantomData<D>,
}

fn default_url<D: DatabaseDefaults>() -> SecretString {
    SecretString::from(D::URL)
}

fn default_max_connections<D: DatabaseDefaults>() -> u32 {
    D::MAX_CONNECTIONS
}

impl<D: DatabaseDefaults> Default for PostgresConfig<D> {
    fn default() -> Self {
        Self {
            url: default_url::<D>(),
            max_connections: D::MAX_CONNECTIONS,
            defaults: PhantomData,
        }
    }
}

impl<D: DatabaseDefaults> std::fmt::Debug for PostgresConfig<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &"[redacted]")
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl<D: DatabaseDefaults> PostgresConfig<D> {
    /// Every problem, one per line; none names the URL's value.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if !self.url.expose_secret().starts_with("postgres") {
            problems.push("postgres.url must be a postgres:// URL");
        }
        if self.max_connections < 2 {
            problems.push("postgres.max_connections must be >= 2");
        }
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

    struct Test;
    impl DatabaseDefaults for Test {
        const URL: &'static str = "postgres://u:secret-password@h/db";
        const MAX_CONNECTIONS: u32 = 3;
    }

    #[test]
    fn defaults_come_from_the_service_and_the_url_never_shows() {
        let partial: PostgresConfig<Test> =
            serde_json::from_value(serde_json::json!({"max_connections": 5})).unwrap_or_default();
        assert_eq!(partial.url.expose_secret(), Test::URL);
        assert_eq!(partial.max_connections, 5);
        let shown = format!(
            "{partial:?} {}",
            serde_json::to_string(&partial).unwrap_or_default()
        );
        assert!(!shown.contains("secret-password"), "{shown}");
        assert!(serde_json::from_value::<PostgresConfig<Test>>(serde_json::json!({"urll": "x"})).is_err());
        let bad = PostgresConfig::<Test> {
            url: SecretString::from("mysql://x"),
            max_connections: 1,
            ..PostgresConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().lines().count(), 2);
    }
}
