//! The writes that change the policy, each one transaction that moves the
//! revision on and writes its event (see [`super::write`]). A refused write
//! changes nothing.

use std::collections::BTreeSet;

use diesel::prelude::*;
use uuid::Uuid;

use super::{
    By, Change, Policy, group_exists, scope_columns, stored_members, stored_parents,
    subject_columns, write,
};
use crate::authz::error::AuthzError;
use crate::authz::model::{Binding, Permission, Resource, Role, Subject};
use crate::authz::schema::{
    bindings, memberships, resource_parents, role_permissions, roles, user_groups,
};
use crate::events::authz as events;
use crate::kernel::db::DbConnection;

/// The built-in role that holds everything; it is never changed, so that
/// the platform always has a way in.
pub const ADMIN_ROLE: &str = "admin";

/// Whether a role of `name` exists, and whether it is built in.
fn role_builtin(conn: &mut DbConnection, name: &str) -> Result<bool, AuthzError> {
    roles::table
        .select(roles::builtin)
        .filter(roles::name.eq(name))
        .first::<bool>(conn)
        .optional()?
        .ok_or_else(|| AuthzError::NotFound(format!("role {name}")))
}

fn set_permissions(
    conn: &mut DbConnection,
    role: &str,
    permissions: &BTreeSet<Permission>,
) -> Result<(), AuthzError> {
    diesel::delete(role_permissions::table.filter(role_permissions::role.eq(role)))
        .execute(conn)?;
    for permission in permissions {
        diesel::insert_into(role_permissions::table)
            .values((
                role_permissions::role.eq(role),
                role_permissions::permission.eq(permission.to_string()),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// Creates `role`; refused when one of that name exists.
pub fn create_role(conn: &mut DbConnection, by: &By, role: &Role) -> Result<i64, AuthzError> {
    write(conn, by, |conn| {
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
                roles::created_at.eq(by.now()),
                roles::updated_at.eq(by.now()),
            ))
            .execute(conn)?;
        set_permissions(conn, &role.name, &role.permissions)?;
        Ok(Change::new(&events::ROLE_CREATED, &role.name))
    })
}

/// Changes a role's description, its permissions, or both; the permissions
/// of [`ADMIN_ROLE`] stay as they are.
pub fn update_role(
    conn: &mut DbConnection,
    by: &By,
    name: &str,
    description: Option<&str>,
    permissions: Option<&BTreeSet<Permission>>,
) -> Result<i64, AuthzError> {
    write(conn, by, |conn| {
        role_builtin(conn, name)?;
        if permissions.is_some() && name == ADMIN_ROLE {
            return Err(AuthzError::Builtin(name.to_owned()));
        }
        let row = roles::table.filter(roles::name.eq(name));
        match description {
            Some(description) => diesel::update(row)
                .set((
                    roles::description.eq(description),
                    roles::updated_at.eq(by.now()),
                ))
                .execute(conn)?,
            None => diesel::update(row)
                .set(roles::updated_at.eq(by.now()))
                .execute(conn)?,
        };
        if let Some(permissions) = permissions {
            set_permissions(conn, name, permissions)?;
        }
        Ok(Change::new(&events::ROLE_UPDATED, name))
    })
}

/// Deletes a role that is not built in. A role still bound is refused
/// unless `force`, which deletes its bindings with it.
pub fn delete_role(
    conn: &mut DbConnection,
    by: &By,
    name: &str,
    force: bool,
) -> Result<i64, AuthzError> {
    write(conn, by, |conn| {
        if role_builtin(conn, name)? {
            return Err(AuthzError::Builtin(name.to_owned()));
        }
        let bound = bindings::table.filter(bindings::role.eq(name));
        let count: i64 = bound.count().get_result(conn)?;
        if count > 0 && !force {
            return Err(AuthzError::RoleBound {
                role: name.to_owned(),
                bindings: count,
            });
        }
        diesel::delete(bound).execute(conn)?;
        diesel::delete(role_permissions::table.filter(role_permissions::role.eq(name)))
            .execute(conn)?;
        diesel::delete(roles::table.filter(roles::name.eq(name))).execute(conn)?;
        Ok(Change::new(&events::ROLE_DELETED, name))
    })
}

fn name_free(conn: &mut DbConnection, name: &str, except: Option<Uuid>) -> Result<(), AuthzError> {
    let mut query = user_groups::table
        .filter(user_groups::name.eq(name))
        .into_boxed();
    if let Some(id) = except {
        query = query.filter(user_groups::id.ne(id.to_string()));
    }
    let taken: i64 = query.count().get_result(conn)?;
    if taken > 0 {
        return Err(AuthzError::Exists(format!("group {name}")));
    }
    Ok(())
}

/// Creates a group; refused when one of that name exists.
pub fn create_group(
    conn: &mut DbConnection,
    by: &By,
    id: Uuid,
    name: &str,
    description: &str,
) -> Result<i64, AuthzError> {
    write(conn, by, |conn| {
        name_free(conn, name, None)?;
        diesel::insert_into(user_groups::table)
            .values((
                user_groups::id.eq(id.to_string()),
                user_groups::name.eq(name),
                user_groups::description.eq(description),
                user_groups::created_at.eq(by.now()),
            ))
            .execute(conn)?;
        Ok(Change::new(&events::GROUP_CREATED, id.to_string()))
    })
}

/// Renames a group or changes its description.
pub fn update_group(
    conn: &mut DbConnection,
    by: &By,
    id: Uuid,
    name: Option<&str>,
    description: Option<&str>,
) -> Result<i64, AuthzError> {
    write(conn, by, |conn| {
        group_exists(conn, id)?;
        let row = || user_groups::table.filter(user_groups::id.eq(id.to_string()));
        if let Some(name) = name {
            name_free(conn, name, Some(id))?;
            diesel::update(row())
                .set(user_groups::name.eq(name))
                .execute(conn)?;
        }
        if let Some(description) = description {
            diesel::update(row())
                .set(user_groups::description.eq(description))
                .execute(conn)?;
        }
        Ok(Change::new(&events::GROUP_UPDATED, id.to_string()))
    })
}

/// Deletes a group with its memberships (its own, and its place in other
/// groups) and its bindings.
pub fn delete_group(conn: &mut DbConnection, by: &By, id: Uuid) -> Result<i64, AuthzError> {
    write(conn, by, |conn| {
        group_exists(conn, id)?;
        let text = id.to_string();
        diesel::delete(memberships::table.filter(memberships::group_id.eq(&text))).execute(conn)?;
        forget(conn, Subject::Group(id))?;
        diesel::delete(user_groups::table.filter(user_groups::id.eq(&text))).execute(conn)?;
        Ok(Change::new(&events::GROUP_DELETED, text))
    })
}

/// Puts `member` in `group`; refused when either group does not exist or
/// the group would then contain itself. A member already there stays.
pub fn add_member(
    conn: &mut DbConnection,
    by: &By,
    group: Uuid,
    member: Subject,
) -> Result<i64, AuthzError> {
    write(conn, by, |conn| {
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
                    memberships::created_at.eq(by.now()),
                ))
                .execute(conn)?;
        }
        Ok(Change::new(&events::MEMBER_ADDED, group.to_string()).of(member))
    })
}

/// Takes `member` out of `group`; refused when it was not in it.
pub fn remove_member(
    conn: &mut DbConnection,
    by: &By,
    group: Uuid,
    member: Subject,
) -> Result<i64, AuthzError> {
    write(conn, by, |conn| {
        group_exists(conn, group)?;
        let (kind, id) = subject_columns(member);
        let gone = diesel::delete(
            memberships::table
                .filter(memberships::group_id.eq(group.to_string()))
                .filter(memberships::member_kind.eq(kind))
                .filter(memberships::member_id.eq(&id)),
        )
        .execute(conn)?;
        if gone == 0 {
            return Err(AuthzError::NotFound(format!(
                "{kind} {id} in group {group}"
            )));
        }
        Ok(Change::new(&events::MEMBER_REMOVED, group.to_string()).of(member))
    })
}

/// Stores `binding`; refused when its role, or its group, does not exist.
pub fn bind(conn: &mut DbConnection, by: &By, binding: &Binding) -> Result<i64, AuthzError> {
    write(conn, by, |conn| {
        role_builtin(conn, &binding.role)?;
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
                bindings::created_at.eq(by.now()),
            ))
            .execute(conn)?;
        Ok(Change::new(&events::BINDING_CREATED, binding.id.to_string()).binding(binding))
    })
}

/// Removes the binding `id`.
pub fn unbind(conn: &mut DbConnection, by: &By, id: Uuid) -> Result<i64, AuthzError> {
    write(conn, by, |conn| {
        let binding = super::reads::binding(conn, id)?.0;
        diesel::delete(bindings::table.filter(bindings::id.eq(id.to_string()))).execute(conn)?;
        Ok(Change::new(&events::BINDING_DELETED, id.to_string()).binding(&binding))
    })
}

/// Registers `child` under `parent` (in place of any parent it had);
/// refused when the chain would run in a circle or be longer than
/// `max_depth`.
pub fn set_parent(
    conn: &mut DbConnection,
    by: &By,
    child: &Resource,
    parent: &Resource,
    max_depth: usize,
) -> Result<i64, AuthzError> {
    write(conn, by, |conn| {
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
        let mut change = Change::new(&events::PARENT_SET, child.to_string());
        change.scope = parent.to_string();
        Ok(change)
    })
}

/// Takes `child` from under its parent; refused when it had none.
pub fn remove_parent(
    conn: &mut DbConnection,
    by: &By,
    child: &Resource,
) -> Result<i64, AuthzError> {
    write(conn, by, |conn| {
        let gone = diesel::delete(
            resource_parents::table.filter(resource_parents::child.eq(child.to_string())),
        )
        .execute(conn)?;
        if gone == 0 {
            return Err(AuthzError::NotFound(format!("a parent of {child}")));
        }
        Ok(Change::new(&events::PARENT_REMOVED, child.to_string()))
    })
}

/// Removes `subject`'s bindings and its places in groups.
fn forget(conn: &mut DbConnection, subject: Subject) -> Result<(), AuthzError> {
    let (kind, id) = subject_columns(subject);
    diesel::delete(
        bindings::table
            .filter(bindings::subject_kind.eq(kind))
            .filter(bindings::subject_id.eq(&id)),
    )
    .execute(conn)?;
    diesel::delete(
        memberships::table
            .filter(memberships::member_kind.eq(kind))
            .filter(memberships::member_id.eq(&id)),
    )
    .execute(conn)?;
    Ok(())
}

/// Stores `binding` unless the same subject already holds the same role at
/// the same scope; the new revision, or none when nothing was written.
pub fn bind_once(
    conn: &mut DbConnection,
    by: &By,
    binding: &Binding,
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
    bind(conn, by, binding).map(Some)
}

/// Removes every binding and membership of `user`; the new revision, or
/// none when there was nothing to remove.
pub fn forget_user(
    conn: &mut DbConnection,
    by: &By,
    user: Uuid,
) -> Result<Option<i64>, AuthzError> {
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
    write(conn, by, |conn| {
        forget(conn, Subject::User(user))?;
        Ok(Change::new(&events::SUBJECT_FORGOTTEN, &id).of(Subject::User(user)))
    })
    .map(Some)
}
