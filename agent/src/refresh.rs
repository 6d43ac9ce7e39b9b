//! Timing policy as pure functions: when to refresh a token ([`RefreshPolicy`], [`Schedule`]),
//! whether a cached token may still be served ([`Freshness`]), how long a token is believed to
//! live ([`Lifetimes`]), and how long to wait after a failure ([`Backoff`], also used for
//! reconnecting to FlyteAdmin). No clock and no randomness of its own: callers pass `now` and the
//! random draw, so tests can pin both.
//!
//! Instants are [`tokio::time::Instant`]s: the cache reads them from tokio's clock, which a test
//! pauses and advances, so the same functions drive the real agent and a simulated day.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::token::expiry_margin;

/// A wait that stands for "not in this process's lifetime" when a longer one cannot be added to
/// the clock (thirty years, as tokio's own far future).
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// `at + wait`, or thirty years from `at` when the sum does not fit the clock (a configured
/// back-off or lifetime of centuries must not overflow it).
pub fn later(at: Instant, wait: Duration) -> Instant {
    at.checked_add(wait).unwrap_or_else(|| at + FAR_FUTURE)
}

/// Exponential back-off: `min` doubling per failure up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Wait after the first failure.
    pub min: Duration,
    /// Longest wait.
    pub max: Duration,
}

impl Backoff {
    /// Wait before the retry that follows failure number `attempt` (0 for the first failure).
    pub fn delay(&self, attempt: u32) -> Duration {
        self.min.saturating_mul(1 << attempt.min(20)).min(self.max)
    }

    /// [`Backoff::delay`] with its upper half jittered by `draw` in [0, 1), so clients that
    /// failed together do not retry together.
    pub fn jittered(&self, attempt: u32, draw: f64) -> Duration {
        self.delay(attempt).mul_f64(0.5 + 0.5 * draw)
    }
}

/// How long a token lives when the IdP does not say, and at most whatever it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// Assumed when neither `expires_in` nor a JWT `exp` states a lifetime.
    pub default: Duration,
    /// The longest lifetime believed: longer `expires_in` or `exp` values are cut to it.
    pub max: Duration,
}

/// When to refresh a token and how to back off after a failure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefreshPolicy {
    /// Refresh once this fraction of the lifetime has passed…
    pub at_fraction: f64,
    /// …minus up to this fraction, drawn at random per refresh.
    pub jitter: f64,
    /// Lifetime assumed when the IdP states none and the token is not a JWT with `exp`.
    pub default_lifetime: Duration,
    /// Longest lifetime believed: a longer `expires_in` or JWT `exp` is cut to it, so a broken
    /// IdP cannot make the agent keep a token for centuries (or overflow its clock arithmetic).
    pub max_lifetime: Duration,
    /// First back-off after a failure.
    pub min_backoff: Duration,
    /// Longest back-off.
    pub max_backoff: Duration,
    /// Refusals in a row for which an IdP's `Retry-After` is followed as given (plus up to as
    /// long again, drawn); from the next one on the exponential back-off applies as well.
    pub retry_after_attempts: u32,
    /// A name's first IdP call waits a delay drawn from [0, this): pods of a fan-out that start
    /// together then reach a rate-limited IdP spread out instead of at once. Zero: at once.
    pub start_jitter: Duration,
    /// The first IdP calls wait until this time (then the start jitter's draw): the injector's
    /// start pacing, env `FLYTE_AUTH_AGENT_START_AT`. None: no wait.
    pub start_at: Option<SystemTime>,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            at_fraction: 0.75,
            jitter: 0.1,
            default_lifetime: Duration::from_secs(300),
            max_lifetime: Duration::from_secs(365 * 24 * 3600),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            retry_after_attempts: 5,
            start_jitter: Duration::ZERO,
            start_at: None,
        }
    }
}

impl RefreshPolicy {
    /// The lifetimes the IdP client applies to what it mints.
    pub fn lifetimes(&self) -> Lifetimes {
        Lifetimes {
            default: self.default_lifetime,
            max: self.max_lifetime,
        }
    }

    /// Time after issue at which to refresh a token of `lifetime`; `draw` is uniform in [0, 1).
    pub fn refresh_after(&self, lifetime: Duration, draw: f64) -> Duration {
        lifetime.mul_f64((self.at_fraction - self.jitter * draw).max(0.0))
    }

    /// The schedule of a token of `lifetime` whose request was sent at `issued`, refreshed at
    /// [`RefreshPolicy::refresh_after`] with `draw` (one draw per token).
    pub fn schedule(&self, issued: Instant, lifetime: Duration, draw: f64) -> Schedule {
        Schedule {
            issued,
            refresh_at: later(issued, self.refresh_after(lifetime, draw)),
            expires: later(issued, lifetime),
        }
    }

    /// Wait before the retry that follows failure number `attempt` (0 for the first failure),
    /// with `draw` in [0, 1).
    ///
    /// Without a `Retry-After`: exponential from `min_backoff` up to `max_backoff`, the upper
    /// half jittered. With one (at least `min_backoff`): that long plus up to as long again, for
    /// the first `retry_after_attempts` failures in a row; after them, the longer of that and the
    /// exponential back-off counted from there. A rate limit that refuses a fleet start answers
    /// each pod "come back in 1 s" and means it: growing the wait on top (as the exponential
    /// back-off did, 1, 2, 4, 8 s…) only stretched the fleet's tail (issue 16), while the drawn
    /// extra keeps pods refused together from coming back together. An IdP that keeps answering
    /// so (an outage behind a fixed `Retry-After`) is still backed off from.
    pub fn backoff(&self, attempt: u32, draw: f64, retry_after: Option<Duration>) -> Duration {
        let backoff = Backoff {
            min: self.min_backoff,
            max: self.max_backoff,
        };
        let Some(retry_after) = retry_after else {
            return backoff.jittered(attempt, draw);
        };
        let base = retry_after.max(self.min_backoff);
        let spread = base + base.mul_f64(draw);
        match attempt.checked_sub(self.retry_after_attempts) {
            Some(beyond) => spread.max(backoff.jittered(beyond, draw)),
            None => spread,
        }
    }

    /// The wait before a name's first IdP call at `now`, with `draw` in [0, 1): until
    /// [`RefreshPolicy::start_at`], then the draw of [`RefreshPolicy::start_jitter`].
    pub fn start_delay(&self, now: SystemTime, draw: f64) -> Duration {
        let until_start = self
            .start_at
            .and_then(|at| at.duration_since(now).ok())
            .unwrap_or(Duration::ZERO);
        until_start + self.start_jitter.mul_f64(draw)
    }
}

/// Where a cached token stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Before its refresh point: serve it; nothing to do.
    Fresh,
    /// Past its refresh point but still far enough from expiry to serve: serve it, and mint its
    /// successor.
    RefreshDue,
    /// Within [`expiry_margin`] of its expiry, or past it: never served.
    Expired,
}

/// A cached token's times on the cache's clock, fixed when it is minted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// The start of its lifetime: when its request was sent, which is no later than when the
    /// IdP issued it, so every time below errs early.
    pub issued: Instant,
    /// When to mint its successor.
    pub refresh_at: Instant,
    /// When it stops being valid.
    pub expires: Instant,
}

impl Schedule {
    /// Where the token stands at `now`: [`Freshness::Expired`] from [`expiry_margin`] before
    /// `expires` on, else [`Freshness::RefreshDue`] from `refresh_at` on, else
    /// [`Freshness::Fresh`]. Expiry wins when a refresh point falls inside the margin.
    pub fn freshness(&self, now: Instant) -> Freshness {
        let margin = expiry_margin(self.expires.saturating_duration_since(self.issued));
        if now + margin >= self.expires {
            Freshness::Expired
        } else if now >= self.refresh_at {
            Freshness::RefreshDue
        } else {
            Freshness::Fresh
        }
    }

    /// Whether the token may be handed out at `now` (fresh or due for refresh, not expired).
    pub fn usable(&self, now: Instant) -> bool {
        self.freshness(now) != Freshness::Expired
    }

    /// Seconds from `now` to expiry, negative once expired (for the expiry gauge).
    pub fn seconds_to_expiry(&self, now: Instant) -> f64 {
        if self.expires >= now {
            (self.expires - now).as_secs_f64()
        } else {
            -(now - self.expires).as_secs_f64()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{SecretString, Token};
    use std::time::UNIX_EPOCH;

    #[test]
    fn refresh_point_is_a_jittered_fraction_of_the_lifetime() {
        let p = RefreshPolicy::default();
        let hour = Duration::from_secs(3600);
        assert_eq!(p.refresh_after(hour, 0.0), Duration::from_secs(2700));
        assert_eq!(p.refresh_after(hour, 0.5), Duration::from_secs(2520));
        assert!(p.refresh_after(hour, 0.999) > Duration::from_secs(2340));
        assert!(p.refresh_after(hour, 0.999) < hour);
        // Two pods with different draws refresh at different times.
        assert_ne!(p.refresh_after(hour, 0.1), p.refresh_after(hour, 0.9));
    }

    #[test]
    fn refresh_comes_well_before_a_token_stops_being_fresh() {
        let p = RefreshPolicy::default();
        for secs in [2, 4, 8, 30, 300, 3600, 86_400] {
            let lifetime = Duration::from_secs(secs);
            let token = Token {
                access_token: SecretString::new("t"),
                token_type: "Bearer".into(),
                issued_at: UNIX_EPOCH,
                expires_at: UNIX_EPOCH + lifetime,
            };
            // The latest refresh point, plus a tenth of the lifetime for retries.
            let latest = p.refresh_after(lifetime, 0.0) + lifetime / 10;
            assert!(token.is_fresh(UNIX_EPOCH + latest), "{secs}s token");
            // The cache's view on its own clock agrees.
            let t0 = Instant::now();
            let schedule = p.schedule(t0, lifetime, 0.0);
            assert!(schedule.usable(t0 + latest), "{secs}s token");
        }
    }

    /// A 100 s token refreshed at 75 s (draw 0): the three states and their edges.
    #[test]
    fn freshness_edges() {
        let p = RefreshPolicy::default();
        let t0 = Instant::now();
        let s = p.schedule(t0, Duration::from_secs(100), 0.0);
        assert_eq!(s.refresh_at, t0 + Duration::from_secs(75));
        assert_eq!(s.expires, t0 + Duration::from_secs(100));
        let at = |ms: u64| s.freshness(t0 + Duration::from_millis(ms));
        use Freshness::*;
        for (ms, want) in [
            (0, Fresh),
            (74_999, Fresh),
            (75_000, RefreshDue),
            (94_999, RefreshDue),
            // The 5 s margin: no longer served from here on.
            (95_000, Expired),
            (100_000, Expired),
            (1_000_000, Expired),
        ] {
            assert_eq!(at(ms), want, "at {ms} ms");
        }
        assert!(s.usable(t0 + Duration::from_millis(94_999)));
        assert!(!s.usable(t0 + Duration::from_secs(95)));
        assert_eq!(s.seconds_to_expiry(t0 + Duration::from_secs(40)), 60.0);
        assert_eq!(s.seconds_to_expiry(t0 + Duration::from_secs(110)), -10.0);
    }

    #[test]
    fn freshness_of_short_zero_and_odd_lifetimes() {
        let p = RefreshPolicy::default();
        let t0 = Instant::now();
        let ms = |ms: u64| t0 + Duration::from_millis(ms);
        // 4 s: a margin of a tenth (0.4 s), not 5 s; refresh at 3 s.
        let short = p.schedule(t0, Duration::from_secs(4), 0.0);
        assert_eq!(short.freshness(ms(2_999)), Freshness::Fresh);
        assert_eq!(short.freshness(ms(3_000)), Freshness::RefreshDue);
        assert_eq!(short.freshness(ms(3_599)), Freshness::RefreshDue);
        assert_eq!(short.freshness(ms(3_600)), Freshness::Expired);
        // A token that lives no time at all is never served.
        let zero = p.schedule(t0, Duration::ZERO, 0.0);
        assert_eq!(zero.freshness(t0), Freshness::Expired);
        // A refresh point inside the margin: expiry wins, the token is never "due".
        let late = RefreshPolicy {
            at_fraction: 0.99,
            jitter: 0.0,
            ..p
        };
        let s = late.schedule(t0, Duration::from_secs(100), 0.0);
        assert_eq!(s.freshness(ms(94_999)), Freshness::Fresh);
        assert_eq!(s.freshness(ms(95_000)), Freshness::Expired);
        assert_eq!(s.freshness(ms(99_000)), Freshness::Expired);
        // The longest lifetime config allows fits the clock.
        let century = Duration::from_secs(100 * 365 * 24 * 3600);
        let s = p.schedule(t0, century, 0.5);
        assert_eq!(s.freshness(t0), Freshness::Fresh);
        assert!(s.expires > s.refresh_at);
    }

    #[test]
    fn jitter_moves_the_refresh_point_earlier_only() {
        let p = RefreshPolicy::default();
        let t0 = Instant::now();
        let hour = Duration::from_secs(3600);
        for draw in [0.0, 0.25, 0.5, 0.75, 0.999] {
            let s = p.schedule(t0, hour, draw);
            assert!(s.refresh_at <= t0 + Duration::from_secs(2700), "{draw}");
            assert!(s.refresh_at > t0 + Duration::from_secs(2340), "{draw}");
            assert_eq!(s.expires, t0 + hour);
        }
    }

    #[test]
    fn backoff_grows_and_caps_without_retry_after() {
        let p = RefreshPolicy::default();
        let secs = |attempt, draw| p.backoff(attempt, draw, None).as_secs_f64();
        assert_eq!(secs(0, 1.0), 1.0);
        assert_eq!(secs(0, 0.0), 0.5);
        assert_eq!(secs(3, 1.0), 8.0);
        assert_eq!(secs(10, 1.0), 60.0);
        assert_eq!(secs(u32::MAX, 1.0), 60.0);
    }

    #[test]
    fn retry_after_is_followed_plus_a_draw_then_backed_off_from() {
        let p = RefreshPolicy::default();
        let secs = |attempt, draw, ra: u64| {
            p.backoff(attempt, draw, Some(Duration::from_secs(ra)))
                .as_secs_f64()
        };
        // The first five refusals in a row: Retry-After plus up to as long again, not growing.
        for attempt in 0..5 {
            assert_eq!(secs(attempt, 0.0, 1), 1.0, "attempt {attempt}");
            assert_eq!(secs(attempt, 0.5, 1), 1.5, "attempt {attempt}");
            assert_eq!(secs(attempt, 0.5, 30), 45.0, "attempt {attempt}");
        }
        // Then the exponential back-off from its start, when it is the longer.
        assert_eq!(secs(5, 0.0, 1), 1.0);
        assert_eq!(secs(7, 1.0, 1), 4.0);
        assert_eq!(secs(15, 1.0, 1), 60.0);
        assert_eq!(secs(u32::MAX, 1.0, 1), 60.0);
        assert_eq!(secs(15, 1.0, 100), 200.0);
        // Never sooner than min_backoff, even when the IdP says 0.
        assert_eq!(secs(0, 0.0, 0), 1.0);
        // The number of refusals it is followed for is the policy's.
        let p = RefreshPolicy {
            retry_after_attempts: 0,
            ..p
        };
        assert_eq!(
            p.backoff(3, 1.0, Some(Duration::from_secs(1))),
            Duration::from_secs(8)
        );
    }

    #[test]
    fn the_start_delay_is_a_draw_within_the_start_jitter() {
        let now = SystemTime::now();
        let p = RefreshPolicy::default();
        assert_eq!(p.start_delay(now, 0.99), Duration::ZERO, "default: at once");
        let p = RefreshPolicy {
            start_jitter: Duration::from_secs(10),
            ..p
        };
        assert_eq!(p.start_delay(now, 0.0), Duration::ZERO);
        assert_eq!(p.start_delay(now, 0.25), Duration::from_millis(2500));
        assert!(p.start_delay(now, 0.999) < Duration::from_secs(10));
    }

    #[test]
    fn the_start_delay_waits_for_the_paced_start_then_draws_the_jitter() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let p = RefreshPolicy {
            start_at: Some(now + Duration::from_millis(1500)),
            ..RefreshPolicy::default()
        };
        assert_eq!(p.start_delay(now, 0.5), Duration::from_millis(1500));
        let jittered = RefreshPolicy {
            start_jitter: Duration::from_secs(2),
            ..p
        };
        assert_eq!(jittered.start_delay(now, 0.5), Duration::from_millis(2500));
        // A pod that starts after its time (scheduled late, a slow image pull) calls at once.
        let late = now + Duration::from_secs(5);
        assert_eq!(p.start_delay(late, 0.5), Duration::ZERO);
    }

    #[test]
    fn the_unjittered_delay_doubles_to_its_cap() {
        // FlyteAdmin's reconnect back-off: 100 ms doubling to 5 s.
        let b = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(5),
        };
        let ms = |attempt| b.delay(attempt).as_millis();
        assert_eq!([ms(0), ms(1), ms(2), ms(5)], [100, 200, 400, 3200]);
        assert_eq!([ms(6), ms(7), ms(u32::MAX)], [5000, 5000, 5000]);
    }
}
