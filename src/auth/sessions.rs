//! Sessions: listing a user's, ending them (one, a user's, the caller's
//! own), and the
//! refresh tokens sessions are renewed with: a token of 256 random bits, of
//! which only its SHA-256 is stored.

use chrono::{DateTime, Duration, Utc};
use diesel::Connection;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::middleware::token::{SessionId, UserId};

use super::error::AuthError;
use super::events::{self, session_event};
use super::service::{Auth, Session};
use super::store;
use crate::kernel::db::DbConnection;
use crate::kernel::outbox;
use crate::middleware::token::Principal;

pub(super) fn end_session(
    c: &mut DbConnection,
    id: &str,
    reason: &str,
    now: DateTime<Utc>,
    by: DateTime<Utc>,
) -> Result<bool, AuthError> {
    match store::revoke(c, id, reason, now.naive_utc())? {
        Some(s) => {
            outbox::enqueue(
                c,
                &session_event(&events::SESSION_REVOKED, &s, reason, by),
                now,
            )?;
            Ok(true)
        }
        None => Ok(false),
    }
}

pub(super) fn end_user_sessions(
    c: &mut DbConnection,
    user_id: &str,
    except: Option<&str>,
    reason: &str,
    now: DateTime<Utc>,
    by: DateTime<Utc>,
) -> Result<usize, AuthError> {
    let ended = store::revoke_user(c, user_id, except, reason, now.naive_utc())?;
    for s in &ended {
        outbox::enqueue(
            c,
            &session_event(&events::SESSION_REVOKED, s, reason, by),
            now,
        )?;
    }
    Ok(ended.len())
}

pub(super) fn secs(n: u64) -> Duration {
    Duration::seconds(i64::try_from(n).unwrap_or(i64::MAX / 1000))
}

/// A new refresh token (256 random bits, URL-safe hex) and its stored hash.
pub(super) fn new_refresh_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    let h = hash(&token);
    (token, h)
}

pub(super) fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Auth {
    /// The sessions revoked at or after `since`.
    pub async fn revoked_since(&self, since: DateTime<Utc>) -> Result<Vec<String>, AuthError> {
        let since = since.naive_utc();
        self.db
            .run(move |c| store::revoked_since(c, since).map_err(AuthError::from))
            .await
    }

    /// Ends one session (any reason); false if it was unknown or ended already.
    pub async fn revoke_session(
        &self,
        session_id: SessionId,
        reason: &str,
    ) -> Result<bool, AuthError> {
        let now = self.clock.now();
        let (id, reason, by) = (
            session_id.to_string(),
            reason.to_owned(),
            self.tokens_expire_by(now),
        );
        let ended = self
            .db
            .run(move |c| c.transaction(|c| end_session(c, &id, &reason, now, by)))
            .await?;
        if ended {
            self.relay.wake();
        }
        Ok(ended)
    }

    /// Ends every session of a user but `except`; answers how many ended.
    pub async fn revoke_user_sessions(
        &self,
        user_id: UserId,
        except: Option<SessionId>,
        reason: &str,
    ) -> Result<usize, AuthError> {
        let now = self.clock.now();
        let (user, keep, reason, by) = (
            user_id.to_string(),
            except.map(|e| e.to_string()),
            reason.to_owned(),
            self.tokens_expire_by(now),
        );
        let count = self
            .db
            .run(move |c| {
                c.transaction(|c| {
                    // Ordered with logins under way (see `store::lock_user`);
                    // when every session ends, a login that began before
                    // opens none either, as after a reset.
                    store::lock_user(c, &user)?;
                    let ended = end_user_sessions(c, &user, keep.as_deref(), &reason, now, by)?;
                    if keep.is_none() {
                        store::raise_watermark(c, &user, now.naive_utc())?;
                    }
                    Ok::<_, AuthError>(ended)
                })
            })
            .await?;
        if count > 0 {
            self.relay.wake();
        }
        Ok(count)
    }

    /// Ends the caller's session if `session_id` is one of theirs.
    pub async fn end_own_session(
        &self,
        principal: &Principal,
        session_id: SessionId,
    ) -> Result<(), AuthError> {
        let id = session_id.to_string();
        let row = self
            .db
            .run(move |c| Ok::<_, AuthError>(store::session(c, &id)?))
            .await?;
        match row {
            Some(s) if s.user_id == principal.user_id.to_string() && s.revoked_at.is_none() => self
                .revoke_session(session_id, "ended_by_user")
                .await
                .map(|_| ()),
            _ => Err(AuthError::SessionNotFound),
        }
    }

    /// The user's live sessions.
    pub async fn sessions(&self, user_id: UserId) -> Result<Vec<Session>, AuthError> {
        let now = self.clock.now().naive_utc();
        let user = user_id.to_string();
        let rows = self
            .db
            .run(move |c| Ok::<_, AuthError>(store::live_sessions(c, &user, now)?))
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(Session {
                    id: SessionId::parse(&r.id).map_err(|e| AuthError::Internal(e.to_string()))?,
                    created_at: r.created_at.and_utc(),
                    refreshed_at: r.refreshed_at.and_utc(),
                    expires_at: r.expires_at.and_utc(),
                })
            })
            .collect()
    }
}
