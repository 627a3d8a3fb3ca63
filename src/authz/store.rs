//! Diesel queries on the authz schema: the policy read back whole, and the
//! writes that change it. Every write transaction starts by moving the
//! revision on: the write takes SQLite's write lock at once (see identity's
//! store for why a transaction starts with a write), and the revision it
//! answers is the one its changes are seen at.

use std::collections::HashMap;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use uuid::Uuid;

use super::error::AuthzError;
use super::model::{Binding, Permission, Policy, Resource, Role, Scope, Subject};
use super::schema::{
    bindings, memberships, resource_parents, revision, role_permissions, roles, user_groups,
};
use crate::kernel::db::DbConnection;

/// The revision the stored policy is at.
pub fn current_revision(conn: &mut DbConnection) -> QueryResult<i64> {
    revision::table
        .select(revision::value)
        .filter(revision::id.eq(1))
        .first(conn)
}

/// Runs `write` in a transaction that first moves the revision on; answers
/// the new revision. Nothing of a failed write stays.
fn write<F>(conn: &mut DbConnection, write: F) -> Result<i64, AuthzError>
where
    F: FnOnce(&mut DbConnection) -> Result<(), AuthzError>,
{
    conn.transaction(|conn| {
        diesel::update(revision::table.filter(revision::id.eq(1)))
            .set(revision::value.eq(revision::value + 1))
            .execute(conn)?;
        write(conn)?;
        Ok(current_revision(conn)?)
    })
}

fn subject_columns(subject: Subject) -> (&'static str, String) {
    match subject {
        Subject::User(id) => ("user", id.to_string()),
        Subject::Group(id) => ("group", id.to_string()),
    }
}

fn subject_of(kind: &str, id: &str) -> Result<Subject, AuthzError> {
    let corrupt = || AuthzError::Corrupt(format!("subject {kind}:{id}"));
    let id = Uuid::parse_str(id).map_err(|_| corrupt())?;
    match kind {
        "user" => Ok(Subject::User(id)),
        "group" => Ok(Subject::Group(id)),
        _ => Err(corrupt()),
    }
}

fn scope_columns(scope: &Scope) -> (&'static str, String) {
    match scope {
        Scope::Everywhere => ("everywhere", String::new()),
        Scope::Type(kind) => ("type", kind.clone()),
        Scope::Resource(resource) => ("resource", resource.to_string()),
    }
}

/// A stored resource, which was valid when it was written.
fn resource_of(text: &str) -> Result<Resource, AuthzError> {
    Resource::parse(text).map_err(|e| AuthzError::Corrupt(e.to_string()))
}

fn scope_of(kind: &str, text: &str) -> Result<Scope, AuthzError> {
    match kind {
        "everywhere" => Ok(Scope::Everywhere),
        "type" => Ok(Scope::Type(text.to_owned())),
        "resource" => Ok(Scope::Resource(resource_of(text)?)),
        _ => Err(AuthzError::Corrupt(format!("scope kind {kind}"))),
    }
}

/// The stored memberships, each a group and one member; with `groups_only`,
/// only the groups held in groups.
fn stored_members(
    conn: &mut DbConnection,
    groups_only: bool,
) -> Result<Vec<(Uuid, Subject)>, AuthzError> {
    let mut query = memberships::table
        .select((
            memberships::group_id,
            memberships::member_kind,
            memberships::member_id,
        ))
        .into_boxed();
    if groups_only {
        query = query.filter(memberships::member_kind.eq("group"));
    }
    query
        .load::<(String, String, String)>(conn)?
        .into_iter()
        .map(|(group, kind, id)| {
            let group = Uuid::parse_str(&group)
                .map_err(|_| AuthzError::Corrupt(format!("group {group}")))?;
            Ok((group, subject_of(&kind, &id)?))
        })
        .collect()
}

/// The stored parents, each a child and its parent.
fn stored_parents(conn: &mut DbConnection) -> Result<Vec<(Resource, Resource)>, AuthzError> {
    resource_parents::table
        .select((resource_parents::child, resource_parents::parent))
        .load::<(String, String)>(conn)?
        .into_iter()
        .map(|(child, parent)| Ok((resource_of(&child)?, resource_of(&parent)?)))
        .collect()
}

/// The whole stored policy at its current revision, with chains of
/// parents looked up at most `max_depth` deep.
pub fn load(conn: &mut DbConnection, max_depth: usize) -> Result<Policy, AuthzError> {
    conn.transaction(|conn| {
        // Every table as of one moment, so that the revision read first is
        // the revision of everything read after it. A SQLite read
        // transaction is one snapshot already; PostgreSQL's default gives
        // each statement its own.
        #[cfg(feature = "postgres")]
        if let DbConnection::Pg(_) = conn {
            diesel::sql_query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(conn)?;
        }
        let at = current_revision(conn)?;
        let mut policy = Policy::new(u64::try_from(at).unwrap_or_default(), max_depth);
        let mut granted: HashMap<String, Vec<Permission>> = HashMap::new();
        for (role, text) in role_permissions::table
            .select((role_permissions::role, role_permissions::permission))
            .load::<(String, String)>(conn)?
        {
            let permission =
                Permission::parse(&text).map_err(|e| AuthzError::Corrupt(e.to_string()))?;
            granted.entry(role).or_default().push(permission);
        }
        for (name, description, builtin) in roles::table
            .select((roles::name, roles::description, roles::builtin))
            .load::<(String, String, bool)>(conn)?
        {
            let permissions = granted
                .remove(&name)
                .unwrap_or_default()
                .into_iter()
                .collect();
            policy.add_role(Role {
                name,
                description,
                permissions,
                builtin,
            });
        }
        for (group, member) in stored_members(conn, false)? {
            policy.load_member(group, member);
        }
        for (child, parent) in stored_parents(conn)? {
            policy.load_parent(child, parent);
        }
        type BindingColumns = (
            String,
            String,
            String,
            String,
            String,
            String,
            Option<NaiveDateTime>,
        );
        for (id, subject_kind, subject_id, role, scope_kind, scope, expires_at) in bindings::table
            .select((
                bindings::id,
                bindings::subject_kind,
                bindings::subject_id,
                bindings::role,
                bindings::scope_kind,
                bindings::scope,
                bindings::expires_at,
            ))
            .load::<BindingColumns>(conn)?
        {
            policy.add_binding(Binding {
                id: Uuid::parse_str(&id)
                    .map_err(|_| AuthzError::Corrupt(format!("binding {id}")))?,
                subject: subject_of(&subject_kind, &subject_id)?,
                role,
                scope: scope_of(&scope_kind, &scope)?,
                expires_at: expires_at.map(|t| t.and_utc()),
            });
        }
        Ok(policy)
    })
}

/// Creates `role`; refused when one of that name exists.
pub fn create_role(
    conn: &mut DbConnection,
    role: &Role,
    now: NaiveDateTime,
) -> Result<i64, AuthzError> {
    write(conn, |conn| {
        let taken: i64 = roles::table
            .filter(roles::name.eq(&role.name))
            .count()
            .get_result(conn)?;
        if taken > 0 {
            return Err(AuthzError::Exists(format!("role {}", role.name)));
        }
        diesel::insert_into(roles::table)
            .values((
                roles::name.eq(&role.name),
                roles::description.eq(&role.description),
                roles::builtin.eq(false),
                roles::created_at.eq(now),
                roles::updated_at.eq(now),
            ))
            .execute(conn)?;
        for permission in &role.permissions {
            diesel::insert_into(role_permissions::table)
                .values((
                    role_permissions::role.eq(&role.name),
                    role_permissions::permission.eq(permission.to_string()),
                ))
                .execute(conn)?;
        }
        Ok(())
    })
}

/// Creates a group; refused when one of that name exists.
pub fn create_group(
    conn: &mut DbConnection,
    id: Uuid,
    name: &str,
    description: &str,
    now: NaiveDateTime,
) -> Result<i64, AuthzError> {
    write(conn, |conn| {
        let taken: i64 = user_groups::table
            .filter(user_groups::name.eq(name))
            .count()
            .get_result(conn)?;
        if taken > 0 {
            return Err(AuthzError::Exists(format!("group {name}")));
        }
        diesel::insert_into(user_groups::table)
            .values((
                user_groups::id.eq(id.to_string()),
                user_groups::name.eq(name),
                user_groups::description.eq(description),
                user_groups::created_at.eq(now),
            ))
            .execute(conn)?;
        Ok(())
    })
}

fn group_exists(conn: &mut DbConnection, group: Uuid) -> Result<(), AuthzError> {
    let found: i64 = user_groups::table
        .filter(user_groups::id.eq(group.to_string()))
        .count()
        .get_result(conn)?;
    if found == 0 {
        return Err(AuthzError::NotFound(format!("group {group}")));
    }
    Ok(())
}

/// Puts `member` in `group`; refused when either group does not exist or
/// the group would then contain itself.
pub fn add_member(
    conn: &mut DbConnection,
    group: Uuid,
    member: Subject,
    now: NaiveDateTime,
) -> Result<i64, AuthzError> {
    write(conn, |conn| {
        group_exists(conn, group)?;
        if let Subject::Group(inner) = member {
            group_exists(conn, inner)?;
            // The groups as they stand, inside this transaction.
            let mut graph = Policy::new(0, 0);
            for (outer, inner) in stored_members(conn, true)? {
                graph.load_member(outer, inner);
            }
            graph.add_member(group, member)?;
        }
        let (kind, id) = subject_columns(member);
        let present: i64 = memberships::table
            .filter(memberships::group_id.eq(group.to_string()))
            .filter(memberships::member_kind.eq(kind))
            .filter(memberships::member_id.eq(&id))
            .count()
            .get_result(conn)?;
        if present == 0 {
            diesel::insert_into(memberships::table)
                .values((
                    memberships::group_id.eq(group.to_string()),
                    memberships::member_kind.eq(kind),
                    memberships::member_id.eq(id),
                    memberships::created_at.eq(now),
                ))
                .execute(conn)?;
        }
        Ok(())
    })
}

/// Stores `binding`; refused when its role, or its group, does not exist.
pub fn bind(
    conn: &mut DbConnection,
    binding: &Binding,
    now: NaiveDateTime,
) -> Result<i64, AuthzError> {
    write(conn, |conn| {
        let role: i64 = roles::table
            .filter(roles::name.eq(&binding.role))
            .count()
            .get_result(conn)?;
        if role == 0 {
            return Err(AuthzError::NotFound(format!("role {}", binding.role)));
        }
        if let Subject::Group(group) = binding.subject {
            group_exists(conn, group)?;
        }
        let (subject_kind, subject_id) = subject_columns(binding.subject);
        let (scope_kind, scope) = scope_columns(&binding.scope);
        diesel::insert_into(bindings::table)
            .values((
                bindings::id.eq(binding.id.to_string()),
                bindings::subject_kind.eq(subject_kind),
                bindings::subject_id.eq(subject_id),
                bindings::role.eq(&binding.role),
                bindings::scope_kind.eq(scope_kind),
                bindings::scope.eq(scope),
                bindings::expires_at.eq(binding.expires_at.map(|t| t.naive_utc())),
                bindings::created_at.eq(now),
            ))
            .execute(conn)?;
        Ok(())
    })
}

/// Removes the binding `id`.
pub fn unbind(conn: &mut DbConnection, id: Uuid) -> Result<i64, AuthzError> {
    write(conn, |conn| {
        let gone = diesel::delete(bindings::table.filter(bindings::id.eq(id.to_string())))
            .execute(conn)?;
        if gone == 0 {
            return Err(AuthzError::NotFound(format!("binding {id}")));
        }
        Ok(())
    })
}

/// Registers `child` under `parent` (in place of any parent it had);
/// refused when the chain would run in a circle or be longer than
/// `max_depth`.
pub fn set_parent(
    conn: &mut DbConnection,
    child: &Resource,
    parent: &Resource,
    max_depth: usize,
) -> Result<i64, AuthzError> {
    write(conn, |conn| {
        let mut tree = Policy::new(0, max_depth);
        for (c, p) in stored_parents(conn)? {
            if &c != child {
                tree.load_parent(c, p);
            }
        }
        tree.set_parent(child.clone(), parent.clone())?;
        diesel::delete(
            resource_parents::table.filter(resource_parents::child.eq(child.to_string())),
        )
        .execute(conn)?;
        diesel::insert_into(resource_parents::table)
            .values((
                resource_parents::child.eq(child.to_string()),
                resource_parents::parent.eq(parent.to_string()),
            ))
            .execute(conn)?;
        Ok(())
    })
}

/// Stores `binding` unless the same subject already holds the same role at
/// the same scope; the new revision, or none when nothing was written.
pub fn bind_once(
    conn: &mut DbConnection,
    binding: &Binding,
    now: NaiveDateTime,
) -> Result<Option<i64>, AuthzError> {
    let (subject_kind, subject_id) = subject_columns(binding.subject);
    let (scope_kind, scope) = scope_columns(&binding.scope);
    let held: i64 = bindings::table
        .filter(bindings::subject_kind.eq(subject_kind))
        .filter(bindings::subject_id.eq(subject_id))
        .filter(bindings::role.eq(&binding.role))
        .filter(bindings::scope_kind.eq(scope_kind))
        .filter(bindings::scope.eq(scope))
        .count()
        .get_result(conn)?;
    if held > 0 {
        return Ok(None);
    }
    bind(conn, binding, now).map(Some)
}

/// Removes every binding and membership of `user`; the new revision, or
/// none when there was nothing to remove.
pub fn forget_user(conn: &mut DbConnection, user: Uuid) -> Result<Option<i64>, AuthzError> {
    let id = user.to_string();
    let bound: i64 = bindings::table
        .filter(bindings::subject_kind.eq("user"))
        .filter(bindings::subject_id.eq(&id))
        .count()
        .get_result(conn)?;
    let member: i64 = memberships::table
        .filter(memberships::member_kind.eq("user"))
        .filter(memberships::member_id.eq(&id))
        .count()
        .get_result(conn)?;
    if bound + member == 0 {
        return Ok(None);
    }
    write(conn, |conn| {
        diesel::delete(
            bindings::table
                .filter(bindings::subject_kind.eq("user"))
                .filter(bindings::subject_id.eq(&id)),
        )
        .execute(conn)?;
        diesel::delete(
            memberships::table
                .filter(memberships::member_kind.eq("user"))
                .filter(memberships::member_id.eq(&id)),
        )
        .execute(conn)?;
        Ok(())
    })
    .map(Some)
}
