use clap::Parser;
use crm_sim::webhooks::WebhookTarget;
use crm_sim::{Dialect, Faults, Schemas, Sim};
use std::net::SocketAddr;
use std::path::PathBuf;

/// An in-memory CRM speaking the generic CRM API and the Bitrix24, Salesforce and Kommo
/// dialects, with fault injection.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[arg(long, env = "CRM_SIM_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Bearer token clients of the generic API must present.
    #[arg(long, env = "CRM_SIM_TOKEN", hide_env_values = true)]
    token: String,
    /// Key of the generic API's request signature.
    #[arg(long, env = "CRM_SIM_SIGNING_SECRET", hide_env_values = true)]
    signing_secret: String,
    /// The secret of the vendor dialects: Bitrix24 webhook code, OAuth client secret, Kommo
    /// long-lived token, first refresh token. Defaults to the token.
    #[arg(long, env = "CRM_SIM_VENDOR_SECRET", hide_env_values = true)]
    vendor_secret: Option<String>,
    /// JSON file describing the vendor accounts (objects, fields, stages); see `Schemas`.
    #[arg(long, env = "CRM_SIM_SCHEMAS")]
    schemas: Option<PathBuf>,
    /// Lifetime of the access tokens the vendor token endpoints issue, in seconds.
    #[arg(long, default_value_t = 3600)]
    token_ttl_s: u64,
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    #[arg(long, default_value_t = 0)]
    rate_limit_rps: u64,
    #[arg(long, default_value_t = 1)]
    retry_after_s: u64,
    /// Salesforce daily API allowance (0: none).
    #[arg(long, default_value_t = 0)]
    api_quota: u64,
    #[command(flatten)]
    webhooks: Webhooks,
}

/// Where each dialect sends its webhooks from the start (also settable at run time with
/// `PUT /sim/webhooks/{dialect}`), with the credentials it puts in them.
#[derive(clap::Args)]
struct Webhooks {
    /// Target of the generic CRM's webhooks, e.g. `http://127.0.0.1:8083/webhooks/generic`.
    #[arg(long, env = "CRM_SIM_WEBHOOK_GENERIC")]
    webhook_generic: Option<String>,
    /// Key of the generic webhooks' signature.
    #[arg(long, env = "CRM_SIM_WEBHOOK_GENERIC_SECRET", hide_env_values = true)]
    webhook_generic_secret: Option<String>,
    /// Target of the Bitrix24 events.
    #[arg(long, env = "CRM_SIM_WEBHOOK_BITRIX24")]
    webhook_bitrix24: Option<String>,
    /// `auth[application_token]` of the Bitrix24 events.
    #[arg(
        long,
        env = "CRM_SIM_WEBHOOK_BITRIX24_APPLICATION_TOKEN",
        hide_env_values = true
    )]
    webhook_bitrix24_application_token: Option<String>,
    /// `auth[member_id]` of the Bitrix24 events.
    #[arg(long, env = "CRM_SIM_WEBHOOK_BITRIX24_MEMBER_ID")]
    webhook_bitrix24_member_id: Option<String>,
    /// `auth[domain]` of the Bitrix24 events.
    #[arg(long, env = "CRM_SIM_WEBHOOK_BITRIX24_DOMAIN")]
    webhook_bitrix24_domain: Option<String>,
    /// Target of the Kommo webhooks (with its secret path).
    #[arg(long, env = "CRM_SIM_WEBHOOK_KOMMO", hide_env_values = true)]
    webhook_kommo: Option<String>,
    /// `account[id]` of the Kommo webhooks.
    #[arg(long, env = "CRM_SIM_WEBHOOK_KOMMO_ACCOUNT_ID")]
    webhook_kommo_account_id: Option<u64>,
    /// `account[subdomain]` of the Kommo webhooks.
    #[arg(long, env = "CRM_SIM_WEBHOOK_KOMMO_SUBDOMAIN")]
    webhook_kommo_subdomain: Option<String>,
    /// Target of the Salesforce Outbound Messages (with its secret path).
    #[arg(long, env = "CRM_SIM_WEBHOOK_SALESFORCE", hide_env_values = true)]
    webhook_salesforce: Option<String>,
    /// `OrganizationId` of the Salesforce Outbound Messages.
    #[arg(long, env = "CRM_SIM_WEBHOOK_SALESFORCE_ORGANIZATION_ID")]
    webhook_salesforce_organization_id: Option<String>,
}

impl Webhooks {
    fn targets(self) -> Vec<(Dialect, WebhookTarget)> {
        let mut out = Vec::new();
        if let Some(url) = self.webhook_generic {
            out.push((
                Dialect::Generic,
                WebhookTarget {
                    url,
                    secret: self.webhook_generic_secret,
                    ..WebhookTarget::default()
                },
            ));
        }
        if let Some(url) = self.webhook_bitrix24 {
            out.push((
                Dialect::Bitrix24,
                WebhookTarget {
                    url,
                    application_token: self.webhook_bitrix24_application_token,
                    member_id: self.webhook_bitrix24_member_id,
                    domain: self.webhook_bitrix24_domain,
                    ..WebhookTarget::default()
                },
            ));
        }
        if let Some(url) = self.webhook_kommo {
            out.push((
                Dialect::Kommo,
                WebhookTarget {
                    url,
                    account_id: self.webhook_kommo_account_id,
                    subdomain: self.webhook_kommo_subdomain,
                    ..WebhookTarget::default()
                },
            ));
        }
        if let Some(url) = self.webhook_salesforce {
            out.push((
                Dialect::Salesforce,
                WebhookTarget {
                    url,
                    organization_id: self.webhook_salesforce_organization_id,
                    ..WebhookTarget::default()
                },
            ));
        }
        out
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = backbone_telemetry::init("crm-sim", None)?;
    let schemas: Schemas = match &args.schemas {
        Some(path) => serde_json::from_slice(&std::fs::read(path)?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        None => Schemas::default(),
    };
    let sim = Sim::new(&args.token, &args.signing_secret)
        .with_vendor_secret(args.vendor_secret.as_deref().unwrap_or(&args.token))
        .with_schemas(schemas)
        .with_token_ttl(std::time::Duration::from_secs(args.token_ttl_s.max(1)));
    sim.set_faults(Faults {
        error_rate: args.error_rate,
        latency_ms: args.latency_ms,
        rate_limit_rps: args.rate_limit_rps,
        retry_after_s: args.retry_after_s,
        outage_for_ms: 0,
        api_quota: args.api_quota,
    });
    for (dialect, target) in args.webhooks.targets() {
        sim.set_webhook(dialect, target)
            .map_err(|e| anyhow::anyhow!("webhook target of {}: {e}", dialect.name()))?;
    }
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "crm-sim listening");
    axum::serve(listener, sim.router())
        .with_graceful_shutdown(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .unwrap_or_else(|e| panic!("cannot install SIGTERM handler: {e}"));
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;
    Ok(())
}
