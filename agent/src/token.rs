//! The token value types: a redacting string wrapper for secrets and tokens, and a minted
//! [`Token`] with its lifetime.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;

/// A secret or token value. It has no `Display`, and its `Debug` prints `[redacted]`, so it
/// cannot reach a log line or an error message by accident; [`SecretString::expose`] is the one
/// door out, and every caller of it is a place that must send the value somewhere on purpose.
///
/// The value is held as [`Bytes`], so a response body can share it instead of copying it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(Bytes);

impl SecretString {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(Bytes::from(value.into().into_bytes()))
    }

    /// The value itself, for the few places that must send it.
    pub fn expose(&self) -> &str {
        // Made from a String, so always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The value as shared bytes, for a response body (no copy).
    pub fn expose_bytes(&self) -> Bytes {
        self.0.clone()
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// An access token minted by an IdP.
#[derive(Debug, Clone)]
pub struct Token {
    /// The bearer value.
    pub access_token: SecretString,
    /// `token_type` as the IdP sent it (normally `Bearer`).
    pub token_type: String,
    /// When the agent received it.
    pub issued_at: SystemTime,
    /// When it stops being valid.
    pub expires_at: SystemTime,
}

/// A token closer than this to its expiry is treated as expired: a caller that receives it needs
/// a moment to use it, and clocks in a cluster drift.
pub const EXPIRY_SKEW: Duration = Duration::from_secs(5);

/// How long before its expiry a token of `lifetime` stops being handed out: [`EXPIRY_SKEW`], or
/// a tenth of a shorter lifetime. The tenth keeps short-lived tokens usable well past the refresh
/// point (at most 75% of the lifetime by default), so a failed refresh has time to retry before
/// readers see an expired token.
pub fn expiry_margin(lifetime: Duration) -> Duration {
    EXPIRY_SKEW.min(lifetime / 10)
}

impl Token {
    /// Whether the token can still be handed out at `now` (wall time): more than
    /// [`expiry_margin`] before its expiry. The cache decides the same on its own clock, with
    /// [`crate::refresh::Schedule::freshness`].
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        now + expiry_margin(self.lifetime()) < self.expires_at
    }

    /// The whole validity period the IdP granted.
    pub fn lifetime(&self) -> Duration {
        self.expires_at
            .duration_since(self.issued_at)
            .unwrap_or_default()
    }

    /// Seconds until expiry, negative once expired (for metrics and the status listing).
    pub fn seconds_to_expiry(&self, now: SystemTime) -> f64 {
        match self.expires_at.duration_since(now) {
            Ok(left) => left.as_secs_f64(),
            Err(past) => -past.duration().as_secs_f64(),
        }
    }
}

/// The `exp` claim of a JWT in whole seconds since the epoch (negative before 1970), read without
/// verifying it: the agent is not the audience, it only needs to know when the token stops being
/// valid. `None` when the token is not a JWT or has no numeric `exp`. Out-of-range values saturate
/// (`u64::MAX` reads as `i64::MAX`) and fractions round down, so any `exp` an IdP sends is a
/// number the caller can compare without overflow.
pub fn jwt_exp(token: &str) -> Option<i64> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: Option<serde_json::Number>,
    }
    let exp = serde_json::from_slice::<Claims>(&bytes).ok()?.exp?;
    if let Some(secs) = exp.as_i64() {
        return Some(secs);
    }
    if exp.as_u64().is_some() {
        return Some(i64::MAX);
    }
    // A float: `as` saturates, and JSON has no NaN or infinity.
    exp.as_f64().map(|f| f.floor() as i64)
}

/// The latest time RFC 3339 (four-digit years) can write: 9999-12-31T23:59:59Z.
const RFC3339_MAX_SECS: u64 = 253_402_300_799;

/// RFC 3339 in UTC with seconds, the form the socket API uses for times. Times outside what the
/// format can write (before 1970, after year 9999) are clamped to its ends instead of panicking.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs().min(RFC3339_MAX_SECS));
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn secret_string_debug_is_redacted() {
        let s = SecretString::new("hunter2");
        assert_eq!(format!("{s:?}"), "[redacted]");
        let t = Token {
            access_token: SecretString::new("eyJ.value.sig"),
            token_type: "Bearer".into(),
            issued_at: UNIX_EPOCH,
            expires_at: UNIX_EPOCH,
        };
        assert!(!format!("{t:?}").contains("eyJ.value.sig"));
    }

    #[test]
    fn jwt_exp_reads_any_number_without_overflow() {
        for (payload, exp) in [
            (r#"{"exp":1700000000,"sub":"x"}"#, 1_700_000_000),
            (r#"{"exp":-5}"#, -5),
            (r#"{"exp":1700000000.9}"#, 1_700_000_000),
            (r#"{"exp":18446744073709551615}"#, i64::MAX),
            (r#"{"exp":9223372036854775807}"#, i64::MAX),
            (r#"{"exp":1e300}"#, i64::MAX),
            (r#"{"exp":-1e300}"#, i64::MIN),
        ] {
            assert_eq!(jwt_exp(&jwt(payload)), Some(exp), "{payload}");
        }
    }

    #[test]
    fn jwt_exp_ignores_non_jwts() {
        for t in [
            "opaque-token",
            "a.b",
            "a.b.c.d",
            &jwt(r#"{"sub":"no exp"}"#),
            &jwt(r#"{"exp":"soon"}"#),
            "e30.!!!.sig",
        ] {
            assert_eq!(jwt_exp(t), None, "{t}");
        }
    }

    #[test]
    fn rfc3339_never_panics() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14T22:13:20Z"
        );
        let far = UNIX_EPOCH + Duration::from_secs(i64::MAX as u64);
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn freshness_keeps_a_skew() {
        let t = Token {
            access_token: SecretString::new("x"),
            token_type: "Bearer".into(),
            issued_at: UNIX_EPOCH,
            expires_at: UNIX_EPOCH + Duration::from_secs(100),
        };
        assert!(t.is_fresh(UNIX_EPOCH + Duration::from_secs(94)));
        assert!(!t.is_fresh(UNIX_EPOCH + Duration::from_secs(95)));
        assert_eq!(t.lifetime(), Duration::from_secs(100));
        assert_eq!(
            t.seconds_to_expiry(UNIX_EPOCH + Duration::from_secs(110)),
            -10.0
        );
        // A short-lived token keeps a proportionally short skew, so it is usable at all.
        let short = Token {
            expires_at: UNIX_EPOCH + Duration::from_secs(4),
            ..t
        };
        assert!(short.is_fresh(UNIX_EPOCH + Duration::from_millis(3500)));
        assert!(!short.is_fresh(UNIX_EPOCH + Duration::from_millis(3600)));
    }
}
