//! What FlyteAdmin says about its own authentication (`AuthMetadataService`: token endpoint,
//! audience, scopes, the metadata key tokens go in), asked once each over the proxy's own
//! connection. The executor-bound credential made from it is minted by
//! [`crate::mint::AdminMinter`] and lives in the token cache under [`crate::cache::ADMIN`], so it
//! shares the cache's single-flight, refresh and back-off.
//!
//! Flyte 2's control plane answers the same questions with the same messages under another
//! package (`flyteidl2.auth`); the agent asks Flyte 1's service first and Flyte 2's when that
//! one is UNIMPLEMENTED, so one `admin.endpoint` setting serves either.

use std::time::Duration;

use flyte_auth_proto::flyteidl::service::{
    OAuth2MetadataRequest, OAuth2MetadataResponse, PublicClientAuthConfigRequest,
    PublicClientAuthConfigResponse,
};
use http::HeaderName;
use tokio::sync::OnceCell;
use url::Url;

use crate::config::AdminConfig;
use crate::idp::IdpError;
use crate::request::check_idp_url;
use crate::upstream::Upstream;

/// Where the authentication metadata is asked for: Flyte 1's service, then Flyte 2's.
const SERVICES: [&str; 2] = [
    "flyteidl.service.AuthMetadataService",
    "flyteidl2.auth.AuthMetadataService",
];

/// The header flytekit and Admin fall back to when Admin announces none.
const DEFAULT_HEADER: HeaderName = http::header::AUTHORIZATION;

/// FlyteAdmin's own answers about its authentication, asked once each and kept.
pub struct AdminAuth {
    config: AdminConfig,
    upstream: Upstream,
    timeout: Duration,
    allow_insecure_http: bool,
    public: OnceCell<PublicClientAuthConfigResponse>,
    oauth: OnceCell<OAuth2MetadataResponse>,
}

impl AdminAuth {
    /// Asks Admin through `upstream`, each call bounded by `timeout`.
    pub fn new(
        config: AdminConfig,
        upstream: Upstream,
        timeout: Duration,
        allow_insecure_http: bool,
    ) -> Self {
        Self {
            config,
            upstream,
            timeout,
            allow_insecure_http,
            public: OnceCell::new(),
            oauth: OnceCell::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AdminConfig {
        &self.config
    }

    /// The metadata key the credential goes in: configured, else what Admin announces, else
    /// `authorization` (flytekit's rule).
    pub async fn header(&self) -> Result<HeaderName, IdpError> {
        if let Some(h) = &self.config.auth_header {
            return Ok(h.clone());
        }
        let key = &self.public().await?.authorization_metadata_key;
        if key.is_empty() {
            return Ok(DEFAULT_HEADER);
        }
        HeaderName::try_from(key.to_ascii_lowercase()).map_err(|_| {
            self.metadata_error(format!(
                "GetPublicClientConfig announced {key:?} as authorization_metadata_key, which is not a header name"
            ))
        })
    }

    fn metadata_error(&self, detail: String) -> IdpError {
        IdpError::AdminMetadata {
            endpoint: self.upstream.endpoint().to_string(),
            detail,
        }
    }

    async fn public(&self) -> Result<&PublicClientAuthConfigResponse, IdpError> {
        self.public
            .get_or_try_init(|| async {
                self.ask("GetPublicClientConfig", PublicClientAuthConfigRequest {})
                    .await
            })
            .await
    }

    async fn oauth(&self) -> Result<&OAuth2MetadataResponse, IdpError> {
        self.oauth
            .get_or_try_init(|| async {
                self.ask("GetOAuth2Metadata", OAuth2MetadataRequest {})
                    .await
            })
            .await
    }

    /// Calls `method` of Flyte 1's `AuthMetadataService`, or of Flyte 2's if the first is
    /// UNIMPLEMENTED, each call bounded by the timeout.
    async fn ask<Q, A>(&self, method: &str, request: Q) -> Result<A, IdpError>
    where
        Q: prost::Message + Clone + Send + Sync + 'static,
        A: prost::Message + Default + Send + Sync + 'static,
    {
        let mut answer = Err(tonic::Status::unimplemented(""));
        for service in SERVICES {
            let path = http::uri::PathAndQuery::try_from(format!("/{service}/{method}"))
                .map_err(|e| self.metadata_error(format!("{method}: {e}")))?;
            let mut grpc = tonic::client::Grpc::new(self.upstream.clone());
            let call = async {
                grpc.ready().await.map_err(|e| {
                    tonic::Status::unavailable(format!("the connection is not ready: {e}"))
                })?;
                let codec = tonic_prost::ProstCodec::<Q, A>::default();
                grpc.unary(tonic::Request::new(request.clone()), path, codec)
                    .await
            };
            answer = match tokio::time::timeout(self.timeout, call).await {
                Ok(answer) => answer,
                Err(_) => return Err(self.timed_out(method)),
            };
            if !matches!(&answer, Err(status) if status.code() == tonic::Code::Unimplemented) {
                break;
            }
        }
        self.answer(method, answer)
    }

    fn timed_out(&self, method: &str) -> IdpError {
        self.metadata_error(format!(
            "{method} did not answer within {}",
            humantime::format_duration(self.timeout)
        ))
    }

    fn answer<T>(
        &self,
        method: &str,
        answer: Result<tonic::Response<T>, tonic::Status>,
    ) -> Result<T, IdpError> {
        match answer {
            Ok(response) => Ok(response.into_inner()),
            // Admin is trusted, but its words reach logs and 503 bodies like an IdP's do.
            Err(status) => Err(self.metadata_error(format!(
                "{method}: {:?}: {}",
                status.code(),
                crate::idp::clean_text(status.message())
            ))),
        }
    }

    /// The token endpoint: configured, else what Admin's `GetOAuth2Metadata` announces.
    pub async fn token_endpoint(&self) -> Result<Url, IdpError> {
        if let Some(url) = &self.config.token_endpoint {
            return Ok(url.clone());
        }
        let announced = &self.oauth().await?.token_endpoint;
        let url = Url::parse(announced).map_err(|e| {
            self.metadata_error(format!(
                "GetOAuth2Metadata announced token_endpoint {announced:?}, which is not a URL: {e}"
            ))
        })?;
        check_idp_url(&url, self.allow_insecure_http)
            .map_err(|e| self.metadata_error(format!("GetOAuth2Metadata token_endpoint: {e}")))?;
        Ok(url)
    }

    /// The audience and scopes to request: configured, else what Admin's
    /// `GetPublicClientConfig` announces.
    pub async fn audience_and_scopes(&self) -> Result<(Option<String>, Vec<String>), IdpError> {
        let (audience, scopes) = (&self.config.audience, &self.config.scopes);
        if let (Some(a), Some(s)) = (audience, scopes) {
            return Ok((Some(a.clone()), s.clone()));
        }
        let public = self.public().await?;
        let audience = audience
            .clone()
            .or_else(|| Some(public.audience.clone()).filter(|a| !a.is_empty()));
        let scopes = scopes.clone().unwrap_or_else(|| public.scopes.clone());
        Ok((audience, scopes))
    }
}
