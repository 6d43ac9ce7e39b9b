//! The token cache: one entry per token request name in a `moka` cache, filled from the IdP on
//! demand and refreshed ahead of expiry by one background task per name.
//!
//! Every IdP call for a name runs inside moka's per-key `and_try_compute_with`, which runs
//! computations for one key strictly one after another. Each computation first looks at the
//! entry it is handed: if a concurrent caller already stored a usable token, it keeps it and
//! calls nothing. So any number of concurrent readers of a cold name cause one IdP call.
//!
//! Failures never remove an entry: a token stays in the cache (and its file stays on disk) until
//! a new one replaces it. After a failure the name backs off (exponential, jittered, at least the
//! IdP's `Retry-After`); readers arriving during the back-off get the last error at once instead
//! of queueing up behind fresh IdP calls, and the refresher sleeps until it ends.
//!
//! When to refresh is [`RefreshPolicy`], a pure function of the token's lifetime and a random
//! draw, so a fleet of pods that started together spreads its refreshes out.
//!
//! What a name's token comes from is a [`Minter`] (see [`crate::mint`]): the cache only calls it,
//! and never learns how a grant is made. A configured token request's token also goes to its
//! file; the FlyteAdmin credential lives under the name [`ADMIN`], which no token request can
//! have, and has no file. The cache registers its own seconds-to-expiry gauge on the metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use moka::ops::compute::{CompResult, Op};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::idp::IdpError;
use crate::lock::lock;
use crate::metrics::{Metrics, NameMetrics};
use crate::refresh::RefreshPolicy;
use crate::sink::Sink;
use crate::token::Token;

/// The cache name of the FlyteAdmin credential; token request names cannot start with '.'.
pub const ADMIN: &str = ".admin";

/// A wait that stands for "not in this process's lifetime" when a longer one cannot be added to
/// the clock (thirty years, as tokio's own far future).
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// Mints tokens for one name: reads whatever credential it needs and asks the IdP.
pub trait Minter: Send + Sync {
    /// One IdP round trip.
    fn mint(&self) -> BoxFuture<'_, Result<Token, IdpError>>;
}

/// The cached tokens by name.
type Entries = moka::future::Cache<String, Arc<Token>>;

/// Reads each cached token's seconds to expiry at scrape time.
struct ExpiryCollector(Entries);

impl std::fmt::Debug for ExpiryCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExpiryCollector")
    }
}

impl prometheus_client::collector::Collector for ExpiryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let now = SystemTime::now();
        let mut family = encoder.encode_descriptor(
            "token_seconds_to_expiry",
            "Seconds until the cached token expires (negative once expired)",
            None,
            MetricType::Gauge,
        )?;
        let mut rows: Vec<_> = self
            .0
            .iter()
            .map(|(name, token)| (name, token.seconds_to_expiry(now)))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, seconds) in rows {
            let labels = [("name", name.as_str())];
            ConstGauge::new(seconds).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Why a token could not be minted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MintError {
    /// The IdP (or the secret feeding it) failed.
    #[error(transparent)]
    Idp(#[from] IdpError),
    /// The token was minted but its file could not be written, so it is not handed out either:
    /// the API and the file always agree.
    #[error("{0}")]
    File(String),
}

impl MintError {
    /// Whether retrying cannot help without a configuration change (see
    /// [`IdpError::is_permanent`]).
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Idp(e) => e.is_permanent(),
            Self::File(_) => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Idp(e) => e.retry_after(),
            Self::File(_) => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Idp(e) => e.kind(),
            Self::File(_) => "file",
        }
    }
}

/// Why a read gave no token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GetError {
    /// No token request has this name.
    #[error("no token request is named {0:?}")]
    Unknown(String),
    /// The name is known but no valid token can be had now.
    #[error("no valid token for {name:?}: {reason}")]
    Unavailable {
        /// The token request name.
        name: String,
        /// The last failure.
        reason: MintError,
    },
}

/// One name's state in the status listing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// A fresh token is cached.
    Valid,
    /// The cached token has expired and no new one could be had yet.
    Expired,
    /// No token yet, and no failure either (first request in flight).
    Pending,
    /// No token, and the last attempt failed.
    Failing,
}

/// One name in the status listing: never the token value.
#[derive(Debug, Clone)]
pub struct Status {
    /// The token request name.
    pub name: String,
    /// Its state.
    pub state: State,
    /// When the cached token expires.
    pub expires_at: Option<SystemTime>,
    /// The last failure, if the last attempt failed.
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    not_before: Option<Instant>,
    last_error: Option<MintError>,
}

struct Slot {
    name: String,
    minter: Box<dyn Minter>,
    /// Whether tokens go to a file as well (token requests do; the Admin credential does not).
    file: bool,
    metrics: NameMetrics,
    backoff: Mutex<Backoff>,
}

/// What a fetch is for, which decides whether the cached entry is good enough.
#[derive(Clone, Copy)]
enum Want {
    /// A reader: any fresh token will do; respect the back-off.
    Fresh,
    /// The refresher: replace the token it scheduled from (`seen`), unless someone already did;
    /// respect the back-off.
    Replace { seen: Option<SystemTime> },
    /// A peer refused the token issued at `seen`: replace it unless someone already did, but
    /// respect the back-off, so a peer that refuses every token cannot make us hammer the IdP.
    Renew { seen: SystemTime },
}

/// Tokens by name, with the machinery to mint and refresh them.
pub struct TokenCache {
    entries: Entries,
    slots: HashMap<String, Slot>,
    order: Vec<String>,
    sink: Arc<Sink>,
    metrics: Arc<Metrics>,
    policy: RefreshPolicy,
}

impl TokenCache {
    /// A cache for the token requests' `minters`, by name (names are unique: config validation
    /// guarantees it), plus the FlyteAdmin credential if `admin` is given. Registers the
    /// seconds-to-expiry gauge of its entries on `metrics`.
    pub fn new(
        minters: Vec<(String, Box<dyn Minter>)>,
        admin: Option<Box<dyn Minter>>,
        sink: Arc<Sink>,
        metrics: Arc<Metrics>,
        policy: RefreshPolicy,
    ) -> Self {
        // Room for every name and the Admin credential, so no entry is ever evicted.
        let entries: Entries = moka::future::Cache::builder()
            .max_capacity(minters.len() as u64 + 1)
            .build();
        metrics.register_collector(Box::new(ExpiryCollector(entries.clone())));
        let order: Vec<String> = minters.iter().map(|(name, _)| name.clone()).collect();
        let minters = minters.into_iter().map(|(name, m)| (name, m, true));
        let admin = admin.map(|m| (ADMIN.to_string(), m, false));
        let slots = minters
            .chain(admin)
            .map(|(name, minter, file)| {
                let slot = Slot {
                    metrics: metrics.for_name(&name),
                    name: name.clone(),
                    minter,
                    file,
                    backoff: Mutex::default(),
                };
                (name, slot)
            })
            .collect();
        Self {
            entries,
            slots,
            order,
            sink,
            metrics,
            policy,
        }
    }

    /// The configured names, in configuration order.
    pub fn names(&self) -> &[String] {
        &self.order
    }

    /// Whether the FlyteAdmin credential is configured.
    pub fn has_admin(&self) -> bool {
        self.slots.contains_key(ADMIN)
    }

    /// A fresh FlyteAdmin credential.
    pub async fn admin(&self) -> Result<Arc<Token>, GetError> {
        self.get_any(ADMIN).await
    }

    /// A new FlyteAdmin credential to replace `rejected`, which Admin refused: one IdP call
    /// however many callers saw the refusal, none during a back-off.
    pub async fn renew_admin(&self, rejected: &Token) -> Result<Arc<Token>, GetError> {
        let slot = self.slot(ADMIN)?;
        let want = Want::Renew {
            seen: rejected.issued_at,
        };
        self.fetch(slot, want)
            .await
            .map_err(|reason| GetError::Unavailable {
                name: ADMIN.to_string(),
                reason,
            })
    }

    fn slot(&self, name: &str) -> Result<&Slot, GetError> {
        self.slots
            .get(name)
            .ok_or_else(|| GetError::Unknown(name.to_string()))
    }

    /// A fresh token for the token request `name`, from the cache or, on a miss, from the IdP.
    pub async fn get(&self, name: &str) -> Result<Arc<Token>, GetError> {
        if name == ADMIN {
            // Served only where the Admin credential is meant to be: /v1/admin/token.
            return Err(GetError::Unknown(name.to_string()));
        }
        self.get_any(name).await
    }

    async fn get_any(&self, name: &str) -> Result<Arc<Token>, GetError> {
        let slot = self.slot(name)?;
        if let Some(token) = self.entries.get(name).await {
            if token.is_fresh(SystemTime::now()) {
                slot.metrics.hits.inc();
                return Ok(token);
            }
        }
        slot.metrics.misses.inc();
        self.fetch(slot, Want::Fresh)
            .await
            .map_err(|reason| GetError::Unavailable {
                name: name.to_string(),
                reason,
            })
    }

    /// Every name's state, in configuration order.
    pub async fn status(&self) -> Vec<Status> {
        let now = SystemTime::now();
        let mut out = Vec::with_capacity(self.order.len());
        for name in &self.order {
            let token = self.entries.get(name).await;
            let last_error = self
                .slots
                .get(name)
                .and_then(|s| lock(&s.backoff).last_error.as_ref().map(|e| e.to_string()));
            let state = match (&token, &last_error) {
                (Some(t), _) if t.is_fresh(now) => State::Valid,
                (Some(_), _) => State::Expired,
                (None, None) => State::Pending,
                (None, Some(_)) => State::Failing,
            };
            out.push(Status {
                name: name.clone(),
                state,
                expires_at: token.map(|t| t.expires_at),
                last_error,
            });
        }
        out
    }

    /// Whether every name has a fresh token; else the names that do not.
    pub async fn ready(&self) -> Result<(), Vec<String>> {
        let waiting: Vec<String> = self
            .status()
            .await
            .into_iter()
            .filter(|s| s.state != State::Valid)
            .map(|s| s.name)
            .collect();
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(waiting)
        }
    }

    async fn fetch(&self, slot: &Slot, want: Want) -> Result<Arc<Token>, MintError> {
        let result = self
            .entries
            .entry_by_ref(slot.name.as_str())
            .and_try_compute_with(|current| {
                self.compute(slot, want, current.map(|e| e.into_value()))
            })
            .await?;
        match result {
            CompResult::Inserted(e) | CompResult::ReplacedWith(e) | CompResult::Unchanged(e) => {
                Ok(e.into_value())
            }
            // The computation only returns Put, or Nop over an existing entry, so these cannot
            // happen; report them as a failure rather than trusting that.
            CompResult::StillNone(_) | CompResult::Removed(_) => Err(MintError::File(
                "internal: cache entry vanished during refresh".into(),
            )),
        }
    }

    /// The body of one serialized computation for a name: keep `current` if it will do, else
    /// mint, unless the name is in its back-off.
    // Boxed with an explicit lifetime: moka's higher-ranked closure bound otherwise keeps the
    // compiler from proving the future `Send`.
    fn compute<'a>(
        &'a self,
        slot: &'a Slot,
        want: Want,
        current: Option<Arc<Token>>,
    ) -> BoxFuture<'a, Result<Op<Arc<Token>>, MintError>> {
        Box::pin(async move {
            let now = SystemTime::now();
            let usable = current.as_ref().is_some_and(|t| {
                t.is_fresh(now)
                    && match want {
                        Want::Fresh => true,
                        Want::Replace { seen } => Some(t.issued_at) != seen,
                        Want::Renew { seen } => t.issued_at != seen,
                    }
            });
            if usable {
                return Ok(Op::Nop);
            }
            // Every kind of fetch respects the back-off, the refresher's too: a reader may have
            // retried (and failed) while the refresher slept, and the refresher must then sleep
            // again rather than call the IdP a second time at once.
            {
                let b = lock(&slot.backoff);
                if let (Some(until), Some(err)) = (b.not_before, &b.last_error) {
                    if Instant::now() < until {
                        return Err(err.clone());
                    }
                }
            }
            self.mint(slot).await.map(|token| Op::Put(Arc::new(token)))
        })
    }

    /// One IdP round trip plus the file write, as one traced operation that also records the
    /// outcome: metrics, and the name's back-off state.
    async fn mint(&self, slot: &Slot) -> Result<Token, MintError> {
        // The field is `token_name`, not `name`: in JSON logs a span's own name sits under the key
        // `name`, and a field of that name would collide with it.
        let span = tracing::info_span!("token_request", token_name = %slot.name);
        async {
            let started = std::time::Instant::now();
            let result = self.mint_inner(slot).await;
            slot.metrics.idp_latency.observe(started.elapsed().as_secs_f64());
            self.metrics.token_request(&slot.name, result.as_ref().map_or_else(|e| e.kind(), |_| "ok"));
            let mut backoff = lock(&slot.backoff);
            match &result {
                Ok(token) => {
                    *backoff = Backoff::default();
                    tracing::info!(
                        token_type = %token.token_type,
                        expires_in = %humantime::format_duration(Duration::from_secs(token.lifetime().as_secs())),
                        "token minted"
                    );
                }
                Err(e) => {
                    let delay = self.policy.backoff(backoff.failures, rand::random(), e.retry_after());
                    backoff.failures = backoff.failures.saturating_add(1);
                    // Checked: a configured max_backoff of centuries must not overflow the clock.
                    let now = Instant::now();
                    backoff.not_before = Some(now.checked_add(delay).unwrap_or(now + FAR_FUTURE));
                    backoff.last_error = Some(e.clone());
                    tracing::warn!(error = %e, retry_in = %format!("{:.3}s", delay.as_secs_f64()), "token request failed");
                }
            }
            drop(backoff);
            result
        }
        .instrument(span)
        .await
    }

    async fn mint_inner(&self, slot: &Slot) -> Result<Token, MintError> {
        let token = slot.minter.mint().await?;
        if slot.file {
            let sink = self.sink.clone();
            let name = slot.name.clone();
            let value = token.access_token.clone();
            tokio::task::spawn_blocking(move || sink.write(&name, value.expose()))
                .await
                .map_err(|e| MintError::File(format!("writer task failed: {e}")))?
                .map_err(|e| MintError::File(e.to_string()))?;
        }
        Ok(token)
    }

    /// Keeps `name` fresh until `shutdown`: fetches now, then refreshes ahead of each expiry and
    /// retries failures after their back-off.
    pub async fn refresh(self: Arc<Self>, name: String, shutdown: CancellationToken) {
        let Some(slot) = self.slots.get(&name) else {
            return;
        };
        let mut seen = None;
        loop {
            // Shutdown must not wait for a slow IdP; an abandoned computation leaves the entry as
            // it was, and a file write already under way still completes atomically.
            let fetched = tokio::select! {
                r = self.fetch(slot, Want::Replace { seen }) => r,
                _ = shutdown.cancelled() => return,
            };
            let delay = match fetched {
                Ok(token) => {
                    seen = Some(token.issued_at);
                    let age = SystemTime::now()
                        .duration_since(token.issued_at)
                        .unwrap_or_default();
                    self.policy
                        .refresh_after(token.lifetime(), rand::random())
                        .saturating_sub(age)
                }
                Err(_) => {
                    let until = lock(&slot.backoff).not_before;
                    until.map_or(self.policy.min_backoff, |u| {
                        u.saturating_duration_since(Instant::now())
                    })
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Fetches `name` until it succeeds or `deadline` passes (for `--once`). A permanent refusal
    /// (a wrong client secret, an unknown client or scope) ends it at once: an init container
    /// that waits out its timeout for an answer that cannot change only hides the reason.
    pub async fn fetch_until(&self, name: &str, deadline: Instant) -> Result<Arc<Token>, GetError> {
        let slot = self.slot(name)?;
        loop {
            match self.fetch(slot, Want::Replace { seen: None }).await {
                Ok(token) => return Ok(token),
                Err(reason) => {
                    let retry_at = lock(&slot.backoff).not_before.unwrap_or_else(Instant::now);
                    if reason.is_permanent() || retry_at >= deadline {
                        return Err(GetError::Unavailable {
                            name: name.to_string(),
                            reason,
                        });
                    }
                    tokio::time::sleep_until(retry_at).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A minter that always gives the same answer and counts the calls.
    struct Scripted {
        calls: Arc<AtomicUsize>,
        answer: fn() -> Result<Token, IdpError>,
    }

    impl Minter for Scripted {
        fn mint(&self) -> BoxFuture<'_, Result<Token, IdpError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let answer = (self.answer)();
            Box::pin(async move { answer })
        }
    }

    /// A cache holding only the Admin credential, minted by `answer`; and its call counter.
    fn scripted_cache(
        answer: fn() -> Result<Token, IdpError>,
    ) -> (TokenCache, Arc<AtomicUsize>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let minter = Scripted {
            calls: calls.clone(),
            answer,
        };
        let cache = TokenCache::new(
            Vec::new(),
            Some(Box::new(minter)),
            Arc::new(Sink::open(dir.path(), 0o644).unwrap()),
            Arc::new(Metrics::new()),
            RefreshPolicy::default(),
        );
        (cache, calls, dir)
    }

    fn overloaded() -> Result<Token, IdpError> {
        Err(IdpError::Status {
            url: "https://idp/token".into(),
            status: 503,
            retry_after: None,
        })
    }

    fn wrong_secret() -> Result<Token, IdpError> {
        Err(IdpError::Rejected {
            url: "https://idp/token".into(),
            status: 401,
            error: "invalid_client".into(),
            description: None,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn the_refresher_respects_a_back_off_a_reader_started() {
        let (cache, calls, _dir) = scripted_cache(overloaded);
        assert!(cache.admin().await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // The refresher's fetch during that back-off gets the error, not a second IdP call.
        let slot = cache.slot(ADMIN).unwrap();
        let err = cache.fetch(slot, Want::Replace { seen: None }).await;
        assert!(err.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn fetch_until_stops_at_a_permanent_refusal() {
        let (cache, calls, _dir) = scripted_cache(wrong_secret);
        let start = Instant::now();
        let err = cache
            .fetch_until(ADMIN, start + Duration::from_secs(300))
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(Instant::now(), start, "no waiting");
        assert!(err.to_string().contains("invalid_client"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn fetch_until_retries_transient_failures_until_the_deadline() {
        let (cache, calls, _dir) = scripted_cache(overloaded);
        let start = Instant::now();
        let deadline = start + Duration::from_secs(60);
        assert!(cache.fetch_until(ADMIN, deadline).await.is_err());
        // Back-offs of 0.5–1, 1–2, 2–4, 4–8, 8–16, 16–32 s fit 60 s at least five times.
        assert!(calls.load(Ordering::SeqCst) >= 5, "{calls:?}");
        assert!(Instant::now() > start + Duration::from_secs(15));
    }
}
