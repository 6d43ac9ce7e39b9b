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
//! draw, so a fleet of pods that started together spreads its refreshes out. Each token gets its
//! [`Schedule`] when it is minted, and whether it may be served is [`Schedule::freshness`].
//!
//! Every timing decision here (freshness, the refresh point, back-off, expiry) reads tokio's clock
//! ([`tokio::time::Instant`], [`tokio::time::sleep_until`]), never the wall clock, so a test that
//! pauses it (`tokio::time::pause`) drives a day of refreshes in moments. A token's wall-clock
//! `issued_at`/`expires_at` are only reported (the API's `expires_at`), and `issued_at` names a
//! token that a peer refused.
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
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::idp::IdpError;
use crate::lock::lock;
use crate::metrics::{Metrics, NameMetrics};
use crate::refresh::{later, Freshness, RefreshPolicy, Schedule};
use crate::sink::Sink;
use crate::token::Token;

/// The cache name of the FlyteAdmin credential; token request names cannot start with '.'.
pub const ADMIN: &str = ".admin";

/// Mints tokens for one name: reads whatever credential it needs and asks the IdP.
pub trait Minter: Send + Sync {
    /// One IdP round trip.
    fn mint(&self) -> BoxFuture<'_, Result<Token, IdpError>>;
}

/// A cached token and its times on the cache's clock.
#[derive(Debug, Clone)]
struct Entry {
    token: Arc<Token>,
    schedule: Schedule,
}

/// The cached tokens by name.
type Entries = moka::future::Cache<String, Entry>;

/// Reads each cached token's seconds to expiry at scrape time.
struct ExpiryCollector(Entries);

impl std::fmt::Debug for ExpiryCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExpiryCollector")
    }
}

impl prometheus_client::collector::Collector for ExpiryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let now = Instant::now();
        let mut family = encoder.encode_descriptor(
            "token_seconds_to_expiry",
            "Seconds until the cached token expires (negative once expired)",
            None,
            MetricType::Gauge,
        )?;
        let mut rows: Vec<_> = self
            .0
            .iter()
            .map(|(name, entry)| (name, entry.schedule.seconds_to_expiry(now)))
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
    /// Draws for the refresh point and back-off jitter: one sequence per name, so a name's
    /// timing does not depend on how other names' calls interleave with it.
    jitter: Mutex<StdRng>,
}

impl Slot {
    /// One draw, uniform in [0, 1).
    fn draw(&self) -> f64 {
        lock(&self.jitter).random()
    }
}

/// What a fetch is for, which decides whether the cached entry is good enough. Every kind
/// respects the back-off.
#[derive(Clone, Copy)]
enum Want {
    /// A reader (or `--once`): any token that may still be served will do.
    Usable,
    /// The refresher: replace a token that is due for refresh; one that is not (someone already
    /// replaced it) is kept.
    Refresh,
    /// A peer refused the token issued at `seen`: replace it unless someone already did, so a
    /// peer that refuses every token cannot make us hammer the IdP.
    Renew { seen: SystemTime },
}

impl Want {
    /// Whether `entry` will do at `now`, so no IdP call is needed.
    fn keeps(self, entry: &Entry, now: Instant) -> bool {
        match (entry.schedule.freshness(now), self) {
            (Freshness::Expired, _) => false,
            (_, Want::Usable) => true,
            (freshness, Want::Refresh) => freshness == Freshness::Fresh,
            (_, Want::Renew { seen }) => entry.token.issued_at != seen,
        }
    }
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
                    jitter: Mutex::new(StdRng::from_rng(&mut rand::rng())),
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

    /// The same cache with its jitter drawn from `seed` (and each name): the same calls at the
    /// same times give the same refresh points and back-offs, so a simulated run can be repeated.
    pub fn with_jitter_seed(mut self, seed: u64) -> Self {
        for (name, slot) in &mut self.slots {
            // FNV-1a: a stable mix of the name into the seed.
            let mixed = name.bytes().fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
            slot.jitter = Mutex::new(StdRng::seed_from_u64(mixed));
        }
        self
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
            .map(|entry| entry.token)
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
        if let Some(entry) = self.entries.get(name).await {
            if entry.schedule.usable(Instant::now()) {
                slot.metrics.hits.inc();
                return Ok(entry.token);
            }
        }
        slot.metrics.misses.inc();
        self.fetch(slot, Want::Usable)
            .await
            .map(|entry| entry.token)
            .map_err(|reason| GetError::Unavailable {
                name: name.to_string(),
                reason,
            })
    }

    /// Every name's state, in configuration order.
    pub async fn status(&self) -> Vec<Status> {
        let now = Instant::now();
        let mut out = Vec::with_capacity(self.order.len());
        for name in &self.order {
            let entry = self.entries.get(name).await;
            let last_error = self
                .slots
                .get(name)
                .and_then(|s| lock(&s.backoff).last_error.as_ref().map(|e| e.to_string()));
            let state = match (&entry, &last_error) {
                (Some(e), _) if e.schedule.usable(now) => State::Valid,
                (Some(_), _) => State::Expired,
                (None, None) => State::Pending,
                (None, Some(_)) => State::Failing,
            };
            out.push(Status {
                name: name.clone(),
                state,
                expires_at: entry.map(|e| e.token.expires_at),
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

    async fn fetch(&self, slot: &Slot, want: Want) -> Result<Entry, MintError> {
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
        current: Option<Entry>,
    ) -> BoxFuture<'a, Result<Op<Entry>, MintError>> {
        Box::pin(async move {
            let now = Instant::now();
            if current.is_some_and(|entry| want.keeps(&entry, now)) {
                return Ok(Op::Nop);
            }
            // Every kind of fetch respects the back-off, the refresher's too: a reader may have
            // retried (and failed) while the refresher slept, and the refresher must then sleep
            // again rather than call the IdP a second time at once.
            {
                let b = lock(&slot.backoff);
                if let (Some(until), Some(err)) = (b.not_before, &b.last_error) {
                    if now < until {
                        return Err(err.clone());
                    }
                }
            }
            self.mint(slot).await.map(Op::Put)
        })
    }

    /// One IdP round trip plus the file write, as one traced operation that also records the
    /// outcome: metrics, and the name's back-off state. The token's [`Schedule`] starts when the
    /// call does, no later than the IdP's own clock starts its lifetime.
    async fn mint(&self, slot: &Slot) -> Result<Entry, MintError> {
        // The field is `token_name`, not `name`: in JSON logs a span's own name sits under the key
        // `name`, and a field of that name would collide with it.
        let span = tracing::info_span!("token_request", token_name = %slot.name);
        async {
            let started = Instant::now();
            let result = self.mint_inner(slot).await;
            slot.metrics
                .idp_latency
                .observe(started.elapsed().as_secs_f64());
            self.metrics.token_request(
                &slot.name,
                result.as_ref().map_or_else(|e| e.kind(), |_| "ok"),
            );
            self.record(slot, &result);
            result.map(|token| Entry {
                schedule: self.policy.schedule(started, token.lifetime(), slot.draw()),
                token: Arc::new(token),
            })
        }
        .instrument(span)
        .await
    }

    /// Resets the name's back-off after a success, or extends it after a failure; logs either.
    fn record(&self, slot: &Slot, result: &Result<Token, MintError>) {
        let mut backoff = lock(&slot.backoff);
        match result {
            Ok(token) => {
                *backoff = Backoff::default();
                tracing::info!(
                    token_type = %token.token_type,
                    expires_in = %humantime::format_duration(Duration::from_secs(token.lifetime().as_secs())),
                    "token minted"
                );
            }
            Err(e) => {
                let delay = self
                    .policy
                    .backoff(backoff.failures, slot.draw(), e.retry_after());
                backoff.failures = backoff.failures.saturating_add(1);
                backoff.not_before = Some(later(Instant::now(), delay));
                backoff.last_error = Some(e.clone());
                tracing::warn!(error = %e, retry_in = %format!("{:.3}s", delay.as_secs_f64()), "token request failed");
            }
        }
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

    /// How long `slot`'s first IdP call waits: until the paced start the injector gave the pod,
    /// then its draw of the start jitter. Pods of a fan-out start together, and against a
    /// rate-limited IdP all but its burst are refused if they ask at once (issue 16). No draw is
    /// taken when there is neither, so a seeded cache's sequence is what it was.
    fn first_wait(&self, slot: &Slot) -> Duration {
        if self.policy.start_jitter.is_zero() && self.policy.start_at.is_none() {
            Duration::ZERO
        } else {
            self.policy.start_delay(SystemTime::now(), slot.draw())
        }
    }

    /// Keeps `name` fresh until `shutdown`: after the start jitter's wait, fetches, then again at each token's refresh point,
    /// and retries failures when their back-off ends.
    pub async fn refresh(self: Arc<Self>, name: String, shutdown: CancellationToken) {
        let Some(slot) = self.slots.get(&name) else {
            return;
        };
        let first_wait = self.first_wait(slot);
        // Not even a zero sleep without jitter: tokio's timer would hold the first call to its
        // next millisecond tick, and a lone pod's start is measured in milliseconds.
        if !first_wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(first_wait) => {}
                _ = shutdown.cancelled() => return,
            }
        }
        loop {
            // Shutdown must not wait for a slow IdP; an abandoned computation leaves the entry as
            // it was, and a file write already under way still completes atomically.
            let fetched = tokio::select! {
                r = self.fetch(slot, Want::Refresh) => r,
                _ = shutdown.cancelled() => return,
            };
            let wake = match fetched {
                Ok(entry) => entry.schedule.refresh_at,
                Err(_) => lock(&slot.backoff)
                    .not_before
                    .unwrap_or_else(|| later(Instant::now(), self.policy.min_backoff)),
            };
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Fetches `name`, after the start jitter's wait, until it succeeds or `deadline` passes
    /// (for `--once`). A permanent refusal
    /// (a wrong client secret, an unknown client or scope) ends it at once: an init container
    /// that waits out its timeout for an answer that cannot change only hides the reason.
    pub async fn fetch_until(&self, name: &str, deadline: Instant) -> Result<Arc<Token>, GetError> {
        let slot = self.slot(name)?;
        let first_wait = self.first_wait(slot);
        if !first_wait.is_zero() {
            tokio::time::sleep_until(later(Instant::now(), first_wait).min(deadline)).await;
        }
        loop {
            match self.fetch(slot, Want::Usable).await {
                Ok(entry) => return Ok(entry.token),
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
mod tests;
