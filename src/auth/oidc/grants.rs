//! The token endpoint's grants: authorization code with PKCE, refresh
//! token, and client credentials. The client is authenticated first
//! (`client_auth.rs`); what it answers carries the access token, the
//! refresh token when one is due, and the ID token (`id_token.rs`).
//!
//! A client credentials token speaks for the client itself: its session is
//! the client's own (see [`SessionRow::is_clients_own`]), it lasts as long
//! as its one access token, and it carries no user's scope. Authz's
//! bindings of `client:<id>` say what it may do at the gateway's routes.

use std::collections::BTreeSet;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use diesel::Connection as _;
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::clients::{Client, Grant, secret_hash};
use super::error::OAuthError;
use super::id_token::{IdTokenFacts, methods};
use super::service::Provider;
use super::store::{self, CodeRow};
use crate::auth::error::AuthError;
use crate::auth::events::{self, oidc_event, session_event};
use crate::auth::service::open_session;
use crate::auth::sessions::{end_session, new_refresh_token};
use crate::auth::store::SessionRow;
use crate::middleware::ids::{ClientId, SessionId, UserId};

/// The token endpoint's form (and the client's credentials, for
/// `client_secret_post`).
#[derive(Debug, Default, Deserialize)]
pub struct TokenForm {
    pub grant_type: Option<String>,
    pub code: Option<String>,
    pub redirect_uri: Option<String>,
    pub code_verifier: Option<String>,
    pub refresh_token: Option<String>,
    pub scope: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
}

/// A successful token response (RFC 6749 §5.1, OpenID Connect Core §3.1.3.3).
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    /// Left out when empty (a client's own token has no scope).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub scope: String,
}

impl Provider {
    /// `POST /oauth2/token`.
    pub async fn token(
        &self,
        headers: &HeaderMap,
        form: TokenForm,
    ) -> Result<TokenResponse, OAuthError> {
        let client = self
            .authenticate_client(
                headers,
                form.client_id.as_deref(),
                form.client_secret.as_deref(),
            )
            .await?;
        let grant = match form.grant_type.as_deref() {
            None => return Err(OAuthError::InvalidRequest("grant_type is missing".into())),
            Some(name) => Grant::parse(name).ok_or(OAuthError::UnsupportedGrantType)?,
        };
        if !client.grants.contains(&grant) {
            return Err(OAuthError::UnauthorizedClient(format!(
                "the client may not use the {} grant",
                grant.name()
            )));
        }
        match grant {
            Grant::AuthorizationCode => self.exchange_code(&client, form).await,
            Grant::RefreshToken => self.refresh(&client, form).await,
            Grant::ClientCredentials => self.client_credentials(&client, form).await,
        }
    }

    /// The client credentials grant: an access token for the client itself,
    /// in a session of its own that ends with the token.
    async fn client_credentials(
        &self,
        client: &Client,
        form: TokenForm,
    ) -> Result<TokenResponse, OAuthError> {
        if client.is_public() {
            return Err(OAuthError::UnauthorizedClient(
                "a public client holds no secret to grant on".into(),
            ));
        }
        if let Some(asked) = form.scope.as_deref()
            && let Some(scope) = asked.split(' ').find(|s| !s.is_empty())
        {
            return Err(OAuthError::InvalidScope(format!(
                "{scope} speaks of a user; a client's own token carries no scope"
            )));
        }
        let client_id = ClientId::parse(&client.id).map_err(|_| {
            OAuthError::UnauthorizedClient(
                "the client's id is not a UUID; register it again to use client_credentials".into(),
            )
        })?;
        let now = self.auth.clock.now();
        let ttl = self.auth.tokens.access_ttl();
        let session = SessionRow {
            id: SessionId::now_v7().to_string(),
            user_id: client_id.to_string(),
            created_at: now.naive_utc(),
            expires_at: (now + ttl).naive_utc(),
            refreshed_at: now.naive_utc(),
            generation: 1,
            revoked_at: None,
            revoked_reason: None,
            client_id: Some(client.id.clone()),
            scope: Some(String::new()),
            browser_session_id: None,
        };
        let access_token = self.access_token(client_id, &session, now).await?;
        let opened = session_event(
            &events::SESSION_CREATED,
            &session,
            Grant::ClientCredentials.name(),
            self.auth.tokens_expire_by(now),
        );
        let issued = oidc_event(&events::OIDC_TOKEN_ISSUED, &client.id, |e| {
            e.session_id = session.id.clone();
            e.grant = Grant::ClientCredentials.name().into();
        });
        self.auth
            .db
            .run(move |c| {
                c.transaction(|c| {
                    crate::auth::store::insert_session(c, &session)?;
                    crate::kernel::outbox::enqueue(c, &opened, now)?;
                    crate::kernel::outbox::enqueue(c, &issued, now)?;
                    Ok::<_, AuthError>(())
                })
            })
            .await?;
        self.auth.relay.wake();
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: ttl.num_seconds(),
            refresh_token: None,
            id_token: None,
            scope: String::new(),
        })
    }

    /// The authorization code grant: one use of a code, by its client, with
    /// its redirect URI and PKCE verifier.
    async fn exchange_code(
        &self,
        client: &Client,
        form: TokenForm,
    ) -> Result<TokenResponse, OAuthError> {
        let code = form
            .code
            .filter(|c| !c.is_empty() && c.len() <= 256)
            .ok_or_else(|| OAuthError::InvalidRequest("code is missing".into()))?;
        let redirect_uri = form
            .redirect_uri
            .ok_or_else(|| OAuthError::InvalidRequest("redirect_uri is missing".into()))?;
        let code_hash = secret_hash(&code);
        let now = self.auth.clock.now();
        let lookup = code_hash.clone();
        let row = self
            .auth
            .db
            .run(move |c| store::code(c, &lookup))
            .await?
            .ok_or_else(|| OAuthError::InvalidGrant("the code is unknown".into()))?;
        if row.used_at.is_some() {
            return Err(self.code_reused(row).await);
        }
        if row.client_id != client.id {
            return Err(OAuthError::InvalidGrant(
                "the code was issued to another client".into(),
            ));
        }
        if row.expires_at <= now.naive_utc() {
            return Err(OAuthError::InvalidGrant("the code has expired".into()));
        }
        if row.redirect_uri != redirect_uri {
            return Err(OAuthError::InvalidGrant(
                "redirect_uri differs from the authorization request's".into(),
            ));
        }
        check_pkce(row.code_challenge.as_deref(), form.code_verifier.as_deref())?;

        let user = UserId::parse(&row.user_id).map_err(|e| AuthError::Internal(e.to_string()))?;
        let scope: BTreeSet<String> = row.scope.split(' ').map(str::to_owned).collect();
        let mut session = self.auth.new_session(user, now);
        session.client_id = Some(client.id.clone());
        session.scope = Some(row.scope.clone());
        session.browser_session_id = Some(row.browser_session_id.clone());
        let refresh = self.refresh_due(client, &scope).then(new_refresh_token);
        let access_token = self.access_token(user, &session, now).await?;
        let id_token = self
            .id_token(
                client,
                &session,
                IdTokenFacts {
                    auth_time: row.auth_time.and_utc(),
                    amr: methods(&row.amr),
                    nonce: row.nonce.clone(),
                },
                &access_token,
                now,
            )
            .await?;
        let event = session_event(
            &events::SESSION_CREATED,
            &session,
            "authorization_code",
            self.auth.tokens_expire_by(now),
        );
        let issued = oidc_event(&events::OIDC_TOKEN_ISSUED, &client.id, |e| {
            e.user_id = session.user_id.clone();
            e.session_id = session.id.clone();
            e.scope = row.scope.clone();
            e.grant = Grant::AuthorizationCode.name().into();
        });
        let refresh_hash = refresh.as_ref().map(|(_, h)| h.clone());
        let auth_time = row.auth_time.and_utc();
        let stored = session.clone();
        let claimed = self
            .auth
            .db
            .run(move |c| {
                c.transaction(|c| {
                    if store::claim_code(c, &code_hash, now.naive_utc())?.is_none() {
                        return Ok(false);
                    }
                    // Refused when the password was reset since the sign-in.
                    open_session(c, &stored, refresh_hash.as_deref(), &event, auth_time, now)?;
                    store::set_code_session(c, &code_hash, &stored.id)?;
                    crate::kernel::outbox::enqueue(c, &issued, now)?;
                    Ok::<_, AuthError>(true)
                })
            })
            .await;
        match claimed {
            Ok(true) => {}
            // Another exchange of the same code got there first.
            Ok(false) => {
                let lookup = secret_hash(&code);
                if let Some(row) = self.auth.db.run(move |c| store::code(c, &lookup)).await? {
                    return Err(self.code_reused(row).await);
                }
                return Err(OAuthError::InvalidGrant("the code is unknown".into()));
            }
            Err(AuthError::InvalidCredentials) => {
                return Err(OAuthError::InvalidGrant(
                    "the password was reset since this sign-in".into(),
                ));
            }
            Err(e) => return Err(e.into()),
        }
        self.auth.relay.wake();
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: self.auth.tokens.access_ttl().num_seconds(),
            refresh_token: refresh.map(|(token, _)| token),
            id_token,
            scope: row.scope,
        })
    }

    /// A second use of a code: refused, and the session its first use
    /// opened is ended with its tokens and refresh tokens (RFC 6749 §4.1.2).
    async fn code_reused(&self, row: CodeRow) -> OAuthError {
        tracing::warn!(client_id = %row.client_id, "an authorization code was used twice; its session is ended");
        if let Some(session_id) = row.session_id {
            let now = self.auth.clock.now();
            let by = self.auth.tokens_expire_by(now);
            let ended = self
                .auth
                .db
                .run(move |c| {
                    c.transaction(|c| end_session(c, &session_id, "code_reused", now, by))
                })
                .await;
            match ended {
                Ok(_) => self.auth.relay.wake(),
                Err(e) => return e.into(),
            }
        }
        OAuthError::InvalidGrant("the code was already used".into())
    }

    /// The refresh token grant: rotation as in the JSON API, bound to the
    /// client the session was opened for.
    async fn refresh(&self, client: &Client, form: TokenForm) -> Result<TokenResponse, OAuthError> {
        let presented = form
            .refresh_token
            .ok_or_else(|| OAuthError::InvalidRequest("refresh_token is missing".into()))?;
        let (pair, session) = match self.auth.refresh_bound(&presented, Some(&client.id)).await {
            Ok(refreshed) => refreshed,
            Err(AuthError::InvalidRefreshToken) => {
                return Err(OAuthError::InvalidGrant(
                    "the refresh token is unknown, expired, revoked or another client's".into(),
                ));
            }
            Err(AuthError::RefreshReused) => {
                return Err(OAuthError::InvalidGrant(
                    "the refresh token was already used; its session has been ended".into(),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        let granted = session.scope.clone().unwrap_or_default();
        if let Some(asked) = form.scope.as_deref() {
            let granted: BTreeSet<&str> = granted.split(' ').collect();
            if asked
                .split(' ')
                .any(|s| !s.is_empty() && !granted.contains(s))
            {
                return Err(OAuthError::InvalidScope(
                    "a refresh may not ask for more than was granted".into(),
                ));
            }
        }
        let browser = match session.browser_session_id.clone() {
            Some(id) => {
                self.auth
                    .db
                    .run(move |c| store::browser_session_by_id(c, &id))
                    .await?
            }
            None => None,
        };
        let facts = IdTokenFacts {
            auth_time: browser
                .as_ref()
                .map_or(session.created_at, |b| b.auth_time)
                .and_utc(),
            amr: browser.map(|b| methods(&b.amr)).unwrap_or_default(),
            nonce: None,
        };
        let now = self.auth.clock.now();
        let id_token = self
            .id_token(client, &session, facts, &pair.access_token, now)
            .await?;
        Ok(TokenResponse {
            access_token: pair.access_token,
            token_type: "Bearer",
            expires_in: pair.expires_in,
            refresh_token: Some(pair.refresh_token),
            id_token,
            scope: granted,
        })
    }

    /// Whether a session opened for `client` with `scope` gets a refresh token.
    fn refresh_due(&self, client: &Client, scope: &BTreeSet<String>) -> bool {
        client.grants.contains(&Grant::RefreshToken)
            && (scope.contains("offline_access")
                || (client.first_party && self.config.first_party_refresh))
    }
}

/// Checks the PKCE verifier against the code's challenge: both or neither
/// (a request that sent a challenge cannot drop PKCE at the exchange, nor
/// one that sent none add a verifier).
fn check_pkce(challenge: Option<&str>, verifier: Option<&str>) -> Result<(), OAuthError> {
    match (challenge, verifier) {
        (None, None) => Ok(()),
        (Some(_), None) => Err(OAuthError::InvalidGrant(
            "code_verifier is missing; the authorization request sent a challenge".into(),
        )),
        (None, Some(_)) => Err(OAuthError::InvalidGrant(
            "the authorization request sent no code_challenge".into(),
        )),
        (Some(challenge), Some(verifier)) => {
            let well_formed = (43..=128).contains(&verifier.len())
                && verifier
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
            if well_formed
                && URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) == challenge
            {
                Ok(())
            } else {
                Err(OAuthError::InvalidGrant(
                    "code_verifier does not match the code_challenge".into(),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_needs_the_verifier_of_the_challenge_and_cannot_be_dropped_or_added() {
        // The challenge as Python's hashlib and base64 make it.
        let verifier = "dBjftJeZ4CVP-mJ92K1pYjbUeWjQbE1XofPZx3TMWTk".to_owned();
        let challenge = "o3ExKMsh-zi9cYCTPFS8du4yc-bviyL8CCQqp_8_jqw";
        assert!(check_pkce(Some(challenge), Some(&verifier)).is_ok());
        assert!(check_pkce(None, None).is_ok());
        for (c, v) in [
            (Some(challenge), None),
            (None, Some(verifier.as_str())),
            (
                Some(challenge),
                Some("dBjftJeZ4CVP-mJ92K1pYjbUeWjQbE1XofPZx3TMWTp"),
            ),
            (Some(challenge), Some(challenge)),
        ] {
            assert!(
                matches!(check_pkce(c, v), Err(OAuthError::InvalidGrant(_))),
                "{c:?} {v:?}"
            );
        }
    }
}
