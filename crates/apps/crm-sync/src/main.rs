use clap::{Parser, Subcommand};
use crm_sync::config::{Config, ENV_PREFIX};
use secrecy::ExposeSecret;
use std::path::PathBuf;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

// A quarter of the pipeline's CPU went to glibc's allocator (`malloc_consolidate`, `_int_free`
// and the copies around them) under many small allocations per event from several threads;
// mimalloc serves them from per-thread pages (docs/benchmarks.md, "crm-sync CPU").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Syncs parcel statuses from Kafka to the CRM, exactly once in effect.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// TOML configuration file; `CRM_SYNC_*` environment variables override it.
    #[arg(long, short, env = "CRM_SYNC_CONFIG", global = true)]
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
    /// Compare our client cards with the CRM's and report the drift as JSON (`--repair`: queue
    /// the fixes through the normal path).
    Reconcile {
        /// One client.
        #[arg(long, conflicts_with = "since", required_unless_present = "since")]
        client: Option<String>,
        /// Every card changed at or after this time (RFC 3339).
        #[arg(long, value_parser = parse_time)]
        since: Option<OffsetDateTime>,
        /// Queue a change through the outbox for each drifted client.
        #[arg(long)]
        repair: bool,
    },
    /// What became of one parcel-status event: every attempt with the CRM's status, the
    /// recorded outcome, the retry waiting (JSON). Exits 1 when the event is unknown.
    Trace {
        /// The event's `event_id`.
        event_id: String,
    },
    /// Work with dead letters.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Send dead letters back through the pipeline.
    Replay {
        /// Only this event id.
        #[arg(long)]
        event_id: Option<String>,
        /// Only letters dead-lettered at or after this time (RFC 3339).
        #[arg(long, value_parser = parse_time)]
        since: Option<OffsetDateTime>,
        /// Only letters dead-lettered before this time (RFC 3339).
        #[arg(long, value_parser = parse_time)]
        until: Option<OffsetDateTime>,
        /// Only this reason code (`malformed_json`, `crm_rejected`, `attempts_exhausted`, ...).
        #[arg(long)]
        reason: Option<String>,
        /// At most this many letters.
        #[arg(long)]
        limit: Option<usize>,
        /// List what would be replayed without sending anything.
        #[arg(long)]
        dry_run: bool,
    },
}

fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|e| format!("expected RFC 3339 (2026-11-01T10:00:00Z): {e}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut cfg: Config = backbone_telemetry::load_config(cli.config.as_deref(), ENV_PREFIX)?;
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => backbone_telemetry::check_config(&cfg, Config::validate),
        Command::Migrate => {
            let migrations = crm_sync::migrate(&cfg).await?;
            println!("crm-sync schema up to date ({migrations} migrations)");
            Ok(())
        }
        Command::Dlq {
            command:
                DlqCommand::Replay {
                    event_id,
                    since,
                    until,
                    reason,
                    limit,
                    dry_run,
                },
        } => {
            let filter = backbone_kafka::ReplayFilter {
                event_id,
                since,
                until,
                reason_code: reason,
                positions: Vec::new(),
            };
            let summary = crm_sync::replay_dead_letters(&cfg.kafka, filter, limit, dry_run).await?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(())
        }
        Command::Trace { event_id } => {
            let ledger = backbone_postgres::PgLedger::connect(cfg.postgres.url.expose_secret(), 2).await?;
            let trace = crm_sync::trace::trace(&ledger, &event_id).await?;
            println!("{}", serde_json::to_string_pretty(&trace)?);
            if !trace.found {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Reconcile {
            client,
            since,
            repair,
        } => {
            use crm_sync::two_way::reconcile::{from_config, Target};
            let target = match (client, since) {
                (Some(c), _) => Target::Client(
                    backbone_sync::clients::ClientId::parse(c)
                        .map_err(|e| anyhow::anyhow!("--client: {e}"))?,
                ),
                (None, Some(t)) => Target::Since(t),
                (None, None) => anyhow::bail!("--client or --since is required"),
            };
            let report = from_config(&cfg, target, repair).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Run => {
            let telemetry = std::mem::take(&mut cfg.telemetry);
            backbone_telemetry::run_service("crm-sync", &telemetry, |shutdown| crm_sync::run(cfg, shutdown))
                .await
        }
    }
}
