//! Auth's domain logic: logins through identity, sessions, refresh-token
//! rotation with reuse detection, revocation, and token validation. Plain
//! Rust over the store and the key ring; no HTTP or gRPC server types.
//! How a session ends, its events and its refresh tokens are in
//! `sessions.rs`.
//!
//! Refresh tokens form one family per session, ordered by a generation
//! counter: presenting the current one rotates it; presenting a used one
//! within the grace window returns the pair it was rotated into (a client
//! that lost the response may retry); any later use ends the session.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use diesel::Connection;
use serde::{Deserialize, Serialize};

use super::config::AuthConfig;
use super::error::AuthError;
use super::events::{self, oidc_event, session_event};
use super::keys::{Kek, KeyRing};
use super::sessions::{end_session, hash, new_refresh_token, secs};
use super::store::{self, SessionRow};
use crate::kernel::clock::Clock;
use crate::kernel::db::Db;
use crate::kernel::error::Kind;
use crate::kernel::outbox::{self, Relay};
use crate::kernel::rpc::Clients;
use crate::middleware::token::{self, Holder, SessionId, TokenConfig, TokenError, UserId};
use crate::proto::identity::v1::VerifyCredentialsRequest;
use crate::proto::identity::v1::identity_client::IdentityClient;

/// What login and refresh answer (the OAuth 2.0 token-response names).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: String,
    pub expires_in: i64,
    /// From a sign-in: the token the client keeps and sends with its next
    /// sign-ins at the account, which are then throttled on their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_token: Option<String>,
}

/// A session as its owner sees it.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: SessionId,
    pub created_at: DateTime<Utc>,
    pub refreshed_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// The auth service.
#[derive(Clone)]
pub struct Auth {
    pub(super) db: Db,
    keys: KeyRing,
    pub(super) kek: Kek,
    pub(super) clients: Clients,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) relay: Relay,
    pub(super) config: Arc<AuthConfig>,
    pub(super) tokens: TokenConfig,
}

/// Whom identity found the credentials of.
pub(super) struct Verified {
    pub user: UserId,
    /// The token the client keeps for its next sign-ins at the account.
    pub device_token: Option<String>,
}

/// Stores a new session, its first refresh token if any, and its `event`,
/// inside the caller's transaction. Refused when the user's password was
/// reset since `started`, when the credentials were checked.
pub(super) fn open_session(
    c: &mut crate::kernel::db::DbConnection,
    session: &SessionRow,
    refresh_hash: Option<&str>,
    event: &outbox::NewEvent,
    started: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), AuthError> {
    store::lock_user(c, &session.user_id)?;
    store::insert_session(c, session)?;
    // The password may have been reset while identity checked it: such a
    // sign-in opens no session.
    if store::watermark(c, &session.user_id)?.is_some_and(|w| w > started.naive_utc()) {
        return Err(AuthError::InvalidCredentials);
    }
    if let Some(refresh_hash) = refresh_hash {
        store::insert_refresh(c, refresh_hash, &session.id, 1, now.naive_utc())?;
    }
    outbox::enqueue(c, event, now)?;
    Ok(())
}

enum Refreshed {
    Pair(Box<(TokenPair, SessionRow)>),
    Reused,
}

impl Auth {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        db: Db,
        keys: KeyRing,
        kek: Kek,
        clients: Clients,
        clock: Arc<dyn Clock>,
        relay: Relay,
        config: Arc<AuthConfig>,
        tokens: TokenConfig,
    ) -> Self {
        Self {
            db,
            keys,
            kek,
            clients,
            clock,
            relay,
            config,
            tokens,
        }
    }

    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    pub fn key_cache_ttl_secs(&self) -> u64 {
        self.config.key_cache_ttl_secs
    }

    /// Checks the credentials with identity and opens a session.
    /// `device_token` is the one an earlier sign-in gave the client.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        device_token: Option<&str>,
    ) -> Result<TokenPair, AuthError> {
        let started = self.clock.now();
        let verified = self
            .verify_credentials(email, password, device_token)
            .await?;
        let now = self.clock.now();
        let session = self.new_session(verified.user, now);
        let mut pair = self.pair(verified.user, &session, now).await?;
        pair.device_token = verified.device_token;
        let refresh_hash = hash(&pair.refresh_token);
        let event = session_event(
            &events::SESSION_CREATED,
            &session,
            "login",
            self.tokens_expire_by(now),
        );
        self.db
            .run(move |c| {
                c.transaction(|c| {
                    open_session(c, &session, Some(&refresh_hash), &event, started, now)
                })
            })
            .await?;
        self.relay.wake();
        Ok(pair)
    }

    /// Asks identity whose credentials these are. `device_token` is the one
    /// an earlier sign-in gave the client.
    pub(super) async fn verify_credentials(
        &self,
        email: &str,
        password: &str,
        device_token: Option<&str>,
    ) -> Result<Verified, AuthError> {
        if email.trim().is_empty() || email.len() > 254 {
            return Err(AuthError::Invalid {
                field: "email",
                message: "must be an email address".into(),
            });
        }
        if password.is_empty() || password.len() > 4096 {
            return Err(AuthError::Invalid {
                field: "password",
                message: "must not be empty".into(),
            });
        }
        let channel = self
            .clients
            .channel("identity")
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        let verified = IdentityClient::new(channel)
            .verify_credentials(VerifyCredentialsRequest {
                email: email.into(),
                password: password.into(),
                device_token: device_token.unwrap_or_default().into(),
            })
            .await
            .map_err(identity_error)?
            .into_inner();
        let user = verified
            .user
            .ok_or_else(|| AuthError::Internal("identity answered without a user".into()))?;
        let user_id = UserId::parse(&user.id).map_err(|e| AuthError::Internal(e.to_string()))?;
        // The user who signed in opens what follows.
        crate::kernel::telemetry::set_actor(user_id.as_uuid());
        Ok(Verified {
            user: user_id,
            device_token: Some(verified.device_token).filter(|t| !t.is_empty()),
        })
    }

    /// A new session of `user`, starting `now`.
    pub(super) fn new_session(&self, user: UserId, now: DateTime<Utc>) -> SessionRow {
        SessionRow {
            id: SessionId::now_v7().to_string(),
            user_id: user.to_string(),
            created_at: now.naive_utc(),
            expires_at: (now + secs(self.config.session_ttl_secs)).naive_utc(),
            refreshed_at: now.naive_utc(),
            generation: 1,
            revoked_at: None,
            revoked_reason: None,
            client_id: None,
            scope: None,
            browser_session_id: None,
        }
    }

    /// Rotates a refresh token (see the module doc for the rules).
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, AuthError> {
        self.refresh_bound(refresh_token, None)
            .await
            .map(|(pair, _)| pair)
    }

    /// Rotates a refresh token of a session opened for `client` (`None`:
    /// by the JSON API's sign-in); answers the new pair and the session. A
    /// token of another client's session is refused and left as it was.
    pub(super) async fn refresh_bound(
        &self,
        refresh_token: &str,
        client: Option<&str>,
    ) -> Result<(TokenPair, SessionRow), AuthError> {
        let client = client.map(str::to_owned);
        if refresh_token.is_empty() || refresh_token.len() > 256 {
            return Err(AuthError::InvalidRefreshToken);
        }
        let presented = hash(refresh_token);
        let now = self.clock.now();
        // Sign before the transaction: key lookup may wait on the database.
        let signer = self.keys.signer().await?;
        let (new_refresh, new_hash) = new_refresh_token();
        let grace = secs(self.config.refresh_grace_secs);
        let (kek, tokens, tokens_expire_by) = (
            self.kek.clone(),
            self.tokens.clone(),
            self.tokens_expire_by(now),
        );
        let outcome = self
            .db
            .run(move |c| {
                c.transaction(|c| -> Result<Refreshed, AuthError> {
                    let n = now.naive_utc();
                    if let Some(row) = store::claim_refresh(c, &presented, n)? {
                        let session = store::session(c, &row.session_id)?
                            .ok_or(AuthError::InvalidRefreshToken)?;
                        if session.revoked_at.is_some()
                            || session.expires_at <= n
                            || session.client_id != client
                        {
                            // The claim above is rolled back with the error.
                            return Err(AuthError::InvalidRefreshToken);
                        }
                        if row.generation != session.generation
                            || !store::advance_generation(c, &session.id, row.generation, n)?
                        {
                            return Ok(Refreshed::Reused);
                        }
                        store::insert_refresh(c, &new_hash, &session.id, row.generation + 1, n)?;
                        let user = UserId::parse(&session.user_id)
                            .map_err(|e| AuthError::Internal(e.to_string()))?;
                        let sid = SessionId::parse(&session.id)
                            .map_err(|e| AuthError::Internal(e.to_string()))?;
                        let access = token::sign(
                            &signer.secret,
                            &signer.id,
                            user,
                            sid,
                            &tokens.issuer_audience(),
                            now,
                            now + tokens.access_ttl(),
                        )?;
                        let pair = TokenPair {
                            access_token: access,
                            refresh_token: new_refresh,
                            token_type: "Bearer".into(),
                            expires_in: tokens.access_ttl().num_seconds(),
                            device_token: None,
                        };
                        let sealed = kek.seal(
                            &serde_json::to_vec(&pair)
                                .map_err(|e| AuthError::Internal(e.to_string()))?,
                        )?;
                        store::set_successor(c, &presented, &sealed)?;
                        if let Some(client) = &session.client_id {
                            let event = oidc_event(&events::OIDC_TOKEN_REFRESHED, client, |e| {
                                e.user_id = session.user_id.clone();
                                e.session_id = session.id.clone();
                                e.scope = session.scope.clone().unwrap_or_default();
                                e.grant = "refresh_token".into();
                            });
                            outbox::enqueue(c, &event, now)?;
                        }
                        return Ok(Refreshed::Pair(Box::new((pair, session))));
                    }
                    let Some(row) = store::refresh_by_hash(c, &presented)? else {
                        return Err(AuthError::InvalidRefreshToken);
                    };
                    let session = store::session(c, &row.session_id)?
                        .ok_or(AuthError::InvalidRefreshToken)?;
                    if session.revoked_at.is_some() || session.client_id != client {
                        return Err(AuthError::InvalidRefreshToken);
                    }
                    // A retry of the latest rotation, inside the grace window,
                    // gets the same response again.
                    let in_grace = row.used_at.is_some_and(|used| n - used <= grace);
                    if in_grace
                        && session.generation == row.generation + 1
                        && let Some(sealed) = &row.successor_enc
                    {
                        let plain = kek.open(sealed)?;
                        let pair: TokenPair = serde_json::from_slice(&plain)
                            .map_err(|e| AuthError::Internal(e.to_string()))?;
                        return Ok(Refreshed::Pair(Box::new((pair, session))));
                    }
                    end_session(c, &session.id, "reuse_detected", now, tokens_expire_by)?;
                    let detected = session_event(
                        &events::SESSION_REUSE_DETECTED,
                        &session,
                        "reuse_detected",
                        tokens_expire_by,
                    );
                    outbox::enqueue(c, &detected, now)?;
                    Ok(Refreshed::Reused)
                })
            })
            .await?;
        match outcome {
            Refreshed::Pair(refreshed) => {
                if refreshed.1.client_id.is_some() {
                    self.relay.wake();
                }
                Ok(*refreshed)
            }
            Refreshed::Reused => {
                self.relay.wake();
                tracing::warn!("refresh token reuse detected; session ended");
                Err(AuthError::RefreshReused)
            }
        }
    }

    /// Verifies an access token against the published keys and the session
    /// table (the authoritative answer, for auth's own routes and `ValidateToken`).
    pub async fn validate(&self, access_token: &str) -> Result<Holder, AuthError> {
        let kid = token::key_id(access_token)?;
        let key = self
            .keys
            .published()
            .await?
            .into_iter()
            .find(|k| k.kid == kid)
            .ok_or(TokenError::UnknownKey)?;
        let caller = token::verify(
            access_token,
            &key.public,
            &self.tokens.issuer_audience(),
            self.clock.now(),
        )?;
        let id = caller.session_id().to_string();
        let session = self
            .db
            .run(move |c| Ok::<_, AuthError>(store::session(c, &id)?))
            .await?;
        match session {
            Some(s) if s.revoked_at.is_none() => Ok(caller),
            _ => Err(TokenError::Revoked.into()),
        }
    }

    async fn pair(
        &self,
        user_id: UserId,
        session: &SessionRow,
        now: DateTime<Utc>,
    ) -> Result<TokenPair, AuthError> {
        let signer = self.keys.signer().await?;
        let sid = SessionId::parse(&session.id).map_err(|e| AuthError::Internal(e.to_string()))?;
        let access = token::sign(
            &signer.secret,
            &signer.id,
            user_id,
            sid,
            &self.tokens.issuer_audience(),
            now,
            now + self.tokens.access_ttl(),
        )?;
        let (refresh, _) = new_refresh_token();
        Ok(TokenPair {
            access_token: access,
            refresh_token: refresh,
            token_type: "Bearer".into(),
            expires_in: self.tokens.access_ttl().num_seconds(),
            device_token: None,
        })
    }

    /// The latest time an access token issued now can still be valid.
    pub(super) fn tokens_expire_by(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + self.tokens.access_ttl()
    }
}

/// Maps identity's answer to `VerifyCredentials` onto auth's errors.
pub(super) fn identity_error(status: tonic::Status) -> AuthError {
    let code = status
        .metadata()
        .get("gatehouse-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let retry_after = |default: u64| {
        status
            .metadata()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    match (code, status.code()) {
        (c, _) if c == Kind::INVALID_CREDENTIALS.code => AuthError::InvalidCredentials,
        (c, _) if c == Kind::TOO_MANY_ATTEMPTS.code => AuthError::TooManyAttempts {
            retry_after_secs: retry_after(1),
        },
        (c, _) if c == Kind::ACCOUNT_DISABLED.code => AuthError::Disabled,
        (_, tonic::Code::ResourceExhausted) => AuthError::Overloaded {
            retry_after_secs: retry_after(1),
        },
        (_, tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled) => {
            AuthError::Unavailable(format!("identity: {}", status.message()))
        }
        _ => AuthError::Internal(format!(
            "identity: {:?} {}",
            status.code(),
            status.message()
        )),
    }
}
