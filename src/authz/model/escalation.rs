//! No escalation: what a change gives someone must be held by whoever
//! makes it. Binding a role at a scope gives the role's permissions there;
//! adding a member to a group gives it every binding the group holds,
//! itself or through the groups it is in; adding permissions to a role
//! gives them to everyone the role is bound to, anywhere. A user may make
//! such a change only holding each permission it gives, at each scope it
//! gives it (Kubernetes RBAC's rule). And an act on another user's account
//! needs at least every permission that user holds.
//!
//! "Holding `p` at scope `s`" means a live binding of the user's (or of a
//! group of theirs) whose role has a permission covering `p`, at a scope
//! that takes in the whole of `s`: everywhere takes in everything, a type
//! its resources and what lies under them, a resource what lies under it.

use std::collections::{HashSet, VecDeque};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Permission, Policy, Scope, Subject};

/// What a change would give that its maker lacks: the first permission,
/// and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lacking {
    pub permission: Permission,
    pub scope: Scope,
}

impl Policy {
    /// Whether `user` holds `wanted` (of any shape: `*` and `type:*` are
    /// held only through permissions covering them) over the whole of `at`.
    pub fn holds_at(
        &self,
        user: Uuid,
        wanted: &Permission,
        at: &Scope,
        now: DateTime<Utc>,
    ) -> bool {
        self.reach_of(Subject::User(user))
            .into_iter()
            .any(|subject| {
                self.live_bindings(subject, now).any(|index| {
                    let binding = &self.bindings[index];
                    self.roles
                        .get(&binding.role)
                        .is_some_and(|role| role.permissions.iter().any(|p| p.covers(wanted)))
                        && self.takes_in(&binding.scope, at)
                })
            })
    }

    /// The first of `gained` (permissions at scopes) that `actor` does not
    /// hold; `None` when they hold them all.
    pub fn lacking(
        &self,
        actor: Uuid,
        gained: impl IntoIterator<Item = (Permission, Scope)>,
        now: DateTime<Utc>,
    ) -> Option<Lacking> {
        gained
            .into_iter()
            .find(|(permission, scope)| !self.holds_at(actor, permission, scope, now))
            .map(|(permission, scope)| Lacking { permission, scope })
    }

    /// What holding `role` at `scope` gives.
    pub fn role_grants(&self, role: &str, scope: &Scope) -> Vec<(Permission, Scope)> {
        self.roles
            .get(role)
            .into_iter()
            .flat_map(|r| r.permissions.iter())
            .map(|p| (p.clone(), scope.clone()))
            .collect()
    }

    /// What `subject` holds through its live bindings and those of every
    /// group it is in, however deep: what a new member of it would gain,
    /// and what an act on it needs.
    pub fn grants_of(&self, subject: Subject, now: DateTime<Utc>) -> Vec<(Permission, Scope)> {
        self.reach_of(subject)
            .into_iter()
            .flat_map(|s| self.live_bindings(s, now).collect::<Vec<_>>())
            .flat_map(|index| {
                let binding = &self.bindings[index];
                self.role_grants(&binding.role, &binding.scope)
            })
            .collect()
    }

    /// `subject` and every group it is in, however deep.
    fn reach_of(&self, subject: Subject) -> Vec<Subject> {
        let mut found = vec![subject];
        let mut seen = HashSet::new();
        let mut queue = VecDeque::from([subject]);
        while let Some(next) = queue.pop_front() {
            for group in self.member_of.get(&next).into_iter().flatten() {
                if seen.insert(*group) {
                    found.push(Subject::Group(*group));
                    queue.push_back(Subject::Group(*group));
                }
            }
        }
        found
    }

    /// The bindings of `subject` that have not ended at `now`.
    fn live_bindings(&self, subject: Subject, now: DateTime<Utc>) -> impl Iterator<Item = usize> {
        self.bindings_of
            .get(&subject)
            .into_iter()
            .flatten()
            .copied()
            .filter(move |index| self.bindings[*index].expires_at.is_none_or(|end| end > now))
    }

    /// Whether a binding at `outer` holds over the whole of `inner`.
    fn takes_in(&self, outer: &Scope, inner: &Scope) -> bool {
        match (outer, inner) {
            (Scope::Everywhere, _) => true,
            (_, Scope::Everywhere) => false,
            (Scope::Type(kind), Scope::Type(other)) => kind == other,
            (Scope::Resource(_), Scope::Type(_)) => false,
            (_, Scope::Resource(resource)) => self
                .holds(outer, &Permission::All, Some(resource))
                .is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::model::{Binding, Resource, Role};

    fn p(text: &str) -> Permission {
        Permission::parse(text).unwrap()
    }

    fn role(name: &str, permissions: &[&str]) -> Role {
        Role {
            name: name.into(),
            description: String::new(),
            permissions: permissions.iter().map(|t| p(t)).collect(),
            builtin: false,
        }
    }

    fn bind(policy: &mut Policy, subject: Subject, role: &str, scope: Scope) {
        policy.add_binding(Binding {
            id: Uuid::now_v7(),
            subject,
            role: role.into(),
            scope,
            expires_at: None,
        });
    }

    fn r(text: &str) -> Resource {
        Resource::parse(text).unwrap()
    }

    #[test]
    fn a_permission_is_held_at_a_scope_only_by_a_binding_taking_it_all_in() {
        let now = Utc::now();
        let (ann, group) = (Uuid::now_v7(), Uuid::now_v7());
        let mut policy = Policy::new(1, 8);
        policy.add_role(role("writer", &["authz:write"]));
        policy.add_role(role("invoices", &["billing.invoices:*"]));
        policy.add_member(group, Subject::User(ann)).unwrap();
        bind(&mut policy, Subject::User(ann), "writer", Scope::Everywhere);
        bind(
            &mut policy,
            Subject::Group(group),
            "invoices",
            Scope::Resource(r("billing.accounts:1")),
        );
        policy
            .set_parent(r("billing.invoices:7"), r("billing.accounts:1"))
            .unwrap();
        let at = |s: Scope, perm: &str| policy.holds_at(ann, &p(perm), &s, now);
        assert!(at(Scope::Everywhere, "authz:write"));
        assert!(!at(Scope::Everywhere, "*"));
        assert!(!at(Scope::Everywhere, "authz:*"));
        // Through the group, under the account only.
        assert!(at(
            Scope::Resource(r("billing.invoices:7")),
            "billing.invoices:read"
        ));
        assert!(at(
            Scope::Resource(r("billing.invoices:7")),
            "billing.invoices:*"
        ));
        assert!(!at(
            Scope::Resource(r("billing.invoices:8")),
            "billing.invoices:read"
        ));
        assert!(!at(
            Scope::Type("billing.invoices".into()),
            "billing.invoices:read"
        ));
        // Binding admin (`*`) everywhere gives what ann lacks.
        policy.add_role(role("admin", &["*"]));
        assert_eq!(
            policy.lacking(ann, policy.role_grants("admin", &Scope::Everywhere), now),
            Some(Lacking {
                permission: p("*"),
                scope: Scope::Everywhere
            })
        );
        assert_eq!(
            policy.lacking(ann, policy.role_grants("writer", &Scope::Everywhere), now),
            None
        );
        // What the group gives a new member.
        assert_eq!(
            policy.grants_of(Subject::Group(group), now),
            vec![(
                p("billing.invoices:*"),
                Scope::Resource(r("billing.accounts:1"))
            )]
        );
    }
}
