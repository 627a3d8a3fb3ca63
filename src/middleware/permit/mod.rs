//! Asking authz whether a user (or a client acting for itself) may do
//! something: the client the gateway and the services share, over authz's
//! gRPC API, with the answers kept a short while per (subject, permission,
//! resource).
//!
//! A kept answer never outlives the change that voids it, nor the time it
//! lapses by itself: an allowance lasts no longer than the latest expiry of
//! the bindings behind it (authz says when, see `Grant.holds_until`). And
//! authz writes an
//! `authz.*` event for every change, and each one drops the answers it may
//! alter (the named users', or all when the change may alter anyone's).
//! A question asked while such an event arrives is not kept, and every
//! question asks for the newest revision an event told of, so an instance
//! of authz that has not yet read the change cannot answer from before it.
//!
//! Replicas can share what they were told through [`SharedDecisions`] (with
//! the `redis` feature, [`redis::RedisDecisions`]): an answer one replica got
//! saves the others the question, and is voided by the same events.

#[cfg(feature = "redis")]
pub mod redis;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message as _;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::ids::{Subject, UserId};

use crate::kernel::ServiceContext;
use crate::kernel::bus::{self, EventBus, Unhandled};
use crate::kernel::clock::Clock;
use crate::kernel::rpc::Clients;
use crate::proto::authz::v1 as pb;
use crate::proto::authz::v1::authz_client::AuthzClient;
use crate::proto::events::v1::PolicyEvent;

/// Most answers kept.
const CAPACITY: u64 = 100_000;

/// Why a question got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PermitError {
    /// Authz refused the question itself: a malformed permission or
    /// resource.
    #[error("authz refused the question: {0}")]
    Invalid(String),
    /// Authz could not be reached, or failed.
    #[error("authz is unavailable: {0}")]
    Unavailable(String),
}

/// An answer as kept: whether it allows, and until when it holds by time
/// alone (unix milliseconds; `None` for ever, until a change voids it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    pub allowed: bool,
    pub until_ms: Option<i64>,
}

impl Kept {
    /// Whether the answer still holds at `now_ms`.
    pub fn holds_at(&self, now_ms: i64) -> bool {
        self.until_ms.is_none_or(|until| now_ms < until)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    subject: Subject,
    permission: Box<str>,
    resource: Option<Box<str>>,
}

/// Answers kept where every replica reads them. An answer is kept with
/// the revision of authz's policy it was given at, and a change voids the
/// answers given before its own revision, so an answer asked before a
/// change and written after it is never read.
#[async_trait::async_trait]
pub trait SharedDecisions: Send + Sync {
    /// The answer kept for the question, unless a change known since voids it.
    async fn get(&self, subject: Subject, permission: &str, resource: Option<&str>)
    -> Option<Kept>;
    /// Keeps `answer`, given at `revision`, for the store's time, unless
    /// a change after `revision` is known.
    async fn put(
        &self,
        subject: Subject,
        permission: &str,
        resource: Option<&str>,
        revision: u64,
        decision: Kept,
    );
    /// Voids the answers given before `revision` to `users`, or to anyone
    /// when `None`.
    async fn forget(&self, users: Option<&[Uuid]>, revision: u64);
}

/// The shared client. Cheap to clone.
#[derive(Clone)]
pub struct Permits {
    inner: Arc<Inner>,
}

struct Inner {
    clients: Clients,
    /// Answers shared with other replicas, read when none is kept here.
    shared: Option<Arc<dyn SharedDecisions>>,
    /// None when answers are not kept.
    decisions: Option<moka::sync::Cache<Key, Kept>>,
    /// What "now" is when a kept answer's time is checked.
    clock: Arc<dyn Clock>,
    /// Moves on at every change, so an answer asked before it is not kept.
    generation: AtomicU64,
    /// The newest revision a change event told of.
    revision: AtomicU64,
}

impl Permits {
    /// Asks authz through `clients`, keeping each answer for `keep` (not
    /// at all when zero).
    pub fn new(clients: Clients, keep: Duration, clock: Arc<dyn Clock>) -> Permits {
        Self::sharing(clients, keep, None, clock)
    }

    /// The permits of `service`, keeping answers for the process's
    /// `permission_cache` (`rpc.permission_cache_ms`): shared with
    /// its other replicas through the deployment's Redis when `[redis]`
    /// names one.
    pub async fn for_service(ctx: &ServiceContext, service: &str) -> anyhow::Result<Permits> {
        let keep = ctx.permission_cache;
        #[cfg(feature = "redis")]
        let shared = match (
            ctx.redis.connection().await?,
            ctx.keyring.derived(service, "authz answers"),
        ) {
            (Some(redis), Some(tag_key)) => Some(Arc::new(redis::RedisDecisions::new(
                redis, service, tag_key, keep,
            )) as Arc<dyn SharedDecisions>),
            _ => None,
        };
        #[cfg(not(feature = "redis"))]
        let _ = service;
        #[cfg(not(feature = "redis"))]
        let shared = if ctx.redis.config().url.is_empty() {
            None
        } else {
            anyhow::bail!(
                "redis.url needs a build with the redis feature (cargo build --features redis)"
            )
        };
        Ok(Self::sharing(
            ctx.clients.clone(),
            keep,
            shared,
            ctx.clock.clone(),
        ))
    }

    /// As [`Permits::new`], also reading and writing answers in `shared`
    /// (not at all when `keep` is zero).
    pub fn sharing(
        clients: Clients,
        keep: Duration,
        shared: Option<Arc<dyn SharedDecisions>>,
        clock: Arc<dyn Clock>,
    ) -> Permits {
        let decisions = (!keep.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(keep)
                .support_invalidation_closures()
                .build()
        });
        Permits {
            inner: Arc::new(Inner {
                clients,
                shared: shared.filter(|_| decisions.is_some()),
                decisions,
                clock,
                generation: AtomicU64::new(0),
                revision: AtomicU64::new(0),
            }),
        }
    }

    /// Whether `subject` (a user, or a client) may do `permission` (one
    /// action on one type) on `resource` (`type:id`), or at the
    /// permission's type without one.
    pub async fn allowed(
        &self,
        subject: impl Into<Subject>,
        permission: &str,
        resource: Option<&str>,
    ) -> Result<bool, PermitError> {
        let subject = subject.into();
        let key = Key {
            subject,
            permission: permission.into(),
            resource: resource.map(Into::into),
        };
        let now_ms = self.inner.clock.now().timestamp_millis();
        if let Some(kept) = self.inner.decisions.as_ref().and_then(|a| a.get(&key))
            && kept.holds_at(now_ms)
        {
            return Ok(kept.allowed);
        }
        let generation = self.inner.generation.load(Ordering::Acquire);
        let shared = self.inner.shared.as_deref();
        let kept = match shared {
            Some(s) => s
                .get(subject, permission, resource)
                .await
                .filter(|k| k.holds_at(now_ms)),
            None => None,
        };
        let decision = match kept {
            Some(kept) => kept,
            None => {
                let (decision, revision) = self.ask(&key).await?;
                if let Some(s) = shared {
                    s.put(subject, permission, resource, revision, decision)
                        .await;
                }
                decision
            }
        };
        if let Some(decisions) = &self.inner.decisions
            && self.inner.generation.load(Ordering::Acquire) == generation
        {
            decisions.insert(key.clone(), decision);
            // A change that arrived between the look above and the insert
            // has dropped what was kept before it, not this answer: drop it
            // too.
            if self.inner.generation.load(Ordering::Acquire) != generation {
                decisions.invalidate(&key);
            }
        }
        Ok(decision.allowed)
    }

    /// A client of authz, through the registry.
    async fn authz(&self) -> Result<AuthzClient<crate::kernel::rpc::RpcChannel>, PermitError> {
        self.inner
            .clients
            .channel("authz")
            .await
            .map(AuthzClient::new)
            .map_err(|e| PermitError::Unavailable(e.to_string()))
    }

    /// Authz's answer, and the revision it was given at.
    async fn ask(&self, key: &Key) -> Result<(Kept, u64), PermitError> {
        let asked = pb::CheckRequest {
            question: Some(pb::Question {
                user_id: match key.subject {
                    Subject::User(id) => id.to_string(),
                    Subject::Client(_) => String::new(),
                },
                client_id: match key.subject {
                    Subject::Client(id) => id.to_string(),
                    Subject::User(_) => String::new(),
                },
                permission: key.permission.to_string(),
                resource: key.resource.as_deref().unwrap_or_default().to_owned(),
            }),
            at_least_revision: self.inner.revision.load(Ordering::Acquire),
        };
        match self.authz().await?.check(asked).await {
            Ok(response) => {
                let response = response.into_inner();
                let allowed = response.answer.as_ref().is_some_and(|a| a.allowed);
                let until_ms = response
                    .answer
                    .and_then(|a| a.grant)
                    .map(|g| g.holds_until_unix_ms)
                    .filter(|ms| *ms != 0);
                Ok((Kept { allowed, until_ms }, response.revision))
            }
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                Err(PermitError::Invalid(status.message().to_owned()))
            }
            Err(status) => Err(PermitError::Unavailable(status.message().to_owned())),
        }
    }

    /// Whether `actor` holds every permission `user` holds, wherever it is
    /// held (what an act on `user`'s account needs): `None` when so, else
    /// the first permission lacking and where. Asked every time, at the
    /// newest revision a change told of.
    pub async fn covers(
        &self,
        actor: UserId,
        user: Uuid,
    ) -> Result<Option<(String, String)>, PermitError> {
        let asked = pb::CoversRequest {
            actor_id: actor.to_string(),
            user_id: user.to_string(),
            at_least_revision: self.inner.revision.load(Ordering::Acquire),
        };
        match self.authz().await?.covers(asked).await {
            Ok(decision) => {
                let decision = decision.into_inner();
                Ok((!decision.covered)
                    .then_some((decision.lacking_permission, decision.lacking_scope)))
            }
            Err(status) => Err(PermitError::Unavailable(status.message().to_owned())),
        }
    }

    /// Drops the answers `change` may alter, here and in the shared store,
    /// and asks from its revision on.
    pub async fn forget_everywhere(&self, change: &PolicyEvent) {
        self.forget(change);
        if let Some(shared) = &self.inner.shared {
            let users = named_users(change);
            shared.forget(users.as_deref(), change.revision).await;
        }
    }

    /// Drops the answers `change` may alter, and asks from its revision on.
    pub fn forget(&self, change: &PolicyEvent) {
        self.inner
            .revision
            .fetch_max(change.revision, Ordering::AcqRel);
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        let Some(decisions) = &self.inner.decisions else {
            return;
        };
        // A cache that cannot drop by user drops them all.
        let dropped = named_users(change).is_some_and(|users| {
            decisions
                .invalidate_entries_if(move |key, _| {
                    matches!(key.subject, Subject::User(u) if users.contains(&u.as_uuid()))
                })
                .is_ok()
        });
        if !dropped {
            decisions.invalidate_all();
        }
    }

    /// Learns authz's changes from the bus until `shutdown`.
    pub async fn listen(
        &self,
        consumer: &str,
        bus: &Arc<dyn EventBus>,
        shutdown: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, bus::BusError> {
        let permits = self.clone();
        let follow = bus::follow(bus, consumer, &["authz"], shutdown, move |event| {
            let permits = permits.clone();
            async move {
                let change = PolicyEvent::decode(&event.payload[..])
                    .map_err(|e| Unhandled::Unreadable(format!("authz change: {e}")))?;
                permits.forget_everywhere(&change).await;
                Ok(())
            }
        });
        follow.await
    }
}

/// The users whose answers `change` may alter; `None` when it may alter
/// anyone's (it names no one, or someone not by a user id).
fn named_users(change: &PolicyEvent) -> Option<Vec<Uuid>> {
    let users: Vec<Uuid> = change
        .user_ids
        .iter()
        .filter_map(|u| Uuid::parse_str(u).ok())
        .collect();
    (!users.is_empty() && users.len() == change.user_ids.len()).then_some(users)
}
