//! [`Policy`]: one revision of the whole policy in memory, as the store
//! reads it back and as a write's checks build it: roles, groups and their
//! members (never in a circle), bindings, and resource parents (never in a
//! circle nor deeper than allowed). How a check is decided on it is in
//! `decide.rs`.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::{Binding, ModelError, Resource, Role, Subject};

/// Maps and sets keyed by ids and names the policy made itself: foldhash,
/// not SipHash, since a check hashes a few hundred keys.
pub(super) type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type Set<K> = HashSet<K, foldhash::fast::RandomState>;

/// One revision of everything a check reads.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The revision of the writes this policy holds.
    pub revision: u64,
    pub(super) roles: Map<String, Role>,
    /// Each group's direct members.
    pub(super) members: Map<Uuid, Set<Subject>>,
    /// The groups each subject is a direct member of.
    pub(super) member_of: Map<Subject, Set<Uuid>>,
    pub(super) bindings: Vec<Binding>,
    /// Each subject's bindings, as indexes into `bindings`.
    pub(super) bindings_of: Map<Subject, Vec<usize>>,
    pub(super) parents: Map<Resource, Resource>,
    /// The longest chain of parents looked up.
    pub(super) max_depth: usize,
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
    pub(super) fn ancestors(&self, resource: &Resource) -> Vec<Resource> {
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
}
