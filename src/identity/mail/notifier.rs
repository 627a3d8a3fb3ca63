//! The last step of a mail: handing one notice to whatever delivers it.
//! [`super::smtp::Smtp`] submits it to a mail server. The all-in-one's
//! default on loopback, [`LogNotifier`], writes the link to the log so a
//! developer can follow it; the link holds a live token, so that one is
//! refused for a process that listens beyond loopback.

use std::sync::{Arc, Mutex};

use crate::kernel::locks;
use async_trait::async_trait;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    PasswordReset,
    EmailVerification,
    /// Someone tried to register an address that has an account (with
    /// `identity.conceal_existing_accounts`): the owner is told, and may
    /// ask for a reset. Its link carries no token.
    AccountExists,
}

impl NoticeKind {
    /// How the kind is stored in the mail queue.
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::PasswordReset => "password_reset",
            NoticeKind::EmailVerification => "email_verification",
            NoticeKind::AccountExists => "account_exists",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            NoticeKind::PasswordReset,
            NoticeKind::EmailVerification,
            NoticeKind::AccountExists,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    pub fn path(self) -> &'static str {
        match self {
            NoticeKind::PasswordReset => "/reset-password",
            NoticeKind::EmailVerification => "/verify-email",
            NoticeKind::AccountExists => "/reset-password",
        }
    }
}

/// A message for one user.
#[derive(Clone)]
pub struct Notice {
    pub kind: NoticeKind,
    pub user_id: String,
    pub email: String,
    /// Link including the token; treat as a secret.
    pub link: String,
    /// The token alone, for notifiers that build their own links; empty
    /// for a notice that carries none.
    pub token: String,
    /// When the link stops working.
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

impl std::fmt::Debug for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notice")
            .field("kind", &self.kind)
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

/// Why a notice was not delivered, and whether to try again.
#[derive(Debug)]
pub enum Undelivered {
    /// The mail server could not be reached, or asked to try later: the
    /// notice stays queued and is tried again.
    Later(String),
    /// The mail server refused this recipient for good: the notice is
    /// dropped.
    Never(String),
}

impl std::fmt::Display for Undelivered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Undelivered::Later(why) | Undelivered::Never(why) => f.write_str(why),
        }
    }
}

#[async_trait]
pub trait Notifier: Send + Sync {
    /// Delivers `notice`; done once the receiving end has taken it.
    async fn send(&self, notice: &Notice) -> Result<(), Undelivered>;
}

/// Writes each link to the log (target `gatehouse::notifier`).
pub struct LogNotifier;

#[async_trait]
impl Notifier for LogNotifier {
    async fn send(&self, notice: &Notice) -> Result<(), Undelivered> {
        tracing::info!(
            target: "gatehouse::notifier",
            kind = ?notice.kind,
            user_id = %notice.user_id,
            link = %notice.link,
            "development notifier: deliver this link to the user"
        );
        Ok(())
    }
}

/// Keeps notices in memory; for tests and embedding.
#[derive(Default, Clone)]
pub struct MemoryNotifier {
    pub sent: Arc<Mutex<Vec<Notice>>>,
    /// Held, it keeps notices from being delivered until it is let go: a
    /// slow delivery, for tests.
    pub held: Arc<tokio::sync::Mutex<()>>,
}

impl MemoryNotifier {
    /// The token of the latest notice of `kind` sent to `email`.
    pub fn last_token(&self, kind: NoticeKind, email: &str) -> Option<String> {
        let sent = locks::lock(&self.sent);
        sent.iter()
            .rev()
            .find(|n| n.kind == kind && n.email.eq_ignore_ascii_case(email))
            .map(|n| n.token.clone())
    }
}

#[async_trait]
impl Notifier for MemoryNotifier {
    async fn send(&self, notice: &Notice) -> Result<(), Undelivered> {
        let _delivering = self.held.lock().await;
        locks::lock(&self.sent).push(notice.clone());
        Ok(())
    }
}
