//! Start pacing (issue 16): the times at which the pods of a fan-out may make their first IdP
//! calls, spaced at the IdP's rate. When a map task's N pods start together, each agent asking at
//! once, a rate-limited IdP refuses all but its burst, whatever the agents do next; no agent can
//! know N at its first call. The injector can: it admits every pod. It keeps one [`Pacer`] and
//! gives each pod the time its agent's first calls may start (env `FLYTE_AUTH_AGENT_START_AT`,
//! Unix milliseconds), and the agent waits until then. The fleet then costs the IdP one call per
//! token and is ready in about (N − burst)/rate, without anyone choosing a jitter for N.
//!
//! The schedule is the generic cell rate algorithm (GCRA): the token bucket IdPs limit with
//! (`burst` calls, refilled at `rate` per second), kept as one theoretical arrival time. Wall
//! clock, because the time travels to another node's agent in an env var.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Hands out first-call times at an IdP's rate; shared by every review of one injector.
#[derive(Debug)]
pub struct Pacer {
    /// 1 / rate: the time one call uses up.
    interval: Duration,
    /// How far ahead of the bucket a call may be: (burst − 1) intervals.
    tolerance: Duration,
    /// No pod is scheduled later than this after its admission.
    max_delay: Duration,
    /// The theoretical arrival time: when the bucket would be full again. None before any call.
    tat: Mutex<Option<SystemTime>>,
}

impl Pacer {
    /// A pacer for an IdP that allows `burst` calls at once and `rate` per second after; a pod's
    /// time is never more than `max_delay` after its admission. `rate` must be above zero and
    /// finite, `burst` at least 1 (the config checks them).
    pub fn new(rate: f64, burst: u32, max_delay: Duration) -> Self {
        let interval = Duration::from_secs_f64(1.0 / rate);
        Self {
            interval,
            tolerance: interval * burst.saturating_sub(1),
            max_delay,
            tat: Mutex::new(None),
        }
    }

    /// Reserves `calls` IdP calls for a pod admitted at `now`: the time its agent may make them,
    /// never before `now` and never more than `max_delay` after it.
    pub fn reserve(&self, now: SystemTime, calls: u32) -> SystemTime {
        let calls = calls.max(1);
        let mut tat = self.tat.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = tat.map_or(now, |t| t.max(now));
        // All of the pod's calls go at one time, so the last of them must conform too.
        let conforms = bucket + self.interval * (calls - 1);
        let at = conforms
            .checked_sub(self.tolerance)
            .map_or(now, |t| t.max(now));
        let latest = now + self.max_delay;
        let at = at.min(latest);
        // A capped pod still uses its calls, but the schedule does not run on past the cap: once
        // admissions slow down, new pods are paced from the IdP's real state, not a backlog.
        let after = (bucket.max(at) + self.interval * calls).min(latest + self.tolerance);
        *tat = Some(after);
        at
    }
}

/// `time` as the env var carries it: whole Unix milliseconds, rounded up (a call a fraction of a
/// millisecond early can find the IdP's bucket a fraction of a call short).
pub fn to_unix_millis(time: SystemTime) -> u128 {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    since.as_millis() + u128::from(since.subsec_nanos() % 1_000_000 != 0)
}

/// The time the env var `value` names (Unix milliseconds), or None when it is not one.
pub fn from_unix_millis(value: &str) -> Option<SystemTime> {
    let ms: u64 = value.trim().parse().ok()?;
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_000_000) + Duration::from_millis(ms)
    }

    fn offsets(pacer: &Pacer, now: SystemTime, pods: usize, calls: u32) -> Vec<u128> {
        (0..pods)
            .map(|_| {
                let t = pacer.reserve(now, calls);
                t.duration_since(now).unwrap().as_millis()
            })
            .collect()
    }

    #[test]
    fn a_burst_of_pods_gets_the_burst_at_once_then_one_pod_per_interval() {
        // 50/s, burst 5: five at once, then every 20 ms, as the IdP's bucket refills.
        let pacer = Pacer::new(50.0, 5, Duration::from_secs(60));
        let times = offsets(&pacer, at(0), 8, 1);
        assert_eq!(times, [0, 0, 0, 0, 0, 20, 40, 60]);
    }

    #[test]
    fn the_schedule_follows_the_bucket_as_it_refills() {
        let pacer = Pacer::new(10.0, 2, Duration::from_secs(60));
        assert_eq!(offsets(&pacer, at(0), 3, 1), [0, 0, 100]);
        // 1 s later the bucket is full again: two at once.
        assert_eq!(offsets(&pacer, at(1000), 3, 1), [0, 0, 100]);
        // 150 ms into that second schedule: the next pod is due at 200 ms, 50 ms on.
        let next = pacer.reserve(at(1150), 1);
        assert_eq!(next.duration_since(at(1150)).unwrap().as_millis(), 50);
    }

    #[test]
    fn a_pod_with_several_tokens_uses_as_many_calls() {
        // 10/s, burst 3: a pod of 3 calls takes the whole burst; the next pod of 3 waits until
        // the last of its calls conforms, 3 intervals on.
        let pacer = Pacer::new(10.0, 3, Duration::from_secs(60));
        assert_eq!(offsets(&pacer, at(0), 3, 3), [0, 300, 600]);
        // Zero calls count as one: a pod the agent is injected into makes at least one.
        let pacer = Pacer::new(10.0, 1, Duration::from_secs(60));
        assert_eq!(offsets(&pacer, at(0), 2, 0), [0, 100]);
    }

    #[test]
    fn no_pod_waits_past_the_cap_and_the_backlog_does_not_outlive_it() {
        // 1/s, burst 1, at most 3 s: the fifth and later pods of a burst are all at the cap.
        let pacer = Pacer::new(1.0, 1, Duration::from_secs(3));
        assert_eq!(
            offsets(&pacer, at(0), 7, 1),
            [0, 1000, 2000, 3000, 3000, 3000, 3000]
        );
        // 10 s later the IdP has long been idle: a new pod goes at once.
        assert_eq!(offsets(&pacer, at(10_000), 1, 1), [0]);
    }

    #[test]
    fn the_env_value_round_trips_and_refuses_what_is_not_a_time() {
        let t = at(1234);
        assert_eq!(from_unix_millis(&to_unix_millis(t).to_string()), Some(t));
        let early = to_unix_millis(t + Duration::from_micros(1));
        assert_eq!(early, to_unix_millis(t) + 1, "never a call before its time");
        for bad in ["", "soon", "-5", "1.5", "99999999999999999999999"] {
            assert_eq!(from_unix_millis(bad), None, "{bad:?}");
        }
    }
}
