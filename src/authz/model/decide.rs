//! How a check is decided on one revision of the [`Policy`], without I/O,
//! each decision with the chain that made it: the binding, its role and
//! the permission in it, the groups the user reached it through, and the
//! parents the resource reached it through. Also the two listings made the
//! same way: a user's permissions, and the users who hold one.

use std::collections::{BTreeSet, HashSet, VecDeque};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::policy::{Map, Policy};
use super::{Decision, Denial, Grant, Permission, Resource, Scope, Subject};

/// A subject (a user, or a client) and the groups it is in, each with the
/// groups between; and,
/// when indexed, their bindings by the resource type their roles speak of,
/// so that a check looks only at the bindings that can answer it.
#[derive(Debug, Clone)]
pub struct Reach {
    pub subject: Subject,
    /// The revision of the policy it was worked out in.
    pub revision: u64,
    found: Vec<(Subject, Vec<Uuid>)>,
    index: Option<Index>,
}

/// Bindings as (index into the policy's bindings, index into `found`).
#[derive(Debug, Clone, Default)]
struct Index {
    /// Those whose role holds a permission on the type.
    by_type: Map<String, Vec<(usize, usize)>>,
    /// Those whose role holds `*`.
    everything: Vec<(usize, usize)>,
}

impl Policy {
    /// The user and every group they are in, each with the groups between,
    /// nearest first; breadth first, so each group comes with its shortest
    /// path. What a check of the user starts from, the same for every check
    /// at this revision: the service keeps it per user (see [`Reach`]).
    pub fn reach(&self, subject: Subject) -> Reach {
        let mut found = vec![(subject, Vec::new())];
        let mut seen = HashSet::new();
        let mut queue = VecDeque::from([(subject, Vec::<Uuid>::new())]);
        while let Some((subject, path)) = queue.pop_front() {
            for group in self.member_of.get(&subject).into_iter().flatten() {
                if seen.insert(*group) {
                    let mut path = path.clone();
                    path.push(*group);
                    found.push((Subject::Group(*group), path.clone()));
                    queue.push_back((Subject::Group(*group), path));
                }
            }
        }
        Reach {
            subject,
            revision: self.revision,
            found,
            index: None,
        }
    }

    /// [`Policy::reach`], with the user's bindings indexed by type: more
    /// work once, less for each check made from it.
    pub fn reach_indexed(&self, subject: Subject) -> Reach {
        let mut reach = self.reach(subject);
        let mut index = Index::default();
        for (at, (subject, _)) in reach.found.iter().enumerate() {
            for binding in self.bindings_of.get(subject).into_iter().flatten() {
                let Some(role) = self.roles.get(&self.bindings[*binding].role) else {
                    continue;
                };
                for permission in &role.permissions {
                    let list = match permission {
                        Permission::All => &mut index.everything,
                        Permission::AnyAction(kind) | Permission::Action(kind, _) => {
                            index.by_type.entry(kind.clone()).or_default()
                        }
                    };
                    if list.last() != Some(&(*binding, at)) {
                        list.push((*binding, at));
                    }
                }
            }
        }
        reach.index = Some(index);
        reach
    }

    /// How `scope` holds at `resource` (or, without one, at the type of
    /// the permission asked about): the parents between, or none when it
    /// does not hold there.
    pub(super) fn holds(
        &self,
        scope: &Scope,
        asked: &Permission,
        resource: Option<&Resource>,
    ) -> Option<Vec<Resource>> {
        let Some(resource) = resource else {
            return match (scope, asked) {
                (Scope::Everywhere, _) => Some(Vec::new()),
                (Scope::Type(kind), Permission::Action(asked, _)) if kind == asked => {
                    Some(Vec::new())
                }
                _ => None,
            };
        };
        let at_self = |r: &Resource| match scope {
            Scope::Everywhere => true,
            Scope::Type(kind) => &r.kind == kind,
            Scope::Resource(one) => one == r,
        };
        if at_self(resource) {
            return Some(Vec::new());
        }
        let chain = self.ancestors(resource);
        let at = chain.iter().position(at_self)?;
        Some(chain[..=at].to_vec())
    }

    /// Whether `user` may do `asked` on `resource` (or at its type, without
    /// one) at `now`, and why.
    pub fn check(
        &self,
        user: Uuid,
        asked: &Permission,
        resource: Option<&Resource>,
        now: DateTime<Utc>,
    ) -> Decision {
        self.check_from(&self.reach(Subject::User(user)), asked, resource, now)
    }

    /// [`Policy::check`] from the user's reach, made at this revision.
    pub fn check_from(
        &self,
        reach: &Reach,
        asked: &Permission,
        resource: Option<&Resource>,
        now: DateTime<Utc>,
    ) -> Decision {
        // A reach indexes this revision's bindings; one of another revision
        // is worked out again.
        if reach.revision != self.revision {
            return self.check_from(&self.reach(reach.subject), asked, resource, now);
        }
        let mut best: Option<Grant> = None;
        let mut best_key: Option<(usize, usize, usize)> = None;
        let mut expired: Option<DateTime<Utc>> = None;
        // The latest end among the bindings that allow it (`None` inside
        // once one never ends); the outer `None` until one allows it.
        let mut holds_until: Option<Option<DateTime<Utc>>> = None;
        for (index, at) in self.candidates(reach, asked) {
            let binding = &self.bindings[index];
            let groups = &reach.found[at].1;
            let Some(role) = self.roles.get(&binding.role) else {
                continue;
            };
            let Some(permission) = role.permissions.iter().find(|p| p.covers(asked)) else {
                continue;
            };
            let Some(parents) = self.holds(&binding.scope, asked, resource) else {
                continue;
            };
            if let Some(end) = binding.expires_at
                && end <= now
            {
                expired = expired.max(Some(end));
                continue;
            }
            holds_until = Some(match (holds_until, binding.expires_at) {
                (Some(None), _) | (_, None) => None,
                (Some(Some(latest)), Some(end)) => Some(latest.max(end)),
                (None, Some(end)) => Some(end),
            });
            // The shortest explanation: fewest groups, then fewest parents,
            // then the binding made first.
            let key = (groups.len(), parents.len(), index);
            if best_key.is_none_or(|b| key < b) {
                best_key = Some(key);
                best = Some(Grant {
                    binding: binding.id,
                    role: role.name.clone(),
                    permission: permission.clone(),
                    groups: groups.clone(),
                    scope: binding.scope.clone(),
                    parents,
                    holds_until: None,
                });
            }
        }
        match (best, expired) {
            (Some(grant), _) => Decision::Allowed(Grant {
                holds_until: holds_until.flatten(),
                ..grant
            }),
            (None, Some(end)) => Decision::Denied(Denial::Expired(end)),
            (None, None) => Decision::Denied(Denial::NotGranted),
        }
    }

    /// The bindings that may answer `asked` for the user of `reach`, each
    /// with the place in the reach of the subject it binds: from the index
    /// when there is one, else every binding the reach has.
    fn candidates<'a>(
        &'a self,
        reach: &'a Reach,
        asked: &Permission,
    ) -> Box<dyn Iterator<Item = (usize, usize)> + 'a> {
        match (&reach.index, asked) {
            (Some(index), Permission::Action(kind, _) | Permission::AnyAction(kind)) => Box::new(
                index
                    .by_type
                    .get(kind)
                    .into_iter()
                    .flatten()
                    .chain(&index.everything)
                    .copied(),
            ),
            _ => Box::new(
                reach
                    .found
                    .iter()
                    .enumerate()
                    .flat_map(move |(at, (subject, _))| {
                        self.bindings_of
                            .get(subject)
                            .into_iter()
                            .flatten()
                            .map(move |index| (*index, at))
                    }),
            ),
        }
    }

    /// Every permission `user` holds at `resource` (or, without one, those
    /// held everywhere) at `now`, as the roles state them.
    pub fn permissions(
        &self,
        user: Uuid,
        resource: Option<&Resource>,
        now: DateTime<Utc>,
    ) -> BTreeSet<Permission> {
        let mut held = BTreeSet::new();
        for (subject, _) in &self.reach(Subject::User(user)).found {
            for index in self.bindings_of.get(subject).into_iter().flatten() {
                let binding = &self.bindings[*index];
                if binding.expires_at.is_some_and(|end| end <= now) {
                    continue;
                }
                let Some(role) = self.roles.get(&binding.role) else {
                    continue;
                };
                for permission in &role.permissions {
                    let at = match resource {
                        Some(_) => self.holds(&binding.scope, permission, resource).is_some(),
                        None => binding.scope == Scope::Everywhere,
                    };
                    if at {
                        held.insert(permission.clone());
                    }
                }
            }
        }
        held
    }

    /// The roles bound to `user` everywhere at `now`, itself or through
    /// its groups, by name.
    pub fn roles(&self, user: Uuid, now: DateTime<Utc>) -> BTreeSet<String> {
        let mut roles = BTreeSet::new();
        for (subject, _) in &self.reach(Subject::User(user)).found {
            for index in self.bindings_of.get(subject).into_iter().flatten() {
                let binding = &self.bindings[*index];
                if binding.scope == Scope::Everywhere
                    && binding.expires_at.is_none_or(|end| end > now)
                    && self.roles.contains_key(&binding.role)
                {
                    roles.insert(binding.role.clone());
                }
            }
        }
        roles
    }

    /// The users who may do `asked` on `resource` at `now`: those bound
    /// themselves and the members of bound groups, however deep.
    pub fn subjects(
        &self,
        asked: &Permission,
        resource: Option<&Resource>,
        now: DateTime<Utc>,
    ) -> BTreeSet<Uuid> {
        let mut users = BTreeSet::new();
        let mut groups = Vec::new();
        for binding in &self.bindings {
            if binding.expires_at.is_some_and(|end| end <= now)
                || !self
                    .roles
                    .get(&binding.role)
                    .is_some_and(|role| role.permissions.iter().any(|p| p.covers(asked)))
                || self.holds(&binding.scope, asked, resource).is_none()
            {
                continue;
            }
            match binding.subject {
                Subject::User(user) => {
                    users.insert(user);
                }
                Subject::Group(group) => groups.push(group),
                // Clients are not users.
                Subject::Client(_) => {}
            }
        }
        let mut seen = HashSet::new();
        while let Some(group) = groups.pop() {
            if !seen.insert(group) {
                continue;
            }
            for member in self.members.get(&group).into_iter().flatten() {
                match member {
                    Subject::User(user) => {
                        users.insert(*user);
                    }
                    Subject::Group(inner) => groups.push(*inner),
                    Subject::Client(_) => {}
                }
            }
        }
        users
    }
}
