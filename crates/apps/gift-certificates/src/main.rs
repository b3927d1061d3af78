use backbone_certificates::store::{Outbox, SmsQueue};
use clap::{Parser, Subcommand};
use gift_certificates::config::{Config, ENV_PREFIX};
use std::path::PathBuf;

/// The master service for gift certificates.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// TOML configuration file; `GIFT_CERTIFICATES_*` environment variables override it.
    #[arg(long, short, env = "GIFT_CERTIFICATES_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Run,
    /// Load and validate the configuration, print it without secrets, and exit.
    CheckConfig,
    /// Create the database when missing, apply pending migrations, and exit. Only
    /// `postgres.url` is needed; concurrent runs wait for each other (a migration lock).
    Migrate,
    /// Print the OpenAPI document.
    Openapi,
    /// Master keys of the local key-file KMS.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// CVC SMS deliveries.
    Sms {
        #[command(subcommand)]
        command: SmsCommand,
    },
    /// Outbox events the broker refused for good (parked).
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// Put parked events back at the end of the outbox, to be published again.
    Requeue {
        /// Only this parked event (its id in outbox_parked); all when absent.
        #[arg(long)]
        id: Option<i64>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a new master key file (refuses to overwrite one).
    Generate {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum SmsCommand {
    /// Put dead-lettered deliveries back in the queue.
    Requeue {
        /// Only this certificate (id); all failed deliveries when absent.
        #[arg(long)]
        certificate: Option<uuid::Uuid>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    if let Command::Openapi = command {
        println!("{}", gift_certificates::openapi_json());
        return Ok(());
    }
    if let Command::Keys {
        command: KeysCommand::Generate { out },
    } = &command
    {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let key = backbone_kms::generate_key_file(out)?;
        println!("created master key {} in {}", key.id(), out.display());
        return Ok(());
    }
    let mut cfg: Config = backbone_telemetry::load_config(cli.config.as_deref(), ENV_PREFIX)?;
    match command {
        Command::CheckConfig => backbone_telemetry::check_config(&cfg, Config::validate),
        Command::Migrate => {
            let migrations = gift_certificates::migrate(&cfg).await?;
            println!("gift-certificates schema up to date ({migrations} migrations)");
            Ok(())
        }
        Command::Sms {
            command: SmsCommand::Requeue { certificate },
        } => {
            let state = gift_certificates::build_state(&cfg).await?;
            let n = state.store().requeue_failed_sms(certificate).await?;
            println!("{n} deliveries queued again");
            Ok(())
        }
        Command::Outbox {
            command: OutboxCommand::Requeue { id },
        } => {
            let state = gift_certificates::build_state(&cfg).await?;
            let n = state.store().requeue_parked(id).await?;
            println!("{n} parked events queued again");
            Ok(())
        }
        Command::Run => {
            let telemetry = std::mem::take(&mut cfg.telemetry);
            backbone_telemetry::run_service("gift-certificates", &telemetry, |shutdown| {
                gift_certificates::run(cfg, shutdown)
            })
            .await
        }
        Command::Openapi | Command::Keys { .. } => Ok(()),
    }
}
