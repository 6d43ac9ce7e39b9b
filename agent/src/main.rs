//! `flyte-auth-agent`: parses the command line and hands over to the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use flyte_auth_agent::config::{Config, LogFormat};
use flyte_auth_agent::env::{self, Env, ProcessEnv};
use flyte_auth_agent::{Agent, BoundSocket};
use tokio_util::sync::CancellationToken;

/// Exit status for an invalid configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "flyte-auth-agent",
    version,
    about = "Per-pod auth agent for Flyte tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mint, refresh and serve the configured tokens.
    Serve {
        /// YAML configuration file (env overrides apply on top).
        #[arg(long, env = env::ENV_CONFIG)]
        config: Option<PathBuf>,
        /// Init-only mode: fetch every token, write the files, exit.
        #[arg(long)]
        once: bool,
        /// With --once: how long to keep retrying failed tokens.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        once_timeout: Duration,
    },
    /// Print a token from a running agent (for scripts and flytekit's ExternalCommand mode).
    Token {
        /// The token request name.
        #[arg(required_unless_present = "admin", conflicts_with = "admin")]
        name: Option<String>,
        /// Print the executor-bound FlyteAdmin credential instead.
        #[arg(long)]
        admin: bool,
        /// The agent's socket.
        #[arg(
            long,
            env = env::ENV_SOCKET,
            default_value = env::DEFAULT_SOCKET
        )]
        socket: PathBuf,
        /// How long to wait for the agent's answer.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Validate a configuration (reads secrets, makes no network call).
    Check {
        /// YAML configuration file.
        #[arg(long, env = env::ENV_CONFIG)]
        config: Option<PathBuf>,
    },
    /// Run on an embedded OIDC issuer, with everything under a local directory.
    Dev {
        /// Directory for the socket, token files, secrets and generated config.
        #[arg(long, default_value = ".dev")]
        dir: PathBuf,
        /// Health and metrics address.
        #[arg(long, default_value = "127.0.0.1:9911")]
        health_addr: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            once,
            once_timeout,
        } => {
            let env: Arc<dyn Env> = Arc::new(ProcessEnv);
            let Some(config) = load(config.as_deref(), env.clone()) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            init_tracing(config.log_format);
            for notice in &config.notices {
                tracing::info!("{notice}");
            }
            report(
                runtime()
                    .and_then(|rt| rt.block_on(serve(config, env, once.then_some(once_timeout)))),
            )
        }
        Command::Check { config } => match load(config.as_deref(), Arc::new(ProcessEnv)) {
            Some(c) => {
                let names: Vec<_> = c.token_requests.iter().map(|r| r.name.as_str()).collect();
                println!(
                    "configuration is valid: {} token request(s): {}",
                    names.len(),
                    names.join(", ")
                );
                ExitCode::SUCCESS
            }
            None => ExitCode::from(EXIT_CONFIG),
        },
        Command::Token {
            name,
            admin,
            socket,
            timeout,
        } => {
            use flyte_auth_agent::client;
            let result = runtime().and_then(|rt| {
                rt.block_on(async {
                    match (admin, name) {
                        (false, Some(name)) => client::token(&socket, &name, timeout).await,
                        _ => client::admin_token(&socket, timeout).await,
                    }
                })
                .map_err(anyhow::Error::from)
            });
            match result {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => report(Err(e)),
            }
        }
        Command::Dev { dir, health_addr } => {
            init_tracing(LogFormat::Text);
            report(runtime().and_then(|rt| {
                rt.block_on(async {
                    let shutdown = CancellationToken::new();
                    tokio::spawn(cancel_on_signal(shutdown.clone()));
                    Ok(flyte_auth_agent::dev::run(&dir, health_addr, shutdown).await?)
                })
            }))
        }
    }
}

fn load(path: Option<&Path>, env: Arc<dyn Env>) -> Option<Config> {
    match Config::load(path, env) {
        Ok(c) => Some(c),
        Err(errors) => {
            eprintln!("flyte-auth-agent: invalid configuration:");
            for e in &errors.0 {
                eprintln!("  - {e}");
            }
            None
        }
    }
}

/// One thread for all of the agent's async work. A pod's agent serves one task: a call costs it
/// tens of microseconds, so one thread is far from its limit, and it saves what a worker per
/// core costs (threads and their stacks, cross-thread wake-ups on every socket event). File
/// writes and secret reads still go to the blocking pool.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
        .context("cannot start the async runtime")
}

async fn serve(config: Config, env: Arc<dyn Env>, once: Option<Duration>) -> anyhow::Result<()> {
    let agent = Agent::build(&config, env)?;
    let names: Vec<_> = config
        .token_requests
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    if let Some(timeout) = once {
        agent
            .once(timeout)
            .await
            .context("init-only mode: some tokens could not be fetched")?;
        tracing::info!(tokens = ?names, dir = %config.tokens_dir.display(), "all tokens written");
        return Ok(());
    }
    let socket = BoundSocket::bind(&config.socket_path, config.socket_mode)?;
    let health = tokio::net::TcpListener::bind(config.health_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} for health and metrics",
                config.health_addr
            )
        })?;
    let connect_port = config.admin.as_ref().and_then(|a| a.connect_port);
    let agent = match connect_port {
        None => agent,
        Some(port) => {
            // Loopback only: the port is for the pod's own task.
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on {addr} for Connect calls (admin.connect_port)")
            })?;
            agent.with_connect(listener)
        }
    };
    tracing::info!(
        socket = %config.socket_path.display(),
        connect_port,
        health = %health.local_addr().unwrap_or(config.health_addr),
        tokens_dir = %config.tokens_dir.display(),
        tokens = ?names,
        "serving"
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    agent.serve(socket, health, shutdown).await;
    Ok(())
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    flyte_auth_agent::termination_signal().await;
    shutdown.cancel();
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(env::ENV_LOG_FILTER)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flyte-auth-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
