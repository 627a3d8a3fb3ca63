//! Rate limiting with GCRA (the `governor` crate), keyed by client address
//! or user. A refused request gets 429 problem+json with `Retry-After`;
//! every response carries `RateLimit-Limit`, `RateLimit-Remaining` and
//! `RateLimit-Reset`.
//!
//! State is bounded: at most `max_keys` keys are tracked. When the table is
//! full even after forgetting keys that are back to a full allowance, new
//! keys share one overflow bucket rather than growing memory.
//!
//! Replicas of the gateway share their counts through a [`SharedLimit`]
//! (with the `redis` feature, [`redis::RedisLimits`]).

#[cfg(feature = "redis")]
pub mod redis;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use tokio_util::sync::CancellationToken;

use crate::kernel::error::Problem;

type Keyed =
    RateLimiter<RateKey, DefaultKeyedStateStore<RateKey>, DefaultClock, StateInformationMiddleware>;

/// What an allowance is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// A client address (anonymous traffic).
    Address(std::net::IpAddr),
    /// A signed-in user.
    User(uuid::Uuid),
    /// The bucket new keys share while the table is full.
    Overflow,
}

/// How often idle keys are forgotten.
const HOUSEKEEPING: Duration = Duration::from_secs(60);

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed { limit: u32, remaining: u32 },
    Refused { limit: u32, retry_after: Duration },
}

/// Counting the tracked keys locks every shard of the table, so it is done
/// once every `COUNT_EVERY` checks of a thread while the table is far from
/// full, and at every check once it is near. Each thread can let in about
/// that many new keys between its counts, so the table can pass `max_keys`
/// by about `COUNT_EVERY` per thread, a bounded overshoot.
const COUNT_EVERY: usize = 64;

thread_local! {
    /// Checks made on this thread: a count of its own, so that checking
    /// writes no memory other threads write too.
    static CHECKS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A keyed limiter. Cheap to clone.
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Keyed>,
    burst: u32,
    max_keys: usize,
    near_full: Arc<AtomicBool>,
}

impl Limiter {
    /// `per_second` requests per second with bursts of `burst`; `None` when
    /// `per_second` is 0 (no limit).
    pub fn new(per_second: u32, burst: u32, max_keys: usize) -> Option<Self> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst.max(1)).unwrap_or(rate);
        let quota = Quota::per_second(rate).allow_burst(burst);
        Some(Self {
            inner: Arc::new(
                RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
            ),
            burst: burst.get(),
            max_keys: max_keys.max(1),
            near_full: Arc::default(),
        })
    }

    /// Takes one request from `key`'s allowance.
    pub fn check(&self, key: RateKey) -> Verdict {
        let mut key = key;
        if self.near_full.load(Ordering::Relaxed)
            || CHECKS
                .with(|n| n.replace(n.get().wrapping_add(1)))
                .is_multiple_of(COUNT_EVERY)
        {
            let mut tracked = self.inner.len();
            if tracked >= self.max_keys {
                self.inner.retain_recent();
                tracked = self.inner.len();
                if tracked >= self.max_keys {
                    key = RateKey::Overflow;
                }
            }
            self.near_full
                .store(tracked + COUNT_EVERY >= self.max_keys, Ordering::Relaxed);
        }
        match self.inner.check_key(&key) {
            Ok(state) => Verdict::Allowed {
                limit: self.burst,
                remaining: state.remaining_burst_capacity(),
            },
            Err(not_until) => Verdict::Refused {
                limit: self.burst,
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            },
        }
    }

    /// Takes one request from `key`'s allowance: the verdict while some is
    /// left, the 429 answer once it is spent.
    #[allow(
        clippy::result_large_err,
        reason = "the refusal is the response the client gets, made once"
    )]
    pub fn spend(&self, key: RateKey) -> Result<Verdict, Response> {
        match self.check(key) {
            refused @ Verdict::Refused { .. } => Err(refusal(refused)),
            allowed => Ok(allowed),
        }
    }

    /// How many keys are tracked now.
    pub fn tracked(&self) -> usize {
        self.inner.len()
    }

    /// Forgets keys back at a full allowance, every minute until `shutdown`.
    pub fn spawn_housekeeping(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(HOUSEKEEPING) => {
                        inner.retain_recent();
                        inner.shrink_to_fit();
                    }
                    () = shutdown.cancelled() => break,
                }
            }
        })
    }
}

/// A limiter whose counts live outside the process, shared by every
/// replica: a check is a round trip, so it is awaited.
#[async_trait::async_trait]
pub trait SharedLimit: Send + Sync {
    /// Takes one request from `key`'s allowance, if its kind of key is
    /// limited: the verdict (`None` when there is none to tell), or the
    /// answer the client gets instead.
    async fn spend(&self, key: RateKey) -> Result<Option<Verdict>, Response>;
}

const LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

thread_local! {
    /// The text of the limit last written on this thread: a limiter's
    /// limit is the same for every response, so it is written once.
    static LIMIT_TEXT: std::cell::RefCell<Option<(u32, HeaderValue)>> =
        const { std::cell::RefCell::new(None) };
}

/// Adds the `RateLimit-*` headers for `verdict`.
pub fn annotate(verdict: Verdict, headers: &mut HeaderMap) {
    let (limit, remaining, reset) = match verdict {
        Verdict::Allowed { limit, remaining } => (limit, remaining, 0),
        Verdict::Refused { limit, retry_after } => (limit, 0, seconds(retry_after)),
    };
    // A number's text is an allocation; the common zero is not.
    let value = |n: u64| {
        if n == 0 {
            HeaderValue::from_static("0")
        } else {
            HeaderValue::from(n)
        }
    };
    let limit_text = LIMIT_TEXT.with_borrow_mut(|last| match last {
        Some((n, text)) if *n == limit => text.clone(),
        _ => {
            let text = value(u64::from(limit));
            *last = Some((limit, text.clone()));
            text
        }
    });
    headers.insert(LIMIT, limit_text);
    headers.insert(REMAINING, value(u64::from(remaining)));
    headers.insert(RESET, value(reset));
}

fn seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The 429 answer for a refused request.
pub fn refusal(verdict: Verdict) -> Response {
    let retry = match verdict {
        Verdict::Refused { retry_after, .. } => seconds(retry_after).max(1),
        Verdict::Allowed { .. } => 1,
    };
    let mut response = Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "Too many requests",
    )
    .detail(format!("retry in {retry} s"))
    .retry_after(retry)
    .into_response();
    annotate(verdict, response.headers_mut());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A distinct key per `n`.
    fn key(n: u32) -> RateKey {
        RateKey::Address(std::net::IpAddr::V4(n.into()))
    }

    #[test]
    fn bursts_pass_then_requests_wait_their_turn_per_key() {
        let limiter = Limiter::new(1, 3, 100).unwrap();
        for left in [2, 1, 0] {
            assert_eq!(
                limiter.check(key(1)),
                Verdict::Allowed {
                    limit: 3,
                    remaining: left
                }
            );
        }
        match limiter.check(key(1)) {
            Verdict::Refused {
                limit: 3,
                retry_after,
            } => assert!(retry_after <= Duration::from_secs(1)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            limiter.check(RateKey::User(uuid::Uuid::nil())),
            Verdict::Allowed { .. }
        ));
        assert!(Limiter::new(0, 10, 100).is_none());
    }

    #[test]
    fn tracked_keys_stay_bounded() {
        let limiter = Limiter::new(1, 1, 10).unwrap();
        for i in 0..1000 {
            limiter.check(key(i));
        }
        assert!(limiter.tracked() <= 11, "{}", limiter.tracked());
        // A table far larger than the counting interval stays bounded too.
        let limiter = Limiter::new(1, 1, 1000).unwrap();
        for i in 0..5000 {
            limiter.check(key(i));
        }
        let tracked = limiter.tracked();
        assert!(
            (1000..=1000 + 2 * COUNT_EVERY + 1).contains(&tracked),
            "{tracked}"
        );
    }
}
