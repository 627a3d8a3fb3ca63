//! The provider: what its parts share. The clients are in `registry.rs`,
//! the browser's way to a code in `flow.rs`, the token endpoint's grants
//! in `grants.rs`.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::config::OidcConfig;
use super::error::OAuthError;
use super::registry::ClientRegistry;
use crate::auth::error::AuthError;
use crate::auth::service::{Auth, identity_error};
use crate::middleware::ids::UserId;
use crate::middleware::token::Holder;
use crate::proto::authz::v1::ListRolesRequest;
use crate::proto::authz::v1::authz_client::AuthzClient;
use crate::proto::identity::v1::identity_client::IdentityClient;
use crate::proto::identity::v1::{GetUserRequest, User};

/// The OpenID Connect provider.
#[derive(Clone)]
pub struct Provider {
    pub(super) auth: Auth,
    /// The issuer, without a trailing slash.
    pub(super) issuer: Arc<str>,
    pub(super) config: Arc<OidcConfig>,
    pub(super) clients: ClientRegistry,
    /// The discovery document, as sent.
    pub(super) discovery: Arc<str>,
    /// The JWKS as sent last, and when it was read.
    pub(super) jwks: Arc<std::sync::Mutex<Option<KeptJwks>>>,
}

/// A JWKS as sent, and when it was read.
pub(super) type KeptJwks = (std::time::Instant, Arc<str>);

impl Provider {
    pub fn new(auth: Auth, issuer: String, config: OidcConfig) -> Self {
        Self {
            clients: ClientRegistry::new(
                auth.db.clone(),
                auth.clock.clone(),
                Some(auth.relay.clone()),
                auth.keys().clone(),
            ),
            auth,
            discovery: super::http::discovery_document(&issuer).to_string().into(),
            issuer: issuer.into(),
            config: Arc::new(config),
            jwks: Arc::default(),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn clients(&self) -> &ClientRegistry {
        &self.clients
    }

    /// `GET /oauth2/userinfo`: `sub` and the claims the access token's
    /// scopes allow, for a token of a live session opened through the
    /// provider with `openid`.
    pub async fn userinfo(&self, access_token: &str) -> Result<Value, OAuthError> {
        let caller = self
            .auth
            .validate(access_token)
            .await
            .map_err(|e| match e {
                AuthError::Token(_) => OAuthError::InvalidToken,
                other => other.into(),
            })?;
        // A client's own token speaks for no user.
        let Holder::User(principal) = caller else {
            return Err(OAuthError::InvalidToken);
        };
        let session = self
            .session(principal.session_id.to_string())
            .await?
            .ok_or(OAuthError::InvalidToken)?;
        let scope = session.scopes();
        if !scope.contains("openid") {
            return Err(OAuthError::InsufficientScope);
        }
        let mut claims = Map::new();
        claims.insert("sub".into(), json!(session.user_id));
        self.profile_claims(principal.user_id, &scope, &mut claims)
            .await?;
        Ok(Value::Object(claims))
    }

    /// Deletes, every minute until shutdown, codes an hour past their
    /// expiry (a used one is kept that long, so that its second use still
    /// ends what its first opened) and browser sessions a day past theirs.
    pub fn sweep(
        &self,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let provider = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_secs(60)) => {},
                    () = shutdown.cancelled() => break,
                }
                let now = provider.auth.clock.now();
                let (codes, browsers) = (
                    (now - chrono::Duration::hours(1)).naive_utc(),
                    (now - chrono::Duration::days(1)).naive_utc(),
                );
                let swept = provider
                    .auth
                    .db
                    .run(move |c| {
                        Ok::<_, AuthError>((
                            super::store::delete_expired_codes(c, codes)?,
                            super::store::delete_stale_browser_sessions(c, browsers)?,
                        ))
                    })
                    .await;
                if let Err(e) = swept {
                    tracing::warn!(error = %e, "cannot delete expired codes and browser sessions");
                }
            }
        })
    }

    /// The roles bound to `user` everywhere, as authz has them now.
    pub(super) async fn roles(&self, user: UserId) -> Result<Vec<String>, AuthError> {
        let channel = self
            .auth
            .clients
            .channel("authz")
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        let answer = AuthzClient::new(channel)
            .list_roles(ListRolesRequest {
                user_id: user.to_string(),
                at_least_revision: 0,
            })
            .await
            .map_err(|s| AuthError::Unavailable(format!("authz: {}", s.message())))?;
        Ok(answer.into_inner().roles)
    }

    /// The account `id`, as identity has it now.
    pub(super) async fn user(&self, id: UserId) -> Result<User, AuthError> {
        let channel = self
            .auth
            .clients
            .channel("identity")
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        Ok(IdentityClient::new(channel)
            .get_user(GetUserRequest { id: id.to_string() })
            .await
            .map_err(identity_error)?
            .into_inner())
    }
}
