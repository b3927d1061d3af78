use clap::{Parser, Subcommand};
use operator_console::config::{Config, ENV_PREFIX};
use std::io::BufRead;
use std::path::PathBuf;

/// The web page for the people on call, over the services' admin APIs.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// TOML configuration file; `OPERATOR_CONSOLE_*` environment variables override it.
    #[arg(long, short, env = "OPERATOR_CONSOLE_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the console (the default).
    Run,
    /// Load and validate the configuration, print it without secrets, and exit.
    CheckConfig,
    /// Read a password from the first line of standard input and print its argon2id hash, for
    /// a user's `password_hash`.
    HashPassword,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::HashPassword => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            let password = line.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(password.len() >= 12, "a password has at least 12 characters");
            println!(
                "{}",
                operator_console::auth::hash_password(password).map_err(anyhow::Error::msg)?
            );
            Ok(())
        }
        Command::CheckConfig => {
            let cfg: Config = backbone_telemetry::load_config(cli.config.as_deref(), ENV_PREFIX)?;
            backbone_telemetry::check_config(&cfg, Config::validate)
        }
        Command::Run => {
            let mut cfg: Config = backbone_telemetry::load_config(cli.config.as_deref(), ENV_PREFIX)?;
            let telemetry = std::mem::take(&mut cfg.telemetry);
            backbone_telemetry::run_service("operator-console", &telemetry, |shutdown| {
                operator_console::run(cfg, shutdown)
            })
            .await
        }
    }
}
