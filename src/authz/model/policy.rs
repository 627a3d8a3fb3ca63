//! [`Policy`]: one revision of the whole policy in memory, and how a check
//! is decided on it without I/O, each decision with the chain that made it:
//! the binding, its role and the permission in it, the groups the user
//! reached it through, and the parents the resource reached it through.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

/// Maps and sets keyed by ids and names the policy made itself: foldhash,
/// not SipHash, since a check hashes a few hundred keys.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type Set<K> = HashSet<K, foldhash::fast::RandomState>;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    Binding, Decision, Denial, Grant, ModelError, Permission, Resource, Role, Scope, Subject,
};

/// A user and the groups they are in, each with the groups between; and,
/// when indexed, their bindings by the resource type their roles speak of,
/// so that a check looks only at the bindings that can answer it.
#[derive(Debug, Clone)]
pub struct Reach {
    pub user: Uuid,
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

/// One revision of everything a check reads.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The revision of the writes this policy holds.
    pub revision: u64,
    roles: Map<String, Role>,
    /// Each group's direct members.
    members: Map<Uuid, Set<Subject>>,
    /// The groups each subject is a direct member of.
    member_of: Map<Subject, Set<Uuid>>,
    bindings: Vec<Binding>,
    /// Each subject's bindings, as indexes into `bindings`.
    bindings_of: Map<Subject, Vec<usize>>,
    parents: Map<Resource, Resource>,
    /// The longest chain of parents looked up.
    max_depth: usize,
}

impl Policy {
    /// An empty policy whose chains of parents are at most `max_depth` long.
    pub fn new(revision: u64, max_depth: usize) -> Policy {
        Policy {
            revision,
            max_depth,
            ..Policy::default()
        }
    }

    pub fn add_role(&mut self, role: Role) {
        self.roles.insert(role.name.clone(), role);
    }

    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    /// Adds `member` to `group`; refused when the group would then contain
    /// itself.
    pub fn add_member(&mut self, group: Uuid, member: Subject) -> Result<(), ModelError> {
        if let Subject::Group(inner) = member
            && (inner == group || self.contains(inner, group))
        {
            return Err(ModelError::GroupCycle);
        }
        self.members.entry(group).or_default().insert(member);
        self.member_of.entry(member).or_default().insert(group);
        Ok(())
    }

    /// Adds a membership read back from the store, where circles were
    /// refused when it was written.
    pub fn load_member(&mut self, group: Uuid, member: Subject) {
        self.members.entry(group).or_default().insert(member);
        self.member_of.entry(member).or_default().insert(group);
    }

    /// Adds a parent read back from the store, where circles and depth were
    /// checked when it was written; lookups stop at `max_depth` anyway.
    pub fn load_parent(&mut self, child: Resource, parent: Resource) {
        self.parents.insert(child, parent);
    }

    /// Whether `outer` contains `group`, directly or through other groups.
    fn contains(&self, outer: Uuid, group: Uuid) -> bool {
        let mut seen = HashSet::new();
        let mut next = vec![outer];
        while let Some(g) = next.pop() {
            if !seen.insert(g) {
                continue;
            }
            for member in self.members.get(&g).into_iter().flatten() {
                if let Subject::Group(inner) = member {
                    if *inner == group {
                        return true;
                    }
                    next.push(*inner);
                }
            }
        }
        false
    }

    /// The bindings of `subject` itself (not of its groups).
    pub fn bindings_of(&self, subject: Subject) -> impl Iterator<Item = &Binding> {
        self.bindings_of
            .get(&subject)
            .into_iter()
            .flatten()
            .map(|index| &self.bindings[*index])
    }

    pub fn add_binding(&mut self, binding: Binding) {
        self.bindings_of
            .entry(binding.subject)
            .or_default()
            .push(self.bindings.len());
        self.bindings.push(binding);
    }

    /// Registers `child` under `parent`; refused when the chain would run
    /// in a circle or grow longer than the depth allowed.
    pub fn set_parent(&mut self, child: Resource, parent: Resource) -> Result<(), ModelError> {
        let above = self.ancestors(&parent);
        if parent == child || above.contains(&child) {
            return Err(ModelError::ParentCycle);
        }
        if above.len() + 1 > self.max_depth
            || self.depth_below(&child) + above.len() + 1 > self.max_depth
        {
            return Err(ModelError::TooDeep(self.max_depth));
        }
        self.parents.insert(child, parent);
        Ok(())
    }

    /// The parents of `resource`, nearest first, at most `max_depth`.
    fn ancestors(&self, resource: &Resource) -> Vec<Resource> {
        let mut chain = Vec::new();
        let mut at = resource;
        while let Some(parent) = self.parents.get(at) {
            if chain.len() >= self.max_depth || chain.contains(parent) {
                break;
            }
            chain.push(parent.clone());
            at = parent;
        }
        chain
    }

    /// How many levels of children lie below `resource`.
    fn depth_below(&self, resource: &Resource) -> usize {
        let mut depth = 0;
        let mut level: Vec<&Resource> = vec![resource];
        while !level.is_empty() && depth <= self.max_depth {
            level = self
                .parents
                .iter()
                .filter(|(_, parent)| level.contains(parent))
                .map(|(child, _)| child)
                .collect();
            if !level.is_empty() {
                depth += 1;
            }
        }
        depth
    }

    /// The user and every group they are in, each with the groups between,
    /// nearest first; breadth first, so each group comes with its shortest
    /// path. What a check of the user starts from, the same for every check
    /// at this revision: the service keeps it per user (see [`Reach`]).
    pub fn reach(&self, user: Uuid) -> Reach {
        let mut found = vec![(Subject::User(user), Vec::new())];
        let mut seen = HashSet::new();
        let mut queue = VecDeque::from([(Subject::User(user), Vec::<Uuid>::new())]);
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
            user,
            revision: self.revision,
            found,
            index: None,
        }
    }

    /// [`Policy::reach`], with the user's bindings indexed by type: more
    /// work once, less for each check made from it.
    pub fn reach_indexed(&self, user: Uuid) -> Reach {
        let mut reach = self.reach(user);
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
    fn holds(
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
        self.check_from(&self.reach(user), asked, resource, now)
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
            return self.check_from(&self.reach(reach.user), asked, resource, now);
        }
        let mut best: Option<Grant> = None;
        let mut best_key: Option<(usize, usize, usize)> = None;
        let mut expired: Option<DateTime<Utc>> = None;
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
                });
            }
        }
        match (best, expired) {
            (Some(grant), _) => Decision::Allowed(grant),
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
        for (subject, _) in &self.reach(user).found {
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
                }
            }
        }
        users
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Permission {
        Permission::parse(text).unwrap()
    }

    fn r(text: &str) -> Resource {
        Resource::parse(text).unwrap()
    }

    fn role(name: &str, permissions: &[&str]) -> Role {
        Role {
            name: name.into(),
            description: String::new(),
            permissions: permissions.iter().map(|t| p(t)).collect(),
            builtin: false,
        }
    }

    fn bind(subject: Subject, role: &str, scope: Scope) -> Binding {
        Binding {
            id: Uuid::now_v7(),
            subject,
            role: role.into(),
            scope,
            expires_at: None,
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    /// A check from an indexed reach (kept by the service between checks)
    /// answers exactly as one from a plain reach, explanation and all, on a
    /// policy with nested groups, wildcards, parents, scopes and expiry.
    #[test]
    fn an_indexed_reach_decides_as_a_plain_one() {
        let mut policy = Policy::new(1, 4);
        let kinds = ["docs", "projects", "orgs"];
        policy.add_role(role("all", &["*"]));
        policy.add_role(role("docs-any", &["docs:*"]));
        policy.add_role(role("reader", &["docs:read", "projects:read"]));
        policy.add_role(role("writer", &["projects:write", "projects:read"]));
        let users: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
        let groups: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
        for pair in groups.windows(2) {
            policy.add_member(pair[0], Subject::Group(pair[1])).unwrap();
        }
        policy
            .add_member(groups[3], Subject::User(users[0]))
            .unwrap();
        policy
            .add_member(groups[1], Subject::User(users[1]))
            .unwrap();
        policy
            .add_member(groups[2], Subject::User(users[1]))
            .unwrap();
        policy.set_parent(r("projects:1"), r("orgs:1")).unwrap();
        policy.set_parent(r("docs:1"), r("projects:1")).unwrap();
        let scopes = [
            Scope::Everywhere,
            Scope::Type("projects".into()),
            Scope::Resource(r("orgs:1")),
            Scope::Resource(r("projects:1")),
        ];
        let subjects: Vec<Subject> = users
            .iter()
            .map(|u| Subject::User(*u))
            .chain(groups.iter().map(|g| Subject::Group(*g)))
            .collect();
        for (i, subject) in subjects.iter().enumerate() {
            for (j, name) in ["reader", "writer", "docs-any", "all"].iter().enumerate() {
                if (i + j) % 3 == 0 {
                    let mut binding = bind(*subject, name, scopes[(i * j) % scopes.len()].clone());
                    if (i + j) % 2 == 1 {
                        binding.expires_at = Some(now() - chrono::Duration::seconds(1));
                    }
                    policy.add_binding(binding);
                }
            }
        }
        let mut compared = 0;
        for user in &users {
            let (plain, indexed) = (policy.reach(*user), policy.reach_indexed(*user));
            for kind in kinds {
                for action in ["read", "write", "delete"] {
                    let asked = p(&format!("{kind}:{action}"));
                    for resource in [
                        None,
                        Some(r(&format!("{kind}:1"))),
                        Some(r(&format!("{kind}:2"))),
                    ] {
                        assert_eq!(
                            policy.check_from(&plain, &asked, resource.as_ref(), now()),
                            policy.check_from(&indexed, &asked, resource.as_ref(), now()),
                            "{asked} at {resource:?}"
                        );
                        compared += 1;
                    }
                }
            }
        }
        assert_eq!(compared, 4 * 3 * 3 * 3);
        let allowed = users
            .iter()
            .filter(|u| {
                policy
                    .check(**u, &p("docs:read"), Some(&r("docs:1")), now())
                    .allowed()
            })
            .count();
        assert!(
            allowed > 0,
            "the policy allows something, so the comparison says something"
        );
    }

    #[test]
    fn a_check_is_allowed_by_a_binding_and_says_which() {
        let (ann, bob) = (Uuid::now_v7(), Uuid::now_v7());
        let mut policy = Policy::new(1, 8);
        policy.add_role(role("reader", &["users:read"]));
        let binding = bind(Subject::User(ann), "reader", Scope::Everywhere);
        let id = binding.id;
        policy.add_binding(binding);
        let Decision::Allowed(grant) = policy.check(ann, &p("users:read"), None, now()) else {
            panic!("ann may read users")
        };
        assert_eq!(grant.binding, id);
        assert_eq!(grant.role, "reader");
        assert_eq!(grant.permission, p("users:read"));
        assert!(grant.groups.is_empty() && grant.parents.is_empty());
        assert_eq!(
            policy.check(ann, &p("users:write"), None, now()),
            Decision::Denied(Denial::NotGranted)
        );
        assert_eq!(
            policy.check(bob, &p("users:read"), None, now()),
            Decision::Denied(Denial::NotGranted)
        );
    }

    #[test]
    fn nested_groups_pass_their_bindings_down_and_refuse_circles() {
        let ann = Uuid::now_v7();
        let (staff, admins, outer) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let mut policy = Policy::new(1, 8);
        policy.add_role(role("auditor", &["audit:read"]));
        policy.add_member(admins, Subject::User(ann)).unwrap();
        policy.add_member(staff, Subject::Group(admins)).unwrap();
        policy.add_member(outer, Subject::Group(staff)).unwrap();
        policy.add_binding(bind(Subject::Group(outer), "auditor", Scope::Everywhere));
        let Decision::Allowed(grant) = policy.check(ann, &p("audit:read"), None, now()) else {
            panic!("ann is in outer through two groups")
        };
        assert_eq!(grant.groups, [admins, staff, outer]);
        assert_eq!(
            policy.subjects(&p("audit:read"), None, now()),
            BTreeSet::from([ann])
        );

        assert_eq!(
            policy.add_member(admins, Subject::Group(outer)),
            Err(ModelError::GroupCycle)
        );
        assert_eq!(
            policy.add_member(staff, Subject::Group(staff)),
            Err(ModelError::GroupCycle)
        );
        // The refused edges changed nothing: the path is as it was.
        let Decision::Allowed(again) = policy.check(ann, &p("audit:read"), None, now()) else {
            panic!("still allowed")
        };
        assert_eq!(again.groups, [admins, staff, outer]);
    }

    #[test]
    fn scopes_hold_at_their_resource_its_type_and_everything_under_it() {
        let ann = Uuid::now_v7();
        let mut policy = Policy::new(1, 2);
        policy.add_role(role("editor", &["projects:*"]));
        policy.set_parent(r("projects:42"), r("orgs:7")).unwrap();
        policy.set_parent(r("orgs:7"), r("tenants:1")).unwrap();
        policy.add_binding(bind(
            Subject::User(ann),
            "editor",
            Scope::Resource(r("orgs:7")),
        ));

        let Decision::Allowed(grant) =
            policy.check(ann, &p("projects:write"), Some(&r("projects:42")), now())
        else {
            panic!("a binding on the parent covers the child")
        };
        assert_eq!(grant.parents, [r("orgs:7")]);
        assert_eq!(grant.permission, p("projects:*"));
        assert!(
            !policy
                .check(ann, &p("projects:write"), Some(&r("projects:43")), now())
                .allowed()
        );
        assert!(
            !policy
                .check(ann, &p("projects:write"), Some(&r("tenants:1")), now())
                .allowed()
        );
        assert!(
            !policy
                .check(ann, &p("projects:write"), None, now())
                .allowed()
        );

        // The depth is bounded, and a circle refused.
        assert_eq!(
            policy.set_parent(r("tenants:1"), r("regions:eu")),
            Err(ModelError::TooDeep(2))
        );
        assert_eq!(
            policy.set_parent(r("tenants:1"), r("projects:42")),
            Err(ModelError::ParentCycle)
        );

        let bob = Uuid::now_v7();
        policy.add_binding(bind(
            Subject::User(bob),
            "editor",
            Scope::Type("projects".into()),
        ));
        assert!(
            policy
                .check(bob, &p("projects:read"), Some(&r("projects:99")), now())
                .allowed()
        );
        assert!(
            policy
                .check(bob, &p("projects:read"), None, now())
                .allowed()
        );
        assert!(
            !policy
                .check(bob, &p("projects:read"), Some(&r("orgs:7")), now())
                .allowed()
        );
        assert_eq!(
            policy.subjects(&p("projects:read"), Some(&r("projects:42")), now()),
            BTreeSet::from([ann, bob])
        );
        assert_eq!(
            policy.permissions(ann, Some(&r("projects:42")), now()),
            BTreeSet::from([p("projects:*")])
        );
        assert!(policy.permissions(ann, None, now()).is_empty());
    }

    #[test]
    fn expired_bindings_grant_nothing_and_the_denial_says_so() {
        let ann = Uuid::now_v7();
        let mut policy = Policy::new(1, 8);
        policy.add_role(role("admin", &["*"]));
        let mut until = bind(Subject::User(ann), "admin", Scope::Everywhere);
        let end = now() - chrono::Duration::minutes(1);
        until.expires_at = Some(end);
        policy.add_binding(until.clone());
        assert_eq!(
            policy.check(ann, &p("users:read"), None, now()),
            Decision::Denied(Denial::Expired(end))
        );
        assert!(
            policy
                .check(
                    ann,
                    &p("users:read"),
                    None,
                    end - chrono::Duration::seconds(1)
                )
                .allowed()
        );
        assert!(policy.permissions(ann, None, now()).is_empty());
        assert!(policy.subjects(&p("users:read"), None, now()).is_empty());
    }

    #[test]
    fn the_shortest_explanation_is_the_one_given() {
        let ann = Uuid::now_v7();
        let group = Uuid::now_v7();
        let mut policy = Policy::new(1, 8);
        policy.add_role(role("reader", &["users:read"]));
        policy.add_member(group, Subject::User(ann)).unwrap();
        policy.add_binding(bind(Subject::Group(group), "reader", Scope::Everywhere));
        let own = bind(Subject::User(ann), "reader", Scope::Everywhere);
        let own_id = own.id;
        policy.add_binding(own);
        let Decision::Allowed(grant) = policy.check(ann, &p("users:read"), None, now()) else {
            panic!("allowed twice over")
        };
        assert_eq!(grant.binding, own_id);
        assert!(grant.groups.is_empty());
    }
}
