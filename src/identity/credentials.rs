//! Checking an email and password: failures counted, the account locked
//! after too many, and addresses with no account counted and locked alike
//! (in memory), so that neither answer nor timing tells which exist.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use diesel::Connection;

use super::error::IdentityError;
use super::model::{MAX_EMAIL, User, UserStatus};
use super::password::{Password, Verified};
use super::service::{Identity, secs, user_event};
use super::store::{self, Attempt};
use crate::kernel::locks;
use crate::kernel::outbox;

/// Failed logins for addresses that have no account, counted and locked
/// like real ones so that the lockout does not tell which addresses exist.
/// Kept in memory, bounded, each entry for one lockout period.
#[derive(Clone)]
pub(super) struct Phantoms {
    counts: moka::sync::Cache<String, (i32, Option<DateTime<Utc>>)>,
    turn: Arc<std::sync::Mutex<()>>,
}

impl Phantoms {
    pub(super) fn new(lockout: std::time::Duration) -> Self {
        Self {
            counts: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(lockout.max(std::time::Duration::from_secs(1)))
                .build(),
            turn: Arc::default(),
        }
    }

    /// Counts a failure for `email`; answers the lock's end when it was
    /// already locked (the attempt is then not counted).
    fn fail(
        &self,
        email: &str,
        now: DateTime<Utc>,
        max: i32,
        lock_until: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let _turn = locks::lock(&self.turn);
        let (mut failures, until) = self.counts.get(email).unwrap_or((0, None));
        match until {
            Some(until) if until > now => return Some(until),
            Some(_) => failures = 0,
            None => {}
        }
        failures += 1;
        let until = (failures >= max).then_some(lock_until);
        self.counts.insert(email.to_owned(), (failures, until));
        None
    }
}

impl Identity {
    /// Checks an email and password, counting failures and locking the
    /// account after too many. Unknown emails and wrong passwords get the
    /// same error after about the same time.
    pub async fn verify_credentials(
        &self,
        email: &str,
        password: &Password,
    ) -> Result<User, IdentityError> {
        let normalized = email.trim().to_lowercase();
        if normalized.len() > MAX_EMAIL || password.as_str().len() > self.config.password.max_bytes
        {
            self.hasher
                .verify_decoy(&Password::new(String::new()))
                .await?;
            return Err(IdentityError::InvalidCredentials);
        }
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
                self.hasher.verify_decoy(password).await?;
                return match self
                    .phantoms
                    .fail(&normalized, now, max, lock_until.and_utc())
                {
                    Some(until) => Err(locked(until, now)),
                    None => Err(IdentityError::InvalidCredentials),
                };
            }
            Attempt::Locked(until) => {
                self.hasher.verify_decoy(password).await?;
                return Err(locked(until.and_utc(), now));
            }
            Attempt::Counted { user, locks } => (*user, locks),
        };
        match self.hasher.verify(password, &user.password_hash).await? {
            Verified::No => {
                if locks {
                    let event = user_event("identity.user.locked", &user);
                    let at = self.clock.now();
                    self.db
                        .run(move |c| Ok::<_, IdentityError>(outbox::enqueue(c, &event, at)?))
                        .await?;
                    self.relay.wake();
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
