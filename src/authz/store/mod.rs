//! Diesel queries on the authz schema: the policy read back whole (here),
//! the writes that change it (`writes.rs`), and the rows the admin API
//! lists (`reads.rs`).
//!
//! Every write transaction starts by moving the revision on: the write
//! takes SQLite's write lock at once (see identity's store for why a
//! transaction starts with a write), and the revision it answers is the one
//! its changes are seen at. It ends by writing its `authz.*` event into the
//! outbox, so the event exists if and only if the change does.

mod reads;
mod writes;

pub use reads::*;
pub use writes::*;

use std::collections::HashMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use prost::Message as _;
use uuid::Uuid;

use super::error::AuthzError;
use super::model::{Binding, Permission, Policy, Resource, Role, Scope, Subject};
use super::schema::{
    bindings, memberships, resource_parents, revision, role_permissions, roles, user_groups,
};
use crate::events::Event;
use crate::kernel::db::DbConnection;
use crate::kernel::outbox::{self, NewEvent};
use crate::proto::events::v1::PolicyEvent;

/// Who makes a write, and when.
#[derive(Debug, Clone, Copy)]
pub struct By {
    /// The signed-in user; none when the platform writes (a new user's
    /// role, the command line).
    pub actor: Option<Uuid>,
    pub at: DateTime<Utc>,
}

impl By {
    pub fn now(&self) -> NaiveDateTime {
        self.at.naive_utc()
    }
}

/// What a write changed, as its event tells it.
#[derive(Debug, Default)]
pub struct Change {
    /// One of authz's events (`crate::events::authz`), all of which carry
    /// a `PolicyEvent`.
    event_type: &'static str,
    target: String,
    subject: Option<Subject>,
    role: String,
    scope: String,
    /// The users whose answers may change; empty for anyone's.
    users: Vec<Uuid>,
}

impl Change {
    fn new(event: &Event<PolicyEvent>, target: impl Into<String>) -> Change {
        Change {
            event_type: event.name,
            target: target.into(),
            ..Change::default()
        }
    }

    /// A change to what `subject` holds: only a user's own answers move
    /// with it; a group's reach its members, however deep. A client's are
    /// not a user's: its change names no user, and voids every kept answer.
    fn of(mut self, subject: Subject) -> Change {
        self.subject = Some(subject);
        if let Subject::User(user) = subject {
            self.users = vec![user];
        }
        self
    }

    fn binding(self, binding: &Binding) -> Change {
        let mut change = self.of(binding.subject);
        change.role = binding.role.clone();
        change.scope = scope_text(&binding.scope);
        change
    }

    fn event(self, revision: i64, by: &By) -> NewEvent {
        let payload = PolicyEvent {
            revision: u64::try_from(revision).unwrap_or_default(),
            actor_user_id: by.actor.map(|a| a.to_string()).unwrap_or_default(),
            target: self.target.clone(),
            subject: self.subject.map(subject_text).unwrap_or_default(),
            role: self.role,
            scope: self.scope,
            user_ids: self.users.iter().map(Uuid::to_string).collect(),
        };
        NewEvent {
            event_type: self.event_type,
            subject: self.target,
            payload: payload.encode_to_vec(),
        }
    }
}

/// A subject as the API and events write it: `user:<id>`, `group:<id>` or
/// `client:<id>`.
pub fn subject_text(subject: Subject) -> String {
    let (kind, id) = subject_columns(subject);
    format!("{kind}:{id}")
}

/// A scope as the API and events write it: `*`, a type, or `type:id`.
pub fn scope_text(scope: &Scope) -> String {
    match scope {
        Scope::Everywhere => "*".into(),
        Scope::Type(kind) => kind.clone(),
        Scope::Resource(resource) => resource.to_string(),
    }
}

/// The revision the stored policy is at.
pub fn current_revision(conn: &mut DbConnection) -> QueryResult<i64> {
    revision::table
        .select(revision::value)
        .filter(revision::id.eq(1))
        .first(conn)
}

/// Runs `write` in a transaction that first moves the revision on and
/// last writes the change's event; answers the new revision. Nothing of a
/// failed write stays.
fn write<F>(conn: &mut DbConnection, by: &By, write: F) -> Result<i64, AuthzError>
where
    F: FnOnce(&mut DbConnection) -> Result<Change, AuthzError>,
{
    conn.transaction(|conn| {
        diesel::update(revision::table.filter(revision::id.eq(1)))
            .set(revision::value.eq(revision::value + 1))
            .execute(conn)?;
        let change = write(conn)?;
        let revision = current_revision(conn)?;
        outbox::enqueue(conn, &change.event(revision, by), by.at)?;
        Ok(revision)
    })
}

fn subject_columns(subject: Subject) -> (&'static str, String) {
    match subject {
        Subject::User(id) => ("user", id.to_string()),
        Subject::Group(id) => ("group", id.to_string()),
        Subject::Client(id) => ("client", id.to_string()),
    }
}

fn subject_of(kind: &str, id: &str) -> Result<Subject, AuthzError> {
    let corrupt = || AuthzError::Corrupt(format!("subject {kind}:{id}"));
    let id = Uuid::parse_str(id).map_err(|_| corrupt())?;
    match kind {
        "user" => Ok(Subject::User(id)),
        "group" => Ok(Subject::Group(id)),
        "client" => Ok(Subject::Client(id)),
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

/// A binding's columns, as [`binding_of`] reads them.
type BindingColumns = (
    String,
    String,
    String,
    String,
    String,
    String,
    Option<NaiveDateTime>,
    NaiveDateTime,
);

const BINDING_COLUMNS: (
    bindings::id,
    bindings::subject_kind,
    bindings::subject_id,
    bindings::role,
    bindings::scope_kind,
    bindings::scope,
    bindings::expires_at,
    bindings::created_at,
) = (
    bindings::id,
    bindings::subject_kind,
    bindings::subject_id,
    bindings::role,
    bindings::scope_kind,
    bindings::scope,
    bindings::expires_at,
    bindings::created_at,
);

/// A stored binding, and when it was made.
fn binding_of(columns: BindingColumns) -> Result<(Binding, DateTime<Utc>), AuthzError> {
    let (id, subject_kind, subject_id, role, scope_kind, scope, expires_at, created_at) = columns;
    let binding = Binding {
        id: Uuid::parse_str(&id).map_err(|_| AuthzError::Corrupt(format!("binding {id}")))?,
        subject: subject_of(&subject_kind, &subject_id)?,
        role,
        scope: scope_of(&scope_kind, &scope)?,
        expires_at: expires_at.map(|t| t.and_utc()),
    };
    Ok((binding, created_at.and_utc()))
}

/// Refused with `NotFound` unless the group exists.
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
        // In the order they were made (ids are UUIDv7), which settles ties
        // between explanations.
        for columns in bindings::table
            .select(BINDING_COLUMNS)
            .order(bindings::id)
            .load::<BindingColumns>(conn)?
        {
            policy.add_binding(binding_of(columns)?.0);
        }
        Ok(policy)
    })
}
