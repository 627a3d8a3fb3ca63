//! Checking an email and password, with failures throttled (see
//! `throttle.rs`) alike for addresses with and without an account, so that
//! neither answer nor timing tells which exist; and the device token a
//! sign-in leaves with its client (see `device.rs`).

use diesel::Connection;

use super::error::IdentityError;
use super::events::{self, user_event};
use super::model::{MAX_EMAIL, User, UserStatus, email_key};
use super::password::{Password, Verified};
use super::service::Identity;
use super::store;
use super::throttle::Attempt;
use crate::kernel::outbox;

/// A sign-in whose password proved right.
#[derive(Debug)]
pub struct SignedIn {
    pub user: User,
    /// The token its client keeps for its later sign-ins at the account.
    pub device_token: String,
}

impl Identity {
    /// Checks an email and password, throttling failures. Unknown emails
    /// and wrong passwords get the same error after about the same time.
    /// `device_token` is the one an earlier sign-in at this account gave
    /// the client, if it kept one.
    pub async fn verify_credentials(
        &self,
        email: &str,
        password: &Password,
        device_token: Option<&str>,
    ) -> Result<SignedIn, IdentityError> {
        let normalized = email_key(email);
        if normalized.len() > MAX_EMAIL || password.as_str().len() > self.config.password.max_bytes
        {
            self.hasher
                .verify_decoy(&Password::new(String::new()))
                .await?;
            return Err(IdentityError::InvalidCredentials);
        }
        let now = self.clock.now();
        let device = device_token.and_then(|t| self.devices.check(t, &normalized, now));
        let origin = crate::kernel::telemetry::current_origin();
        let attempt = Attempt {
            email: &normalized,
            client: origin.client_ip.parse().ok(),
            device,
        };
        // The client's earlier attempts at the account are decided first.
        let Some(_line) = self.throttle.turn(&attempt, self.hasher.max_wait()).await else {
            return Err(self.hasher.overloaded());
        };
        let now = self.clock.now();
        let admitted =
            self.throttle
                .admit(&attempt, now)
                .map_err(|wait| IdentityError::TooManyAttempts {
                    retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                })?;
        // Refused as overloaded, the attempt was not made: it counts nothing.
        let turn = match self.hasher.turn().await {
            Ok(turn) => turn,
            Err(e) => {
                self.throttle.take_back(admitted);
                return Err(e);
            }
        };
        let found = {
            let normalized = normalized.clone();
            self.db
                .run(move |c| Ok::<_, IdentityError>(store::by_email(c, &normalized)?))
                .await?
        };
        let Some(user) = found else {
            // Every branch spends one verification's time.
            turn.verify_decoy(password).await?;
            return Err(IdentityError::InvalidCredentials);
        };
        match turn.verify(password, &user.password_hash).await? {
            Verified::No => {
                // The failure is recorded (audit keeps it).
                let failed = user_event(&events::LOGIN_FAILED, &user);
                let at = self.clock.now();
                self.db
                    .run(move |c| {
                        c.transaction(|c| {
                            outbox::enqueue(c, &failed, at)?;
                            Ok::<_, IdentityError>(())
                        })
                    })
                    .await?;
                self.relay.wake();
                Err(IdentityError::InvalidCredentials)
            }
            verified => {
                // The owner: what the attempt was counted as is forgiven.
                self.throttle.forgive(admitted);
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
                Ok(SignedIn {
                    user,
                    device_token: self.devices.issue(&normalized, device, now),
                })
            }
        }
    }
}
