//! `batch-loader`: generate batch files of pre-generated gift certificates, and load them into the
//! gift-certificates service over HTTP or Kafka. See `docs/batch-file-format.md` and
//! `docs/batch-upload-contract.md`.

use anyhow::Context;
use backbone_kafka::KafkaSettings;
use batch_loader::contract::UPLOAD_TOPIC;
use batch_loader::generate::{generate, GenerateOptions};
use batch_loader::load::{default_rejects_path, load, LoadOptions};
use batch_loader::progress::ProgressMode;
use batch_loader::sink::{HttpSink, KafkaSink, ServiceApi, Sink};
use clap::{Parser, Subcommand, ValueEnum};
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(Parser)]
#[command(
    name = "batch-loader",
    version,
    about = "Bulk issue of pre-generated gift-certificate codes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a batch file of random codes and CVCs (CSPRNG).
    Generate {
        #[arg(long)]
        count: u64,
        /// Nominal in minor units (kopecks for RUB): 500000 is 5,000.00.
        #[arg(long, value_name = "MINOR_UNITS")]
        nominal: i64,
        /// ISO 4217 code, e.g. RUB.
        #[arg(long)]
        currency: String,
        #[arg(long)]
        out: PathBuf,
        /// Expiry of every certificate (RFC 3339); none when absent.
        #[arg(long, value_parser = parse_rfc3339)]
        expires_at: Option<OffsetDateTime>,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Validate a batch file and send it to the service in jobs; resumable.
    Load(LoadArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Via {
    Http,
    Kafka,
}

#[derive(clap::Args)]
struct LoadArgs {
    file: PathBuf,
    #[arg(long)]
    batch_id: String,
    #[arg(long, value_enum)]
    via: Via,
    /// Base URL of the gift-certificates service. `--via http` sends the jobs there; `--via
    /// kafka` opens the batch there first (`PUT /certificates/upload/batches/{id}`), since the
    /// service takes jobs from the topic only for a batch opened over its API.
    #[arg(long)]
    url: String,
    /// Service token with the `upload` scope, needed with either `--via`; prefer the
    /// environment variable.
    #[arg(long, env = "BATCH_LOADER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Kafka bootstrap servers (`--via kafka`).
    #[arg(long, required_if_eq("via", "kafka"))]
    brokers: Option<String>,
    #[arg(long, default_value = UPLOAD_TOPIC)]
    topic: String,
    /// Extra librdkafka property (SASL, TLS), repeatable.
    #[arg(long = "kafka-property", value_name = "KEY=VALUE", value_parser = parse_property)]
    kafka_properties: Vec<(String, String)>,
    /// Certificates per job.
    #[arg(long, default_value_t = 1000)]
    job_size: usize,
    /// Reject file; the progress file sits next to it. Default: FILE.BATCH_ID.rejects.csv.
    #[arg(long)]
    rejects: Option<PathBuf>,
    /// Jobs in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Tries per job before stopping (the run can be resumed).
    #[arg(long, default_value_t = 8)]
    max_attempts: u32,
    /// HTTP request timeout in seconds.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressMode,
    /// Seconds between plain progress lines.
    #[arg(long, default_value_t = 5)]
    progress_every: u64,
}

fn parse_rfc3339(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|e| format!("not RFC 3339: {e}"))
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| "expected KEY=VALUE".to_owned())
}

async fn run_load(args: LoadArgs) -> anyhow::Result<()> {
    let token = SecretString::from(args.token.unwrap_or_default());
    let timeout = Duration::from_secs(args.timeout_secs.max(1));
    let sink = match args.via {
        Via::Http => Sink::Http(HttpSink::new(&args.url, token, &args.batch_id, timeout)?),
        Via::Kafka => {
            let api = ServiceApi::new(&args.url, token, timeout)?;
            let settings = KafkaSettings {
                brokers: args.brokers.unwrap_or_default(),
                properties: args.kafka_properties.into_iter().collect::<BTreeMap<_, _>>(),
                ..KafkaSettings::default()
            };
            Sink::Kafka(
                KafkaSink::new(&settings, &args.topic, &args.batch_id, api).context("Kafka producer")?,
            )
        }
    };
    let options = LoadOptions {
        rejects: args
            .rejects
            .unwrap_or_else(|| default_rejects_path(&args.file, &args.batch_id)),
        job_size: args.job_size,
        concurrency: args.concurrency,
        max_attempts: args.max_attempts,
        progress: args.progress,
        progress_every: Duration::from_secs(args.progress_every.max(1)),
        ..LoadOptions::new(&args.file, &args.batch_id)
    };
    let rejects = options.rejects.clone();
    let summary = load(options, Arc::new(sink)).await?;
    println!("batch {}: {summary}", args.batch_id);
    if summary.rejected > 0 {
        println!("rejected rows: {}", rejects.display());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate {
            count,
            nominal,
            currency,
            out,
            expires_at,
            force,
        } => {
            let started = std::time::Instant::now();
            generate(
                &out,
                &GenerateOptions {
                    count,
                    nominal_minor: nominal,
                    currency,
                    expires_at,
                    overwrite: force,
                },
            )?;
            println!(
                "generated {count} certificates in {} ({:.2}s)",
                out.display(),
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Load(args) => run_load(args).await,
    }
}
