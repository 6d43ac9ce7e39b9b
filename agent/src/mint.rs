//! Where a cached name's token comes from: the [`Minter`]s behind the token cache. A configured
//! token request is minted by [`ClientCredentials`]; the executor-bound FlyteAdmin credential by
//! [`AdminMinter`], in the configured mode, with what Admin says about its own authentication
//! ([`AdminAuth`]). Both read their credentials anew on every mint, so a rotated secret or
//! service-account token takes effect without a restart.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::admin::AdminAuth;
use crate::cache::Minter;
use crate::config::AdminMode;
use crate::idp::{Exchange, Grant, Idp, IdpError};
use crate::request::{Endpoint, TokenRequest};
use crate::secret::SecretResolver;
use crate::token::{SecretString, Token};

/// Runs `read` (file I/O: secrets and service-account tokens) off the async runtime.
async fn read_blocking<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, IdpError> + Send + 'static,
) -> Result<T, IdpError> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|e| IdpError::Secret(format!("reader task failed: {e}")))?
}

/// A configured token request: client credentials with a secret from the secrets manager.
pub struct ClientCredentials {
    request: TokenRequest,
    idp: Arc<Idp>,
    resolver: SecretResolver,
}

impl ClientCredentials {
    /// Mints for `request` through `idp`, reading its secret with `resolver` each time.
    pub fn new(request: TokenRequest, idp: Arc<Idp>, resolver: SecretResolver) -> Self {
        Self {
            request,
            idp,
            resolver,
        }
    }

    /// One minter per request, by request name, in configuration order.
    pub fn for_requests(
        requests: &[TokenRequest],
        idp: &Arc<Idp>,
        resolver: &SecretResolver,
    ) -> Vec<(String, Box<dyn Minter>)> {
        requests
            .iter()
            .map(|request| {
                let minter = Self::new(request.clone(), idp.clone(), resolver.clone());
                (request.name.clone(), Box::new(minter) as Box<dyn Minter>)
            })
            .collect()
    }
}

impl Minter for ClientCredentials {
    fn mint(&self) -> BoxFuture<'_, Result<Token, IdpError>> {
        Box::pin(async move {
            let resolver = self.resolver.clone();
            let secret_ref = self.request.client_secret.clone();
            let secret = read_blocking(move || {
                resolver
                    .read(&secret_ref)
                    .map_err(|e| IdpError::Secret(e.to_string()))
            })
            .await?;
            self.idp.token(&self.request, &secret).await
        })
    }
}

/// Gets the Admin credential from the IdP in the configured mode.
pub struct AdminMinter {
    auth: Arc<AdminAuth>,
    idp: Arc<Idp>,
    resolver: SecretResolver,
}

impl AdminMinter {
    /// A minter asking `idp`, with settings and Admin's answers from `auth`.
    pub fn new(auth: Arc<AdminAuth>, idp: Arc<Idp>, resolver: SecretResolver) -> Self {
        Self {
            auth,
            idp,
            resolver,
        }
    }

    /// The client secret, or the projected service-account token, read fresh: both rotate.
    async fn read_credentials(
        &self,
    ) -> Result<(Option<SecretString>, Option<SecretString>), IdpError> {
        let config = self.auth.config().clone();
        let resolver = self.resolver.clone();
        read_blocking(move || {
            let secret = match &config.client_secret {
                Some(s) => Some(
                    resolver
                        .read(s)
                        .map_err(|e| IdpError::Secret(e.to_string()))?,
                ),
                None => None,
            };
            let sa_token = match &config.token_file {
                Some(path) => {
                    let text = std::fs::read_to_string(path).map_err(|e| {
                        IdpError::Secret(format!("service-account token {}: {e}", path.display()))
                    })?;
                    let text = text.trim();
                    if text.is_empty() {
                        return Err(IdpError::Secret(format!(
                            "service-account token {} is empty",
                            path.display()
                        )));
                    }
                    Some(SecretString::new(text))
                }
                None => None,
            };
            Ok((secret, sa_token))
        })
        .await
    }
}

impl Minter for AdminMinter {
    fn mint(&self) -> BoxFuture<'_, Result<Token, IdpError>> {
        Box::pin(async move {
            let config = self.auth.config();
            let endpoint = Endpoint::Token(self.auth.token_endpoint().await?);
            let (audience, scopes) = self.auth.audience_and_scopes().await?;
            let (secret, sa_token) = self.read_credentials().await?;
            let (credential, grant) = match (config.mode, sa_token) {
                (AdminMode::ClientSecret, _) => (secret, Grant::ClientCredentials),
                (AdminMode::JwtBearer, sa_token) => (sa_token, Grant::ClientCredentials),
                (AdminMode::TokenExchange, Some(subject_token)) => {
                    (secret, Grant::TokenExchange { subject_token })
                }
                (AdminMode::TokenExchange, None) => {
                    return Err(IdpError::Secret(
                        "token-exchange needs admin.token_file".into(),
                    ))
                }
            };
            self.idp
                .exchange(&Exchange {
                    endpoint: &endpoint,
                    client_id: &config.client_id,
                    client_auth: config.client_auth,
                    credential: credential.as_ref(),
                    grant,
                    scopes: &scopes,
                    audience: audience.as_deref(),
                })
                .await
        })
    }
}
