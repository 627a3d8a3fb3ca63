//! What a client may ask of a token it holds: introspection (RFC 7662)
//! and revocation (RFC 7009). Both need the client's authentication;
//! neither tells an unknown token from an inactive one.

use diesel::Connection as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::clients::Client;
use super::error::OAuthError;
use super::service::Provider;
use crate::auth::error::AuthError;
use crate::auth::events::{self, oidc_event};
use crate::auth::sessions::{end_session, hash};
use crate::auth::store::{self, SessionRow};

/// The form of both endpoints (and `client_secret_post`'s credentials).
#[derive(Debug, Default, Deserialize)]
pub struct TokenQuery {
    pub token: Option<String>,
    pub token_type_hint: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
}

/// What a presented token turned out to be.
enum Found {
    Access(SessionRow, chrono::DateTime<chrono::Utc>),
    Refresh(SessionRow),
}

impl Provider {
    /// `POST /oauth2/introspect`: whether `token` is active, and if so
    /// whose it is, for an authenticated confidential client (a resource
    /// server). `{"active": false}` for anything else.
    pub async fn introspect(
        &self,
        client: &Client,
        query: TokenQuery,
    ) -> Result<Value, OAuthError> {
        if client.is_public() {
            return Err(OAuthError::UnauthorizedClient(
                "a public client may not introspect tokens".into(),
            ));
        }
        let token = query
            .token
            .ok_or_else(|| OAuthError::InvalidRequest("token is missing".into()))?;
        let Some(found) = self.find_token(&token).await? else {
            return Ok(json!({ "active": false }));
        };
        let (session, token_type, exp) = match found {
            Found::Access(session, exp) => (session, "access_token", exp),
            Found::Refresh(session) => {
                let exp = session.expires_at.and_utc();
                (session, "refresh_token", exp)
            }
        };
        let mut answer = json!({
            "active": true,
            "token_type": token_type,
            "sub": session.user_id,
            "iss": &*self.issuer,
            "exp": exp.timestamp(),
            "iat": session.refreshed_at.and_utc().timestamp(),
            "sid": session.id,
        });
        if token_type == "access_token" {
            answer["aud"] = json!(self.auth.tokens.audience);
        }
        if let Some(client_id) = &session.client_id {
            answer["client_id"] = json!(client_id);
        }
        if let Some(scope) = session.scope.as_deref().filter(|s| !s.is_empty()) {
            answer["scope"] = json!(scope);
        }
        Ok(answer)
    }

    /// `POST /oauth2/revoke`: ends the session of an access or refresh
    /// token the client was issued; any other token is left alone, with the
    /// same answer.
    pub async fn revoke(&self, client: &Client, query: TokenQuery) -> Result<(), OAuthError> {
        let token = query
            .token
            .ok_or_else(|| OAuthError::InvalidRequest("token is missing".into()))?;
        let session = match self.find_token(&token).await? {
            Some(Found::Access(session, _) | Found::Refresh(session)) => session,
            None => return Ok(()),
        };
        if session.client_id.as_deref() != Some(&client.id) {
            tracing::info!(client_id = %client.id, "a client asked to revoke another's token; left alone");
            return Ok(());
        }
        let now = self.auth.clock.now();
        let by = self.auth.tokens_expire_by(now);
        let event = oidc_event(&events::OIDC_TOKEN_REVOKED, &client.id, |e| {
            if !session.is_clients_own() {
                e.user_id = session.user_id.clone();
            }
            e.session_id = session.id.clone();
        });
        let ended = self
            .auth
            .db
            .run(move |c| {
                c.transaction(|c| {
                    let ended = end_session(c, &session.id, "revoked", now, by)?;
                    if ended {
                        crate::kernel::outbox::enqueue(c, &event, now)?;
                    }
                    Ok::<_, AuthError>(ended)
                })
            })
            .await?;
        if ended {
            self.auth.relay.wake();
        }
        Ok(())
    }

    /// The live session of an access token (verified, with its expiry) or
    /// of an unused refresh token.
    async fn find_token(&self, token: &str) -> Result<Option<Found>, OAuthError> {
        if token.is_empty() || token.len() > 4096 {
            return Ok(None);
        }
        if token.starts_with("v4.public.") {
            return match self.auth.validate(token).await {
                Ok(caller) => {
                    let id = caller.session_id().to_string();
                    let session = self.session(id).await?;
                    Ok(session.map(|s| Found::Access(s, caller.expires_at())))
                }
                Err(AuthError::Token(_)) => Ok(None),
                Err(e) => Err(e.into()),
            };
        }
        let presented = hash(token);
        let row = self
            .auth
            .db
            .run(move |c| Ok::<_, AuthError>(store::refresh_by_hash(c, &presented)?))
            .await?;
        let Some(row) = row.filter(|r| r.used_at.is_none()) else {
            return Ok(None);
        };
        let now = self.auth.clock.now().naive_utc();
        Ok(self
            .session(row.session_id)
            .await?
            .filter(|s| s.expires_at > now)
            .map(Found::Refresh))
    }

    /// Session `id`, if it has not ended.
    pub(super) async fn session(&self, id: String) -> Result<Option<SessionRow>, AuthError> {
        Ok(self
            .auth
            .db
            .run(move |c| Ok::<_, AuthError>(store::session(c, &id)?))
            .await?
            .filter(|s| s.revoked_at.is_none()))
    }
}
