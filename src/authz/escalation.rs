//! No escalation, as authz's writes and identity's acts on accounts ask
//! it (see `model/escalation.rs` for what holding a permission at a scope
//! means): a change made through the API gives nothing its maker does not
//! hold, and an act on an account needs everything the account holds.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::error::AuthzError;
use super::model::{Lacking, Permission, Policy, Scope, Subject};
use super::service::Authz;

/// The permission that lets its holder bind any role, or add any member to
/// a group, where they hold it, beyond what they hold themselves.
pub const BIND: &str = "authz:bind";

impl Authz {
    /// Refuses giving role `role` the permissions `new` that it lacks now
    /// unless `actor` holds each everywhere: what a role gains reaches
    /// everyone it is bound to, anywhere.
    pub(super) async fn no_role_escalation(
        &self,
        actor: Option<Uuid>,
        role: &str,
        new: &BTreeSet<Permission>,
    ) -> Result<(), AuthzError> {
        self.no_escalation(
            actor,
            |policy, _| {
                let held: BTreeSet<Permission> = policy
                    .role_grants(role, &Scope::Everywhere)
                    .into_iter()
                    .map(|(p, _)| p)
                    .collect();
                new.difference(&held)
                    .map(|p| (p.clone(), Scope::Everywhere))
                    .collect()
            },
            None,
        )
        .await
    }

    /// Refuses a change that gives what its maker (`actor`; none for the
    /// platform and the command line) does not hold: `gained`, from the
    /// current policy (see `model/escalation.rs`). Holding [`BIND`] where
    /// it is given allows a binding or a membership all the same.
    pub(super) async fn no_escalation(
        &self,
        actor: Option<Uuid>,
        gained: impl FnOnce(&Policy, DateTime<Utc>) -> Vec<(Permission, Scope)>,
        binds: Option<&Scope>,
    ) -> Result<(), AuthzError> {
        let Some(actor) = actor else {
            return Ok(());
        };
        let policy = self.policy(0).await?;
        let now = self.clock.now();
        if let Some(scope) = binds
            && let Ok(bind) = Permission::parse_asked(BIND)
            && policy.holds_at(actor, &bind, scope, now)
        {
            return Ok(());
        }
        match policy.lacking(actor, gained(&policy, now), now) {
            Some(lacking) => Err(lacking.into()),
            None => Ok(()),
        }
    }

    /// Whether `actor` holds every permission `user` holds, wherever it is
    /// held: the first they lack, when not.
    pub async fn covers(
        &self,
        actor: Uuid,
        user: Uuid,
        at_least: u64,
    ) -> Result<(Option<Lacking>, u64), AuthzError> {
        let policy = self.policy(at_least).await?;
        let now = self.clock.now();
        let lacking = policy.lacking(actor, policy.grants_of(Subject::User(user), now), now);
        Ok((lacking, policy.revision))
    }
}
