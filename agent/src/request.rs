//! What a token request is: the validated vocabulary the loader builds and the IdP client, the
//! minters and the injector read ([`TokenRequest`], its [`ClientAuth`] and [`Endpoint`], the
//! [`IdpSettings`] every IdP call follows), and the two checks every source of one applies
//! ([`check_name`], [`check_idp_url`]). Nothing here reads a file or the environment.

use std::path::PathBuf;
use std::time::Duration;

use flyte_auth_proto::flyteidl::core::Secret;
use url::Url;

/// How the agent authenticates itself to the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic with client id and secret (RFC 6749 §2.3.1).
    ClientSecretBasic,
    /// Client id and secret in the form body.
    ClientSecretPost,
    /// An RFC 7523 JWT assertion signed with the private key the secret holds.
    PrivateKeyJwt,
    /// An RFC 7523 JWT assertion made elsewhere and read as is, such as a projected
    /// service-account token (workload identity federation; Admin credential only).
    JwtBearer,
    /// A public client: `client_id` alone (Admin token exchange only).
    None,
}

impl ClientAuth {
    /// The OAuth2 registration name of the method.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretPost => "client_secret_post",
            Self::PrivateKeyJwt | Self::JwtBearer => "private_key_jwt",
            Self::None => "none",
        }
    }

    /// The method of `allowed` whose registration name is `s`.
    pub fn parse(s: &str, allowed: &[ClientAuth]) -> Result<Self, String> {
        if let Some(method) = allowed.iter().find(|m| m.as_str() == s) {
            return Ok(*method);
        }
        let names: Vec<&str> = allowed.iter().map(|m| m.as_str()).collect();
        let (last, rest) = names.split_last().unwrap_or((&"", &[]));
        Err(match rest {
            [] => format!("{s:?} is not {last}"),
            _ => format!("{s:?} is not {} or {last}", rest.join(", ")),
        })
    }
}

/// Where the token endpoint comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Given directly.
    Token(Url),
    /// Found by OIDC discovery from this URL (an issuer, or its
    /// `/.well-known/openid-configuration`).
    Discovery(Url),
}

/// One validated token request.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// Unique name; the token file's name.
    pub name: String,
    /// OAuth2 client id.
    pub client_id: String,
    /// Where the client secret (or private key) lives.
    pub client_secret: Secret,
    /// Token endpoint or discovery URL.
    pub endpoint: Endpoint,
    /// Client authentication method.
    pub client_auth: ClientAuth,
    /// Scopes to request (none: the IdP's default).
    pub scopes: Vec<String>,
    /// Audience to request, sent as `audience`.
    pub audience: Option<String>,
    /// Where this request was configured, for messages.
    pub origin: String,
}

/// Settings for calls to IdPs.
#[derive(Debug, Clone)]
pub struct IdpSettings {
    /// Timeout for each HTTP call (connect and whole response).
    pub timeout: Duration,
    /// Extra CA certificates (PEM bundle) trusted besides the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// Allow plain `http://` to hosts other than loopback.
    pub allow_insecure_http: bool,
}

/// Checks a token request name: it becomes a file name and a URL path segment.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a file name"));
    }
    if name.contains('/') {
        return Err(format!(
            "{name:?} contains '/'; it must be a single path component"
        ));
    }
    if name.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    if name.chars().any(char::is_control) {
        return Err(format!("{name:?} contains a control character"));
    }
    if name.len() > 255 {
        return Err(format!(
            "is {} bytes; a file name holds at most 255",
            name.len()
        ));
    }
    if name.starts_with('.') {
        return Err(format!(
            "{name:?} starts with '.'; token files must not be hidden files"
        ));
    }
    Ok(())
}

/// Checks that an IdP URL may be used: https, or http to loopback, or http anywhere when
/// explicitly allowed.
pub fn check_idp_url(url: &Url, allow_insecure_http: bool) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_insecure_http || is_loopback(url) => Ok(()),
        "http" => Err(format!(
            "{url} is plain http to a non-loopback host; use https, or set idp.allow_insecure_http"
        )),
        other => Err(format!(
            "{url} has scheme {other:?}; only https (or http to loopback) works"
        )),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_auth_names_parse_within_the_allowed_set() {
        let two = [ClientAuth::ClientSecretBasic, ClientAuth::ClientSecretPost];
        assert_eq!(
            ClientAuth::parse("client_secret_post", &two),
            Ok(ClientAuth::ClientSecretPost)
        );
        assert_eq!(
            ClientAuth::parse("private_key_jwt", &two).unwrap_err(),
            "\"private_key_jwt\" is not client_secret_basic or client_secret_post"
        );
        let three = [two[0], two[1], ClientAuth::PrivateKeyJwt];
        assert_eq!(
            ClientAuth::parse("mtls", &three).unwrap_err(),
            "\"mtls\" is not client_secret_basic, client_secret_post or private_key_jwt"
        );
    }
}
