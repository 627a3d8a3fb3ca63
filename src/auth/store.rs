//! Diesel queries on the auth schema: sessions, refresh tokens and the
//! record of processed events. Write transactions start with a write (see
//! identity's store for why).

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::{processed_events, refresh_tokens, sessions, user_revocations};
use crate::kernel::db::DbConnection;

#[derive(Queryable, Selectable, Insertable, Clone, Debug)]
#[diesel(table_name = sessions)]
pub struct SessionRow {
    pub id: String,
    pub user_id: String,
    pub created_at: NaiveDateTime,
    pub expires_at: NaiveDateTime,
    pub refreshed_at: NaiveDateTime,
    pub generation: i64,
    pub revoked_at: Option<NaiveDateTime>,
    pub revoked_reason: Option<String>,
    /// The provider's client the session was opened for, if any.
    pub client_id: Option<String>,
    /// The scopes granted to that client, space-separated.
    pub scope: Option<String>,
    /// The browser session it came from (the hosted pages), if any.
    pub browser_session_id: Option<String>,
}

impl SessionRow {
    /// Whether the session is a client's own (the client credentials
    /// grant): its subject, in `user_id`, is then the client itself. A
    /// user's session opened for a client never names the client there,
    /// since a user's id is never a client's.
    pub fn is_clients_own(&self) -> bool {
        self.client_id.as_deref() == Some(self.user_id.as_str())
    }

    /// The scopes granted to the session's client; none outside the
    /// provider.
    pub fn scopes(&self) -> std::collections::BTreeSet<&str> {
        self.scope
            .as_deref()
            .unwrap_or_default()
            .split(' ')
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// A refresh token row. No `Debug`: the successor holds live tokens (sealed).
#[derive(Queryable, Selectable, Clone)]
#[diesel(table_name = refresh_tokens)]
pub struct RefreshRow {
    pub token_hash: String,
    pub session_id: String,
    pub generation: i64,
    pub created_at: NaiveDateTime,
    pub used_at: Option<NaiveDateTime>,
    pub successor_enc: Option<Vec<u8>>,
}

pub fn insert_session(conn: &mut DbConnection, row: &SessionRow) -> QueryResult<()> {
    diesel::insert_into(sessions::table)
        .values(row)
        .execute(conn)
        .map(|_| ())
}

pub fn insert_refresh(
    conn: &mut DbConnection,
    token_hash: &str,
    session_id: &str,
    generation: i64,
    now: NaiveDateTime,
) -> QueryResult<()> {
    diesel::insert_into(refresh_tokens::table)
        .values((
            refresh_tokens::token_hash.eq(token_hash),
            refresh_tokens::session_id.eq(session_id),
            refresh_tokens::generation.eq(generation),
            refresh_tokens::created_at.eq(now),
        ))
        .execute(conn)
        .map(|_| ())
}

/// Marks an unused refresh token used, answering it; `None` when it is
/// unknown or was used before.
pub fn claim_refresh(
    conn: &mut DbConnection,
    token_hash: &str,
    now: NaiveDateTime,
) -> QueryResult<Option<RefreshRow>> {
    diesel::update(
        refresh_tokens::table
            .filter(refresh_tokens::token_hash.eq(token_hash))
            .filter(refresh_tokens::used_at.is_null()),
    )
    .set(refresh_tokens::used_at.eq(Some(now)))
    .returning(refresh_tokens::all_columns)
    .get_result(conn)
    .optional()
}

pub fn refresh_by_hash(
    conn: &mut DbConnection,
    token_hash: &str,
) -> QueryResult<Option<RefreshRow>> {
    refresh_tokens::table
        .find(token_hash)
        .select(RefreshRow::as_select())
        .first(conn)
        .optional()
}

pub fn set_successor(conn: &mut DbConnection, token_hash: &str, sealed: &[u8]) -> QueryResult<()> {
    diesel::update(refresh_tokens::table.find(token_hash))
        .set(refresh_tokens::successor_enc.eq(Some(sealed)))
        .execute(conn)
        .map(|_| ())
}

pub fn session(conn: &mut DbConnection, id: &str) -> QueryResult<Option<SessionRow>> {
    sessions::table
        .find(id)
        .select(SessionRow::as_select())
        .first(conn)
        .optional()
}

/// Moves the session from generation `from` to `from + 1`; false when
/// another rotation got there first.
pub fn advance_generation(
    conn: &mut DbConnection,
    id: &str,
    from: i64,
    now: NaiveDateTime,
) -> QueryResult<bool> {
    diesel::update(
        sessions::table
            .find(id)
            .filter(sessions::generation.eq(from))
            .filter(sessions::revoked_at.is_null()),
    )
    .set((
        sessions::generation.eq(from + 1),
        sessions::refreshed_at.eq(now),
    ))
    .execute(conn)
    .map(|n| n == 1)
}

/// The ids of the sessions revoked at or after `since`.
pub fn revoked_since(conn: &mut DbConnection, since: NaiveDateTime) -> QueryResult<Vec<String>> {
    sessions::table
        .filter(sessions::revoked_at.ge(since))
        .select(sessions::id)
        .load(conn)
}

/// Ends a live session; answers it, or `None` if it was unknown or already ended.
pub fn revoke(
    conn: &mut DbConnection,
    id: &str,
    reason: &str,
    now: NaiveDateTime,
) -> QueryResult<Option<SessionRow>> {
    diesel::update(
        sessions::table
            .find(id)
            .filter(sessions::revoked_at.is_null()),
    )
    .set((
        sessions::revoked_at.eq(Some(now)),
        sessions::revoked_reason.eq(Some(reason)),
    ))
    .returning(sessions::all_columns)
    .get_result(conn)
    .optional()
}

/// Ends every live session of a user but `except`; answers the ended ones.
pub fn revoke_user(
    conn: &mut DbConnection,
    user_id: &str,
    except: Option<&str>,
    reason: &str,
    now: NaiveDateTime,
) -> QueryResult<Vec<SessionRow>> {
    let live = sessions::table
        .filter(sessions::user_id.eq(user_id))
        .filter(sessions::revoked_at.is_null());
    let changes = (
        sessions::revoked_at.eq(Some(now)),
        sessions::revoked_reason.eq(Some(reason)),
    );
    match except {
        Some(keep) => diesel::update(live.filter(sessions::id.ne(keep)))
            .set(changes)
            .returning(sessions::all_columns)
            .get_results(conn),
        None => diesel::update(live)
            .set(changes)
            .returning(sessions::all_columns)
            .get_results(conn),
    }
}

/// A user's sessions that are neither revoked nor expired, newest first.
pub fn live_sessions(
    conn: &mut DbConnection,
    user_id: &str,
    now: NaiveDateTime,
) -> QueryResult<Vec<SessionRow>> {
    sessions::table
        .filter(sessions::user_id.eq(user_id))
        .filter(sessions::revoked_at.is_null())
        .filter(sessions::expires_at.gt(now))
        .order(sessions::created_at.desc())
        .select(SessionRow::as_select())
        .load(conn)
}

/// Records that an event was handled; false if it had been already. Runs
/// in a savepoint, so a duplicate does not spoil an enclosing transaction on
/// PostgreSQL.
pub fn first_time(
    conn: &mut DbConnection,
    event_id: &str,
    now: NaiveDateTime,
) -> QueryResult<bool> {
    let inserted = conn.transaction(|c| {
        diesel::insert_into(processed_events::table)
            .values((
                processed_events::event_id.eq(event_id),
                processed_events::processed_at.eq(now),
            ))
            .execute(c)
    });
    match inserted {
        Ok(_) => Ok(true),
        Err(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        )) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Takes, for the rest of the transaction, the lock that orders a user's
/// logins and the ending of all their sessions one after the other.
///
/// Under PostgreSQL's READ COMMITTED, a login that inserts its session and
/// then reads the user's mark, and a revocation that ends the user's live
/// sessions and then raises the mark, could each miss the other's
/// uncommitted write: the session would outlive the revocation. With both
/// holding this lock first, whichever comes second sees what the first
/// committed. SQLite needs none: both transactions begin with a write, and
/// SQLite lets one writer in at a time.
pub fn lock_user(conn: &mut DbConnection, user_id: &str) -> QueryResult<()> {
    match conn {
        #[cfg(feature = "postgres")]
        DbConnection::Pg(pg) => {
            diesel::sql_query("SELECT pg_advisory_xact_lock(72616303, hashtext($1))")
                .bind::<diesel::sql_types::Text, _>(user_id)
                .execute(pg)?;
            Ok(())
        }
        #[cfg(feature = "sqlite")]
        DbConnection::Sqlite(_) => {
            let _ = user_id;
            Ok(())
        }
    }
}

/// Moves the user's "sessions ended before" mark forward to `at`.
pub fn raise_watermark(
    conn: &mut DbConnection,
    user_id: &str,
    at: NaiveDateTime,
) -> QueryResult<()> {
    let row = user_revocations::table.find(user_id);
    if diesel::update(row.filter(user_revocations::revoked_before.lt(at)))
        .set(user_revocations::revoked_before.eq(at))
        .execute(conn)?
        == 1
    {
        return Ok(());
    }
    // Absent (or already later): insert in a savepoint, a duplicate is fine.
    let _ = conn.transaction(|c| {
        diesel::insert_into(user_revocations::table)
            .values((
                user_revocations::user_id.eq(user_id),
                user_revocations::revoked_before.eq(at),
            ))
            .execute(c)
    });
    Ok(())
}

/// When all of the user's sessions were last ended, if ever.
pub fn watermark(conn: &mut DbConnection, user_id: &str) -> QueryResult<Option<NaiveDateTime>> {
    user_revocations::table
        .find(user_id)
        .select(user_revocations::revoked_before)
        .first(conn)
        .optional()
}
