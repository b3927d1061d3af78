use clap::Parser;
use crm_sim::{Faults, Schemas, Sim};
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
