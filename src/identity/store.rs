//! Diesel queries on the identity schema. Plain functions over a connection;
//! the service decides which run together in one transaction.
//!
//! Write transactions start with a write, so SQLite takes its write lock at
//! once (waiting on the busy timeout) instead of failing on a lock upgrade.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};

use super::error::IdentityError;
use super::schema::{user_tokens, users};
use crate::kernel::db::DbConnection;

/// A `users` row. No `Debug`: it holds the password hash.
#[derive(Queryable, Selectable, Insertable, Clone)]
#[diesel(table_name = users)]
pub struct UserRow {
    pub id: String,
    pub email: String,
    pub email_normalized: String,
    pub display_name: String,
    pub status: String,
    pub email_verified: bool,
    pub password_hash: String,
    pub failed_logins: i32,
    pub locked_until: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    pub version: i64,
}

pub fn insert_user(conn: &mut DbConnection, row: &UserRow) -> Result<(), IdentityError> {
    match diesel::insert_into(users::table).values(row).execute(conn) {
        Ok(_) => Ok(()),
        Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => {
            Err(IdentityError::EmailTaken)
        }
        Err(e) => Err(e.into()),
    }
}

pub fn by_email(conn: &mut DbConnection, normalized: &str) -> QueryResult<Option<UserRow>> {
    users::table
        .filter(users::email_normalized.eq(normalized))
        .select(UserRow::as_select())
        .first(conn)
        .optional()
}

pub fn by_id(conn: &mut DbConnection, id: &str) -> QueryResult<Option<UserRow>> {
    users::table
        .find(id)
        .select(UserRow::as_select())
        .first(conn)
        .optional()
}

pub fn by_ids(conn: &mut DbConnection, ids: &[String]) -> QueryResult<Vec<UserRow>> {
    users::table
        .filter(users::id.eq_any(ids))
        .select(UserRow::as_select())
        .load(conn)
}

/// Completes a successful login: optionally stores a re-hash of the
/// password, but only if the password is still the one that was checked
/// (`checked_hash`); false if it changed meanwhile. It also clears the
/// `failed_logins` and `locked_until` columns, which an older lockout
/// kept and nothing reads now (sign-ins are throttled in memory).
pub fn confirm_login(
    conn: &mut DbConnection,
    id: &str,
    checked_hash: &str,
    rehash: Option<&str>,
) -> QueryResult<bool> {
    let target = users::table
        .find(id)
        .filter(users::password_hash.eq(checked_hash));
    let reset = (
        users::failed_logins.eq(0),
        users::locked_until.eq(None::<NaiveDateTime>),
    );
    let changed = match rehash {
        Some(hash) => diesel::update(target)
            .set((reset, users::password_hash.eq(hash)))
            .execute(conn)?,
        None => diesel::update(target).set(reset).execute(conn)?,
    };
    Ok(changed == 1)
}

/// Replaces the password hash, a change of the user (new version).
pub fn set_password(
    conn: &mut DbConnection,
    id: &str,
    hash: &str,
    now: NaiveDateTime,
) -> QueryResult<UserRow> {
    diesel::update(users::table.find(id))
        .set((
            users::password_hash.eq(hash),
            users::updated_at.eq(now),
            users::version.eq(users::version + 1),
        ))
        .returning(users::all_columns)
        .get_result(conn)
}

/// Replaces the password hash if the user is still at `version`.
pub fn replace_password(
    conn: &mut DbConnection,
    id: &str,
    version: i64,
    hash: &str,
    now: NaiveDateTime,
) -> QueryResult<Option<UserRow>> {
    diesel::update(users::table.find(id).filter(users::version.eq(version)))
        .set((
            users::password_hash.eq(hash),
            users::updated_at.eq(now),
            users::version.eq(users::version + 1),
        ))
        .returning(users::all_columns)
        .get_result(conn)
        .optional()
}

/// Applies a profile change if the user is still at `expected` (when given).
pub fn update_profile(
    conn: &mut DbConnection,
    id: &str,
    display_name: &str,
    expected: Option<i64>,
    now: NaiveDateTime,
) -> Result<UserRow, IdentityError> {
    let changes = (
        users::display_name.eq(display_name),
        users::updated_at.eq(now),
        users::version.eq(users::version + 1),
    );
    let updated = match expected {
        Some(v) => diesel::update(users::table.find(id).filter(users::version.eq(v)))
            .set(changes)
            .returning(users::all_columns)
            .get_result(conn)
            .optional()?,
        None => diesel::update(users::table.find(id))
            .set(changes)
            .returning(users::all_columns)
            .get_result(conn)
            .optional()?,
    };
    match (updated, expected) {
        (Some(row), _) => Ok(row),
        (None, Some(v)) if by_id(conn, id)?.is_some() => {
            Err(IdentityError::VersionMismatch { expected: v })
        }
        (None, _) => Err(IdentityError::NotFound),
    }
}

pub fn set_status(
    conn: &mut DbConnection,
    id: &str,
    status: &str,
    now: NaiveDateTime,
) -> QueryResult<Option<UserRow>> {
    diesel::update(users::table.find(id))
        .set((
            users::status.eq(status),
            users::updated_at.eq(now),
            users::version.eq(users::version + 1),
        ))
        .returning(users::all_columns)
        .get_result(conn)
        .optional()
}

pub fn mark_email_verified(
    conn: &mut DbConnection,
    id: &str,
    now: NaiveDateTime,
) -> QueryResult<UserRow> {
    diesel::update(users::table.find(id))
        .set((
            users::email_verified.eq(true),
            users::updated_at.eq(now),
            users::version.eq(users::version + 1),
        ))
        .returning(users::all_columns)
        .get_result(conn)
}

/// Takes SQLite's write lock for a transaction whose first need is a read
/// (of the account at `normalized`): a write that changes nothing. Read
/// first, the transaction could not upgrade its lock while another writer
/// held it, and would fail at once instead of waiting its turn.
pub fn lock_for_write(conn: &mut DbConnection, normalized: &str) -> QueryResult<()> {
    diesel::update(users::table.filter(users::email_normalized.eq(normalized)))
        .set(users::id.eq(users::id))
        .execute(conn)
        .map(|_| ())
}

/// Stores a single-use token (only its hash), retiring earlier unused tokens
/// of the same purpose for that user.
pub fn replace_token(
    conn: &mut DbConnection,
    token_hash: &str,
    user_id: &str,
    purpose: &str,
    expires_at: NaiveDateTime,
    now: NaiveDateTime,
) -> QueryResult<()> {
    retire_tokens(conn, user_id, purpose, now)?;
    diesel::insert_into(user_tokens::table)
        .values((
            user_tokens::token_hash.eq(token_hash),
            user_tokens::user_id.eq(user_id),
            user_tokens::purpose.eq(purpose),
            user_tokens::expires_at.eq(expires_at),
            user_tokens::created_at.eq(now),
        ))
        .execute(conn)
        .map(|_| ())
}

pub fn retire_tokens(
    conn: &mut DbConnection,
    user_id: &str,
    purpose: &str,
    now: NaiveDateTime,
) -> QueryResult<()> {
    diesel::update(
        user_tokens::table
            .filter(user_tokens::user_id.eq(user_id))
            .filter(user_tokens::purpose.eq(purpose))
            .filter(user_tokens::used_at.is_null()),
    )
    .set(user_tokens::used_at.eq(Some(now)))
    .execute(conn)
    .map(|_| ())
}

#[diesel::dsl::auto_type]
fn usable(token_hash: String, purpose: String, now: NaiveDateTime) -> _ {
    user_tokens::table
        .filter(user_tokens::token_hash.eq(token_hash))
        .filter(user_tokens::purpose.eq(purpose))
        .filter(user_tokens::used_at.is_null())
        .filter(user_tokens::expires_at.gt(now))
}

/// Whether the token could be used now (without using it).
pub fn token_usable(
    conn: &mut DbConnection,
    token_hash: &str,
    purpose: &str,
    now: NaiveDateTime,
) -> QueryResult<bool> {
    usable(token_hash.to_owned(), purpose.to_owned(), now)
        .select(user_tokens::user_id)
        .first::<String>(conn)
        .optional()
        .map(|found| found.is_some())
}

/// Uses the token once: marks it used and answers its user, or `None` when
/// it is unknown, expired or already used.
pub fn consume_token(
    conn: &mut DbConnection,
    token_hash: &str,
    purpose: &str,
    now: NaiveDateTime,
) -> QueryResult<Option<String>> {
    diesel::update(usable(token_hash.to_owned(), purpose.to_owned(), now))
        .set(user_tokens::used_at.eq(Some(now)))
        .returning(user_tokens::user_id)
        .get_result(conn)
        .optional()
}

/// Deletes a user (their tokens go with them); answers the deleted row.
pub fn delete_user(conn: &mut DbConnection, id: &str) -> QueryResult<Option<UserRow>> {
    diesel::delete(users::table.find(id))
        .returning(users::all_columns)
        .get_result(conn)
        .optional()
}

/// Which users a listing shows.
#[derive(Debug, Clone, Default)]
pub struct UserFilter {
    /// Only addresses that start with this (compared as stored: lower case).
    pub email_prefix: Option<String>,
    pub status: Option<&'static str>,
}

/// Up to `limit` users that `filter` lets through, by id (the order they
/// registered in), after `after`.
pub fn list_users(
    conn: &mut DbConnection,
    filter: &UserFilter,
    after: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<UserRow>> {
    let mut query = users::table
        .select(UserRow::as_select())
        .order(users::id)
        .limit(limit)
        .into_boxed();
    if let Some(prefix) = &filter.email_prefix {
        // `%` and `_` in the prefix are themselves, not wildcards.
        let escaped: String = prefix
            .chars()
            .flat_map(|c| match c {
                '%' | '_' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        query = query.filter(
            users::email_normalized
                .like(format!("{escaped}%"))
                .escape('\\'),
        );
    }
    if let Some(status) = filter.status {
        query = query.filter(users::status.eq(status));
    }
    if let Some(after) = after {
        query = query.filter(users::id.gt(after.to_owned()));
    }
    query.load(conn)
}
