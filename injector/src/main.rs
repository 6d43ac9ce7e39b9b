//! `flyte-auth-injector`: parses the command line and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use flyte_auth_injector::config::{Config, LoadError};
use flyte_auth_injector::review::Injector;
use tokio_util::sync::CancellationToken;

/// Exit status for an invalid configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "flyte-auth-injector",
    version,
    about = "Mutating admission webhook that adds the Flyte auth agent to task pods"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve AdmissionReviews on HTTPS until SIGTERM/SIGINT.
    Serve {
        /// YAML configuration file.
        #[arg(long, env = "FLYTE_AUTH_INJECTOR_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration and exit.
    Check {
        /// YAML configuration file.
        #[arg(long, env = "FLYTE_AUTH_INJECTOR_CONFIG")]
        config: PathBuf,
    },
    /// Generate the webhook's CA and serving certificate (kept while still valid).
    InitCerts(flyte_auth_injector::certs::InitCertsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("flyte-auth-injector: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("FLYTE_AUTH_INJECTOR_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        match &e {
            LoadError::Invalid(errors) => {
                for line in errors.to_string().lines() {
                    eprintln!("flyte-auth-injector: {line}");
                }
            }
            LoadError::Read { .. } => eprintln!("flyte-auth-injector: {e}"),
        }
        ExitCode::from(EXIT_CONFIG)
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check { config } => Ok(match load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        }),
        Command::Serve { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let injector = Arc::new(Injector::new(config));
            runtime()?.block_on(async move {
                let listen = injector.config().server.listen;
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen} (server.listen)"))?;
                tracing::info!(address = %listener.local_addr()?, "serving AdmissionReviews on HTTPS");
                let shutdown = CancellationToken::new();
                let signal = shutdown.clone();
                tokio::spawn(async move {
                    flyte_auth_agent::termination_signal().await;
                    signal.cancel();
                });
                flyte_auth_injector::server::run(listener, injector, shutdown).await?;
                tracing::info!("stopped");
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::InitCerts(args) => {
            runtime()?.block_on(flyte_auth_injector::certs::run(args))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
