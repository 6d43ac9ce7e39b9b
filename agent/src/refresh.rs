//! Timing policy as pure functions: when to refresh a token ([`RefreshPolicy`]), how long a token
//! is believed to live ([`Lifetimes`]), and how long to wait after a failure ([`Backoff`], also
//! used for reconnecting to FlyteAdmin). No clock and no randomness of its own: callers pass the
//! random draw, so tests can pin it.

use std::time::Duration;

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

    /// Wait before the retry that follows failure number `attempt` (0 for the first failure):
    /// exponential from `min_backoff` up to `max_backoff`, the upper half jittered by `draw`
    /// in [0, 1), and never shorter than the IdP's `Retry-After`.
    pub fn backoff(&self, attempt: u32, draw: f64, retry_after: Option<Duration>) -> Duration {
        let backoff = Backoff {
            min: self.min_backoff,
            max: self.max_backoff,
        };
        let jittered = backoff.jittered(attempt, draw);
        retry_after.map_or(jittered, |r| r.max(jittered))
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
            let latest = UNIX_EPOCH + p.refresh_after(lifetime, 0.0) + lifetime / 10;
            assert!(token.is_fresh(latest), "{secs}s token");
        }
    }

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let p = RefreshPolicy::default();
        let secs = |attempt, draw| p.backoff(attempt, draw, None).as_secs_f64();
        assert_eq!(secs(0, 1.0), 1.0);
        assert_eq!(secs(0, 0.0), 0.5);
        assert_eq!(secs(3, 1.0), 8.0);
        assert_eq!(secs(10, 1.0), 60.0);
        assert_eq!(secs(u32::MAX, 1.0), 60.0);
        assert_eq!(
            p.backoff(0, 1.0, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        assert_eq!(
            p.backoff(6, 1.0, Some(Duration::from_secs(2))),
            Duration::from_secs(60)
        );
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
