//! What authorization is made of: permissions (`resource_type:action`, with
//! `type:*` and `*`), resources (`type:id`) and their parents, roles (named
//! sets of permissions), groups (which may contain groups, never in a
//! circle), and bindings that give a subject (a user or a group) a role at a
//! scope, possibly until some time (a client, acting for itself, may hold
//! bindings too); and what a check answers.
//!
//! Rooms: this file holds the records and what the model refuses;
//! `policy.rs` holds one revision of it all, `decide.rs` decides checks on
//! it, `tests.rs` tests the decisions. The names (permissions and
//! resources) are parsed by `middleware::names`, which the services and the
//! gateway that ask authz share.
//! The store rebuilds a policy from the database; nothing here knows where
//! it came from.

mod decide;
mod escalation;
mod policy;
#[cfg(test)]
mod tests;

pub use crate::middleware::names::{MAX_NAME, NameError, Permission, Resource};
pub use decide::Reach;
pub use escalation::Lacking;
pub use policy::Policy;

/// Why a name or a change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("a group cannot contain itself, directly or through other groups")]
    GroupCycle,
    #[error("a resource cannot be its own parent, directly or through others")]
    ParentCycle,
    #[error("the chain of parents would be longer than {0}")]
    TooDeep(usize),
}

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Where a binding holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    Everywhere,
    /// Every resource of one type, and everything under them.
    Type(String),
    /// One resource, and everything under it.
    Resource(Resource),
}

/// Who a binding is for. A client is one acting for itself (the client
/// credentials grant); it holds only its own bindings, never a group's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    User(Uuid),
    Group(Uuid),
    Client(Uuid),
}

/// A named set of permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    pub description: String,
    pub permissions: BTreeSet<Permission>,
    /// Made at the first start; never deleted.
    pub builtin: bool,
}

/// A subject holding a role at a scope, until `expires_at` when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub id: Uuid,
    pub subject: Subject,
    pub role: String,
    pub scope: Scope,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Why a check was allowed: the binding and everything between it and the
/// question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub binding: Uuid,
    pub role: String,
    /// The role's permission that covers the one asked about.
    pub permission: Permission,
    /// The groups from the user to the binding's subject, nearest first;
    /// empty when the binding is the user's own.
    pub groups: Vec<Uuid>,
    /// The scope the binding holds at.
    pub scope: Scope,
    /// The parents from the resource asked about to the binding's scope,
    /// nearest first; empty when the scope holds the resource itself.
    pub parents: Vec<Resource>,
    /// When the answer lapses by time alone: the latest expiry among the
    /// bindings that allow it; `None` when one of them never expires.
    pub holds_until: Option<DateTime<Utc>>,
}

/// Why a check was denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No binding of the user's, or of a group of theirs, grants it here.
    NotGranted,
    /// Only bindings that have expired would have granted it; the latest
    /// of them ended then.
    Expired(DateTime<Utc>),
}

/// A check's answer, with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allowed(Grant),
    Denied(Denial),
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allowed(_))
    }
}
