//! The rows the admin API shows: roles, groups, members and bindings, one
//! at a time or a page at a time. A page is in key order and starts after
//! the key a cursor carries, so pages neither skip nor repeat a row that
//! stays put while a client walks them.

use std::collections::BTreeSet;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use super::{BINDING_COLUMNS, BindingColumns, binding_of, subject_columns, subject_of};
use crate::authz::error::AuthzError;
use crate::authz::model::{Binding, Permission, Subject};
use crate::authz::schema::{bindings, memberships, role_permissions, roles, user_groups};
use crate::kernel::db::DbConnection;

/// A stored role.
#[derive(Debug, Clone)]
pub struct RoleRow {
    pub name: String,
    pub description: String,
    pub permissions: BTreeSet<Permission>,
    pub builtin: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A stored group.
#[derive(Debug, Clone)]
pub struct GroupRow {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub created_at: DateTime<Utc>,
}

/// Which bindings a listing shows.
#[derive(Debug, Clone, Default)]
pub struct BindingFilter {
    pub subject: Option<Subject>,
    pub role: Option<String>,
}

fn roles_of(
    conn: &mut DbConnection,
    rows: Vec<(String, String, bool, NaiveDateTime, NaiveDateTime)>,
) -> Result<Vec<RoleRow>, AuthzError> {
    let names: Vec<&String> = rows.iter().map(|r| &r.0).collect();
    let mut held: std::collections::HashMap<String, BTreeSet<Permission>> = Default::default();
    for (role, text) in role_permissions::table
        .select((role_permissions::role, role_permissions::permission))
        .filter(role_permissions::role.eq_any(names))
        .load::<(String, String)>(conn)?
    {
        let permission =
            Permission::parse(&text).map_err(|e| AuthzError::Corrupt(e.to_string()))?;
        held.entry(role).or_default().insert(permission);
    }
    Ok(rows
        .into_iter()
        .map(
            |(name, description, builtin, created_at, updated_at)| RoleRow {
                permissions: held.remove(&name).unwrap_or_default(),
                name,
                description,
                builtin,
                created_at: created_at.and_utc(),
                updated_at: updated_at.and_utc(),
            },
        )
        .collect())
}

const ROLE_COLUMNS: (
    roles::name,
    roles::description,
    roles::builtin,
    roles::created_at,
    roles::updated_at,
) = (
    roles::name,
    roles::description,
    roles::builtin,
    roles::created_at,
    roles::updated_at,
);

/// Up to `limit` roles by name, after `after`.
pub fn list_roles(
    conn: &mut DbConnection,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<RoleRow>, AuthzError> {
    let mut query = roles::table
        .select(ROLE_COLUMNS)
        .order(roles::name)
        .limit(limit)
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(roles::name.gt(after.to_owned()));
    }
    let rows = query.load(conn)?;
    roles_of(conn, rows)
}

pub fn role(conn: &mut DbConnection, name: &str) -> Result<RoleRow, AuthzError> {
    let rows = roles::table
        .select(ROLE_COLUMNS)
        .filter(roles::name.eq(name))
        .load(conn)?;
    roles_of(conn, rows)?
        .pop()
        .ok_or_else(|| AuthzError::NotFound(format!("role {name}")))
}

fn group_of(row: (String, String, String, NaiveDateTime)) -> Result<GroupRow, AuthzError> {
    let (id, name, description, created_at) = row;
    Ok(GroupRow {
        id: Uuid::parse_str(&id).map_err(|_| AuthzError::Corrupt(format!("group {id}")))?,
        name,
        description,
        created_at: created_at.and_utc(),
    })
}

const GROUP_COLUMNS: (
    user_groups::id,
    user_groups::name,
    user_groups::description,
    user_groups::created_at,
) = (
    user_groups::id,
    user_groups::name,
    user_groups::description,
    user_groups::created_at,
);

/// Up to `limit` groups by name, after `after`.
pub fn list_groups(
    conn: &mut DbConnection,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<GroupRow>, AuthzError> {
    let mut query = user_groups::table
        .select(GROUP_COLUMNS)
        .order(user_groups::name)
        .limit(limit)
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(user_groups::name.gt(after.to_owned()));
    }
    query.load(conn)?.into_iter().map(group_of).collect()
}

pub fn group(conn: &mut DbConnection, id: Uuid) -> Result<GroupRow, AuthzError> {
    let row = user_groups::table
        .select(GROUP_COLUMNS)
        .filter(user_groups::id.eq(id.to_string()))
        .first(conn)
        .optional()?
        .ok_or_else(|| AuthzError::NotFound(format!("group {id}")))?;
    group_of(row)
}

/// Up to `limit` direct members of `group`, users then groups, each by
/// id, after `after` (a member's kind and id).
pub fn list_members(
    conn: &mut DbConnection,
    group: Uuid,
    after: Option<(String, String)>,
    limit: i64,
) -> Result<Vec<(Subject, DateTime<Utc>)>, AuthzError> {
    super::group_exists(conn, group)?;
    // `group` sorts before `user`; users are listed first, as the order of
    // kinds below says.
    let mut query = memberships::table
        .select((
            memberships::member_kind,
            memberships::member_id,
            memberships::created_at,
        ))
        .filter(memberships::group_id.eq(group.to_string()))
        .order((memberships::member_kind.desc(), memberships::member_id))
        .limit(limit)
        .into_boxed();
    if let Some((kind, id)) = after {
        query = query.filter(
            memberships::member_kind
                .lt(kind.clone())
                .or(memberships::member_kind
                    .eq(kind)
                    .and(memberships::member_id.gt(id))),
        );
    }
    query
        .load::<(String, String, NaiveDateTime)>(conn)?
        .into_iter()
        .map(|(kind, id, at)| Ok((subject_of(&kind, &id)?, at.and_utc())))
        .collect()
}

/// Up to `limit` bindings that `filter` lets through, by id (the order
/// they were made in), after `after`.
pub fn list_bindings(
    conn: &mut DbConnection,
    filter: &BindingFilter,
    after: Option<String>,
    limit: i64,
) -> Result<Vec<(Binding, DateTime<Utc>)>, AuthzError> {
    let mut query = bindings::table
        .select(BINDING_COLUMNS)
        .order(bindings::id)
        .limit(limit)
        .into_boxed();
    if let Some(subject) = filter.subject {
        let (kind, id) = subject_columns(subject);
        query = query
            .filter(bindings::subject_kind.eq(kind))
            .filter(bindings::subject_id.eq(id));
    }
    if let Some(role) = &filter.role {
        query = query.filter(bindings::role.eq(role.clone()));
    }
    if let Some(after) = after {
        query = query.filter(bindings::id.gt(after));
    }
    query
        .load::<BindingColumns>(conn)?
        .into_iter()
        .map(binding_of)
        .collect()
}

pub fn binding(conn: &mut DbConnection, id: Uuid) -> Result<(Binding, DateTime<Utc>), AuthzError> {
    let row = bindings::table
        .select(BINDING_COLUMNS)
        .filter(bindings::id.eq(id.to_string()))
        .first::<BindingColumns>(conn)
        .optional()?
        .ok_or_else(|| AuthzError::NotFound(format!("binding {id}")))?;
    binding_of(row)
}
