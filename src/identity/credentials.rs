//! Checking an email and password: failures counted, the account locked
//! after too many, and addresses with no account counted and locked alike
//! (in memory), so that neither answer nor timing tells which exist.

use chrono::{DateTime, Utc};
use diesel::Connection;

use super::error::IdentityError;
use super::model::{MAX_EMAIL, User, UserStatus};
use super::password::{Password, Verified};
use super::service::{Identity, secs, user_event};
use super::store::{self, Attempt};
use crate::kernel::outbox;

impl Identity {
    /// Checks an email and password, counting failures and locking the
    /// account after too many. Unknown emails and wrong passwords get the
    /// same error after about the same time.
    pub async fn verify_credentials(
        &self,
        email: &str,
        password: &Password,
    ) -> Result<User, IdentityError> {
        let normalized = super::model::email_key(email);
        if normalized.len() > MAX_EMAIL || password.as_str().len() > self.config.password.max_bytes
        {
            self.hasher
                .verify_decoy(&Password::new(String::new()))
                .await?;
            return Err(IdentityError::InvalidCredentials);
        }
        // The turn to verify comes first: a request refused as overloaded
        // counts no attempt.
        let turn = self.hasher.turn().await?;
        let now = self.clock.now();
        let max = i32::try_from(self.config.lockout.max_failures.max(1)).unwrap_or(i32::MAX);
        let lock_until = (now + secs(self.config.lockout.duration_secs)).naive_utc();
        let attempt = {
            let normalized = normalized.clone();
            let now = now.naive_utc();
            self.db
                .run(move |c| store::count_attempt(c, &normalized, now, max, lock_until))
                .await?
        };
        let (user, locks) = match attempt {
            // Unknown addresses are counted and locked like accounts, and
            // every branch spends one verification's time.
            Attempt::Unknown => {
                turn.verify_decoy(password).await?;
                return match self
                    .phantoms
                    .fail(&normalized, now, max, lock_until.and_utc())
                {
                    Some(until) => Err(locked(until, now)),
                    None => Err(IdentityError::InvalidCredentials),
                };
            }
            Attempt::Locked(until) => {
                turn.verify_decoy(password).await?;
                return Err(locked(until.and_utc(), now));
            }
            Attempt::Counted { user, locks } => (*user, locks),
        };
        match turn.verify(password, &user.password_hash).await? {
            Verified::No => {
                // The failure is recorded (audit keeps it), and the lock
                // it brought on, if it did.
                let failed = user_event("identity.login.failed", &user);
                let lock = locks.then(|| user_event("identity.user.locked", &user));
                let at = self.clock.now();
                self.db
                    .run(move |c| {
                        c.transaction(|c| {
                            outbox::enqueue(c, &failed, at)?;
                            if let Some(lock) = &lock {
                                outbox::enqueue(c, lock, at)?;
                            }
                            Ok::<_, IdentityError>(())
                        })
                    })
                    .await?;
                self.relay.wake();
                if locks {
                    tracing::info!(user_id = %user.id, "account locked after repeated failed logins");
                }
                Err(IdentityError::InvalidCredentials)
            }
            verified => {
                let rehash = match verified {
                    Verified::YesRehash => Some(self.hasher.hash(password).await?),
                    _ => None,
                };
                let (id, checked) = (user.id.clone(), user.password_hash.clone());
                let row = self
                    .db
                    .run(move |c| {
                        c.transaction(|c| {
                            // A password changed while this one was checked no
                            // longer counts; nor may its re-hash undo the change.
                            if !store::confirm_login(c, &id, &checked, rehash.as_deref())? {
                                return Err(IdentityError::InvalidCredentials);
                            }
                            store::by_id(c, &id)?.ok_or(IdentityError::NotFound)
                        })
                    })
                    .await?;
                let user = User::try_from(&row)?;
                if user.status == UserStatus::Disabled {
                    return Err(IdentityError::Disabled);
                }
                Ok(user)
            }
        }
    }
}

fn locked(until: DateTime<Utc>, now: DateTime<Utc>) -> IdentityError {
    IdentityError::Locked {
        retry_after_secs: u64::try_from((until - now).num_seconds().max(1)).unwrap_or(1),
    }
}
