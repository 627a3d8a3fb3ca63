//! The mail queue: a table in identity's database. A mail is written in the
//! same transaction as the token its link carries, so a token is never
//! issued without its mail, nor a mail queued for a token that was rolled
//! back. The token is sealed ([`crate::kernel::seal`]) under a key the
//! database does not hold. A mail leaves the table once delivered, refused
//! for good, or past its link's expiry.

use std::sync::Arc;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use tokio::sync::Notify;
use uuid::Uuid;

use super::notifier::NoticeKind;
use crate::identity::error::IdentityError;
use crate::identity::schema::mail_queue;
use crate::kernel::db::DbConnection;
use crate::kernel::seal::{SealError, Sealer};

/// A queued mail that cannot be read back (then dropped, and counted).
#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    #[error("the sealed token: {0}")]
    Sealed(#[from] SealError),
    #[error("the sealed token is not text")]
    NotText,
    #[error("unknown kind {0}")]
    Kind(String),
}

/// Writes mail to the queue and wakes its delivery. Cheap to clone.
#[derive(Clone)]
pub struct MailQueue {
    sealer: Sealer,
    wake: Arc<Notify>,
}

/// One mail to queue: to the account `user_id` at `recipient`, carrying
/// `token` (empty for a notice with none) until `expires_at`.
pub struct NewMail<'a> {
    pub kind: NoticeKind,
    pub user_id: &'a str,
    pub recipient: &'a str,
    pub token: &'a str,
    pub expires_at: NaiveDateTime,
}

#[derive(Queryable, Selectable, Clone)]
#[diesel(table_name = mail_queue)]
pub struct MailRow {
    pub id: String,
    pub kind: String,
    pub user_id: String,
    pub recipient: String,
    pub sealed: Vec<u8>,
    pub attempts: i32,
    pub due_at: NaiveDateTime,
    pub expires_at: NaiveDateTime,
    pub created_at: NaiveDateTime,
}

impl MailQueue {
    pub fn new(sealer: Sealer) -> Self {
        Self {
            sealer,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Queues `mail` on `conn` (within the caller's transaction), due now.
    /// A mail of the same kind still queued for the account is dropped: its
    /// token has just been replaced.
    pub fn enqueue(
        &self,
        conn: &mut DbConnection,
        mail: NewMail<'_>,
        now: NaiveDateTime,
    ) -> Result<(), IdentityError> {
        let sealed = self
            .sealer
            .seal(mail.token.as_bytes())
            .map_err(|e| IdentityError::Internal(e.to_string()))?;
        diesel::delete(
            mail_queue::table
                .filter(mail_queue::user_id.eq(mail.user_id))
                .filter(mail_queue::kind.eq(mail.kind.as_str())),
        )
        .execute(conn)?;
        diesel::insert_into(mail_queue::table)
            .values((
                mail_queue::id.eq(Uuid::now_v7().to_string()),
                mail_queue::kind.eq(mail.kind.as_str()),
                mail_queue::user_id.eq(mail.user_id),
                mail_queue::recipient.eq(mail.recipient),
                mail_queue::sealed.eq(sealed),
                mail_queue::due_at.eq(now),
                mail_queue::expires_at.eq(mail.expires_at),
                mail_queue::created_at.eq(now),
            ))
            .execute(conn)?;
        Ok(())
    }

    /// Tells delivery that mail was queued (after the transaction commits).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves at the next `wake`, or at once if one came since the last.
    pub(super) async fn woken(&self) {
        self.wake.notified().await;
    }

    /// The token a queued mail carries.
    pub(super) fn token(&self, row: &MailRow) -> Result<String, Unreadable> {
        let plain = self.sealer.open(&row.sealed)?;
        String::from_utf8(plain).map_err(|_| Unreadable::NotText)
    }
}

/// Up to `limit` mails due by `now`, the longest waiting first.
pub(super) fn due(
    conn: &mut DbConnection,
    now: NaiveDateTime,
    limit: i64,
) -> QueryResult<Vec<MailRow>> {
    mail_queue::table
        .filter(mail_queue::due_at.le(now))
        .order(mail_queue::due_at.asc())
        .limit(limit)
        .select(MailRow::as_select())
        .load(conn)
}

/// Takes `row` for one attempt, not to be tried elsewhere before `until`:
/// false when another instance took it first (its due time moved).
pub(super) fn claim(
    conn: &mut DbConnection,
    row: &MailRow,
    until: NaiveDateTime,
) -> QueryResult<bool> {
    diesel::update(
        mail_queue::table
            .filter(mail_queue::id.eq(&row.id))
            .filter(mail_queue::due_at.eq(row.due_at))
            .filter(mail_queue::attempts.eq(row.attempts)),
    )
    .set((
        mail_queue::due_at.eq(until),
        mail_queue::attempts.eq(row.attempts + 1),
    ))
    .execute(conn)
    .map(|n| n == 1)
}

/// Tries `id` again at `at`.
pub(super) fn retry_at(conn: &mut DbConnection, id: &str, at: NaiveDateTime) -> QueryResult<()> {
    diesel::update(mail_queue::table.find(id))
        .set(mail_queue::due_at.eq(at))
        .execute(conn)
        .map(|_| ())
}

/// Takes `id` off the queue.
pub(super) fn remove(conn: &mut DbConnection, id: &str) -> QueryResult<()> {
    diesel::delete(mail_queue::table.find(id))
        .execute(conn)
        .map(|_| ())
}

/// How many mails are queued, and when the next one is due.
pub(super) fn waiting(conn: &mut DbConnection) -> QueryResult<(i64, Option<NaiveDateTime>)> {
    mail_queue::table
        .select((
            diesel::dsl::count_star(),
            diesel::dsl::min(mail_queue::due_at),
        ))
        .first(conn)
}
