//! The Flyte auth agent: a per-pod sidecar that mints OAuth2 client-credentials tokens for a Flyte
//! task's token requests, keeps them fresh, writes each to `$FLYTE_TOKENS_PATH_PREFIX/<name>` and
//! serves them on a unix socket, so the task never holds a client secret.
//!
//! [`Agent::build`] turns a validated [`config::Config`] into a running set of parts;
//! [`Agent::serve`] runs them on listeners the caller bound, until a shutdown signal;
//! [`Agent::once`] is the init-container mode: every token once, then exit.
//!
//! All of that is the `runtime` feature (on by default). Without it the crate is the agent's
//! vocabulary (`env`, `request`, `refresh`, `secret`, `token`, `scope`, `assertion`, `hosts`),
//! its configuration loader and validators (`config`) and the connection loop (`http`): what the
//! injector links to check a pod's token requests and its own `admin` and `limits` sections
//! exactly as the agent will, without the IdP client, cache and proxy and their dependencies.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

#[cfg(feature = "runtime")]
pub mod admin;
#[cfg(feature = "runtime")]
pub mod api;
pub mod assertion;
#[cfg(feature = "runtime")]
pub mod cache;
#[cfg(feature = "runtime")]
pub mod chain;
#[cfg(feature = "runtime")]
pub mod client;
pub mod config;
#[cfg(feature = "runtime")]
pub mod dev;
pub mod env;
#[cfg(feature = "runtime")]
pub mod health;
pub mod hosts;
pub mod http;
#[cfg(feature = "runtime")]
pub mod idp;
#[cfg(feature = "runtime")]
pub mod lock;
#[cfg(feature = "runtime")]
pub mod metrics;
#[cfg(feature = "runtime")]
pub mod mint;
pub mod pacing;
#[cfg(feature = "runtime")]
pub mod proxy;
pub mod refresh;
pub mod request;
pub mod scope;
pub mod secret;
#[cfg(feature = "runtime")]
pub mod sink;
#[cfg(feature = "runtime")]
pub mod tls;
pub mod token;
#[cfg(feature = "runtime")]
pub mod upstream;

#[cfg(feature = "runtime")]
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
#[cfg(feature = "runtime")]
use std::path::{Path, PathBuf};
#[cfg(feature = "runtime")]
use std::sync::Arc;
#[cfg(feature = "runtime")]
use std::time::Duration;

#[cfg(feature = "runtime")]
use tokio::net::{TcpListener, UnixListener};
#[cfg(feature = "runtime")]
use tokio_util::sync::CancellationToken;
#[cfg(feature = "runtime")]
use tokio_util::task::TaskTracker;

#[cfg(feature = "runtime")]
use crate::cache::{GetError, TokenCache};
#[cfg(feature = "runtime")]
use crate::config::{Config, Env};
#[cfg(feature = "runtime")]
use crate::metrics::Metrics;
#[cfg(feature = "runtime")]
use crate::mint::{AdminMinter, ClientCredentials};
#[cfg(feature = "runtime")]
use crate::secret::SecretResolver;
#[cfg(feature = "runtime")]
use crate::sink::Sink;

/// Why the agent could not start.
#[cfg(feature = "runtime")]
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The IdP client could not be built.
    #[error(transparent)]
    Idp(#[from] idp::BuildError),
    /// The tokens directory is unusable.
    #[error(transparent)]
    Sink(#[from] sink::SinkError),
    /// The FlyteAdmin connection settings are unusable.
    #[error(transparent)]
    AdminTls(#[from] upstream::TlsError),
    /// Another agent is serving on the socket.
    #[error("socket {0} is in use by a running process; refusing to take it over")]
    SocketInUse(PathBuf),
    /// The socket could not be created.
    #[error("cannot create socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Tokens that `--once` could not get, one line each.
#[cfg(feature = "runtime")]
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct OnceError(pub Vec<GetError>);

/// The unix socket, bound and given its mode; the file is removed when this is dropped.
#[cfg(feature = "runtime")]
#[derive(Debug)]
pub struct BoundSocket {
    listener: Option<UnixListener>,
    path: PathBuf,
}

#[cfg(feature = "runtime")]
impl Drop for BoundSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(feature = "runtime")]
impl BoundSocket {
    /// Binds `path` with `mode`. A socket file left by a crashed agent is replaced; one that a
    /// live process still accepts on is not. Must run inside a tokio runtime.
    pub fn bind(path: &Path, mode: u32) -> Result<Self, AgentError> {
        let err = |source| AgentError::Socket {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(AgentError::SocketInUse(path.to_path_buf()));
                }
                tracing::info!(socket = %path.display(), "replacing stale socket");
                std::fs::remove_file(path).map_err(err)?;
            }
            Ok(_) => {
                return Err(err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a file that is not a socket is in the way",
                )))
            }
            Err(_) => {}
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        let bound = Self {
            listener: Some(listener),
            path: path.to_path_buf(),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
        Ok(bound)
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The agent's parts, built and ready to serve.
#[cfg(feature = "runtime")]
pub struct Agent {
    cache: Arc<TokenCache>,
    metrics: Arc<Metrics>,
    proxy: Option<(upstream::Upstream, Arc<admin::AdminAuth>)>,
    grace: Duration,
    limits: config::Limits,
    serve_admin_token: bool,
    connect: Option<TcpListener>,
}

#[cfg(feature = "runtime")]
impl Agent {
    /// Builds the agent from a validated configuration. `env` is where env-var secrets are read.
    pub fn build(config: &Config, env: Arc<dyn Env>) -> Result<Self, AgentError> {
        let idp = Arc::new(idp::Idp::new(&config.idp, config.refresh.lifetimes())?);
        let sink = Arc::new(Sink::open(&config.tokens_dir, config.file_mode)?);
        let resolver = SecretResolver::new(config.secrets.clone(), env);
        let metrics = Arc::new(Metrics::new());
        let proxy = match &config.admin {
            None => None,
            Some(admin) => {
                let upstream = upstream::Upstream::new(admin)?;
                let auth = Arc::new(admin::AdminAuth::new(
                    admin.clone(),
                    upstream.clone(),
                    config.idp.timeout,
                    config.idp.allow_insecure_http,
                ));
                Some((upstream, auth))
            }
        };
        let admin_minter = proxy.as_ref().map(|(_, auth)| {
            Box::new(AdminMinter::new(
                auth.clone(),
                idp.clone(),
                resolver.clone(),
            )) as Box<dyn cache::Minter>
        });
        let cache = Arc::new(TokenCache::new(
            ClientCredentials::for_requests(&config.token_requests, &idp, &resolver),
            admin_minter,
            sink,
            metrics.clone(),
            config.refresh,
        ));
        Ok(Self {
            cache,
            metrics,
            proxy,
            grace: config.shutdown_grace,
            limits: config.limits,
            serve_admin_token: config.admin.as_ref().is_some_and(|a| a.serve_token),
            connect: None,
        })
    }

    /// Serves the proxy on `listener` as well (the loopback port of `admin.connect_port`),
    /// when a FlyteAdmin is configured.
    pub fn with_connect(mut self, listener: TcpListener) -> Self {
        self.connect = Some(listener);
        self
    }

    /// The token cache (for embedding and tests).
    pub fn cache(&self) -> &Arc<TokenCache> {
        &self.cache
    }

    /// Serves the token API on `socket` and health on `health`, refreshing every token, until
    /// `shutdown`; then drains in-flight requests and removes the socket file.
    pub async fn serve(
        self,
        mut socket: BoundSocket,
        health: TcpListener,
        shutdown: CancellationToken,
    ) {
        let tasks = TaskTracker::new();
        for name in self.cache.names() {
            tasks.spawn(self.cache.clone().refresh(name.clone(), shutdown.clone()));
        }
        if self.cache.has_admin() {
            // Warm, so the task's first Admin call does not wait for the IdP.
            tasks.spawn(
                self.cache
                    .clone()
                    .refresh(cache::ADMIN.to_string(), shutdown.clone()),
            );
        }
        let proxy = self.proxy.map(|(upstream, auth)| {
            Arc::new(
                proxy::Proxy::new(upstream, auth, self.cache.clone(), self.metrics.clone())
                    .with_max_inflight(self.limits.max_inflight_calls),
            )
        });
        if let (Some(listener), Some(proxy)) = (self.connect, &proxy) {
            // Bounded like the socket: the same task is on the other end.
            tasks.spawn(http::serve(
                listener,
                Arc::new(api::ConnectPort::new(proxy.clone())),
                http::Protocols::Http1And2,
                self.limits.socket,
                shutdown.clone(),
                self.grace,
            ));
        }
        if let Some(listener) = socket.listener.take() {
            let api = Arc::new(api::SocketApi::new(
                api::TokenApi::new(self.cache.clone(), self.serve_admin_token),
                proxy,
            ));
            tasks.spawn(http::serve(
                listener,
                api,
                http::Protocols::Http1And2,
                self.limits.socket,
                shutdown.clone(),
                self.grace,
            ));
        }
        let health_api = Arc::new(health::Health::new(
            self.cache.clone(),
            self.metrics.clone(),
        ));
        tasks.spawn(http::serve(
            health,
            health_api,
            http::Protocols::Http1,
            self.limits.health,
            shutdown.clone(),
            self.grace,
        ));
        tasks.close();
        tasks.wait().await;
        drop(socket);
        tracing::info!("stopped");
    }

    /// Gets every token once and writes its file, retrying each until `timeout` has passed.
    pub async fn once(self, timeout: Duration) -> Result<(), OnceError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let fetches = self
            .cache
            .names()
            .iter()
            .map(|name| self.cache.fetch_until(name, deadline));
        let failures: Vec<_> = futures_util::future::join_all(fetches)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(OnceError(failures))
        }
    }
}

/// Resolves when the process receives SIGTERM or SIGINT.
pub async fn termination_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process still dies on the default action.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
    }
}
