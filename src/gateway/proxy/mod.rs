//! Forwarding one request: normalise and route it, apply the route's token
//! policy, pick an upstream instance from the registry, and stream the
//! request and the response through, with the proxy headers set and the
//! hop-by-hop and client-supplied `x-gatehouse-*` headers removed.
//!
//! Rooms: this file forwards (the exchange and its attempts in turn);
//! `admission.rs` routes a request and applies its policy and limits,
//! `attempt.rs` makes one attempt at one instance, `body.rs` prepares the
//! request body for the attempts, `kept.rs` keeps public responses of the
//! routes that ask for it a moment and answers from them.

mod admission;
mod attempt;
mod body;
mod kept;

use super::client::upstream;
use admission::{Admission, Plan, Refusal, admit_checked, limit_user, permitted, plan};
use attempt::{Attempt, Blame, MAX_ATTEMPTS, blame, split_url};
use body::{Outgoing, prepare_body};

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderValue};
use http::{Method, StatusCode};
use smallvec::SmallVec;
use tokio_util::sync::CancellationToken;

use super::balance::{Balancer, Lease};
use super::config::{RouteConfig, UpstreamProtocol};
use super::fault::{self, Fault};
use super::h1_client::is_idempotent;
use super::headers::{Peer, upstream_headers};
use super::probe::{self, ProbePlan};
use super::routes::RouteTable;
use super::rules::Cover;
use crate::kernel::config::ConfigError;
use crate::kernel::credentials::Caller;
use crate::kernel::http::wire;
use crate::kernel::metrics::Metrics;
use crate::kernel::origin::Cidr;
use crate::kernel::registry::{Instance, Registry};
use crate::kernel::telemetry;
use crate::middleware::bearer::{self, TokenCheck};
use crate::middleware::permit::Permits;
use crate::middleware::ratelimit::{self, Limiter, RateKey, SharedLimit};
use crate::middleware::token::TokenError;

/// The gateway's shared state. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    table: RouteTable,
    registry: Arc<dyn Registry>,
    check: TokenCheck,
    default_timeout: Duration,
    body_limit: u64,
    trusted: Vec<Cidr>,
    /// Client header names with underscores go upstream (see `headers.rs`).
    underscores: bool,
    balancer: Arc<Balancer>,
    probe: ProbePlan,
    metrics: Metrics,
    per_ip: Option<Limiter>,
    per_user: Option<Limiter>,
    /// The limiter replicas share; when set, the limits are counted there
    /// (see `admission.rs`), and `per_ip` and `per_user` only say which
    /// limits are on.
    shared: Option<Arc<dyn SharedLimit>>,
    shutdown: CancellationToken,
    permits: Permits,
    /// Signs the credential that vouches for the client address of a
    /// request forwarded to a built-in service.
    caller: Option<Arc<Caller>>,
    /// Public responses of the routes that keep them (see `kept.rs`).
    kept: kept::Kept,
}

/// What the gateway needs besides its route table.
pub struct Settings {
    pub registry: Arc<dyn Registry>,
    pub check: TokenCheck,
    pub default_timeout: Duration,
    pub body_limit: u64,
    pub trusted_proxies: Vec<String>,
    pub underscores_in_headers: bool,
    pub metrics: Metrics,
    pub per_ip: Option<Limiter>,
    pub per_user: Option<Limiter>,
    pub shared: Option<Arc<dyn SharedLimit>>,
    pub probe: ProbePlan,
    pub shutdown: CancellationToken,
    /// Asks authz the permissions routes name.
    pub permits: Permits,
    /// The gateway's own service credential, when it has one: requests to
    /// the platform's services carry it, so they believe the `Forwarded`
    /// client address the gateway writes and no other.
    pub caller: Option<Arc<Caller>>,
}

impl Gateway {
    /// The route table, for the merged API document.
    pub fn table(&self) -> &RouteTable {
        &self.inner.table
    }

    /// The registry upstream instances are found in.
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.inner.registry
    }

    pub fn new(table: RouteTable, settings: Settings) -> Result<Self, ConfigError> {
        let trusted = Cidr::parse_all(&settings.trusted_proxies, "gateway.trusted_proxies")?;
        Ok(Self {
            inner: Arc::new(Inner {
                table,
                registry: settings.registry,
                check: settings.check,
                default_timeout: settings.default_timeout,
                body_limit: settings.body_limit,
                trusted,
                underscores: settings.underscores_in_headers,
                balancer: Arc::default(),
                probe: settings.probe,
                metrics: settings.metrics,
                per_ip: settings.per_ip,
                per_user: settings.per_user,
                shared: settings.shared,
                shutdown: settings.shutdown,
                permits: settings.permits,
                caller: settings.caller,
                kept: kept::Kept::default(),
            }),
        })
    }
}

pub(super) fn fault(fault: Fault) -> Response {
    fault.into_response()
}

/// Answers a request for a path the gateway does not serve itself, from a
/// client connected from `peer`.
///
/// What needs no waiting (routing, the route's policy, a token already
/// known, rate limits) is decided here, in the call. Only the exchange with
/// an instance is a future, and it is boxed, holding the request once: the
/// layers above move a pointer, not the whole of a request's state.
pub fn forward(gw: &Arc<Gateway>, peer: &Peer, req: Request) -> Forwarding {
    let logged = tracing::enabled!(target: "gatehouse::access", tracing::Level::INFO);
    let access = logged.then(|| (req.method().clone(), std::time::Instant::now()));
    let grpc = fault::is_grpc(req.headers());
    let mut label = None;
    let state = match plan(gw, peer, req, &mut label) {
        Ok(mut plan) => match answer_kept(gw, &mut plan) {
            Some(kept) => Forward::Immediate(Some(kept)),
            None => Forward::Exchanging(Box::pin(exchange(gw.clone(), plan))),
        },
        Err(Refusal {
            response,
            shared_due: None,
        }) => Forward::Immediate(Some(response)),
        Err(Refusal {
            response,
            shared_due,
        }) => Forward::Exchanging(Box::pin(counted_refusal(gw.clone(), response, shared_due))),
    };
    Forwarding {
        state,
        label,
        peer: peer.ip(),
        access,
        grpc,
    }
}

/// The response of [`forward`]; the access log line and the route's name
/// for the metrics are written once it is ready.
pub struct Forwarding {
    state: Forward,
    label: Option<&'static str>,
    peer: IpAddr,
    /// The method and start, when the access log is on.
    access: Option<(Method, std::time::Instant)>,
    /// A gRPC call: the gateway's own responses go back in gRPC form.
    grpc: bool,
}

enum Forward {
    /// Decided without an instance (refused, not found, ...).
    Immediate(Option<Response>),
    Exchanging(Pin<Box<dyn Future<Output = Response> + Send>>),
}

impl Future for Forwarding {
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let response = match &mut this.state {
            Forward::Immediate(response) => match response.take() {
                Some(response) => response,
                // Polled again after its response: there is none left to give.
                None => return Poll::Pending,
            },
            Forward::Exchanging(exchange) => ready!(exchange.as_mut().poll(cx)),
        };
        let route = this.label.unwrap_or("unrouted");
        if let Some((method, started)) = &this.access {
            // The access log: one line per request, never the path's query or any token.
            tracing::info!(
                target: "gatehouse::access",
                method = %method,
                route,
                status = response.status().as_u16(),
                duration_ms = started.elapsed().as_millis() as u64,
                peer = %this.peer,
                "request"
            );
        }
        telemetry::name_route(route);
        // After the access log, which names the fault's own status.
        if this.grpc {
            return Poll::Ready(Ok(fault::in_grpc_form(response)));
        }
        Poll::Ready(Ok(response))
    }
}

/// Carries out `plan`: verifies a token not known yet, then sends the
/// request to an instance of the route's service, with the rate limit
/// headers on the response.
#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` keeps a second copy of its arguments"
)]
fn exchange(gw: Arc<Gateway>, mut plan: Plan) -> impl Future<Output = Response> + Send {
    // A block rather than an `async fn`, and the steps below borrow the
    // plan: it is held once, where it was moved in, not copied at each step.
    async move {
        if let Err(refused) = gw
            .count_shared(&mut plan.shared_due, &mut plan.verdict)
            .await
        {
            return refused;
        }
        if let Admission::Unverified = plan.admission
            && let Err(refused) = verify(&gw, &mut plan).await
        {
            return refused;
        }
        match &plan.cover {
            None => {}
            Some(Cover::Uncovered) => return fault::uncovered(),
            Some(Cover::Ask {
                permission,
                resource,
            }) => {
                if let Err(refused) =
                    permitted(&gw, &plan.admission, resource.as_deref(), permission).await
                {
                    return refused;
                }
            }
        }
        let keep = gw
            .inner
            .table
            .route(plan.route)
            .config
            .keep_public
            .then(|| plan.head.as_ref().and_then(kept::Kept::key).map(Box::from))
            .flatten();
        let mut response = match keep {
            Some(key) => match gw.inner.kept.answer(&key) {
                Some(kept) => kept,
                None => {
                    let fresh = send(&gw, &mut plan).await;
                    gw.inner.kept.keep(key, fresh).await
                }
            },
            None => send(&gw, &mut plan).await,
        };
        if let Some(v) = plan.verdict {
            ratelimit::annotate(v, response.headers_mut());
        }
        // The request's fields have gone upstream: their map serves the
        // thread's next request.
        if let Some(head) = plan.head.take() {
            wire::recycle_headers(head.headers);
        }
        response
    }
}

/// The response the gateway keeps for `plan`'s request (see `kept.rs`),
/// when it keeps one and nothing about the request waits: no shared count,
/// no token to verify, no permission to ask. The rest is the exchange's.
fn answer_kept(gw: &Gateway, plan: &mut Plan) -> Option<Response> {
    let config = &gw.inner.table.route(plan.route).config;
    if !config.keep_public
        || plan.shared_due.is_some()
        || plan.cover.is_some()
        || !matches!(plan.admission, Admission::Decided(_))
    {
        return None;
    }
    let key = plan.head.as_ref().and_then(kept::Kept::key)?;
    let mut response = gw.inner.kept.answer(key)?;
    if let Some(v) = plan.verdict {
        ratelimit::annotate(v, response.headers_mut());
    }
    if let Some(head) = plan.head.take() {
        wire::recycle_headers(head.headers);
    }
    Some(response)
}

/// Verifies the token of a request whose token was not known, and applies
/// the route's policy and the user's rate limit to the outcome.
async fn verify(gw: &Gateway, plan: &mut Plan) -> Result<(), Response> {
    let token = plan.head.as_ref().map_or(Err(TokenError::Missing), |h| {
        bearer::bearer_token(&h.headers)
    });
    let checked = match token {
        // Boxed, so requests whose token is known do not carry the size
        // of a verification.
        Ok(token) => Box::pin(gw.inner.check.check_fresh(token)).await.map(Some),
        Err(e) => Err(e),
    };
    let config = &gw.inner.table.route(plan.route).config;
    let (verdict, shared_due) = (&mut plan.verdict, &mut plan.shared_due);
    let principal = match admit_checked(gw, config, checked, plan.client_ip, verdict, shared_due) {
        Ok(principal) => principal,
        Err(response) => return Err(counted_refusal(gw, response, shared_due.take()).await),
    };
    limit_user(gw, config, principal.as_ref(), verdict, shared_due)?;
    gw.count_shared(shared_due, verdict).await?;
    plan.admission = Admission::Decided(principal);
    Ok(())
}

/// `response`, a refusal, once the shared limiter has counted it against
/// `shared_due`: 429 instead when that allowance is spent.
async fn counted_refusal<G: std::ops::Deref<Target = Gateway>>(
    gw: G,
    mut response: Response,
    mut shared_due: Option<RateKey>,
) -> Response {
    let mut verdict = None;
    match gw.count_shared(&mut shared_due, &mut verdict).await {
        Ok(()) => {
            if let Some(v) = verdict {
                ratelimit::annotate(v, response.headers_mut());
            }
            response
        }
        Err(refused) => refused,
    }
}

/// Sends the planned request to an instance of the route's service. The
/// route's timeout bounds reading a held request body (408 when the client
/// is too slow) and each instance's response (504).
async fn send(gw: &Gateway, plan: &mut Plan) -> Response {
    let config = &gw.inner.table.route(plan.route).config;
    let timeout = config
        .timeout_ms
        .map_or(gw.inner.default_timeout, Duration::from_millis);
    let registry = &gw.inner.registry;
    let resolved = match registry.resolve_now(&config.service) {
        Some(list) => Ok(list),
        None => registry.resolve(&config.service).await,
    };
    let instances = match resolved {
        Ok(list) if !list.is_empty() => list,
        _ => {
            return fault(Fault::NoInstance);
        }
    };
    let Some(parts) = plan.head.as_mut() else {
        return fault(Fault::BadUpstream);
    };
    let body = std::mem::take(&mut plan.body);
    let prepared = if http_body::Body::is_end_stream(&body) {
        // An empty body needs no reading, nor a timer.
        Ok(Ok(Outgoing::Held(axum::body::Bytes::new())))
    } else {
        let prepared = prepare_body(body, &parts.headers, gw.inner.body_limit);
        tokio::time::timeout(timeout, prepared).await
    };
    let mut body = match prepared {
        Ok(Ok(body)) => body,
        Ok(Err(response)) => return response,
        Err(_) => return fault(Fault::BodyTimeout),
    };
    let principal = match &plan.admission {
        Admission::Decided(p) => p.as_ref(),
        Admission::Unverified => None,
    };
    let peer = &plan.peer;
    let fields = upstream_headers(
        &mut parts.headers,
        peer,
        plan.client_ip,
        principal,
        gw.trusts(peer.ip()),
        gw.inner.underscores,
        gw.vouch(&config.service),
    );
    // The client's own protocol says nothing about the upstream's.
    parts.version = match config.upstream_protocol {
        UpstreamProtocol::Http1 => http::Version::HTTP_11,
        UpstreamProtocol::H2c => http::Version::HTTP_2,
    };
    let idempotent = is_idempotent(&parts.method);
    // The request's head is kept (in the plan) for another attempt only
    // while one can follow.
    let head = &mut plan.head;
    let target = &plan.target;
    // Held inline: most requests try one instance, a few a second.
    let mut tried: SmallVec<[&str; 4]> = SmallVec::new();
    while let Some(lease) = gw.inner.balancer.pick(&instances, &tried) {
        let instance = &instances[lease.index];
        tried.push(&instance.url);
        // Each attempt's answer is due within the route's timeout of its start.
        let deadline = tokio::time::Instant::now() + timeout;
        let (this_body, more) = body.attempt();
        let last = !more || tried.len() == instances.len();
        let Some((address, base)) = split_url(&instance.url) else {
            return fault(Fault::BadUpstream);
        };
        let attempt = match config.upstream_protocol {
            // The request line, the upstream's own Host and the proxy
            // fields are written by the wire (see `h1_client/`), from the head
            // kept here: another attempt needs no copy of it.
            UpstreamProtocol::Http1 => {
                let Some(request) = head.as_ref() else { break };
                Attempt::Http1 {
                    address,
                    path: [base, target],
                    request,
                    fields: &fields,
                }
            }
            UpstreamProtocol::H2c => {
                let Some(mut request) = (if last { head.take() } else { head.clone() }) else {
                    break;
                };
                fields.apply(&mut request.headers);
                let Ok(uri) = format!("http://{address}{base}{target}").parse() else {
                    return fault(Fault::BadUpstream);
                };
                request.uri = uri;
                Attempt::H2c {
                    request: Box::new(request),
                }
            }
        };
        let outcome = attempt.send(this_body, deadline, timeout).await;
        // Out of time while the exchange waited on the client's body: the
        // client's fault, not the instance's.
        let stalled = matches!(&outcome, Err(e) if e.timed_out) && body.client_stalled();
        let code = match &outcome {
            Ok(r) => Some(r.status()),
            _ => None,
        };
        let status = match &outcome {
            Ok(_) => code.as_ref().map_or("", StatusCode::as_str),
            Err(_) if stalled => "body_timeout",
            Err(e) if e.timed_out => "timeout",
            Err(e) if e.connect => "connect_error",
            Err(_) => "error",
        };
        gw.inner
            .metrics
            .upstream_responded(&config.prefix, &instance.url, status);
        match outcome {
            Ok(response) => {
                lease.succeeded();
                return response;
            }
            Err(_) if stalled => return fault(Fault::BodyTimeout),
            Err(e) if e.timed_out => {
                gw.count_failure(&lease, instance, config);
                return fault(Fault::UpstreamTimeout);
            }
            Err(e) => {
                match blame(&*e.error) {
                    Blame::TooLarge => {
                        let mut response =
                            crate::kernel::error::payload_too_large().into_response();
                        // The rest of the body is not read: it cannot frame another request.
                        response
                            .headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        return response;
                    }
                    Blame::ClientBody => return fault(Fault::BodyIncomplete),
                    Blame::Upstream => gw.count_failure(&lease, instance, config),
                }
                // Safe to send elsewhere: nothing reached the instance, or
                // the method means the same when repeated (a few times at
                // most, so a request that brings instances down cannot go
                // through all of them).
                if more && (e.connect || (idempotent && tried.len() < MAX_ATTEMPTS)) {
                    tracing::warn!(service = %config.service, instance = %instance.url, error = %e.error, "upstream attempt failed; trying another instance");
                    continue;
                }
                tracing::warn!(service = %config.service, instance = %instance.url, error = %e.error, "upstream request failed");
                return fault(Fault::UpstreamFailed);
            }
        }
    }
    fault(Fault::NoInstance)
}

impl Gateway {
    /// Counts a failed attempt; when it ejects the instance, starts probing it.
    fn count_failure(&self, lease: &Lease, instance: &Instance, config: &RouteConfig) {
        if !lease.failed() {
            return;
        }
        tracing::warn!(service = %config.service, instance = %instance.url, "upstream instance ejected after repeated failures");
        probe::spawn(
            self.inner.balancer.clone(),
            self.inner.registry.clone(),
            upstream(config.upstream_protocol),
            self.inner.probe.clone(),
            config.service.clone(),
            instance.clone(),
            self.inner.shutdown.clone(),
        );
    }
}
