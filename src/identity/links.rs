//! Links sent by email (a password reset, an email verification) go out
//! after the request for them has been answered, from a queue worked by one
//! task.
//!
//! Whether an address has an account must not show in the response, and its
//! timing is part of the response: looking the account up, issuing a token
//! and handing the notice over take longer for an address that has one.
//! So the request is answered once its address is found well-formed and
//! queued, which takes the same time for every address; the work is done
//! after. The queue is bounded: when it is full the request is refused with
//! 503, whatever its address, rather than held in memory.
//!
//! Here too: issuing a link's single-use token (only its hash is stored)
//! and confirming it, for a password reset or an email verification.

use diesel::Connection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::error::IdentityError;
use super::events::{self, user_event};
use super::link_queue::{Link, RESET, VERIFY, hash_token, new_token};
use super::mail::notifier::NoticeKind;
use super::mail::queue::NewMail;
use super::model::{User, UserStatus, validate_email};
use super::password::Password;
use super::service::{Identity, secs};
use super::store::{self, UserRow};
use crate::events::Event;
use crate::kernel::locks;
use crate::kernel::origin;
use crate::kernel::outbox;
use crate::proto::events::v1::UserEvent;

/// Works the queue of `identity` until `shutdown`, then sends what is
/// still waiting and ends. A second call finds no queue and ends at once.
pub fn spawn(identity: Identity, shutdown: CancellationToken) -> JoinHandle<()> {
    let rx = locks::lock(&identity.links().rx).take();
    tokio::spawn(async move {
        let Some(mut rx) = rx else { return };
        loop {
            let next = tokio::select! {
                next = rx.recv() => next,
                () = shutdown.cancelled() => break,
            };
            let Some((email, link, origin)) = next else {
                return;
            };
            origin::carry(origin, send(&identity, &email, link)).await;
        }
        rx.close();
        while let Some((email, link, origin)) = rx.recv().await {
            origin::carry(origin, send(&identity, &email, link)).await;
        }
    })
}

async fn send(identity: &Identity, email: &str, link: Link) {
    if let Err(e) = identity.send_link(email, link).await {
        // The address is not logged: it may have no account.
        tracing::warn!(error = %e, ?link, "a requested link could not be sent");
    }
}

impl Identity {
    /// Queues a reset link for the email, sent if it belongs to an active
    /// account. Answers the same either way, in the same time, so it cannot
    /// be used to find accounts (see `links.rs`).
    pub async fn request_password_reset(&self, email: &str) -> Result<(), IdentityError> {
        let email = validate_email(email)?;
        self.links.queue(email, Link::PasswordReset)
    }

    /// Sends the link `link` to `email` now, if the address has an account
    /// that may have it: a reset link to an active account, a verification
    /// link to an unverified one.
    pub(super) async fn send_link(&self, email: &str, link: Link) -> Result<(), IdentityError> {
        match link {
            Link::PasswordReset => {
                self.send_token(
                    email,
                    NoticeKind::PasswordReset,
                    RESET,
                    self.config.reset_token_ttl_secs,
                    &events::PASSWORD_RESET_REQUESTED,
                    |row| row.status == UserStatus::Active.as_str(),
                )
                .await
            }
            Link::EmailVerification => {
                self.send_token(
                    email,
                    NoticeKind::EmailVerification,
                    VERIFY,
                    self.config.verification_token_ttl_secs,
                    &events::EMAIL_VERIFICATION_REQUESTED,
                    |row| !row.email_verified,
                )
                .await
            }
        }
    }

    /// Sets a new password with a reset token; the token works once.
    pub async fn reset_password(&self, token: &str, new: &Password) -> Result<(), IdentityError> {
        self.check_policy(new, "new_password")?;
        let token_hash = hash_token(token);
        let now = self.now();
        // Check before the costly hash so bad tokens cost no scrypt time.
        let probe = token_hash.clone();
        if !self
            .db
            .run(move |c| Ok::<_, IdentityError>(store::token_usable(c, &probe, RESET, now)?))
            .await?
        {
            return Err(IdentityError::InvalidToken);
        }
        let hash = self.hasher.hash(new).await?;
        let now = self.now();
        let at = self.clock.now();
        self.db
            .run(move |c| {
                c.transaction(|c| {
                    let user_id = store::consume_token(c, &token_hash, RESET, now)?
                        .ok_or(IdentityError::InvalidToken)?;
                    // Only an active account's password is reset.
                    let active = store::by_id(c, &user_id)?
                        .is_some_and(|row| row.status == UserStatus::Active.as_str());
                    if !active {
                        return Err(IdentityError::InvalidToken);
                    }
                    let row = store::set_password(c, &user_id, &hash, now)?;
                    store::retire_tokens(c, &user_id, RESET, now)?;
                    outbox::enqueue(c, &user_event(&events::PASSWORD_RESET, &row), at)?;
                    Ok::<_, IdentityError>(())
                })
            })
            .await?;
        self.relay.wake();
        Ok(())
    }

    /// Queues a fresh verification link for the email, sent if it belongs
    /// to an unverified account; answers alike for every address.
    pub async fn request_verification(&self, email: &str) -> Result<(), IdentityError> {
        let email = validate_email(email)?;
        self.links.queue(email, Link::EmailVerification)
    }

    /// Marks the email verified with a verification token; the token works once.
    pub async fn verify_email(&self, token: &str) -> Result<User, IdentityError> {
        let token_hash = hash_token(token);
        let now = self.now();
        let at = self.clock.now();
        let row = self
            .db
            .run(move |c| {
                c.transaction(|c| {
                    let user_id = store::consume_token(c, &token_hash, VERIFY, now)?
                        .ok_or(IdentityError::InvalidToken)?;
                    let row = store::mark_email_verified(c, &user_id, now)?;
                    outbox::enqueue(c, &user_event(&events::EMAIL_VERIFIED, &row), at)?;
                    Ok::<_, IdentityError>(row)
                })
            })
            .await?;
        self.relay.wake();
        User::try_from(&row)
    }

    /// Issues a single-use token of `purpose` to the account with `email`
    /// when `eligible` holds, and queues its mail.
    pub(super) async fn send_token(
        &self,
        email: &str,
        kind: NoticeKind,
        purpose: &'static str,
        ttl_secs: u64,
        event: &'static Event<UserEvent>,
        eligible: fn(&UserRow) -> bool,
    ) -> Result<(), IdentityError> {
        let normalized = super::model::email_key(email);
        let (token, token_hash) = new_token();
        let now = self.now();
        let at = self.clock.now();
        let expires = now + secs(ttl_secs);
        let mail = self.mail.clone();
        let issued = self
            .db
            .run(move |c| {
                c.transaction(|c| {
                    store::lock_for_write(c, &normalized)?;
                    let Some(row) = store::by_email(c, &normalized)? else {
                        return Ok::<_, IdentityError>(None);
                    };
                    if !eligible(&row) {
                        return Ok(None);
                    }
                    store::replace_token(c, &token_hash, &row.id, purpose, expires, now)?;
                    outbox::enqueue(c, &user_event(event, &row), at)?;
                    let notice = NewMail {
                        kind,
                        user_id: &row.id,
                        recipient: &row.email,
                        token: &token,
                        expires_at: expires,
                    };
                    mail.enqueue(c, notice, now)?;
                    Ok(Some(()))
                })
            })
            .await?;
        if issued.is_some() {
            self.relay.wake();
            self.mail.wake();
        }
        Ok(())
    }
}
