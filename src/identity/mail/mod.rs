//! Mail to users: password-reset and verification links, and the notice
//! that someone tried to register an address that has an account.
//!
//! Rooms: `queue.rs` (the table mail waits in, written with the token it
//! carries), `notifier.rs` (the last step: one notice handed over),
//! `smtp.rs` (the notifier that submits to a mail server) and `config.rs`
//! (`[identity.mail]`). This file delivers what is queued.
//!
//! Delivery is at least once: a mail leaves the queue only after the mail
//! server has taken it. One that fails is tried again, waiting longer each
//! time up to `retry_max_ms`, until its link expires; a mail server that is
//! down for a while delays mail and loses none. With several instances on
//! one database, each mail is taken by one of them at a time.

pub mod config;
pub mod notifier;
pub mod queue;
pub mod smtp;

use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDateTime, TimeDelta};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::config::{MailConfig, Transport};
use self::notifier::{LogNotifier, Notice, NoticeKind, Notifier, Undelivered};
use self::queue::{MailQueue, MailRow, Unreadable};
use crate::identity::error::IdentityError;
use crate::kernel::clock::Clock;
use crate::kernel::config::ConfigError;
use crate::kernel::db::Db;
use crate::kernel::metrics::Metrics;

/// Mails taken from the queue in one pass at most.
const BATCH: i64 = 32;
/// How often the queue is looked at when nothing wakes delivery: mail
/// queued by another instance, or by the command line.
const POLL: Duration = Duration::from_secs(5);
/// How long a mail being sent when the process stops may still take.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The notifier `config` names. The log notifier is refused when
/// `beyond_loopback` names an address this process listens on that others
/// can reach: its links would be in the log of a real deployment.
pub fn notifier(
    config: &MailConfig,
    beyond_loopback: Option<std::net::SocketAddr>,
) -> Result<Arc<dyn Notifier>, ConfigError> {
    config.check()?;
    match config.transport {
        Transport::Smtp => Ok(Arc::new(smtp::Smtp::new(config)?)),
        Transport::Log => {
            if let Some(addr) = beyond_loopback {
                return Err(ConfigError(format!(
                    "identity.mail.transport = \"log\" writes live reset and verification links \
                     to the log, which is for development on one machine only, and this process \
                     listens on {addr}, beyond loopback: set identity.mail.transport = \"smtp\" \
                     with [identity.mail.smtp] (see docs/identity-api.md), or listen on loopback"
                )));
            }
            tracing::warn!(
                "mail goes to the log (identity.mail.transport = \"log\"): for development \
                 only; the reset and verification links in it are live"
            );
            Ok(Arc::new(LogNotifier))
        }
    }
}

/// What delivery needs besides the queue.
pub struct Delivery {
    pub db: Db,
    pub queue: MailQueue,
    pub notifier: Arc<dyn Notifier>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Metrics,
    /// Links are this base followed by the kind's path and the token.
    pub link_base_url: String,
    pub config: MailConfig,
}

/// Delivers queued mail until `shutdown`.
pub fn spawn(delivery: Delivery, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let wait = match delivery.pass(&shutdown).await {
                Ok(wait) => wait,
                Err(e) => {
                    tracing::warn!(error = %e, "the mail queue could not be read; trying again");
                    POLL
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = delivery.queue.woken() => {}
                () = shutdown.cancelled() => return,
            }
        }
    })
}

/// The link of a notice of `kind` carrying `token` (none when empty).
pub fn link(base: &str, kind: NoticeKind, token: &str) -> String {
    let base = base.trim_end_matches('/');
    if token.is_empty() {
        format!("{base}{}", kind.path())
    } else {
        format!("{base}{}?token={token}", kind.path())
    }
}

impl Delivery {
    /// Tries every mail that is due; how long until the next one is.
    async fn pass(&self, shutdown: &CancellationToken) -> Result<Duration, IdentityError> {
        loop {
            let now = self.now();
            let due = self
                .db
                .run(move |c| Ok::<_, IdentityError>(queue::due(c, now, BATCH)?))
                .await?;
            let full = due.len() as i64 == BATCH;
            for row in due {
                if shutdown.is_cancelled() {
                    return Ok(POLL);
                }
                self.attempt(row, shutdown).await?;
            }
            if !full {
                break;
            }
        }
        let (queued, next) = self
            .db
            .run(|c| Ok::<_, IdentityError>(queue::waiting(c)?))
            .await?;
        self.metrics.mail_queued.set(queued);
        let now = self.now();
        Ok(next.map_or(POLL, |next| {
            (next - now).to_std().unwrap_or_default().min(POLL)
        }))
    }

    /// One attempt at `row`, unless another instance took it first.
    async fn attempt(
        &self,
        row: MailRow,
        shutdown: &CancellationToken,
    ) -> Result<(), IdentityError> {
        let now = self.now();
        let id = row.id.clone();
        if row.expires_at <= now {
            self.settle(&id, None).await?;
            self.count("expired");
            tracing::warn!(mail = %id, kind = %row.kind, attempts = row.attempts,
                "a mail's link expired before it could be delivered; it is dropped");
            return Ok(());
        }
        // Not tried elsewhere while this attempt may last.
        let lease =
            now + delta(Duration::from_secs(self.config.smtp.timeout_secs) * 2 + STOP_GRACE);
        let claimed = row.clone();
        if !self
            .db
            .run(move |c| Ok::<_, IdentityError>(queue::claim(c, &claimed, lease)?))
            .await?
        {
            return Ok(());
        }
        let notice = match self.notice(&row) {
            Ok(notice) => notice,
            Err(e) => {
                self.settle(&id, None).await?;
                self.count("unreadable");
                tracing::error!(mail = %id, error = %e,
                    "a queued mail cannot be read (sealed under another key?); it is dropped");
                return Ok(());
            }
        };
        let sent = tokio::select! {
            sent = self.notifier.send(&notice) => sent,
            () = stopping(shutdown) => Err(Undelivered::Later("the process stopped".into())),
        };
        match sent {
            Ok(()) => {
                self.settle(&id, None).await?;
                self.count("sent");
            }
            Err(Undelivered::Never(why)) => {
                self.settle(&id, None).await?;
                self.count("refused");
                tracing::warn!(mail = %id, kind = %row.kind, reason = %why,
                    "the mail server refused a mail for good; it is dropped");
            }
            Err(Undelivered::Later(why)) => {
                let again = self.now() + delta(backoff(&self.config, row.attempts + 1));
                self.settle(&id, Some(again)).await?;
                self.count("failed");
                tracing::warn!(mail = %id, kind = %row.kind, attempt = row.attempts + 1,
                    retry_at = %again, reason = %why, "a mail could not be delivered; it stays queued");
            }
        }
        Ok(())
    }

    /// Takes `id` off the queue, or leaves it for `again`.
    async fn settle(&self, id: &str, again: Option<NaiveDateTime>) -> Result<(), IdentityError> {
        let id = id.to_owned();
        self.db
            .run(move |c| {
                match again {
                    Some(at) => queue::retry_at(c, &id, at)?,
                    None => queue::remove(c, &id)?,
                }
                Ok::<_, IdentityError>(())
            })
            .await
    }

    fn notice(&self, row: &MailRow) -> Result<Notice, Unreadable> {
        let kind =
            NoticeKind::parse(&row.kind).ok_or_else(|| Unreadable::Kind(row.kind.clone()))?;
        let token = self.queue.token(row)?;
        Ok(Notice {
            kind,
            user_id: row.user_id.clone(),
            email: row.recipient.clone(),
            link: link(&self.link_base_url, kind, &token),
            token,
            expires_at: row.expires_at.and_utc(),
        })
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .mail_deliveries_total
            .with_label_values(&[outcome])
            .inc();
    }

    fn now(&self) -> NaiveDateTime {
        self.clock.now().naive_utc()
    }
}

/// The wait after `failed` attempts: `retry_initial_ms`, doubled for each
/// failure after the first, at most `retry_max_ms`.
fn backoff(config: &MailConfig, failed: i32) -> Duration {
    let doublings = u32::try_from(failed.saturating_sub(1)).unwrap_or(0).min(20);
    Duration::from_millis(
        config
            .retry_initial_ms
            .saturating_mul(1 << doublings)
            .min(config.retry_max_ms),
    )
}

/// Resolves `STOP_GRACE` after `shutdown`.
async fn stopping(shutdown: &CancellationToken) {
    shutdown.cancelled().await;
    tokio::time::sleep(STOP_GRACE).await;
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_twice_as_long_each_time_up_to_the_most() {
        let config = MailConfig::default();
        let waits: Vec<u64> = [1, 2, 3, 9, 10, 1000]
            .map(|n| backoff(&config, n).as_millis() as u64)
            .to_vec();
        assert_eq!(waits, [1_000, 2_000, 4_000, 256_000, 300_000, 300_000]);
    }

    #[test]
    fn links_carry_their_token_on_the_base() {
        let reset = link("https://id.example.org/", NoticeKind::PasswordReset, "ab12");
        assert_eq!(reset, "https://id.example.org/reset-password?token=ab12");
        let notice = link("https://id.example.org", NoticeKind::AccountExists, "");
        assert_eq!(notice, "https://id.example.org/reset-password");
    }
}
