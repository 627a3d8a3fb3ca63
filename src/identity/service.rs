//! Identity's domain logic: registration, credentials and lockout, password
//! changes and resets, email verification, profiles and status. Plain Rust
//! over the store; no HTTP or gRPC types here. Every state change writes its
//! event to the outbox in the same transaction.

use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use diesel::Connection;
use prost::Message;
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::config::IdentityConfig;
use super::error::IdentityError;
use super::links::{Link, Links};
use super::notifier::{Notice, NoticeKind, Notifier};
use super::password::{Hasher, Password, Verified};
use super::store::{self, Attempt, UserRow};
use crate::kernel::clock::Clock;
use crate::kernel::db::Db;
use crate::kernel::locks;
use crate::kernel::outbox::{self, NewEvent, Relay};
use crate::proto::events::v1::UserEvent;

/// Longest email address accepted (RFC 5321 path limit).
const MAX_EMAIL: usize = 254;
/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME: usize = 100;
/// Most ids one `GetUsers` call may ask for.
pub const MAX_BATCH: usize = 500;

const RESET: &str = "password_reset";
const VERIFY: &str = "email_verification";

/// A user id: a UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserId(pub Uuid);

impl UserId {
    pub fn parse(text: &str) -> Result<Self, IdentityError> {
        Uuid::parse_str(text)
            .map(UserId)
            .map_err(|_| IdentityError::invalid("id", "not a valid user id"))
    }
}

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserStatus {
    Active,
    Disabled,
}

impl UserStatus {
    pub fn parse(text: &str) -> Result<Self, IdentityError> {
        match text {
            "active" => Ok(Self::Active),
            "disabled" => Ok(Self::Disabled),
            _ => Err(IdentityError::invalid(
                "status",
                "must be \"active\" or \"disabled\"",
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
        }
    }
}

/// A user as the outside sees it: never the password hash.
#[derive(Debug, Clone)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub display_name: String,
    pub status: UserStatus,
    pub email_verified: bool,
    pub locked_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

impl TryFrom<&UserRow> for User {
    type Error = IdentityError;

    fn try_from(row: &UserRow) -> Result<Self, IdentityError> {
        Ok(User {
            id: UserId(
                Uuid::parse_str(&row.id).map_err(|e| IdentityError::Internal(e.to_string()))?,
            ),
            email: row.email.clone(),
            display_name: row.display_name.clone(),
            status: UserStatus::parse(&row.status)
                .map_err(|e| IdentityError::Internal(e.to_string()))?,
            email_verified: row.email_verified,
            locked_until: row.locked_until.map(|t| t.and_utc()),
            created_at: row.created_at.and_utc(),
            updated_at: row.updated_at.and_utc(),
            version: row.version,
        })
    }
}

/// What `register` needs.
pub struct Registration {
    pub email: String,
    pub password: Password,
    pub display_name: String,
}

/// Failed logins for addresses that have no account, counted and locked
/// like real ones so that the lockout does not tell which addresses exist.
/// Kept in memory, bounded, each entry for one lockout period.
#[derive(Clone)]
struct Phantoms {
    counts: moka::sync::Cache<String, (i32, Option<DateTime<Utc>>)>,
    turn: Arc<std::sync::Mutex<()>>,
}

impl Phantoms {
    fn new(lockout: std::time::Duration) -> Self {
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

/// The identity service.
#[derive(Clone)]
pub struct Identity {
    db: Db,
    hasher: Hasher,
    notifier: Arc<dyn Notifier>,
    clock: Arc<dyn Clock>,
    relay: Relay,
    config: Arc<IdentityConfig>,
    phantoms: Phantoms,
    /// Link requests waiting to be sent (see `links.rs`).
    links: Arc<Links>,
}

impl Identity {
    pub fn new(
        db: Db,
        hasher: Hasher,
        notifier: Arc<dyn Notifier>,
        clock: Arc<dyn Clock>,
        relay: Relay,
        config: Arc<IdentityConfig>,
    ) -> Self {
        let phantoms = Phantoms::new(std::time::Duration::from_secs(config.lockout.duration_secs));
        Self {
            db,
            hasher,
            notifier,
            clock,
            relay,
            config,
            phantoms,
            links: Arc::default(),
        }
    }

    /// The queue of link requests.
    pub(super) fn links(&self) -> &Links {
        &self.links
    }

    fn now(&self) -> NaiveDateTime {
        self.clock.now().naive_utc()
    }

    /// Creates an account and sends its email-verification link.
    pub async fn register(&self, input: Registration) -> Result<User, IdentityError> {
        if !self.config.registration_enabled {
            return Err(IdentityError::RegistrationClosed);
        }
        let email = validate_email(&input.email)?;
        let normalized = email.to_lowercase();
        let display_name = validate_display_name(&input.display_name)?;
        self.check_policy(&input.password, "password")?;
        // Cheap early answer for the common duplicate; the unique index still
        // decides races between concurrent registrations.
        let probe = normalized.clone();
        if self
            .db
            .run(move |c| Ok::<_, IdentityError>(store::by_email(c, &probe)?))
            .await?
            .is_some()
        {
            return Err(IdentityError::EmailTaken);
        }
        let hash = self.hasher.hash(&input.password).await?;
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
        let event = user_event("identity.user.registered", &row);
        let at = self.clock.now();
        let inserted = row.clone();
        self.db
            .run(move |conn| {
                conn.transaction(|conn| {
                    store::insert_user(conn, &inserted)?;
                    store::replace_token(conn, &token_hash, &inserted.id, VERIFY, expires, now)?;
                    outbox::enqueue(conn, &event, at)?;
                    Ok::<_, IdentityError>(())
                })
            })
            .await?;
        self.relay.wake();
        let user = User::try_from(&row)?;
        self.notify(NoticeKind::EmailVerification, &row, token)
            .await;
        Ok(user)
    }

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

    pub async fn get_user(&self, id: UserId) -> Result<User, IdentityError> {
        let key = id.to_string();
        let row = self
            .db
            .run(move |c| Ok::<_, IdentityError>(store::by_id(c, &key)?))
            .await?
            .ok_or(IdentityError::NotFound)?;
        User::try_from(&row)
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
                    outbox::enqueue(c, &user_event("identity.user.updated", &row), at)?;
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
        // Checked like a login: counted, locked after too many failures, so
        // a stolen access token cannot guess the password without limit.
        let checked = self.verify_credentials(&row.email, current).await?;
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
                    let event = user_event_by("identity.password.changed", &row, acting);
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
                    outbox::enqueue(c, &user_event("identity.user.deleted", &row), at)?;
                    Ok::<_, IdentityError>(())
                })
            })
            .await?;
        self.relay.wake();
        Ok(())
    }

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
                    "identity.password.reset_requested",
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
                    "identity.email.verification_requested",
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
                    let row = store::set_password(c, &user_id, &hash, now)?;
                    store::clear_failures(c, &user_id)?;
                    store::retire_tokens(c, &user_id, RESET, now)?;
                    outbox::enqueue(c, &user_event("identity.password.reset", &row), at)?;
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
                    outbox::enqueue(c, &user_event("identity.email.verified", &row), at)?;
                    Ok::<_, IdentityError>(row)
                })
            })
            .await?;
        self.relay.wake();
        User::try_from(&row)
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
                    outbox::enqueue(c, &user_event("identity.user.status_changed", &row), at)?;
                    Ok::<_, IdentityError>(row)
                })
            })
            .await?;
        self.relay.wake();
        User::try_from(&row)
    }

    /// Issues a single-use token of `purpose` to the account with `email`
    /// when `eligible` holds, and hands the link to the notifier.
    async fn send_token(
        &self,
        email: &str,
        kind: NoticeKind,
        purpose: &'static str,
        ttl_secs: u64,
        event_type: &'static str,
        eligible: fn(&UserRow) -> bool,
    ) -> Result<(), IdentityError> {
        let normalized = email.to_lowercase();
        let (token, token_hash) = new_token();
        let now = self.now();
        let at = self.clock.now();
        let expires = now + secs(ttl_secs);
        let issued = self
            .db
            .run(move |c| {
                c.transaction(|c| {
                    let Some(row) = store::by_email(c, &normalized)? else {
                        return Ok::<_, IdentityError>(None);
                    };
                    if !eligible(&row) {
                        return Ok(None);
                    }
                    store::replace_token(c, &token_hash, &row.id, purpose, expires, now)?;
                    outbox::enqueue(c, &user_event(event_type, &row), at)?;
                    Ok(Some(row))
                })
            })
            .await?;
        if let Some(row) = issued {
            self.relay.wake();
            self.notify(kind, &row, token).await;
        }
        Ok(())
    }

    async fn notify(&self, kind: NoticeKind, row: &UserRow, token: String) {
        let link = format!(
            "{}{}?token={}",
            self.config.link_base_url.trim_end_matches('/'),
            kind.path(),
            token
        );
        self.notifier
            .send(Notice {
                kind,
                user_id: row.id.clone(),
                email: row.email.clone(),
                link,
                token,
            })
            .await;
    }

    /// Checks `password` against the policy; a problem names `field`, the
    /// body field the password came in.
    fn check_policy(&self, password: &Password, field: &'static str) -> Result<(), IdentityError> {
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

fn locked(until: DateTime<Utc>, now: DateTime<Utc>) -> IdentityError {
    IdentityError::Locked {
        retry_after_secs: u64::try_from((until - now).num_seconds().max(1)).unwrap_or(1),
    }
}

fn secs(n: u64) -> Duration {
    Duration::seconds(i64::try_from(n).unwrap_or(i64::MAX / 1000))
}

pub fn validate_email(email: &str) -> Result<String, IdentityError> {
    let email = email.trim();
    if email.is_empty() {
        return Err(IdentityError::invalid("email", "must not be empty"));
    }
    if email.len() > MAX_EMAIL {
        return Err(IdentityError::invalid(
            "email",
            format!("must be at most {MAX_EMAIL} bytes long"),
        ));
    }
    if !email_address::EmailAddress::is_valid(email) {
        return Err(IdentityError::invalid(
            "email",
            "is not a valid email address",
        ));
    }
    Ok(email.to_owned())
}

pub fn validate_display_name(name: &str) -> Result<String, IdentityError> {
    // Judged as sent, before trimming: the API document states these
    // rules of the value a client sends (see `http.rs`).
    if name.chars().any(char::is_control) {
        return Err(IdentityError::invalid(
            "display_name",
            "must not contain control characters",
        ));
    }
    if name.chars().count() > MAX_DISPLAY_NAME {
        return Err(IdentityError::invalid(
            "display_name",
            format!("must be at most {MAX_DISPLAY_NAME} characters long"),
        ));
    }
    let name = name.trim();
    if name.is_empty() {
        return Err(IdentityError::invalid("display_name", "must not be empty"));
    }
    Ok(name.to_owned())
}

/// A new single-use token (256 random bits, hex) and the hash that is stored.
fn new_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    let hash = hash_token(&token);
    (token, hash)
}

fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn user_event(event_type: &'static str, row: &UserRow) -> NewEvent {
    user_event_by(event_type, row, String::new())
}

/// An event about `row` caused by the signed-in session `session_id`.
fn user_event_by(event_type: &'static str, row: &UserRow, session_id: String) -> NewEvent {
    let payload = UserEvent {
        user_id: row.id.clone(),
        email: row.email.clone(),
        display_name: row.display_name.clone(),
        status: row.status.clone(),
        locked_until_unix_ms: row
            .locked_until
            .map_or(0, |t| t.and_utc().timestamp_millis()),
        session_id,
    };
    NewEvent {
        event_type,
        subject: row.id.clone(),
        payload: payload.encode_to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_and_checked() {
        assert_eq!(
            validate_email("  Ann@Example.org ").unwrap(),
            "Ann@Example.org"
        );
        assert!(validate_email("not-an-email").is_err());
        assert!(validate_email("").is_err());
        let long = format!("{}@example.org", "a".repeat(250));
        assert!(validate_email(&long).is_err());
    }

    #[test]
    fn display_names_are_bounded_and_printable() {
        assert_eq!(validate_display_name(" Ann ").unwrap(), "Ann");
        assert!(validate_display_name("   ").is_err());
        assert!(validate_display_name(&"x".repeat(101)).is_err());
        assert!(validate_display_name("a\u{0}b").is_err());
        // Judged as sent: a control character is refused even where
        // trimming would take it away.
        assert!(validate_display_name("Ann\n").is_err());
        assert!(validate_display_name(&format!(" {}", "x".repeat(100))).is_err());
    }

    #[test]
    fn tokens_are_random_and_only_their_hash_is_kept() {
        let (a, ha) = new_token();
        let (b, _) = new_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(ha, hash_token(&a));
        assert_ne!(ha, a);
    }
}
