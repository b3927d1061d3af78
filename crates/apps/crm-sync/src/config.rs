//! crm-sync configuration: defaults, then a TOML file, then `CRM_SYNC_*` environment variables
//! (`CRM_SYNC_CRM__GENERIC__TOKEN` sets `crm.generic.token`). Validated as a whole at start-up.

use crate::kafka::KafkaConfig;
use backbone_crm::{Bitrix24Config, GenericCrmConfig, KommoConfig, SalesforceConfig};
use backbone_postgres::{DatabaseDefaults, PostgresConfig};
use backbone_sync::breaker::BreakerPolicy;
use backbone_sync::mapping::{CrmMapping, MappingConfig};
use backbone_sync::retry::RetryPolicy;
use backbone_telemetry::TelemetryConfig;

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

pub const ENV_PREFIX: &str = "CRM_SYNC_";

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub kafka: KafkaConfig,
    pub postgres: PostgresConfig<CrmSyncDatabase>,
    pub crm: CrmConfig,
    pub mapping: MappingConfig,
    pub retry: RetryPolicy,
    pub breaker: BreakerPolicy,
    pub pipeline: PipelineConfig,
    pub two_way: crate::two_way::TwoWayConfig,
    pub telemetry: TelemetryConfig,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `/metrics`, `/health/live`, `/health/ready`, and `/admin/v1` when `admin_token` is set.
    pub listen: SocketAddr,
    /// The admin API's bearer token (at least 16 characters; never serialized, never logged).
    /// Without it the admin API is not served.
    #[serde(skip_serializing)]
    pub admin_token: Option<secrecy::SecretString>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            admin_token: None,
        }
    }
}

/// This service's own database, unless `[postgres]` says otherwise.
pub struct CrmSyncDatabase;

impl DatabaseDefaults for CrmSyncDatabase {
    const URL: &'static str = "postgres://postgres:postgres@127.0.0.1:5432/crm_sync";
    const MAX_CONNECTIONS: u32 = 8;
}

/// Which CRM this deployment talks to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Vendor {
    #[default]
    Generic,
    Bitrix24,
    Salesforce,
    Kommo,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrmConfig {
    pub vendor: Vendor,
    /// Check the mapping against the vendor's field list at start-up (vendors only).
    pub verify_mapping: bool,
    pub generic: GenericCrmConfig,
    pub bitrix24: Bitrix24Config,
    pub salesforce: SalesforceConfig,
    pub kommo: KommoConfig,
}

impl Default for CrmConfig {
    fn default() -> Self {
        Self {
            vendor: Vendor::Generic,
            verify_mapping: true,
            generic: GenericCrmConfig::default(),
            bitrix24: Bitrix24Config::default(),
            salesforce: SalesforceConfig::default(),
            kommo: KommoConfig::default(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Most records taken from Kafka into one batch.
    pub max_batch: usize,
    /// Most shipments per CRM call.
    pub crm_batch_limit: usize,
    /// How often the retry queue is polled for due events.
    pub retry_poll_ms: u64,
    /// Most parked events taken per poll.
    pub retry_batch: usize,
    /// Decided batches waiting for their database and broker writes while the next batch is
    /// decided; bounds memory and the work redone after a crash.
    pub batches_in_flight: usize,
    /// How far ahead of this service's clock an event may be dated; a later one is
    /// dead-lettered (`event_in_future`) instead of freezing its shipment.
    pub max_clock_skew_ms: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            max_batch: 2000,
            crm_batch_limit: 500,
            retry_poll_ms: 250,
            retry_batch: 500,
            batches_in_flight: 2,
            max_clock_skew_ms: 300_000,
        }
    }
}

impl Config {
    /// Checks everything at once and reports every problem, one per line.
    pub fn validate(&self) -> Result<CrmMapping, String> {
        let mut problems = Vec::new();
        let mapping = CrmMapping::new(self.mapping.clone())
            .map_err(|e| problems.push(e.to_string()))
            .ok();
        if let Err(e) = self.retry.validate() {
            problems.push(e);
        }
        if self
            .http
            .admin_token
            .as_ref()
            .is_some_and(|t| secrecy::ExposeSecret::expose_secret(t).trim().len() < 16)
        {
            problems.push("http.admin_token must be at least 16 characters".into());
        }
        if self.breaker.failure_threshold == 0 {
            problems.push("breaker.failure_threshold must be >= 1".into());
        }
        if let Err(e) = self.kafka.validate() {
            problems.push(e);
        }
        let vendor = match self.crm.vendor {
            Vendor::Generic => self.crm.generic.validate(),
            Vendor::Bitrix24 => self.crm.bitrix24.validate(),
            Vendor::Salesforce => self.crm.salesforce.validate(),
            Vendor::Kommo => self.crm.kommo.validate(),
        };
        if let Err(e) = vendor {
            problems.push(e);
        }
        // The vendor's own naming rules for the mapped fields (no network needed).
        if let (Some(m), true) = (&mapping, problems.is_empty()) {
            if let Err(e) = crate::crm::CrmAdapter::build(&self.crm, m.clone()) {
                problems.push(e);
            }
        }
        if let Err(e) = self.postgres.validate() {
            problems.push(e);
        }
        if self.two_way.enabled {
            if let Err(e) = self.two_way.validate() {
                problems.push(e);
            }
        }
        let p = &self.pipeline;
        if p.max_batch == 0
            || p.crm_batch_limit == 0
            || p.retry_batch == 0
            || p.retry_poll_ms == 0
            || p.batches_in_flight == 0
        {
            problems.push("pipeline sizes, retry_poll_ms and batches_in_flight must be > 0".into());
        }
        match (mapping, problems.is_empty()) {
            (Some(m), true) => Ok(m),
            _ => Err(problems.join("\n")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    #[test]
    fn defaults_lack_only_the_crm_secrets_and_every_problem_is_reported() {
        let err = Config::default().validate().unwrap_err();
        assert!(err.contains("crm.token"), "{err}");
        let mut c = Config::default();
        c.crm.generic.token = SecretString::from("t".repeat(20));
        c.crm.generic.signing_secret = SecretString::from("s".repeat(20));
        assert!(c.validate().is_ok());
        c.retry.give_up_after = std::time::Duration::ZERO;
        c.mapping.statuses.clear();
        c.kafka.client.brokers = String::new();
        let err = c.validate().unwrap_err();
        assert_eq!(err.lines().count(), 3, "{err}");
    }

    #[test]
    fn the_vendor_is_chosen_by_configuration_and_its_mapping_checked() {
        let mut c = Config::default();
        c.crm.vendor = Vendor::Bitrix24;
        c.crm.bitrix24.webhook_token = SecretString::from("abcdef0123456789");
        c.mapping.fields.status = "STAGE_ID".into();
        let err = c.validate().unwrap_err();
        assert!(
            err.contains("camelCase"),
            "crm.deal names are ignored by crm.item: {err}"
        );
        c.mapping.fields.client_id = "ufCrmClientId".into();
        c.mapping.fields.shipment_id = "title".into();
        c.mapping.fields.status = "stageId".into();
        c.mapping.fields.event_id = "ufCrmEventId".into();
        c.mapping.fields.timestamp = "ufCrmStatusAt".into();
        assert!(c.validate().is_ok());
        c.crm.vendor = Vendor::Kommo;
        assert!(c.validate().unwrap_err().contains("crm.kommo.access_token"));
        let parsed: CrmConfig = serde_json::from_value(serde_json::json!({"vendor": "salesforce"})).unwrap();
        assert_eq!(parsed.vendor, Vendor::Salesforce);
    }

    fn valid() -> Config {
        let mut c = Config::default();
        c.crm.generic.token = SecretString::from("t".repeat(20));
        c.crm.generic.signing_secret = SecretString::from("s".repeat(20));
        c
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail closure signature
    fn two_way_stages_default_to_all_are_set_by_file_or_environment_and_checked() {
        use crate::two_way::Stage;
        let mut c = valid();
        c.two_way.enabled = true;
        assert_eq!(
            c.two_way.stage_set().unwrap().into_iter().collect::<Vec<_>>(),
            Stage::ALL.to_vec(),
            "every stage by default"
        );
        assert!(c.validate().is_ok());

        c.two_way.stages = vec!["dispatcher".into(), "relay".into()];
        assert!(c.validate().is_ok());
        assert!(c.two_way.runs(Stage::Relay) && c.two_way.runs(Stage::Dispatcher));
        assert!(!c.two_way.runs(Stage::Api) && !c.two_way.runs(Stage::Processor));

        c.two_way.stages = vec!["relay".into(), "dispatchr".into()];
        let err = c.validate().unwrap_err();
        assert!(
            err.contains("two_way.stages: unknown stage \"dispatchr\""),
            "{err}"
        );
        assert!(
            err.contains("api, relay, dispatcher, processor, clients"),
            "{err}"
        );
        c.two_way.stages = vec!["relay".into(), "relay".into()];
        assert!(c.validate().unwrap_err().contains("listed twice"));
        c.two_way.stages.clear();
        let err = c.validate().unwrap_err();
        assert!(err.contains("two_way.stages is empty"), "{err}");
        // Off, the list is not looked at.
        c.two_way.enabled = false;
        assert!(c.validate().is_ok());

        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "[two_way]\nenabled = true\nstages = [\"api\", \"clients\"]\n",
            )?;
            let load = || -> Result<Config, figment::Error> {
                backbone_telemetry::load_config(Some(std::path::Path::new("c.toml")), ENV_PREFIX)
                    .map_err(|e| figment::Error::from(e.to_string()))
            };
            assert_eq!(load()?.two_way.stages, ["api", "clients"]);
            // The environment wins, as a comma-separated string or a `[...]` list.
            jail.set_env("CRM_SYNC_TWO_WAY__STAGES", "processor, relay");
            assert_eq!(load()?.two_way.stages, ["processor", "relay"]);
            jail.set_env("CRM_SYNC_TWO_WAY__STAGES", "[dispatcher]");
            assert_eq!(load()?.two_way.stages, ["dispatcher"]);
            jail.set_env("CRM_SYNC_TWO_WAY__STAGES", "[]");
            assert!(load()?.two_way.stages.is_empty());
            jail.set_env("CRM_SYNC_TWO_WAY__STAGES", "relay,bogus");
            let mut c = load()?;
            c.crm.generic.token = SecretString::from("t".repeat(20));
            c.crm.generic.signing_secret = SecretString::from("s".repeat(20));
            let err = c.validate().unwrap_err();
            assert!(err.contains("unknown stage \"bogus\""), "{err}");
            Ok(())
        });
    }

    #[test]
    fn debug_output_hides_secrets() {
        let mut c = Config::default();
        c.crm.generic.token = SecretString::from("very-secret-token-value");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("very-secret-token-value"));
        assert!(!dbg.contains("postgres:postgres"));
    }
}
