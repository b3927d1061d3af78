use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;

/// Loads configuration in layers: the type's defaults, then the TOML file (if given), then
/// environment variables with `env_prefix` (`CRM_SYNC_KAFKA__BROKERS` sets `kafka.brokers`).
/// `<prefix>CONFIG` is reserved for the file's path and is not read as a key.
/// Errors name the offending key and where its value came from.
pub fn load_config<T: Serialize + DeserializeOwned + Default>(
    file: Option<&Path>,
    env_prefix: &str,
) -> anyhow::Result<T> {
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(file) = file {
        if !file.exists() {
            anyhow::bail!("configuration file {} does not exist", file.display());
        }
        figment = figment.merge(Toml::file(file));
    }
    figment = figment.merge(Env::prefixed(env_prefix).ignore(&["config"]).split("__"));
    figment
        .extract()
        .map_err(|e| anyhow::anyhow!("invalid configuration:\n{}", describe(e)))
}

/// One line per problem, naming the key and where its value came from but never the value: it may
/// be a secret (a numeric token parsed as a number, say).
fn describe(errors: figment::Error) -> String {
    use figment::error::Kind;
    errors
        .into_iter()
        .map(|e| {
            let what = match &e.kind {
                Kind::InvalidType(_, expected) => format!("invalid type, expected {expected}"),
                Kind::InvalidValue(_, expected) => format!("invalid value, expected {expected}"),
                other => other.to_string(),
            };
            let key = if e.path.is_empty() {
                "(root)".to_owned()
            } else {
                e.path.join(".")
            };
            let source = e
                .metadata
                .as_ref()
                .map(|m| format!(" (from {})", m.name))
                .unwrap_or_default();
            format!("  {key}: {what}{source}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        name: String,
        inner: Inner,
    }

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        port: u16,
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail closure signature
    fn env_overrides_file_overrides_defaults_and_errors_name_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "name = \"file\"\n[inner]\nport = 1\n")?;
            jail.set_env("TCFG_INNER__PORT", "2");
            jail.set_env("TCFG_CONFIG", "c.toml");
            let c: Cfg = load_config(Some(Path::new("c.toml")), "TCFG_").map_err(|e| e.to_string())?;
            assert_eq!(
                c,
                Cfg {
                    name: "file".into(),
                    inner: Inner { port: 2 }
                }
            );
            jail.set_env("TCFG_INNER__PORT", "not-a-port");
            let err = load_config::<Cfg>(Some(Path::new("c.toml")), "TCFG_")
                .unwrap_err()
                .to_string();
            assert!(err.contains("inner.port"), "{err}");
            assert!(
                !err.contains("not-a-port"),
                "values never appear in errors: {err}"
            );
            assert!(load_config::<Cfg>(Some(Path::new("missing.toml")), "TCFG_").is_err());
            Ok(())
        });
    }
}

/// `[telemetry]`, the same for every service.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/HTTP traces endpoint, e.g. `http://127.0.0.1:4318/v1/traces`; tracing export is off
    /// when unset.
    pub otlp_endpoint: Option<String>,
}
