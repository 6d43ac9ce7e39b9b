//! RFC 7523 client assertions: the private key behind `private_key_jwt`, checked once when the
//! configuration is loaded and used to sign a short-lived assertion for each token request.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::token::SecretString;

/// Why a client assertion could not be made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AssertionError {
    /// The secret holds no private key the agent can sign with.
    #[error("client assertion: the client secret is not a PEM RSA or P-256 private key")]
    NotAKey,
    /// The signer refused.
    #[error("client assertion: signing failed: {0}")]
    Signing(#[source] jsonwebtoken::errors::Error),
}

/// The private key behind `private_key_jwt`, parsed once to check it and pick the algorithm.
pub struct AssertionKey {
    key: EncodingKey,
    alg: Algorithm,
}

#[derive(serde::Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: String,
    iat: u64,
    exp: u64,
}

impl AssertionKey {
    /// Parses a PEM private key: RSA (signs RS256) or P-256 (signs ES256).
    pub fn from_pem(pem: &SecretString) -> Result<Self, AssertionError> {
        let pem = pem.expose().as_bytes();
        let candidates = [
            EncodingKey::from_rsa_pem(pem).map(|k| (k, Algorithm::RS256)),
            EncodingKey::from_ec_pem(pem).map(|k| (k, Algorithm::ES256)),
        ];
        for (key, alg) in candidates.into_iter().flatten() {
            let key = Self { key, alg };
            // Parsing alone accepts some keys the signer then refuses; a trial signature is the
            // only reliable check.
            if key.sign("probe", "probe").is_ok() {
                return Ok(key);
            }
        }
        Err(AssertionError::NotAKey)
    }

    /// Signs an RFC 7523 client assertion for `client_id`, addressed to `audience`.
    pub fn sign(&self, client_id: &str, audience: &str) -> Result<String, AssertionError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = AssertionClaims {
            iss: client_id,
            sub: client_id,
            aud: audience,
            jti: format!("{:032x}", rand::random::<u128>()),
            iat: now,
            exp: now + 60,
        };
        jsonwebtoken::encode(&Header::new(self.alg), &claims, &self.key)
            .map_err(AssertionError::Signing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assertion_key_rejects_garbage() {
        let err = AssertionKey::from_pem(&SecretString::new("not a key"))
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "client assertion: the client secret is not a PEM RSA or P-256 private key"
        );
    }
}
