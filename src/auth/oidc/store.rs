//! Diesel queries on the provider's tables: clients, codes, consents and
//! browser sessions. Lists are stored as JSON arrays of strings.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;

use super::clients::{Client, Grant, Settled};
use super::jws::Alg;
use crate::auth::error::AuthError;
use crate::auth::schema::{browser_sessions, oidc_clients, oidc_codes, oidc_consents};
use crate::kernel::db::DbConnection;

#[derive(Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = oidc_clients)]
#[diesel(treat_none_as_null = true)]
struct ClientRow {
    id: String,
    name: String,
    secret_hash: Option<String>,
    redirect_uris: String,
    post_logout_redirect_uris: String,
    web_origins: String,
    grant_types: String,
    scopes: String,
    id_token_alg: String,
    first_party: bool,
    require_pkce: bool,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
}

fn list(json: &str) -> Result<Vec<String>, AuthError> {
    serde_json::from_str(json)
        .map_err(|e| AuthError::Internal(format!("a stored client list: {e}")))
}

fn json(list: impl IntoIterator<Item = impl serde::Serialize>) -> String {
    serde_json::to_string(&list.into_iter().collect::<Vec<_>>()).unwrap_or_else(|_| "[]".into())
}

impl ClientRow {
    fn into_client(self) -> Result<Client, AuthError> {
        Ok(Client {
            grants: list(&self.grant_types)?
                .iter()
                .filter_map(|g| Grant::parse(g))
                .collect(),
            scopes: list(&self.scopes)?.into_iter().collect(),
            redirect_uris: list(&self.redirect_uris)?,
            post_logout_redirect_uris: list(&self.post_logout_redirect_uris)?,
            web_origins: list(&self.web_origins)?,
            id_token_alg: Alg::parse(&self.id_token_alg).ok_or_else(|| {
                AuthError::Internal(format!("client {}: alg {}", self.id, self.id_token_alg))
            })?,
            id: self.id,
            name: self.name,
            secret_hash: self.secret_hash,
            first_party: self.first_party,
            require_pkce: self.require_pkce,
            created_at: self.created_at.and_utc(),
            updated_at: self.updated_at.and_utc(),
        })
    }

    fn new(
        id: String,
        settled: &Settled,
        secret_hash: Option<String>,
        created_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Self {
        ClientRow {
            id,
            name: settled.name.clone(),
            secret_hash,
            redirect_uris: json(&settled.redirect_uris),
            post_logout_redirect_uris: json(&settled.post_logout_redirect_uris),
            web_origins: json(&settled.web_origins),
            grant_types: json(settled.grants.iter().map(|g| g.name())),
            scopes: json(&settled.scopes),
            id_token_alg: settled.id_token_alg.name().to_owned(),
            first_party: settled.first_party,
            require_pkce: settled.require_pkce,
            created_at: created_at.naive_utc(),
            updated_at: now.naive_utc(),
        }
    }
}

pub fn insert_client(
    conn: &mut DbConnection,
    id: &str,
    settled: &Settled,
    secret_hash: Option<String>,
    now: DateTime<Utc>,
) -> Result<Client, AuthError> {
    let row = ClientRow::new(id.to_owned(), settled, secret_hash, now, now);
    diesel::insert_into(oidc_clients::table)
        .values(&row)
        .execute(conn)?;
    row.into_client()
}

pub fn client(conn: &mut DbConnection, id: &str) -> Result<Option<Client>, AuthError> {
    oidc_clients::table
        .find(id)
        .select(ClientRow::as_select())
        .first(conn)
        .optional()?
        .map(ClientRow::into_client)
        .transpose()
}

/// Clients by name, then id; `after` is the last id of the page before.
pub fn clients(conn: &mut DbConnection, limit: i64) -> Result<Vec<Client>, AuthError> {
    oidc_clients::table
        .order((oidc_clients::name.asc(), oidc_clients::id.asc()))
        .limit(limit)
        .select(ClientRow::as_select())
        .load(conn)?
        .into_iter()
        .map(ClientRow::into_client)
        .collect()
}

/// Replaces what `settled` says of client `existing`, keeping its secret
/// (or dropping it, when the client became public).
pub fn update_client(
    conn: &mut DbConnection,
    existing: &Client,
    settled: &Settled,
    secret_hash: Option<String>,
    now: DateTime<Utc>,
) -> Result<Client, AuthError> {
    let row = ClientRow::new(
        existing.id.clone(),
        settled,
        secret_hash,
        existing.created_at,
        now,
    );
    diesel::update(oidc_clients::table.find(&existing.id))
        .set(&row)
        .execute(conn)?;
    row.into_client()
}

pub fn set_secret(
    conn: &mut DbConnection,
    id: &str,
    secret_hash: &str,
    now: DateTime<Utc>,
) -> Result<bool, AuthError> {
    Ok(diesel::update(oidc_clients::table.find(id))
        .set((
            oidc_clients::secret_hash.eq(Some(secret_hash)),
            oidc_clients::updated_at.eq(now.naive_utc()),
        ))
        .execute(conn)?
        == 1)
}

/// Deletes a client with its codes and consents.
pub fn delete_client(conn: &mut DbConnection, id: &str) -> Result<bool, AuthError> {
    let deleted = diesel::delete(oidc_clients::table.find(id)).execute(conn)? == 1;
    diesel::delete(oidc_codes::table.filter(oidc_codes::client_id.eq(id))).execute(conn)?;
    diesel::delete(oidc_consents::table.filter(oidc_consents::client_id.eq(id))).execute(conn)?;
    Ok(deleted)
}

/// The live sessions opened for client `id`.
pub fn sessions_of_client(conn: &mut DbConnection, id: &str) -> Result<Vec<String>, AuthError> {
    use crate::auth::schema::sessions;
    Ok(sessions::table
        .filter(sessions::client_id.eq(id))
        .filter(sessions::revoked_at.is_null())
        .select(sessions::id)
        .load(conn)?)
}

/// An authorization code's row: what the exchange must match and what it
/// hands out.
#[derive(Queryable, Selectable, Insertable, Clone, Debug)]
#[diesel(table_name = oidc_codes)]
pub struct CodeRow {
    pub code_hash: String,
    pub client_id: String,
    pub user_id: String,
    pub browser_session_id: String,
    pub redirect_uri: String,
    pub code_challenge: Option<String>,
    pub nonce: Option<String>,
    pub scope: String,
    pub auth_time: NaiveDateTime,
    pub amr: String,
    pub expires_at: NaiveDateTime,
    pub used_at: Option<NaiveDateTime>,
    pub session_id: Option<String>,
}

pub fn insert_code(conn: &mut DbConnection, row: &CodeRow) -> Result<(), AuthError> {
    diesel::insert_into(oidc_codes::table)
        .values(row)
        .execute(conn)?;
    Ok(())
}

/// Marks an unused code used, answering it; `None` when it is unknown or
/// was used before.
pub fn claim_code(
    conn: &mut DbConnection,
    code_hash: &str,
    now: NaiveDateTime,
) -> Result<Option<CodeRow>, AuthError> {
    Ok(diesel::update(
        oidc_codes::table
            .filter(oidc_codes::code_hash.eq(code_hash))
            .filter(oidc_codes::used_at.is_null()),
    )
    .set(oidc_codes::used_at.eq(Some(now)))
    .returning(oidc_codes::all_columns)
    .get_result(conn)
    .optional()?)
}

pub fn code(conn: &mut DbConnection, code_hash: &str) -> Result<Option<CodeRow>, AuthError> {
    Ok(oidc_codes::table
        .find(code_hash)
        .select(CodeRow::as_select())
        .first(conn)
        .optional()?)
}

/// Records the session a code's exchange opened, for a second use to end.
pub fn set_code_session(
    conn: &mut DbConnection,
    code_hash: &str,
    session_id: &str,
) -> Result<(), AuthError> {
    diesel::update(oidc_codes::table.find(code_hash))
        .set(oidc_codes::session_id.eq(Some(session_id)))
        .execute(conn)?;
    Ok(())
}

/// Deletes codes that expired before `before`: used ones are kept that
/// long so that a second use is still recognised.
pub fn delete_expired_codes(
    conn: &mut DbConnection,
    before: NaiveDateTime,
) -> Result<usize, AuthError> {
    Ok(
        diesel::delete(oidc_codes::table.filter(oidc_codes::expires_at.lt(before)))
            .execute(conn)?,
    )
}

/// The scopes `user` has let `client` have, if any.
pub fn consent(
    conn: &mut DbConnection,
    user: &str,
    client: &str,
) -> Result<Option<String>, AuthError> {
    Ok(oidc_consents::table
        .find((user, client))
        .select(oidc_consents::scope)
        .first(conn)
        .optional()?)
}

/// Records that `user` lets `client` have `scope` (space-separated),
/// replacing what was granted before.
pub fn set_consent(
    conn: &mut DbConnection,
    user: &str,
    client: &str,
    scope: &str,
    now: NaiveDateTime,
) -> Result<(), AuthError> {
    diesel::delete(oidc_consents::table.find((user, client))).execute(conn)?;
    diesel::insert_into(oidc_consents::table)
        .values((
            oidc_consents::user_id.eq(user),
            oidc_consents::client_id.eq(client),
            oidc_consents::scope.eq(scope),
            oidc_consents::granted_at.eq(now),
        ))
        .execute(conn)?;
    Ok(())
}

#[derive(Queryable, Selectable, Insertable, Clone, Debug)]
#[diesel(table_name = browser_sessions)]
pub struct BrowserSessionRow {
    pub id: String,
    pub token_hash: String,
    pub user_id: String,
    pub auth_time: NaiveDateTime,
    pub amr: String,
    pub expires_at: NaiveDateTime,
    pub ended_at: Option<NaiveDateTime>,
}

pub fn insert_browser_session(
    conn: &mut DbConnection,
    row: &BrowserSessionRow,
) -> Result<(), AuthError> {
    diesel::insert_into(browser_sessions::table)
        .values(row)
        .execute(conn)?;
    Ok(())
}

/// The live browser session whose cookie hashes to `token_hash`.
pub fn browser_session(
    conn: &mut DbConnection,
    token_hash: &str,
    now: NaiveDateTime,
) -> Result<Option<BrowserSessionRow>, AuthError> {
    Ok(browser_sessions::table
        .filter(browser_sessions::token_hash.eq(token_hash))
        .filter(browser_sessions::ended_at.is_null())
        .filter(browser_sessions::expires_at.gt(now))
        .select(BrowserSessionRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn browser_session_by_id(
    conn: &mut DbConnection,
    id: &str,
) -> Result<Option<BrowserSessionRow>, AuthError> {
    Ok(browser_sessions::table
        .find(id)
        .select(BrowserSessionRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn end_browser_session(
    conn: &mut DbConnection,
    id: &str,
    now: NaiveDateTime,
) -> Result<bool, AuthError> {
    Ok(diesel::update(
        browser_sessions::table
            .find(id)
            .filter(browser_sessions::ended_at.is_null()),
    )
    .set(browser_sessions::ended_at.eq(Some(now)))
    .execute(conn)?
        == 1)
}

/// The live sessions opened from browser session `id`.
pub fn sessions_of_browser(conn: &mut DbConnection, id: &str) -> Result<Vec<String>, AuthError> {
    use crate::auth::schema::sessions;
    Ok(sessions::table
        .filter(sessions::browser_session_id.eq(id))
        .filter(sessions::revoked_at.is_null())
        .select(sessions::id)
        .load(conn)?)
}

/// Deletes browser sessions that expired or ended before `before`.
pub fn delete_stale_browser_sessions(
    conn: &mut DbConnection,
    before: NaiveDateTime,
) -> Result<usize, AuthError> {
    Ok(diesel::delete(
        browser_sessions::table.filter(
            browser_sessions::expires_at
                .lt(before)
                .or(browser_sessions::ended_at.lt(before)),
        ),
    )
    .execute(conn)?)
}

/// A user's consents with their clients' names, by client name.
pub fn consents_of(
    conn: &mut DbConnection,
    user: &str,
) -> Result<Vec<(String, String, String, NaiveDateTime)>, AuthError> {
    Ok(oidc_consents::table
        .inner_join(oidc_clients::table.on(oidc_clients::id.eq(oidc_consents::client_id)))
        .filter(oidc_consents::user_id.eq(user))
        .order(oidc_clients::name.asc())
        .select((
            oidc_consents::client_id,
            oidc_clients::name,
            oidc_consents::scope,
            oidc_consents::granted_at,
        ))
        .load(conn)?)
}

pub fn delete_consent(
    conn: &mut DbConnection,
    user: &str,
    client: &str,
) -> Result<bool, AuthError> {
    Ok(diesel::delete(oidc_consents::table.find((user, client))).execute(conn)? == 1)
}

/// The live sessions of `user` opened for client `client`.
pub fn sessions_of_user_client(
    conn: &mut DbConnection,
    user: &str,
    client: &str,
) -> Result<Vec<String>, AuthError> {
    use crate::auth::schema::sessions;
    Ok(sessions::table
        .filter(sessions::user_id.eq(user))
        .filter(sessions::client_id.eq(client))
        .filter(sessions::revoked_at.is_null())
        .select(sessions::id)
        .load(conn)?)
}

/// Every origin registered on a client.
pub fn web_origins(conn: &mut DbConnection) -> Result<Vec<String>, AuthError> {
    let lists: Vec<String> = oidc_clients::table
        .select(oidc_clients::web_origins)
        .load(conn)?;
    let mut all = Vec::new();
    for json in lists {
        all.extend(list(&json)?);
    }
    Ok(all)
}

/// Ends every live browser session of `user`: their sign-ins no longer
/// stand (a new password, a reset, a disabled or deleted account).
pub fn end_browser_sessions_of(
    conn: &mut DbConnection,
    user: &str,
    now: NaiveDateTime,
) -> Result<usize, AuthError> {
    Ok(diesel::update(
        browser_sessions::table
            .filter(browser_sessions::user_id.eq(user))
            .filter(browser_sessions::ended_at.is_null()),
    )
    .set(browser_sessions::ended_at.eq(Some(now)))
    .execute(conn)?)
}
