//! The bearer-token check every service (and later the gateway) puts in
//! front of its protected routes.
//!
//! Tokens are verified locally against auth's public keys, fetched over gRPC
//! and cached for the lifetime auth announces; a token naming an unknown key
//! causes one refresh (at most one per [`FORCED_REFRESH_EVERY`], so garbage
//! key ids cannot hammer auth). Verified tokens are cached until they expire,
//! in one shared cache and, for the ones a thread served lately, in that
//! thread's own table ([`super::recent`]). Sessions ended in auth arrive as
//! `auth.session.revoked` events and are refused from then on, cached or not.
//!
//! Failures answer 401 problem+json with `WWW-Authenticate: Bearer` and the
//! reason as `code`; nothing about the token itself is logged.
//!
//! Rooms: `keys.rs` (where public keys and the sessions ended lately come
//! from: auth over gRPC), `revocations.rs` (learning ended sessions, at
//! start from auth and then from the bus), `answer.rs` (what a request
//! meets: its token found, the refusals, the middleware); this file checks
//! tokens.

mod answer;
mod keys;
mod revocations;

pub use answer::{bearer, bearer_token, client_refused, refusal, require};
pub use keys::{AuthKeys, FetchError, KeySet, KeySource};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use moka::Expiry;
use pasetors::keys::AsymmetricPublicKey;
use pasetors::version4::V4;

use super::recent;
use super::token::{self, Holder, IssuerAudience, SessionId, TokenError};
use crate::kernel::bus::BusError;
use crate::kernel::clock::Clock;
use crate::kernel::locks;

/// How long from `then` to `now`; none when the clock went back.
fn since(then: chrono::DateTime<chrono::Utc>, now: chrono::DateTime<chrono::Utc>) -> Duration {
    (now - then).to_std().unwrap_or_default()
}

/// Least time between two refreshes caused by unknown key ids.
pub const FORCED_REFRESH_EVERY: Duration = Duration::from_secs(5);
/// Most verified tokens kept.
const VERIFIED_CAPACITY: u64 = 100_000;
/// Most revoked sessions remembered.
const REVOKED_CAPACITY: u64 = 1_000_000;

struct Cached {
    set: KeySet,
    /// By the injected clock, as every lifetime here is.
    fetched_at: chrono::DateTime<chrono::Utc>,
}

/// Keeps a verified token until it expires by the injected clock.
struct UntilExpiry(Arc<dyn Clock>);

impl Expiry<Box<[u8]>, Holder> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &Box<[u8]>,
        value: &Holder,
        _now: Instant,
    ) -> Option<Duration> {
        (value.expires_at() - self.0.now()).to_std().ok()
    }
}

struct ForTtl;

impl Expiry<SessionId, Duration> for ForTtl {
    fn expire_after_create(
        &self,
        _key: &SessionId,
        ttl: &Duration,
        _now: Instant,
    ) -> Option<Duration> {
        Some(*ttl)
    }
}

/// The shared token check. Cheap to clone.
#[derive(Clone)]
pub struct TokenCheck {
    inner: Arc<Inner>,
}

/// Numbers the checks of a process, so that per-thread tables never mix
/// the tokens of two.
static CHECKS: AtomicU64 = AtomicU64::new(0);

struct Inner {
    id: u64,
    source: Arc<dyn KeySource>,
    expected: IssuerAudience,
    clock: Arc<dyn Clock>,
    keys: RwLock<Option<Cached>>,
    /// When an unknown key id last caused a refresh.
    refresh: tokio::sync::Mutex<Option<chrono::DateTime<chrono::Utc>>>,
    /// Keyed by the token itself, hashed with foldhash: SipHash over a token
    /// of some 500 bytes costs more than the rest of the lookup, and only
    /// tokens that verified are ever put in.
    verified: moka::sync::Cache<Box<[u8]>, Holder, foldhash::fast::RandomState>,
    revoked: moka::sync::Cache<SessionId, Duration>,
    /// Moves on at every revocation, which voids the per-thread tables.
    generation: AtomicU64,
    /// How long a revocation must be remembered: the longest token lifetime.
    remember_revocations: Duration,
    /// Whether the sessions revoked before the check started are known; no
    /// token passes until they are.
    caught_up: std::sync::atomic::AtomicBool,
    /// Held while asking auth for them.
    catching_up: tokio::sync::Mutex<()>,
}

impl TokenCheck {
    pub fn new(
        source: Arc<dyn KeySource>,
        expected: IssuerAudience,
        clock: Arc<dyn Clock>,
        remember_revocations: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                id: CHECKS.fetch_add(1, Ordering::Relaxed),
                source,
                expected,
                clock: clock.clone(),
                keys: RwLock::new(None),
                refresh: tokio::sync::Mutex::new(None),
                verified: moka::sync::Cache::builder()
                    .max_capacity(VERIFIED_CAPACITY)
                    .expire_after(UntilExpiry(clock))
                    .build_with_hasher(foldhash::fast::RandomState::default()),
                revoked: moka::sync::Cache::builder()
                    .max_capacity(REVOKED_CAPACITY)
                    .expire_after(ForTtl)
                    .build(),
                generation: AtomicU64::new(0),
                remember_revocations,
                caught_up: std::sync::atomic::AtomicBool::new(true),
                catching_up: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Checks a bearer token: from memory when it verified before, else
    /// verified now.
    pub async fn check(&self, token: impl AsRef<[u8]>) -> Result<Holder, TokenError> {
        let token = token.as_ref();
        match self.check_remembered(token) {
            Some(verdict) => verdict,
            None => self.check_fresh(token).await,
        }
    }

    /// The verdict on a token that verified before, with no signature work;
    /// `None` when this check has not verified it (or has forgotten it).
    pub fn check_remembered(&self, token: &[u8]) -> Option<Result<Holder, TokenError>> {
        if !self.inner.caught_up.load(Ordering::Acquire) {
            return None;
        }
        let now = self.inner.clock.now();
        // Read before the revocation check below, so that a revocation
        // racing with it voids what is remembered here.
        let generation = self.inner.generation.load(Ordering::Acquire);
        if let Some(p) = recent::get(self.inner.id, generation, token) {
            return Some(if now >= p.expires_at() {
                Err(TokenError::Expired)
            } else {
                Ok(p)
            });
        }
        let verdict = self.still_good(self.inner.verified.get(token)?, now);
        if let Ok(p) = &verdict {
            recent::put(self.inner.id, generation, token, p);
        }
        Some(verdict)
    }

    /// Verifies a token's signature and claims, and remembers it when good.
    pub async fn check_fresh(&self, token: &[u8]) -> Result<Holder, TokenError> {
        if !self.inner.caught_up.load(Ordering::Acquire) && !self.try_catch_up().await {
            return Err(TokenError::Unavailable);
        }
        let generation = self.inner.generation.load(Ordering::Acquire);
        let text = std::str::from_utf8(token)
            .ok()
            .filter(|t| t.is_ascii())
            .ok_or(TokenError::Malformed)?;
        let principal = self.verify_uncached(text).await?;
        self.inner.verified.insert(token.into(), principal.clone());
        recent::put(self.inner.id, generation, token, &principal);
        Ok(principal)
    }

    /// Verifies without the verified-token cache (keys are still cached).
    pub async fn verify_uncached(&self, token: &str) -> Result<Holder, TokenError> {
        let kid = token::key_id(token)?;
        let key = self.key(&kid).await?;
        let principal = token::verify(token, &key, &self.inner.expected, self.inner.clock.now())?;
        self.still_good(principal, self.inner.clock.now())
    }

    fn still_good(
        &self,
        p: Holder,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Holder, TokenError> {
        if !self.inner.caught_up.load(Ordering::Acquire) {
            return Err(TokenError::Unavailable);
        }
        if now >= p.expires_at() {
            return Err(TokenError::Expired);
        }
        if self.inner.revoked.contains_key(&p.session_id()) {
            return Err(TokenError::Revoked);
        }
        Ok(p)
    }

    /// Refuses every token of `session_id` from now on.
    pub fn revoke(&self, session_id: SessionId) {
        self.inner
            .revoked
            .insert(session_id, self.inner.remember_revocations);
        self.inner.generation.fetch_add(1, Ordering::Release);
    }

    async fn key(&self, kid: &str) -> Result<AsymmetricPublicKey<V4>, TokenError> {
        let (found, fresh) = self.lookup(kid);
        if let (Some(key), true) = (&found, fresh) {
            return Ok(key.clone());
        }
        // Stale, empty or unknown id: refresh, but at most once per
        // FORCED_REFRESH_EVERY, so neither garbage key ids nor an auth
        // outage turn every request into a call to auth.
        let mut last = self.inner.refresh.lock().await;
        let (again, fresh) = self.lookup(kid);
        if let (Some(key), true) = (&again, fresh) {
            return Ok(key.clone());
        }
        let now = self.inner.clock.now();
        if last.is_some_and(|t| since(t, now) < FORCED_REFRESH_EVERY) {
            let have_keys = locks::read(&self.inner.keys).is_some();
            return match again {
                Some(stale) => Ok(stale),
                None if have_keys => Err(TokenError::UnknownKey),
                None => Err(TokenError::Unavailable),
            };
        }
        *last = Some(now);
        match self.inner.source.fetch().await {
            Ok(set) => {
                let key = set.keys.get(kid).cloned();
                *locks::write(&self.inner.keys) = Some(Cached {
                    set,
                    fetched_at: now,
                });
                key.ok_or(TokenError::UnknownKey)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch public keys from auth");
                // Keep working with what we had while auth is away.
                again.ok_or(TokenError::Unavailable)
            }
        }
    }

    /// The cached key for `kid`, and whether the cache is still fresh.
    fn lookup(&self, kid: &str) -> (Option<AsymmetricPublicKey<V4>>, bool) {
        let keys = locks::read(&self.inner.keys);
        match keys.as_ref() {
            None => (None, false),
            Some(c) => (
                c.set.keys.get(kid).cloned(),
                since(c.fetched_at, self.inner.clock.now()) < c.set.ttl,
            ),
        }
    }

    /// The check a service of `ctx` puts in front of its routes: keys from
    /// auth through `ctx`'s clients, revoked sessions learned from its bus
    /// as `consumer` until shutdown (the task that learns them is returned).
    pub async fn for_service(
        ctx: &crate::kernel::ServiceContext,
        consumer: &str,
    ) -> Result<(TokenCheck, tokio::task::JoinHandle<()>), BusError> {
        let check = TokenCheck::new(
            Arc::new(AuthKeys {
                clients: ctx.clients.clone(),
            }),
            ctx.tokens.issuer_audience(),
            ctx.clock.clone(),
            ctx.tokens.access_ttl().to_std().unwrap_or_default(),
        );
        // No token passes until the sessions ended before now are known;
        // the events of those ended from now on are listened for first, so
        // none falls between the two.
        check.inner.caught_up.store(false, Ordering::Release);
        let revocations = check
            .listen_for_revocations(consumer, &ctx.bus, ctx.shutdown.clone())
            .await?;
        let catching_up = check.clone();
        let shutdown = ctx.shutdown.clone();
        let task = tokio::spawn(async move {
            tokio::select! {
                () = catching_up.catch_up() => {}
                () = shutdown.cancelled() => {}
            }
            if let Err(e) = revocations.await {
                tracing::error!(error = %e, "the revocation listener failed");
            }
        });
        Ok((check, task))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use pasetors::keys::{AsymmetricKeyPair, Generate};
    use pasetors::paserk::Id;

    use super::*;
    use crate::kernel::clock::SystemClock;

    /// Serves one key and counts how often it is asked.
    struct Counting {
        kid: String,
        key: AsymmetricPublicKey<V4>,
        fetches: AtomicUsize,
    }

    #[async_trait]
    impl KeySource for Counting {
        async fn fetch(&self) -> Result<KeySet, FetchError> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            Ok(KeySet {
                keys: HashMap::from([(self.kid.clone(), self.key.clone())]),
                ttl: Duration::from_secs(300),
            })
        }
    }

    fn issuer_audience() -> IssuerAudience {
        IssuerAudience {
            issuer: "gatehouse".into(),
            audience: "gatehouse".into(),
        }
    }

    fn signed_by(pair: &AsymmetricKeyPair<V4>) -> String {
        let now = chrono::Utc::now();
        token::sign(
            &pair.secret,
            &Id::from(&pair.public),
            token::UserId::now_v7(),
            SessionId::now_v7(),
            &issuer_audience(),
            now,
            now + chrono::Duration::minutes(5),
        )
        .unwrap()
    }

    /// A key, a source that serves it and counts its fetches, and a check
    /// on that source.
    fn checking() -> (AsymmetricKeyPair<V4>, Arc<Counting>, TokenCheck) {
        let known = AsymmetricKeyPair::<V4>::generate().unwrap();
        let source = Arc::new(Counting {
            kid: token::key_id_of(&known.public),
            key: known.public.clone(),
            fetches: AtomicUsize::new(0),
        });
        let check = TokenCheck::new(
            source.clone(),
            issuer_audience(),
            Arc::new(SystemClock),
            Duration::from_secs(900),
        );
        (known, source, check)
    }

    #[tokio::test]
    async fn unknown_key_ids_cannot_make_the_check_hammer_auth() {
        let (known, source, check) = checking();
        let good = signed_by(&known);
        check.check(&good).await.unwrap();
        assert_eq!(source.fetches.load(Ordering::SeqCst), 1);

        let stranger = AsymmetricKeyPair::<V4>::generate().unwrap();
        for _ in 0..20 {
            let forged = signed_by(&stranger);
            assert_eq!(check.check(&forged).await, Err(TokenError::UnknownKey));
        }
        // The keys were fetched moments ago, within FORCED_REFRESH_EVERY:
        // none of the twenty unknown ids caused another fetch.
        assert_eq!(source.fetches.load(Ordering::SeqCst), 1);
        // Known tokens still pass, from the caches.
        check.check(&good).await.unwrap();
        assert_eq!(source.fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn revoked_sessions_are_refused_even_when_cached() {
        let (known, _, check) = checking();
        let token = signed_by(&known);
        let principal = check.check(&token).await.unwrap();
        check.revoke(principal.session_id());
        assert_eq!(check.check(&token).await, Err(TokenError::Revoked));
    }
}
