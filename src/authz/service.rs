//! The authz service's logic: checks answered from the policy held in
//! memory, and the writes that change it.
//!
//! The policy is read from the database whole and kept as one immutable
//! revision; a check reads it without I/O. It is read again when a write
//! of this instance moves the revision on, when a check asks for a
//! revision newer than the one held (`at_least_revision`: a check never
//! answers from state older than what the caller has seen written), and,
//! for writes of other instances, when a check finds the one held older
//! than the refresh interval and the stored revision has moved.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::error::AuthzError;
use super::model::{Binding, Decision, Permission, Policy, Reach, Resource, Role, Scope, Subject};
use super::store;
use crate::kernel::clock::Clock;
use crate::kernel::db::Db;
use crate::kernel::locks;
use crate::kernel::outbox::Relay;

/// The policy held, and when it was last known to be current.
struct Held {
    policy: Arc<Policy>,
    checked_at: DateTime<Utc>,
}

/// The authz service. Cloning is cheap; clones share the policy held.
#[derive(Clone)]
pub struct Authz {
    pub(super) db: Db,
    pub(super) clock: Arc<dyn Clock>,
    held: Arc<RwLock<Held>>,
    /// Serialises reloads, so a burst of checks reads the database once.
    reload: Arc<tokio::sync::Mutex<()>>,
    max_depth: usize,
    refresh: chrono::Duration,
    /// Told after each write, so its event leaves the outbox at once.
    relay: Option<Relay>,
    /// Users' reaches (the groups they are in), as worked out at one
    /// revision; none when reaches are worked out for every check.
    reaches: Option<Arc<RwLock<Reaches>>>,
}

/// Reaches kept for the checks of one revision: a plain map behind a
/// lock, read far more often than written, emptied when the revision moves
/// on or when it is full.
struct Reaches {
    revision: u64,
    kept: std::collections::HashMap<Subject, Arc<Reach>, foldhash::fast::RandomState>,
    capacity: usize,
}

/// A check's question.
#[derive(Debug, Clone)]
pub struct Question {
    /// A user, or a client acting for itself.
    pub subject: Subject,
    pub permission: String,
    /// `type:id`, or none to ask at the permission's type.
    pub resource: Option<String>,
}

impl Question {
    /// The permission asked about, and the resource when there is one.
    fn parse(&self) -> Result<(Permission, Option<Resource>), AuthzError> {
        let permission = Permission::parse_asked(&self.permission)?;
        let resource = self.resource.as_deref().map(Resource::parse).transpose()?;
        Ok((permission, resource))
    }
}

impl Authz {
    /// The service on `db`, its policy read now; chains of parents are
    /// looked up at most `max_depth` deep, and writes of other instances
    /// are looked for at most every `refresh`.
    pub async fn new(
        db: Db,
        clock: Arc<dyn Clock>,
        max_depth: usize,
        refresh: Duration,
    ) -> Result<Authz, AuthzError> {
        let policy = db.run(move |conn| store::load(conn, max_depth)).await?;
        let held = Held {
            policy: Arc::new(policy),
            checked_at: clock.now(),
        };
        Ok(Authz {
            db,
            clock,
            held: Arc::new(RwLock::new(held)),
            reload: Arc::default(),
            max_depth,
            refresh: chrono::Duration::from_std(refresh).unwrap_or(chrono::Duration::seconds(1)),
            relay: None,
            reaches: None,
        })
    }

    /// The service, keeping up to `entries` users' reaches between checks
    /// at one revision (none when 0).
    pub fn with_reach_cache(mut self, entries: u64) -> Authz {
        self.reaches = (entries > 0).then(|| {
            Arc::new(RwLock::new(Reaches {
                revision: 0,
                kept: Default::default(),
                capacity: usize::try_from(entries).unwrap_or(usize::MAX),
            }))
        });
        self
    }

    /// `subject`'s reach in `policy`: kept from an earlier check at the
    /// same revision, or worked out now.
    fn reach(&self, policy: &Policy, subject: Subject) -> Arc<Reach> {
        let Some(reaches) = &self.reaches else {
            return Arc::new(policy.reach(subject));
        };
        {
            let held = locks::read(reaches);
            if held.revision == policy.revision
                && let Some(kept) = held.kept.get(&subject)
            {
                return kept.clone();
            }
        }
        let reach = Arc::new(policy.reach_indexed(subject));
        let mut held = locks::write(reaches);
        if held.revision < policy.revision || held.kept.len() >= held.capacity {
            held.kept.clear();
            held.revision = held.revision.max(policy.revision);
        }
        if held.revision == policy.revision {
            held.kept.insert(subject, reach.clone());
        }
        reach
    }

    /// The service, waking `relay` after each write.
    pub fn with_relay(mut self, relay: Relay) -> Authz {
        self.relay = Some(relay);
        self
    }

    fn held(&self) -> (Arc<Policy>, DateTime<Utc>) {
        let held = locks::read(&self.held);
        (held.policy.clone(), held.checked_at)
    }

    /// The policy at `at_least` or newer, and no older than the refresh
    /// interval allows.
    pub async fn policy(&self, at_least: u64) -> Result<Arc<Policy>, AuthzError> {
        let now = self.clock.now();
        let fresh = |policy: &Policy, checked_at: DateTime<Utc>| {
            policy.revision >= at_least && now - checked_at < self.refresh
        };
        let (policy, checked_at) = self.held();
        if fresh(&policy, checked_at) {
            return Ok(policy);
        }
        let _turn = self.reload.lock().await;
        // Another task may have read it meanwhile.
        let (policy, checked_at) = self.held();
        if fresh(&policy, checked_at) {
            return Ok(policy);
        }
        let stored = self
            .db
            .run(|conn| Ok::<_, AuthzError>(store::current_revision(conn)?))
            .await?;
        let stored = u64::try_from(stored).unwrap_or_default();
        if stored < at_least {
            return Err(AuthzError::RevisionAhead {
                asked: at_least,
                stored,
            });
        }
        let policy = if stored == policy.revision {
            policy
        } else {
            let depth = self.max_depth;
            Arc::new(self.db.run(move |conn| store::load(conn, depth)).await?)
        };
        *locks::write(&self.held) = Held {
            policy: policy.clone(),
            checked_at: now,
        };
        Ok(policy)
    }

    /// Answers `question` from a policy at `at_least` or newer, with the
    /// revision it was answered at.
    pub async fn check(
        &self,
        question: &Question,
        at_least: u64,
    ) -> Result<(Decision, u64), AuthzError> {
        let (asked, resource) = question.parse()?;
        let policy = self.policy(at_least).await?;
        let reach = self.reach(&policy, question.subject);
        let decision = policy.check_from(&reach, &asked, resource.as_ref(), self.clock.now());
        Ok((decision, policy.revision))
    }

    /// Answers every question from one revision.
    pub async fn batch_check(
        &self,
        questions: &[Question],
        at_least: u64,
    ) -> Result<(Vec<Decision>, u64), AuthzError> {
        let asked: Vec<(Permission, Option<Resource>)> = questions
            .iter()
            .map(Question::parse)
            .collect::<Result<_, _>>()?;
        let policy = self.policy(at_least).await?;
        let now = self.clock.now();
        let decisions = questions
            .iter()
            .zip(&asked)
            .map(|(q, (permission, resource))| {
                let reach = self.reach(&policy, q.subject);
                policy.check_from(&reach, permission, resource.as_ref(), now)
            })
            .collect();
        Ok((decisions, policy.revision))
    }

    /// Every permission `user` holds at `resource` (or everywhere).
    pub async fn permissions(
        &self,
        user: Uuid,
        resource: Option<&str>,
        at_least: u64,
    ) -> Result<(BTreeSet<Permission>, u64), AuthzError> {
        let resource = resource.map(Resource::parse).transpose()?;
        let policy = self.policy(at_least).await?;
        let held = policy.permissions(user, resource.as_ref(), self.clock.now());
        Ok((held, policy.revision))
    }

    /// The roles bound to `user` everywhere, by name.
    pub async fn roles(
        &self,
        user: Uuid,
        at_least: u64,
    ) -> Result<(BTreeSet<String>, u64), AuthzError> {
        let policy = self.policy(at_least).await?;
        Ok((policy.roles(user, self.clock.now()), policy.revision))
    }

    /// The users who may do `permission` at `resource` (or at its type).
    pub async fn subjects(
        &self,
        permission: &str,
        resource: Option<&str>,
        at_least: u64,
    ) -> Result<(BTreeSet<Uuid>, u64), AuthzError> {
        let permission = Permission::parse_asked(permission)?;
        let resource = resource.map(Resource::parse).transpose()?;
        let policy = self.policy(at_least).await?;
        let users = policy.subjects(&permission, resource.as_ref(), self.clock.now());
        Ok((users, policy.revision))
    }

    /// Who writes now: `actor`, or the platform when none.
    pub(super) fn by(&self, actor: Option<Uuid>) -> store::By {
        store::By {
            actor,
            at: self.clock.now(),
        }
    }

    /// Runs a write, wakes the relay for its event, then holds the policy
    /// at its revision or newer.
    async fn write<F>(&self, write: F) -> Result<u64, AuthzError>
    where
        F: FnOnce(&mut crate::kernel::db::DbConnection) -> Result<i64, AuthzError> + Send + 'static,
    {
        let revision = self.db.run(write).await?;
        self.written(revision).await
    }

    pub(super) async fn written(&self, revision: i64) -> Result<u64, AuthzError> {
        if let Some(relay) = &self.relay {
            relay.wake();
        }
        let revision = u64::try_from(revision).unwrap_or_default();
        self.policy(revision).await?;
        Ok(revision)
    }

    pub async fn create_role(&self, actor: Option<Uuid>, role: Role) -> Result<u64, AuthzError> {
        let gained = role.permissions.clone();
        self.no_escalation(
            actor,
            |_, _| gained.into_iter().map(|p| (p, Scope::Everywhere)).collect(),
            None,
        )
        .await?;
        let by = self.by(actor);
        self.write(move |conn| store::create_role(conn, &by, &role))
            .await
    }

    pub async fn update_role(
        &self,
        actor: Option<Uuid>,
        name: String,
        description: Option<String>,
        permissions: Option<BTreeSet<Permission>>,
    ) -> Result<u64, AuthzError> {
        if let Some(new) = &permissions {
            self.no_role_escalation(actor, &name, new).await?;
        }
        let by = self.by(actor);
        self.write(move |conn| {
            store::update_role(
                conn,
                &by,
                &name,
                description.as_deref(),
                permissions.as_ref(),
            )
        })
        .await
    }

    pub async fn delete_role(
        &self,
        actor: Option<Uuid>,
        name: String,
        force: bool,
    ) -> Result<u64, AuthzError> {
        let by = self.by(actor);
        self.write(move |conn| store::delete_role(conn, &by, &name, force))
            .await
    }

    pub async fn create_group(
        &self,
        actor: Option<Uuid>,
        id: Uuid,
        name: String,
        description: String,
    ) -> Result<u64, AuthzError> {
        let by = self.by(actor);
        self.write(move |conn| store::create_group(conn, &by, id, &name, &description))
            .await
    }

    pub async fn update_group(
        &self,
        actor: Option<Uuid>,
        id: Uuid,
        name: Option<String>,
        description: Option<String>,
    ) -> Result<u64, AuthzError> {
        let by = self.by(actor);
        self.write(move |conn| {
            store::update_group(conn, &by, id, name.as_deref(), description.as_deref())
        })
        .await
    }

    pub async fn delete_group(&self, actor: Option<Uuid>, id: Uuid) -> Result<u64, AuthzError> {
        let by = self.by(actor);
        self.write(move |conn| store::delete_group(conn, &by, id))
            .await
    }

    pub async fn add_member(
        &self,
        actor: Option<Uuid>,
        group: Uuid,
        member: Subject,
    ) -> Result<u64, AuthzError> {
        if let Subject::Client(_) = member {
            return Err(AuthzError::Field {
                field: "member",
                message:
                    "a group holds users and groups; bind a client's roles to the client itself"
                        .into(),
            });
        }
        // The new member gains everything the group holds.
        self.no_escalation(
            actor,
            |policy, now| policy.grants_of(Subject::Group(group), now),
            Some(&Scope::Everywhere),
        )
        .await?;
        let by = self.by(actor);
        self.write(move |conn| store::add_member(conn, &by, group, member))
            .await
    }

    pub async fn remove_member(
        &self,
        actor: Option<Uuid>,
        group: Uuid,
        member: Subject,
    ) -> Result<u64, AuthzError> {
        let by = self.by(actor);
        self.write(move |conn| store::remove_member(conn, &by, group, member))
            .await
    }

    pub async fn bind(&self, actor: Option<Uuid>, binding: Binding) -> Result<u64, AuthzError> {
        let (role, scope) = (binding.role.clone(), binding.scope.clone());
        self.no_escalation(
            actor,
            |policy, _| policy.role_grants(&role, &scope),
            Some(&binding.scope),
        )
        .await?;
        let by = self.by(actor);
        self.write(move |conn| store::bind(conn, &by, &binding))
            .await
    }

    pub async fn unbind(&self, actor: Option<Uuid>, id: Uuid) -> Result<u64, AuthzError> {
        let by = self.by(actor);
        self.write(move |conn| store::unbind(conn, &by, id)).await
    }

    pub async fn set_parent(
        &self,
        actor: Option<Uuid>,
        child: &str,
        parent: &str,
    ) -> Result<u64, AuthzError> {
        let child = Resource::parse(child)?;
        let parent = Resource::parse(parent)?;
        let (by, depth) = (self.by(actor), self.max_depth);
        self.write(move |conn| store::set_parent(conn, &by, &child, &parent, depth))
            .await
    }

    pub async fn remove_parent(&self, actor: Option<Uuid>, child: &str) -> Result<u64, AuthzError> {
        let child = Resource::parse(child)?;
        let by = self.by(actor);
        self.write(move |conn| store::remove_parent(conn, &by, &child))
            .await
    }

    /// Runs a read of the stored rows.
    pub async fn read<T, F>(&self, read: F) -> Result<T, AuthzError>
    where
        F: FnOnce(&mut crate::kernel::db::DbConnection) -> Result<T, AuthzError> + Send + 'static,
        T: Send + 'static,
    {
        self.db.run(read).await
    }
}

/// The built-in role every registered user gets.
pub const USER_ROLE: &str = "user";
