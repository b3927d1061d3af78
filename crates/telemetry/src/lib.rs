//! Platform services shared by every app: JSON logs, OpenTelemetry traces (off unless an OTLP
//! endpoint is configured), W3C trace-context propagation helpers, Prometheus text exposition and
//! layered configuration (defaults, file, environment).

mod config;
mod propagation;

pub use config::{load_config, TelemetryConfig};
pub use propagation::{current_trace_headers, propagation_test_guard, set_parent_from_headers};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use prometheus::{Encoder, Registry, TextEncoder};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Flushes traces when dropped (at the end of `main`).
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("telemetry: trace flush failed: {e}");
            }
        }
    }
}

/// Installs JSON logging to stdout (level from `RUST_LOG`, default `info`) and, when
/// `otlp_endpoint` is set, an OTLP/HTTP trace exporter.
pub fn init(service: &'static str, otlp_endpoint: Option<&str>) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_target(true)
        .with_filter(filter);

    let provider = match otlp_endpoint {
        Some(endpoint) => {
            use opentelemetry_otlp::WithExportConfig;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(endpoint)
                .build()?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build();
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
        None => None,
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    tracing_subscriber::registry().with(json).with(otel).try_init()?;
    if let Some(p) = &provider {
        opentelemetry::global::set_tracer_provider(p.clone());
    }
    Ok(TelemetryGuard { provider })
}

/// Renders a registry in the Prometheus text format.
pub fn render_metrics(registry: &Registry) -> String {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut buf) {
        tracing::error!(error = %e, "metrics encoding failed");
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// Runs a service: telemetry installed, `run` handed a token that SIGTERM or Ctrl-C cancels,
/// and a failure logged with its cause chain before it is returned.
pub async fn run_service<F, Fut>(
    service: &'static str,
    telemetry: &TelemetryConfig,
    run: F,
) -> anyhow::Result<()>
where
    F: FnOnce(tokio_util::sync::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let _telemetry = init(service, telemetry.otlp_endpoint.as_deref())?;
    let result = run(shutdown_on_signal()).await;
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "{service} failed");
    }
    result
}

/// `check-config`: validates, prints the configuration (secrets redacted by its `Debug`).
pub fn check_config<C: std::fmt::Debug, T>(
    cfg: &C,
    validate: impl FnOnce(&C) -> Result<T, String>,
) -> anyhow::Result<()> {
    validate(cfg).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    println!("{cfg:#?}");
    Ok(())
}

/// A token cancelled on SIGTERM or Ctrl-C: the services drain when it fires.
pub fn shutdown_on_signal() -> tokio_util::sync::CancellationToken {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: draining"),
        }
        signal.cancel();
    });
    shutdown
}
