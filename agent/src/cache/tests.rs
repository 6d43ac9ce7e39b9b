//! The cache's timing on tokio's paused clock: refresh points, back-off, expiry and what readers
//! get meanwhile. The IdP is a [`Clocked`] test double answering by simulated time, so each test
//! runs minutes or hours of the cache's life in milliseconds.

use super::*;
use std::time::UNIX_EPOCH;

use crate::token::SecretString;

/// The wall clock the test double stamps its tokens with: it moves with tokio's paused clock, so
/// a test can check a served token against "now" the way a peer would.
const WALL_EPOCH: Duration = Duration::from_secs(1_700_000_000);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The simulated wall time `at` after the test started.
fn wall(at: Duration) -> SystemTime {
    UNIX_EPOCH + WALL_EPOCH + at
}

/// What the test IdP answers at a simulated time: a token's lifetime, or an error.
type Answer = Box<dyn Fn(Duration) -> Result<Duration, IdpError> + Send + Sync>;

/// A minter that answers by the simulated time since `start` and logs when it was called.
struct Clocked {
    start: Instant,
    log: Arc<Mutex<Vec<Duration>>>,
    answer: Answer,
}

impl Minter for Clocked {
    fn mint(&self) -> BoxFuture<'_, Result<Token, IdpError>> {
        let at = self.start.elapsed();
        lock(&self.log).push(at);
        let answer = (self.answer)(at).map(|lifetime| Token {
            access_token: SecretString::new(format!("t{}", at.as_millis())),
            token_type: "Bearer".into(),
            issued_at: wall(at),
            expires_at: wall(at) + lifetime,
        });
        Box::pin(async move { answer })
    }
}

/// A cache with one token request, [`NAME`], minted by a [`Clocked`] double.
struct Harness {
    cache: Arc<TokenCache>,
    start: Instant,
    log: Arc<Mutex<Vec<Duration>>>,
    _dir: tempfile::TempDir,
}

const NAME: &str = "api";

impl Harness {
    fn new(
        policy: RefreshPolicy,
        answer: impl Fn(Duration) -> Result<Duration, IdpError> + Send + Sync + 'static,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let start = Instant::now();
        let log = Arc::new(Mutex::new(Vec::new()));
        let minter = Clocked {
            start,
            log: log.clone(),
            answer: Box::new(answer),
        };
        let cache = TokenCache::new(
            vec![(NAME.to_string(), Box::new(minter) as Box<dyn Minter>)],
            None,
            Arc::new(Sink::open(dir.path(), 0o644).unwrap()),
            Arc::new(Metrics::new()),
            policy,
        )
        .with_jitter_seed(14);
        Self {
            cache: Arc::new(cache),
            start,
            log,
            _dir: dir,
        }
    }

    /// Simulated time since the start.
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// When the IdP was called, in simulated time since the start.
    fn calls(&self) -> Vec<Duration> {
        lock(&self.log).clone()
    }

    /// Runs the refresher for `how_long` of simulated time, then stops it.
    async fn refresh_for(&self, how_long: Duration) {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(
            self.cache
                .clone()
                .refresh(NAME.to_string(), shutdown.clone()),
        );
        tokio::time::sleep(how_long).await;
        shutdown.cancel();
        task.await.unwrap();
    }

    /// Reads every `every` until `until` (simulated), alongside a running refresher; each read's
    /// simulated time and what it got (the token's simulated issue time, or the error).
    async fn read_every(
        &self,
        every: Duration,
        until: Duration,
    ) -> Vec<(Duration, Result<Duration, String>)> {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(
            self.cache
                .clone()
                .refresh(NAME.to_string(), shutdown.clone()),
        );
        let mut reads = Vec::new();
        let mut tick = tokio::time::interval(every);
        while self.now() < until {
            tick.tick().await;
            let at = self.now();
            let got = self.cache.get(NAME).await;
            if let Ok(token) = &got {
                // Never a token a peer would reject as expired, or within the margin of it.
                assert!(token.is_fresh(wall(at)), "stale token at {at:?}: {token:?}");
            }
            let got = got
                .map(|t| t.issued_at.duration_since(wall(Duration::ZERO)).unwrap())
                .map_err(|e| e.to_string());
            reads.push((at, got));
        }
        shutdown.cancel();
        task.await.unwrap();
        reads
    }
}

fn overloaded() -> IdpError {
    IdpError::Status {
        url: "https://idp/token".into(),
        status: 503,
        retry_after: None,
    }
}

fn wrong_secret() -> IdpError {
    IdpError::Rejected {
        url: "https://idp/token".into(),
        status: 401,
        error: "invalid_client".into(),
        description: None,
    }
}

/// The tokens a read at `at` may get, given the times tokens were `minted`: the last one minted
/// before `at`, or one minted at `at` itself (the refresher and a reader woke together).
fn minted_by(minted: &[Duration], at: Duration) -> Vec<Duration> {
    let before = minted.iter().rev().find(|m| **m < at).copied();
    let now = minted.iter().find(|m| **m == at).copied();
    before.into_iter().chain(now).collect()
}

/// The default policy without jitter: refresh at exactly 75% of the lifetime.
fn unjittered() -> RefreshPolicy {
    RefreshPolicy {
        jitter: 0.0,
        ..RefreshPolicy::default()
    }
}

#[tokio::test(start_paused = true)]
async fn the_refresher_respects_a_back_off_a_reader_started() {
    let h = Harness::new(RefreshPolicy::default(), |_| Err(overloaded()));
    assert!(h.cache.get(NAME).await.is_err());
    assert_eq!(h.calls().len(), 1);
    // The refresher's fetch during that back-off gets the error, not a second IdP call.
    let slot = h.cache.slot(NAME).unwrap();
    let err = h.cache.fetch(slot, Want::Refresh).await;
    assert!(err.is_err());
    assert_eq!(h.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn fetch_until_stops_at_a_permanent_refusal() {
    let h = Harness::new(RefreshPolicy::default(), |_| Err(wrong_secret()));
    let start = Instant::now();
    let err = h
        .cache
        .fetch_until(NAME, start + secs(300))
        .await
        .unwrap_err();
    assert_eq!(h.calls().len(), 1);
    assert_eq!(Instant::now(), start, "no waiting");
    assert!(err.to_string().contains("invalid_client"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn fetch_until_retries_transient_failures_until_the_deadline() {
    let h = Harness::new(RefreshPolicy::default(), |_| Err(overloaded()));
    let start = Instant::now();
    let deadline = start + secs(60);
    assert!(h.cache.fetch_until(NAME, deadline).await.is_err());
    // Back-offs of 0.5–1, 1–2, 2–4, 4–8, 8–16, 16–32 s fit 60 s at least five times.
    assert!(h.calls().len() >= 5, "{:?}", h.calls());
    assert!(Instant::now() > start + secs(15));
}

#[tokio::test(start_paused = true)]
async fn the_refresher_mints_at_the_policys_refresh_point() {
    // Without jitter: at 0, 75, 150, … s for 100 s tokens.
    let h = Harness::new(unjittered(), |_| Ok(secs(100)));
    h.refresh_for(secs(1000)).await;
    let want: Vec<_> = (0..14).map(|i| secs(75 * i)).collect();
    assert_eq!(h.calls(), want);

    // With jitter: each token is refreshed 65–75 s after it was minted, at a point of its own.
    let policy = RefreshPolicy::default();
    let h = Harness::new(policy, |_| Ok(secs(100)));
    h.refresh_for(secs(10_000)).await;
    let gaps: Vec<_> = h.calls().windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() > 130, "{gaps:?}");
    for gap in &gaps {
        let (early, late) = (
            policy.refresh_after(secs(100), 1.0),
            policy.refresh_after(secs(100), 0.0),
        );
        assert!(
            *gap >= early && *gap <= late,
            "{gap:?} not in {early:?}..={late:?}"
        );
    }
    let spread =
        gaps.iter().max().unwrap().as_secs_f64() - gaps.iter().min().unwrap().as_secs_f64();
    assert!(
        spread > 8.0,
        "the refresh points are jittered: spread {spread} s"
    );
}

#[tokio::test(start_paused = true)]
async fn readers_get_the_new_token_from_the_refresh_point_on() {
    let h = Harness::new(unjittered(), |_| Ok(secs(100)));
    let reads = h.read_every(Duration::from_millis(500), secs(200)).await;
    assert_eq!(h.calls(), [secs(0), secs(75), secs(150)]);
    for (at, got) in &reads {
        // The token minted at the last refresh point (either one, at the very instant the
        // refresher wakes): no read waits for the IdP or misses a refresh.
        let got = got.as_ref().unwrap();
        assert!(
            minted_by(&h.calls(), *at).contains(got),
            "read at {at:?}: {got:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn back_off_grows_to_its_cap_and_is_jittered_within_its_bounds() {
    let policy = RefreshPolicy::default();
    let h = Harness::new(policy, |_| Err(overloaded()));
    h.refresh_for(secs(1800)).await;
    let calls = h.calls();
    let gaps: Vec<_> = calls.windows(2).map(|w| w[1] - w[0]).collect();
    // 0.5–1, 1–2, 2–4, … s, then 30–60 s from the seventh failure on.
    for (attempt, gap) in gaps.iter().enumerate() {
        let full = policy.backoff(attempt as u32, 1.0, None);
        assert!(
            *gap >= full / 2 && *gap <= full,
            "gap {attempt}: {gap:?} vs {full:?}"
        );
    }
    assert!(gaps.len() > 30, "{gaps:?}");
    let capped = &gaps[7..];
    assert!(capped.iter().any(|g| *g < secs(45)) && capped.iter().any(|g| *g > secs(45)));
    assert!(
        gaps[..7].windows(2).all(|w| w[1] > w[0] / 2),
        "it grows: {gaps:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn back_off_waits_at_least_the_idps_retry_after() {
    let h = Harness::new(RefreshPolicy::default(), |_| {
        Err(IdpError::Status {
            url: "https://idp/token".into(),
            status: 429,
            retry_after: Some(secs(30)),
        })
    });
    h.refresh_for(secs(600)).await;
    let calls = h.calls();
    assert!(calls[1] >= secs(30) && calls[1] < secs(60), "{calls:?}");
    assert!(
        calls.windows(2).all(|w| w[1] - w[0] >= secs(30)),
        "{calls:?}"
    );
}

fn rate_limited() -> IdpError {
    IdpError::Status {
        url: "https://idp/token".into(),
        status: 429,
        retry_after: Some(secs(1)),
    }
}

/// A fleet start against a rate limit (issue 16): each refusal says "come back in 1 s", and the
/// agent does, within one more second, instead of doubling its wait each time.
#[tokio::test(start_paused = true)]
async fn a_rate_limit_s_retry_after_is_followed_without_growing() {
    // Refused for the first 4 s, then served.
    let h = Harness::new(RefreshPolicy::default(), |at| {
        if at < secs(4) {
            Err(rate_limited())
        } else {
            Ok(secs(3600))
        }
    });
    h.refresh_for(secs(60)).await;
    let calls = h.calls();
    let gaps: Vec<_> = calls.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|g| *g >= secs(1) && *g < secs(2)),
        "{calls:?}"
    );
    // Served within two seconds of the limit lifting (the old back-off: 1, 2, 4 s… took to 7 s).
    assert!(calls.last().unwrap() < &secs(6), "{calls:?}");
    assert_eq!(h.cache.status().await[0].state, State::Valid);
}

/// The first call of each name waits its draw of `start_jitter`, in serve and in `--once`; with
/// none (the default) it is made at once.
#[tokio::test(start_paused = true)]
async fn the_first_call_waits_a_draw_of_the_start_jitter() {
    let jittered = RefreshPolicy {
        start_jitter: secs(10),
        ..RefreshPolicy::default()
    };
    let mut firsts = Vec::new();
    for seed in 0..8 {
        let h = Harness::new(jittered, |_| Ok(secs(3600)));
        let cache = Arc::try_unwrap(h.cache)
            .ok()
            .unwrap()
            .with_jitter_seed(seed);
        let h = Harness {
            cache: Arc::new(cache),
            ..h
        };
        h.refresh_for(secs(20)).await;
        let first = h.calls()[0];
        assert!(first < secs(10), "{first:?}");
        firsts.push(first);
    }
    firsts.dedup();
    assert!(firsts.len() > 1, "the draws differ: {firsts:?}");
    // --once waits the same way, and no longer than its deadline.
    let h = Harness::new(jittered, |_| Ok(secs(3600)));
    let start = Instant::now();
    h.cache.fetch_until(NAME, start + secs(60)).await.unwrap();
    assert!(h.calls()[0] < secs(10), "{:?}", h.calls());
    let h = Harness::new(jittered, |_| Ok(secs(3600)));
    h.cache.fetch_until(NAME, start).await.unwrap();
    assert_eq!(
        h.calls(),
        [Duration::ZERO],
        "a deadline already past: no wait"
    );
    // Default: at once.
    let h = Harness::new(RefreshPolicy::default(), |_| Ok(secs(3600)));
    h.refresh_for(secs(1)).await;
    assert_eq!(h.calls(), [Duration::ZERO]);
}

/// A pod paced by the injector makes its first calls at its time (serve and `--once`), never
/// past `--once`'s deadline; a time already past costs no wait.
#[tokio::test(start_paused = true)]
async fn the_first_call_waits_for_the_paced_start() {
    let paced = |ahead: Duration| RefreshPolicy {
        start_at: Some(std::time::SystemTime::now() + ahead),
        ..RefreshPolicy::default()
    };
    let h = Harness::new(paced(secs(5)), |_| Ok(secs(3600)));
    h.refresh_for(secs(20)).await;
    let first = h.calls()[0];
    // The wall clock moves on by the microseconds the test takes before the wait is computed.
    assert!(
        first > Duration::from_millis(4900) && first <= secs(5),
        "{first:?}"
    );
    let h = Harness::new(paced(secs(5)), |_| Ok(secs(3600)));
    let start = Instant::now();
    h.cache.fetch_until(NAME, start + secs(2)).await.unwrap();
    assert_eq!(h.calls(), [secs(2)], "--once never waits past its deadline");
    let late = RefreshPolicy {
        start_at: Some(std::time::SystemTime::now() - secs(30)),
        ..RefreshPolicy::default()
    };
    let h = Harness::new(late, |_| Ok(secs(3600)));
    h.refresh_for(secs(1)).await;
    assert_eq!(
        h.calls(),
        [Duration::ZERO],
        "a pod that starts late calls at once"
    );
}

#[tokio::test(start_paused = true)]
async fn an_expired_token_is_never_served() {
    // One 100 s token, then the IdP fails for good.
    let h = Harness::new(unjittered(), |at| {
        if at.is_zero() {
            Ok(secs(100))
        } else {
            Err(overloaded())
        }
    });
    let reads = h.read_every(Duration::from_millis(100), secs(300)).await;
    for (at, got) in &reads {
        // Served up to its expiry less the 5 s margin, then never again.
        if *at < secs(95) {
            assert_eq!(got.as_ref(), Ok(&Duration::ZERO), "read at {at:?}");
        } else {
            let err = got.as_ref().unwrap_err();
            assert!(err.contains("503"), "read at {at:?}: {err}");
        }
    }
    // The expired token is still what the status reports, as expired.
    let status = &h.cache.status().await[0];
    assert_eq!(status.state, State::Expired);
    assert_eq!(status.expires_at, Some(wall(secs(100))));
    assert!(h.cache.ready().await.is_err());
}

#[tokio::test(start_paused = true)]
async fn a_failing_idp_does_not_take_a_valid_token_away() {
    // The IdP is down from just after the first token until 80 s; the token lives 100 s and is
    // due at 75 s, so the refresher retries from 75 s and gets a new one by 90 s.
    let h = Harness::new(unjittered(), |at| {
        if at.is_zero() || at >= secs(80) {
            Ok(secs(100))
        } else {
            Err(overloaded())
        }
    });
    let status = {
        let h = &h;
        async move {
            tokio::time::sleep(secs(78)).await;
            h.cache.status().await.remove(0)
        }
    };
    let (reads, status) = tokio::join!(h.read_every(Duration::from_millis(100), secs(200)), status);
    // Every read got a token: the old one until the refresh succeeded, then the new ones.
    let minted: Vec<_> = h
        .calls()
        .into_iter()
        .filter(|at| at.is_zero() || *at >= secs(80))
        .collect();
    assert!(minted[1] < secs(90), "{:?}", h.calls());
    for (at, got) in &reads {
        let got = got.as_ref().unwrap();
        assert!(
            minted_by(&minted, *at).contains(got),
            "read at {at:?}: {got:?}"
        );
    }
    // Meanwhile the name was valid, with the failure on record.
    assert_eq!(status.state, State::Valid);
    assert!(status.last_error.unwrap().contains("503"));
}
