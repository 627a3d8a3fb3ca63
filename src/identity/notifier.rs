//! How single-use links reach users. Delivery (email, SMS, a queue) is the
//! deployment's business; the service only says what to deliver to whom.
//!
//! The embedded default, [`LogNotifier`], writes the link to the log so a
//! developer can follow it. The link holds a live token: that notifier is for
//! development, never for a deployment with real users.

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
    /// The token alone, for notifiers that build their own links.
    pub token: String,
}

impl std::fmt::Debug for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notice")
            .field("kind", &self.kind)
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

#[async_trait]
pub trait Notifier: Send + Sync {
    async fn send(&self, notice: Notice);
}

/// Writes each link to the log (target `gatehouse::notifier`).
pub struct LogNotifier;

#[async_trait]
impl Notifier for LogNotifier {
    async fn send(&self, notice: Notice) {
        tracing::info!(
            target: "gatehouse::notifier",
            kind = ?notice.kind,
            user_id = %notice.user_id,
            link = %notice.link,
            "development notifier: deliver this link to the user"
        );
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
    async fn send(&self, notice: Notice) {
        let _delivering = self.held.lock().await;
        locks::lock(&self.sent).push(notice);
    }
}
