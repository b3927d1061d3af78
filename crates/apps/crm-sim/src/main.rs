use clap::Parser;
use crm_sim::{Faults, Sim};
use std::net::SocketAddr;

/// An in-memory CRM speaking the generic CRM API, with fault injection.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[arg(long, env = "CRM_SIM_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Bearer token clients must present.
    #[arg(long, env = "CRM_SIM_TOKEN", hide_env_values = true)]
    token: String,
    /// Key of the request signature.
    #[arg(long, env = "CRM_SIM_SIGNING_SECRET", hide_env_values = true)]
    signing_secret: String,
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    #[arg(long, default_value_t = 0)]
    rate_limit_rps: u64,
    #[arg(long, default_value_t = 1)]
    retry_after_s: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = backbone_telemetry::init("crm-sim", None)?;
    let sim = Sim::new(&args.token, &args.signing_secret);
    sim.set_faults(Faults {
        error_rate: args.error_rate,
        latency_ms: args.latency_ms,
        rate_limit_rps: args.rate_limit_rps,
        retry_after_s: args.retry_after_s,
        outage_for_ms: 0,
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
