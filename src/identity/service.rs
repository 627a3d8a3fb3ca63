//! Identity's domain logic: registration, credentials and throttling, password
//! changes and resets, email verification, profiles and status. Plain Rust
//! over the store; no HTTP or gRPC types here. Every state change writes its
//! event to the outbox in the same transaction.
//!
//! Rooms: the user model and its field rules are in `model.rs`, credential
//! checks in `credentials.rs`, links sent by email in
//! `links.rs`; this file holds the service and its other operations.

use std::sync::Arc;

use chrono::{Duration, NaiveDateTime};
use diesel::Connection;
use uuid::Uuid;

use super::config::IdentityConfig;
use super::device::Devices;
use super::error::IdentityError;
use super::events::{self, user_event, user_event_by};
use super::link_queue::{Links, RESET, VERIFY, new_token};
use super::mail::notifier::NoticeKind;
use super::mail::queue::{MailQueue, NewMail};
pub use super::model::{
    MAX_BATCH, MAX_DISPLAY_NAME, Registration, User, UserId, UserStatus, validate_display_name,
    validate_email,
};
use super::password::{Hasher, Password};
use super::store::{self, UserRow};
use super::throttle::Throttle;
use crate::kernel::clock::Clock;
use crate::kernel::db::Db;
use crate::kernel::outbox::{self, Relay};

/// The identity service.
#[derive(Clone)]
pub struct Identity {
    pub(super) db: Db,
    pub(super) hasher: Hasher,
    /// Mail waiting to be delivered (see `mail/`).
    pub(super) mail: MailQueue,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) relay: Relay,
    pub(super) config: Arc<IdentityConfig>,
    /// Failed sign-ins slowed down (see `throttle.rs`).
    pub(super) throttle: Throttle,
    /// Device tokens made and checked (see `device.rs`).
    pub(super) devices: Devices,
    /// Link requests waiting to be sent (see `links.rs`).
    pub(super) links: Arc<Links>,
}

impl Identity {
    pub fn new(
        db: Db,
        hasher: Hasher,
        mail: MailQueue,
        clock: Arc<dyn Clock>,
        relay: Relay,
        config: Arc<IdentityConfig>,
        device_key: [u8; 32],
    ) -> Self {
        let throttle = Throttle::new(config.throttle.clone());
        let devices = Devices::new(device_key, config.throttle.device_ttl_secs);
        let links = Arc::new(Links::new(
            config.links_per_address,
            std::time::Duration::from_secs(config.links_window_secs),
        ));
        Self {
            db,
            hasher,
            mail,
            clock,
            relay,
            config,
            throttle,
            devices,
            links,
        }
    }

    /// Whether registration conceals which addresses have accounts.
    pub fn conceals_accounts(&self) -> bool {
        self.config.conceal_existing_accounts
    }

    /// The queue of link requests.
    pub(super) fn links(&self) -> &Links {
        &self.links
    }

    pub(super) fn now(&self) -> NaiveDateTime {
        self.clock.now().naive_utc()
    }

    /// Creates an account and sends its email-verification link.
    pub async fn register(&self, input: Registration) -> Result<User, IdentityError> {
        let (email, normalized, display_name) = self.registrable(&input)?;
        // Cheap early response for the common duplicate; the unique index still
        // decides races between concurrent registrations.
        if self.account_at(&normalized).await?.is_some() {
            return Err(IdentityError::EmailTaken);
        }
        self.create(email, normalized, display_name, &input.password)
            .await
    }

    /// Registration that does not tell whether the address had an account
    /// (`identity.conceal_existing_accounts`): the same response, after the
    /// same work (a hash), either way. A new address gets its account and
    /// verification link; an address with an account gets a notice that
    /// someone tried to register it, and nothing changes.
    pub async fn register_concealed(&self, input: Registration) -> Result<(), IdentityError> {
        let (email, normalized, display_name) = self.registrable(&input)?;
        let holder = match self.account_at(&normalized).await? {
            None => {
                match self
                    .create(email, normalized.clone(), display_name, &input.password)
                    .await
                {
                    Ok(_) => return Ok(()),
                    // Registered meanwhile by another request.
                    Err(IdentityError::EmailTaken) => self.account_at(&normalized).await?,
                    Err(e) => return Err(e),
                }
            }
            Some(row) => {
                // The work a new account costs, spent alike.
                self.hasher.hash(&input.password).await?;
                Some(row)
            }
        };
        if let Some(row) = holder {
            let now = self.now();
            let expires = now + secs(self.config.reset_token_ttl_secs);
            let mail = self.mail.clone();
            self.db
                .run(move |c| {
                    let notice = NewMail {
                        kind: NoticeKind::AccountExists,
                        user_id: &row.id,
                        recipient: &row.email,
                        token: "",
                        expires_at: expires,
                    };
                    mail.enqueue(c, notice, now)
                })
                .await?;
            self.mail.wake();
        }
        Ok(())
    }

    /// A registration's address (as stored, and its lookup form) and
    /// display name, once registration is open and every field is good.
    fn registrable(&self, input: &Registration) -> Result<(String, String, String), IdentityError> {
        if !self.config.registration_enabled {
            return Err(IdentityError::RegistrationClosed);
        }
        let email = validate_email(&input.email)?;
        let normalized = super::model::email_key(&email);
        let display_name = validate_display_name(&input.display_name)?;
        self.check_policy(&input.password, "password")?;
        Ok((email, normalized, display_name))
    }

    /// The account at the address whose lookup form is `normalized`.
    async fn account_at(&self, normalized: &str) -> Result<Option<UserRow>, IdentityError> {
        let probe = normalized.to_owned();
        self.db
            .run(move |c| Ok::<_, IdentityError>(store::by_email(c, &probe)?))
            .await
    }

    /// Makes the account (its password hashed now) and sends its
    /// verification link; `EmailTaken` when the address has one.
    async fn create(
        &self,
        email: String,
        normalized: String,
        display_name: String,
        password: &Password,
    ) -> Result<User, IdentityError> {
        let hash = self.hasher.hash(password).await?;
        let now = self.now();
        let row = UserRow {
            id: Uuid::now_v7().to_string(),
            email,
            email_normalized: normalized,
            display_name,
            status: UserStatus::Active.as_str().into(),
            email_verified: false,
            password_hash: hash,
            failed_logins: 0,
            locked_until: None,
            created_at: now,
            updated_at: now,
            version: 1,
        };
        let (token, token_hash) = new_token();
        let expires = now + secs(self.config.verification_token_ttl_secs);
        let event = user_event(&events::USER_REGISTERED, &row);
        let at = self.clock.now();
        let inserted = row.clone();
        let mail = self.mail.clone();
        self.db
            .run(move |conn| {
                conn.transaction(|conn| {
                    store::insert_user(conn, &inserted)?;
                    store::replace_token(conn, &token_hash, &inserted.id, VERIFY, expires, now)?;
                    outbox::enqueue(conn, &event, at)?;
                    let notice = NewMail {
                        kind: NoticeKind::EmailVerification,
                        user_id: &inserted.id,
                        recipient: &inserted.email,
                        token: &token,
                        expires_at: expires,
                    };
                    mail.enqueue(conn, notice, now)
                })
            })
            .await?;
        self.relay.wake();
        self.mail.wake();
        User::try_from(&row)
    }

    pub async fn get_user(&self, id: UserId) -> Result<User, IdentityError> {
        let key = id.to_string();
        let row = self
            .db
            .run(move |c| Ok::<_, IdentityError>(store::by_id(c, &key)?))
            .await?
            .ok_or(IdentityError::NotFound)?;
        User::try_from(&row)
    }

    /// Up to `limit` users that `filter` lets through, after the user `after`.
    pub async fn list_users(
        &self,
        filter: store::UserFilter,
        after: Option<String>,
        limit: i64,
    ) -> Result<Vec<User>, IdentityError> {
        let rows = self
            .db
            .run(move |c| {
                Ok::<_, IdentityError>(store::list_users(c, &filter, after.as_deref(), limit)?)
            })
            .await?;
        rows.iter().map(User::try_from).collect()
    }

    /// The users among `ids` that exist, in no particular order.
    pub async fn get_users(&self, ids: Vec<UserId>) -> Result<Vec<User>, IdentityError> {
        if ids.len() > MAX_BATCH {
            return Err(IdentityError::invalid(
                "ids",
                format!("at most {MAX_BATCH} ids per call"),
            ));
        }
        let keys: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let rows = self
            .db
            .run(move |c| Ok::<_, IdentityError>(store::by_ids(c, &keys)?))
            .await?;
        rows.iter().map(User::try_from).collect()
    }

    pub async fn update_profile(
        &self,
        id: UserId,
        display_name: Option<String>,
        expected_version: Option<i64>,
    ) -> Result<User, IdentityError> {
        let Some(name) = display_name else {
            return self.get_user(id).await;
        };
        let name = validate_display_name(&name)?;
        let now = self.now();
        let at = self.clock.now();
        let key = id.to_string();
        let row = self
            .db
            .run(move |c| {
                c.transaction(|c| {
                    let row = store::update_profile(c, &key, &name, expected_version, now)?;
                    outbox::enqueue(c, &user_event(&events::USER_UPDATED, &row), at)?;
                    Ok::<_, IdentityError>(row)
                })
            })
            .await?;
        self.relay.wake();
        User::try_from(&row)
    }

    /// Changes a password after checking the current one.
    /// Changes a password after checking the current one. `session` is the
    /// session that asked, which auth keeps while ending the others.
    pub async fn change_password(
        &self,
        id: UserId,
        current: &Password,
        new: &Password,
        session: Option<Uuid>,
    ) -> Result<User, IdentityError> {
        let key = id.to_string();
        let row = self
            .db
            .run(move |c| Ok::<_, IdentityError>(store::by_id(c, &key)?))
            .await?
            .ok_or(IdentityError::NotFound)?;
        // Checked like a sign-in: counted and throttled, so
        // a stolen access token cannot guess the password without limit.
        let checked = self
            .verify_credentials(&row.email, current, None)
            .await?
            .user;
        self.check_policy(new, "new_password")?;
        let hash = self.hasher.hash(new).await?;
        let now = self.now();
        let at = self.clock.now();
        let acting = session.map(|s| s.to_string()).unwrap_or_default();
        let (user_id, version) = (row.id, checked.version);
        let row = self
            .db
            .run(move |c| {
                c.transaction(|c| {
                    // Applies only if nothing (a reset, another change) came between.
                    let row = store::replace_password(c, &user_id, version, &hash, now)?
                        .ok_or(IdentityError::VersionMismatch { expected: version })?;
                    // A reset link sent before no longer sets a password.
                    store::retire_tokens(c, &user_id, RESET, now)?;
                    let event = user_event_by(&events::PASSWORD_CHANGED, &row, acting);
                    outbox::enqueue(c, &event, at)?;
                    Ok::<_, IdentityError>(row)
                })
            })
            .await?;
        self.relay.wake();
        User::try_from(&row)
    }

    /// Deletes the account and everything identity keeps about it.
    pub async fn delete_user(&self, id: UserId) -> Result<(), IdentityError> {
        let key = id.to_string();
        let at = self.clock.now();
        self.db
            .run(move |c| {
                c.transaction(|c| {
                    let row = store::delete_user(c, &key)?.ok_or(IdentityError::NotFound)?;
                    outbox::enqueue(c, &user_event(&events::USER_DELETED, &row), at)?;
                    Ok::<_, IdentityError>(())
                })
            })
            .await?;
        self.relay.wake();
        Ok(())
    }
    pub async fn set_status(&self, id: UserId, status: UserStatus) -> Result<User, IdentityError> {
        let key = id.to_string();
        let now = self.now();
        let at = self.clock.now();
        let row = self
            .db
            .run(move |c| {
                c.transaction(|c| {
                    let row = store::set_status(c, &key, status.as_str(), now)?
                        .ok_or(IdentityError::NotFound)?;
                    // A disabled account's reset links die with its access:
                    // none may set a password to be used once it is back.
                    if status == UserStatus::Disabled {
                        store::retire_tokens(c, &key, RESET, now)?;
                    }
                    outbox::enqueue(c, &user_event(&events::USER_STATUS_CHANGED, &row), at)?;
                    Ok::<_, IdentityError>(row)
                })
            })
            .await?;
        self.relay.wake();
        User::try_from(&row)
    }

    /// Checks `password` against the policy; a problem names `field`, the
    /// body field the password came in.
    pub(super) fn check_policy(
        &self,
        password: &Password,
        field: &'static str,
    ) -> Result<(), IdentityError> {
        let policy = &self.config.password;
        let text = password.as_str();
        if text.chars().count() < policy.min_length {
            return Err(IdentityError::invalid(
                field,
                format!("must be at least {} characters long", policy.min_length),
            ));
        }
        if text.chars().count() > policy.max_length {
            return Err(IdentityError::invalid(
                field,
                format!("must be at most {} characters long", policy.max_length),
            ));
        }
        if text.len() > policy.max_bytes {
            return Err(IdentityError::invalid(
                field,
                format!("must be at most {} bytes long", policy.max_bytes),
            ));
        }
        Ok(())
    }
}

pub(super) fn secs(n: u64) -> Duration {
    Duration::seconds(i64::try_from(n).unwrap_or(i64::MAX / 1000))
}
