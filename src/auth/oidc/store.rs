//! Diesel queries on the provider's tables: clients, codes, consents and
//! browser sessions. Lists are stored as JSON arrays of strings.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;

use super::clients::{Client, Grant, Settled};
use super::jws::Alg;
use crate::auth::error::AuthError;
use crate::auth::schema::oidc_clients;
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
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
}

fn list(json: &str) -> Result<Vec<String>, AuthError> {
    serde_json::from_str(json).map_err(|e| AuthError::Internal(format!("a stored client list: {e}")))
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
    let row = ClientRow::new(existing.id.clone(), settled, secret_hash, existing.created_at, now);
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

pub fn delete_client(conn: &mut DbConnection, id: &str) -> Result<bool, AuthError> {
    Ok(diesel::delete(oidc_clients::table.find(id)).execute(conn)? == 1)
}
