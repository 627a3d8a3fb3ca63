//! Calls to one service spread over its instances, with what the gateway
//! does for its upstreams: a call that is safe to repeat is tried again on
//! another instance, within a retry budget and after a short backoff; an
//! instance that keeps failing is ejected and probed back; and when every
//! instance is ejected, calls fail at once with `UNAVAILABLE` instead of
//! each waiting for its timeout.
//!
//! Which calls are repeated:
//! - any call that never reached an instance (its connection was refused
//!   or could not be made), on another instance: the instance did nothing;
//! - a call that may have reached one (the connection broke, no response in
//!   time) only when its method is in [`SAFE_TO_REPEAT`]: reads, and
//!   writes that end in the same state however often they run.
//!
//! An instance that fails [`EJECT_AFTER`] calls in a row is ejected. An
//! ejected instance gets no calls but a trial [`TRIAL_EVERY`] after its
//! last failure, the wait doubling after each failed trial up to
//! [`LAST_PROBE`]; a trial that succeeds takes it back. Meanwhile a probe asks its gRPC
//! health service after [`FIRST_PROBE`], then at doubling intervals up to
//! [`LAST_PROBE`], and takes it back once it answers `SERVING`. So a
//! service whose every instance is ejected costs a caller nothing but the
//! odd trial, and is used again within moments of coming back. When every
//! instance is ejected for refusing connections, a call tries one anyway:
//! a refusal costs no more than failing at once, and the first call after
//! the service is up finds it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use smallvec::SmallVec;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tower::ServiceExt;
use tower::retry::budget::{Budget, TpsBudget};

use crate::kernel::locks;

/// Methods a call of which may run twice: reads, and writes whose second
/// run changes nothing the first did not.
pub const SAFE_TO_REPEAT: &[&str] = &[
    "/gatehouse.auth.v1.Auth/GetPublicKeys",
    "/gatehouse.auth.v1.Auth/ValidateToken",
    "/gatehouse.auth.v1.Auth/RevokeSession",
    "/gatehouse.auth.v1.Auth/RevokeUserSessions",
    "/gatehouse.auth.v1.Auth/ListRevokedSessions",
    "/gatehouse.identity.v1.Identity/GetUser",
    "/gatehouse.identity.v1.Identity/GetUsers",
    // A password check changes nothing an instance keeps but its own
    // throttle counters (in memory, which a dead instance lost) and a
    // failed sign-in's event: checked again elsewhere, it is counted
    // there too, and at worst recorded twice.
    "/gatehouse.identity.v1.Identity/VerifyCredentials",
    "/gatehouse.identity.v1.Identity/SetStatus",
    "/gatehouse.authz.v1.Authz/Check",
    "/gatehouse.authz.v1.Authz/BatchCheck",
    "/gatehouse.authz.v1.Authz/ListPermissions",
    "/gatehouse.authz.v1.Authz/ListSubjects",
    "/gatehouse.events.v1.Events/Subscribe",
    "/grpc.health.v1.Health/Check",
];

/// The most instances one call is tried on.
const MAX_ATTEMPTS: usize = 3;
/// Failed calls in a row that eject an instance.
pub const EJECT_AFTER: u32 = 3;
/// How often an ejected instance is given one call to try.
pub const TRIAL_EVERY: Duration = Duration::from_millis(200);
/// The first probe of an ejected instance comes this long after ejection.
pub const FIRST_PROBE: Duration = Duration::from_millis(100);
/// Probes of an instance that stays down come at most this far apart.
pub const LAST_PROBE: Duration = Duration::from_secs(2);
/// The longest a probe waits for its response.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The wait before a repeat, doubled at each further one.
const BACKOFF: Duration = Duration::from_millis(5);
/// How long a call whose caller has gone is kept before it is cancelled
/// (see `Pool::attempt`): far longer than a server takes to take a call in.
pub const ABANDON_AFTER: Duration = Duration::from_millis(250);

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Request = http::Request<tonic::body::Body>;
type Response = http::Response<tonic::body::Body>;

/// One instance: its channel, and what recent calls made of it.
pub(super) struct Member {
    url: String,
    channel: Channel,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Calls failed in a row.
    failures: u32,
    /// While ejected: when it last failed, or was last given a trial.
    ejected: Option<std::time::Instant>,
    /// While ejected: how long after that its next trial comes.
    trial_gap: Duration,
    /// Whether the last failure was a refused connection: a trial of it
    /// costs no wait.
    refused: bool,
}

impl Member {
    pub(super) fn new(url: String, channel: Channel) -> Arc<Self> {
        Arc::new(Self {
            url,
            channel,
            state: Mutex::default(),
        })
    }

    /// Whether a call may go to the instance: it is not ejected, or it is
    /// and its trial is due (which this call then is).
    fn eligible(&self) -> bool {
        let mut state = locks::lock(&self.state);
        match state.ejected {
            None => true,
            Some(since) if since.elapsed() >= state.trial_gap => {
                state.ejected = Some(std::time::Instant::now());
                true
            }
            Some(_) => false,
        }
    }

    /// Counts a success; answers whether it took the instance back.
    fn succeeded(&self) -> bool {
        let mut state = locks::lock(&self.state);
        state.failures = 0;
        state.ejected.take().is_some()
    }

    /// Counts a failure; answers whether it ejected the instance just now.
    fn failed(&self, refused: bool) -> bool {
        let mut state = locks::lock(&self.state);
        state.failures += 1;
        state.refused = refused;
        if state.ejected.is_some() {
            // A failed trial: the next comes later.
            state.ejected = Some(std::time::Instant::now());
            state.trial_gap = (state.trial_gap * 2).min(LAST_PROBE);
            return false;
        }
        if state.failures < EJECT_AFTER {
            return false;
        }
        state.ejected = Some(std::time::Instant::now());
        state.trial_gap = TRIAL_EVERY;
        true
    }

    /// Whether the instance is ejected and its last failure was a refused
    /// connection.
    fn refuses(&self) -> bool {
        let state = locks::lock(&self.state);
        state.ejected.is_some() && state.refused
    }

    /// Whether the instance is in service (not ejected).
    fn in_service(&self) -> bool {
        locks::lock(&self.state).ejected.is_none()
    }

    /// Whether the instance's health service answers `SERVING`.
    async fn healthy(&self) -> bool {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::health_client::HealthClient;
        let mut client = HealthClient::new(self.channel.clone());
        let asked = client.check(HealthCheckRequest {
            service: String::new(),
        });
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, asked).await,
            Ok(Ok(response)) if response.get_ref().status() == ServingStatus::Serving
        )
    }
}

/// The instances of one service, and its retry budget. Cheap to clone.
#[derive(Clone)]
pub struct Resilient {
    pool: Arc<Pool>,
}

struct Pool {
    service: Arc<str>,
    members: Vec<Arc<Member>>,
    next: AtomicUsize,
    budget: Arc<TpsBudget>,
    /// Where probes run (the process's runtime, which outlives the calls).
    runtime: Option<tokio::runtime::Handle>,
}

/// A retry budget: repeats may add a fifth to the calls made, and ten a
/// second whatever the traffic.
pub(super) fn budget() -> Arc<TpsBudget> {
    Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2))
}

impl Resilient {
    pub(super) fn new(
        service: &str,
        members: Vec<Arc<Member>>,
        budget: Arc<TpsBudget>,
        runtime: Option<tokio::runtime::Handle>,
    ) -> Self {
        Self {
            pool: Arc::new(Pool {
                service: Arc::from(service),
                members,
                next: AtomicUsize::new(0),
                budget,
                runtime,
            }),
        }
    }

    /// The instances, by URL, and the retry budget: what a pool built for
    /// a changed set of instances keeps.
    pub(super) fn parts(&self) -> (HashMap<String, Arc<Member>>, Arc<TpsBudget>) {
        let members = self
            .pool
            .members
            .iter()
            .map(|m| (m.url.clone(), m.clone()))
            .collect();
        (members, self.pool.budget.clone())
    }
}

impl Pool {
    /// The next eligible instance not yet tried, round the pool.
    /// When none is eligible and the call has tried none, an instance
    /// ejected for refusing connections is tried anyway: that fails as fast
    /// as refusing the call would, and finds a service the moment it is up
    /// (one that started after its callers, say).
    fn pick(&self, tried: &[usize]) -> Option<usize> {
        let n = self.members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut order = (0..n).map(|k| (start + k) % n);
        order
            .clone()
            .find(|i| !tried.contains(i) && self.members[*i].eligible())
            .or_else(|| {
                tried
                    .is_empty()
                    .then(|| order.find(|i| self.members[*i].refuses()))
                    .flatten()
            })
    }

    async fn send(&self, request: Request) -> Result<Response, BoxError> {
        let safe = SAFE_TO_REPEAT.contains(&request.uri().path());
        let (parts, body) = request.into_parts();
        // A service call's request is one message (no method streams its
        // requests): held, so that it can be sent again.
        let body = body.collect().await?.to_bytes();
        self.budget.deposit();
        let mut tried: SmallVec<[usize; MAX_ATTEMPTS]> = SmallVec::new();
        let mut failure: Option<BoxError> = None;
        while tried.len() < MAX_ATTEMPTS {
            let Some(index) = self.pick(&tried) else {
                break;
            };
            if let Some(repeat) = tried.len().checked_sub(1) {
                if !self.budget.withdraw() {
                    break;
                }
                tokio::time::sleep(BACKOFF * (1 << repeat)).await;
            }
            tried.push(index);
            let member = &self.members[index];
            let attempt = rebuild(&parts, body.clone());
            match self.attempt(member, attempt).await {
                Ok(response) => {
                    if member.succeeded() {
                        tracing::info!(service = %self.service, url = %member.url,
                            "instance back in service calls");
                    }
                    return Ok(response);
                }
                Err(e) => {
                    let unsent = never_sent(e.as_ref());
                    tracing::debug!(service = %self.service, url = %member.url, error = %e,
                        unsent, "service call failed");
                    if member.failed(unsent) {
                        self.probe(member);
                    }
                    failure = Some(e);
                    if !(safe || unsent) {
                        break;
                    }
                }
            }
        }
        Err(failure.unwrap_or_else(|| {
            Box::new(tonic::Status::unavailable(format!(
                "no instance of {} is available",
                self.service
            )))
        }))
    }

    /// Sends one attempt to `member`, in a task of its own: when the caller
    /// goes away before the response's head arrives, the call is not
    /// cancelled at once but kept for [`ABANDON_AFTER`] more, or until it
    /// is answered. A cancel is an HTTP/2 reset, and a server counts resets
    /// of streams it has not yet taken in against a small limit (h2's
    /// guard against reset floods), past which it drops the connection
    /// with every call on it: callers hanging up together, as in a flood
    /// of abandoned sign-ins, would otherwise trip it. Kept a moment, the
    /// call is taken in first, and its reset then ends the callee's work on
    /// it (a request waiting for a password hash leaves the queue).
    async fn attempt(&self, member: &Member, request: Request) -> Result<Response, BoxError> {
        let call = member.channel.clone().oneshot(request);
        let caller = CancellationToken::new();
        let gone = caller.clone();
        let task = async move {
            tokio::pin!(call);
            tokio::select! {
                biased;
                response = &mut call => Some(response),
                () = gone.cancelled() => tokio::time::timeout(ABANDON_AFTER, call).await.ok(),
            }
        };
        let handle = match &self.runtime {
            Some(runtime) => runtime.spawn(task),
            None => tokio::spawn(task),
        };
        // Dropped with this future: tells the task its caller has gone.
        let _caller = caller.drop_guard();
        match handle.await {
            Ok(Some(response)) => response.map_err(Into::into),
            Ok(None) => Err("the call was abandoned".into()),
            Err(e) => Err(Box::new(e)),
        }
    }

    /// Probes an instance just ejected until it is back, or until no pool
    /// holds it any more.
    fn probe(&self, member: &Arc<Member>) {
        tracing::warn!(service = %self.service, url = %member.url,
            "instance ejected from service calls; probing it");
        let member: Weak<Member> = Arc::downgrade(member);
        let service = self.service.clone();
        let probing = async move {
            let mut wait = FIRST_PROBE;
            loop {
                tokio::time::sleep(wait).await;
                let Some(member) = member.upgrade() else {
                    return;
                };
                if member.in_service() {
                    // A trial call took it back meanwhile.
                    return;
                }
                if member.healthy().await {
                    if member.succeeded() {
                        tracing::info!(service = %service, url = %member.url,
                            "instance back in service calls");
                    }
                    return;
                }
                wait = (wait * 2).min(LAST_PROBE);
            }
        };
        match &self.runtime {
            Some(runtime) => drop(runtime.spawn(probing)),
            None => drop(tokio::spawn(probing)),
        }
    }
}

/// A copy of the request whose head is `parts` and whose body is `body`.
fn rebuild(parts: &http::request::Parts, body: Bytes) -> Request {
    let mut request = http::Request::new(tonic::body::Body::new(Full::new(body)));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    *request.extensions_mut() = parts.extensions.clone();
    request
}

/// Whether the failure happened before any of the call could reach the
/// instance: no connection could be made to it.
fn never_sent(error: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind;
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::AddrNotAvailable
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
            )
        {
            return true;
        }
        cause = e.source();
    }
    false
}

impl tower::Service<Request> for Resilient {
    type Response = Response;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response, BoxError>> + Send + 'static>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Each attempt waits for its instance's channel.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let pool = self.pool.clone();
        Box::pin(async move { pool.send(request).await })
    }
}
