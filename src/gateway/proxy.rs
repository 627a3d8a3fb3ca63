//! Forwarding one request: normalise and route it, apply the route's token
//! policy, pick an upstream instance from the registry, and stream the
//! request and the answer through, with the proxy headers set and the
//! hop-by-hop and client-supplied `x-gatehouse-*` headers removed.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode, Uri};
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use smallvec::SmallVec;
use tokio_util::sync::CancellationToken;

use super::balance::{Balancer, Lease};
use super::config::{AuthPolicy, RouteConfig, UpstreamProtocol};
use super::fault::Fault;
use super::h1::is_idempotent;
use super::headers::{
    Peer, ProxyFields, forwarded_for, in_cidr, parse_cidr, strip_hop_by_hop, upstream_headers,
};
use super::probe::{self, ProbePlan};
use super::routes::{RouteTable, normalise};
use crate::kernel::deadline::Deadline;
use crate::kernel::error::Problem;
use crate::kernel::http1;
use crate::kernel::metrics::Metrics;
use crate::kernel::registry::{Instance, Registry};
use crate::kernel::telemetry;
use crate::middleware::bearer::{self, TokenCheck};
use crate::middleware::ratelimit::{self, Limiter, RateKey, Verdict};
use crate::middleware::token::{Principal, TokenError};

/// The gateway's shared state. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

/// A pooled client for upstream instances.
pub type Upstream = Client<HttpConnector, Body>;

/// The upstream clients of one thread, HTTP/1.1 and h2c.
struct Clients {
    http1: Upstream,
    h2c: Upstream,
}

thread_local! {
    /// Each thread keeps its own pools, so a pooled upstream connection is
    /// driven by the thread whose requests use it (see `kernel::io_threads`).
    static CLIENTS: std::cell::OnceCell<Clients> = const { std::cell::OnceCell::new() };
}

/// This thread's client for `protocol`.
pub fn upstream(protocol: UpstreamProtocol) -> Upstream {
    CLIENTS.with(|cell| {
        let clients = cell.get_or_init(|| {
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(Duration::from_secs(2)));
            connector.set_nodelay(true);
            Clients {
                http1: Client::builder(TokioExecutor::new()).build(connector.clone()),
                h2c: Client::builder(TokioExecutor::new())
                    .http2_only(true)
                    .build(connector),
            }
        });
        match protocol {
            UpstreamProtocol::Http1 => clients.http1.clone(),
            UpstreamProtocol::H2c => clients.h2c.clone(),
        }
    })
}

/// A GET of the gateway's own (a probe, an API document) to `url`, an
/// instance's address and path: the answer, or none when there was no
/// answer within `timeout`. The request's version is left at HTTP/1.1, which
/// either client takes: an h2c pool speaks HTTP/2 whatever it says.
pub async fn ask(
    client: &Upstream,
    url: &str,
    timeout: Duration,
) -> Option<http::Response<hyper::body::Incoming>> {
    let uri = url.parse::<Uri>().ok()?;
    let request = http::Request::builder()
        .method(Method::GET)
        .uri(uri)
        .body(Body::empty())
        .ok()?;
    tokio::time::timeout(timeout, client.request(request))
        .await
        .ok()?
        .ok()
}

struct Inner {
    table: RouteTable,
    registry: Arc<dyn Registry>,
    check: TokenCheck,
    default_timeout: Duration,
    body_limit: u64,
    trusted: Vec<(IpAddr, u8)>,
    /// Client header names with underscores go upstream (see `headers.rs`).
    underscores: bool,
    balancer: Arc<Balancer>,
    probe: ProbePlan,
    metrics: Metrics,
    per_ip: Option<Limiter>,
    per_user: Option<Limiter>,
    shutdown: CancellationToken,
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
    pub probe: ProbePlan,
    pub shutdown: CancellationToken,
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

    pub fn new(table: RouteTable, settings: Settings) -> Result<Self, String> {
        let trusted = settings
            .trusted_proxies
            .iter()
            .map(|t| {
                parse_cidr(t).ok_or_else(|| format!("gateway.trusted_proxies: bad entry {t:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
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
                shutdown: settings.shutdown,
            }),
        })
    }
}

fn fault(fault: Fault) -> Response {
    fault.into_response()
}

/// Every method but the tunnels and echoes the gateway takes on no route.
const ALL_BUT_TUNNELS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

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
    let mut label = None;
    let state = match plan(gw, peer, req, &mut label) {
        Ok(plan) => Forward::Exchanging(Box::pin(exchange(gw.clone(), plan))),
        Err(answer) => Forward::Answered(Some(answer)),
    };
    Forwarding {
        state,
        label,
        peer: peer.ip(),
        access,
    }
}

/// The answer of [`forward`]; the access log line and the route's name
/// for the metrics are written once it is ready.
pub struct Forwarding {
    state: Forward,
    label: Option<&'static str>,
    peer: IpAddr,
    /// The method and start, when the access log is on.
    access: Option<(Method, std::time::Instant)>,
}

enum Forward {
    /// Decided without an instance (refused, not found, ...).
    Answered(Option<Response>),
    Exchanging(Pin<Box<dyn Future<Output = Response> + Send>>),
}

impl Future for Forwarding {
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let response = match &mut this.state {
            Forward::Answered(answer) => match answer.take() {
                Some(answer) => answer,
                // Polled again after its answer: there is none left to give.
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
        Poll::Ready(Ok(response))
    }
}

/// A request admitted to its route, with what its exchange needs.
struct Plan {
    /// The route's place in the table.
    route: usize,
    /// The request's head; taken by the last attempt when that attempt
    /// needs it as its own.
    head: Option<http::request::Parts>,
    body: Body,
    peer: Peer,
    client_ip: IpAddr,
    /// The path and query to send upstream.
    target: String,
    admission: Admission,
    /// The rate limit verdict whose headers the answer carries.
    verdict: Option<Verdict>,
}

/// Where the route's token policy stands for a request.
enum Admission {
    /// Decided: the principal, when a token verified.
    Decided(Option<Principal>),
    /// The token is not known yet: it is verified in the exchange.
    Unverified,
}

/// Routes `req` and applies everything about it that needs no waiting:
/// the plan of its exchange, or the answer when it goes no further.
#[allow(
    clippy::result_large_err,
    reason = "the refusal is the answer the client gets, made once"
)]
fn plan(
    gw: &Gateway,
    peer: &Peer,
    req: Request,
    label: &mut Option<&'static str>,
) -> Result<Plan, Response> {
    let client_ip = gw.client_ip(peer.ip(), req.headers());
    // A request refused here is traffic like any other: it spends its
    // client address's allowance, so refusals cannot be had without limit.
    let refuse = |limited: bool, answer: Response| gw.charge_refusal(client_ip, limited, answer);
    let Ok(segments) = normalise(req.uri().path()) else {
        return Err(refuse(true, fault(Fault::InvalidPath)));
    };
    if !req
        .uri()
        .query()
        .is_none_or(crate::kernel::wire::valid_query)
    {
        return Err(refuse(true, fault(Fault::InvalidQuery)));
    }
    let Some(index) = gw.inner.table.find(&segments) else {
        return Err(refuse(true, Problem::not_found().into_response()));
    };
    let route = gw.inner.table.route(index);
    let config = &route.config;
    *label = Some(route.label);
    let limited = config.rate_limit;
    let method = req.method();
    // The gateway tunnels nothing and echoes nothing back.
    if !config.allows(method.as_str()) || *method == Method::CONNECT || *method == Method::TRACE {
        let mut r = fault(Fault::MethodNotAllowed);
        let allowed = if config.methods.is_empty() {
            ALL_BUT_TUNNELS.to_owned()
        } else {
            config.methods.join(", ")
        };
        if let Ok(allow) = HeaderValue::from_str(&allowed) {
            r.headers_mut().insert(header::ALLOW, allow);
        }
        return Err(refuse(limited, r));
    }
    // Only one credential is checked: one is all a request may carry.
    if req
        .headers()
        .get_all(header::AUTHORIZATION)
        .iter()
        .nth(1)
        .is_some()
    {
        return Err(refuse(limited, fault(Fault::SeveralCredentials)));
    }
    if declared_length(req.headers()).is_some_and(|n| n > gw.inner.body_limit) {
        return Err(refuse(
            limited,
            crate::kernel::error::payload_too_large().into_response(),
        ));
    }
    let client_ip = gw.client_ip(peer.ip(), req.headers());
    let mut verdict = None;
    let admission = match checked_now(gw, config.auth, req.headers()) {
        Some(checked) => {
            let principal = settle(gw, config, checked, client_ip, &mut verdict)?;
            limit_user(gw, config, principal.as_ref(), &mut verdict)?;
            Admission::Decided(principal)
        }
        None => Admission::Unverified,
    };
    let target = route.upstream_target(&segments, req.uri().query());
    drop(segments);
    let (parts, body) = req.into_parts();
    Ok(Plan {
        route: index,
        head: Some(parts),
        body,
        peer: peer.clone(),
        client_ip,
        target,
        admission,
        verdict,
    })
}

/// Carries out `plan`: verifies a token not known yet, then sends the
/// request to an instance of the route's service, with the rate limit
/// headers on the answer.
#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` keeps a second copy of its arguments"
)]
fn exchange(gw: Arc<Gateway>, mut plan: Plan) -> impl Future<Output = Response> + Send {
    // A block rather than an `async fn`, and the steps below borrow the
    // plan: it is held once, where it was moved in, not copied at each step.
    async move {
        if let Admission::Unverified = plan.admission
            && let Err(refused) = verify(&gw, &mut plan).await
        {
            return refused;
        }
        let mut response = send(&gw, &mut plan).await;
        if let Some(v) = plan.verdict {
            ratelimit::annotate(v, response.headers_mut());
        }
        // The request's fields have gone upstream: their map serves the
        // thread's next request.
        if let Some(head) = plan.head.take() {
            http1::recycle_headers(head.headers);
        }
        response
    }
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
    let principal = settle(gw, config, checked, plan.client_ip, &mut plan.verdict)?;
    limit_user(gw, config, principal.as_ref(), &mut plan.verdict)?;
    plan.admission = Admission::Decided(principal);
    Ok(())
}

/// Sends the planned request to an instance of the route's service. The
/// route's timeout bounds reading a held request body (408 when the client
/// is too slow) and each instance's answer (504).
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
            // fields are written by the wire (see `h1.rs`), from the head
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
            .upstream_answered(&config.prefix, &instance.url, status);
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
                        let mut answer = crate::kernel::error::payload_too_large().into_response();
                        // The rest of the body is not read: it cannot frame another request.
                        answer
                            .headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        return answer;
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

/// One request to one instance, ready to go.
enum Attempt<'a> {
    /// Over this thread's HTTP/1.1 connections to `address`, for the
    /// instance's base path followed by the request's target.
    Http1 {
        address: &'a str,
        path: [&'a str; 2],
        request: &'a http::request::Parts,
        fields: &'a ProxyFields,
    },
    /// Over this thread's h2c client; boxed, so HTTP/1.1 attempts do not
    /// carry the size of a request head.
    H2c { request: Box<http::request::Parts> },
}

/// Why an attempt failed.
struct AttemptError {
    /// No connection could be made: nothing reached the instance.
    connect: bool,
    /// No answer by the deadline.
    timed_out: bool,
    error: Box<dyn std::error::Error + Send + Sync>,
}

/// The `host:port` and the base path (without its trailing slash) of an
/// instance's `http://` URL; none when the URL is not one.
fn split_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("http://")?;
    let slash = rest.bytes().position(|b| b == b'/').unwrap_or(rest.len());
    let (address, base) = rest.split_at(slash);
    Some((address, base.trim_end_matches('/')))
}

impl Attempt<'_> {
    /// Sends the attempt with `body`: the answer, its body streamed back
    /// without hop-by-hop headers, if its head comes by `deadline`. The
    /// answer's body fails when it pauses longer than `pause`.
    async fn send(
        self,
        body: Body,
        deadline: tokio::time::Instant,
        pause: Duration,
    ) -> Result<Response, AttemptError> {
        let response = match self {
            // The deadline is kept by the connection's own timer (see `pool`).
            Attempt::Http1 {
                address,
                path,
                request,
                fields,
            } => match super::pool::send(
                address,
                &path,
                request,
                Some(fields),
                body,
                deadline,
                pause,
            )
            .await
            {
                Ok(r) => r.map(Body::new),
                Err(e) => {
                    return Err(AttemptError {
                        connect: matches!(e, super::pool::SendError::Connect(_)),
                        timed_out: matches!(e, super::pool::SendError::TimedOut),
                        error: Box::new(e),
                    });
                }
            },
            Attempt::H2c { request } => {
                let request = Request::from_parts(*request, body);
                // Boxed, so HTTP/1.1 attempts do not carry its size.
                let answer = Box::pin(tokio::time::timeout_at(
                    deadline,
                    upstream(UpstreamProtocol::H2c).request(request),
                ));
                match answer.await {
                    Ok(Ok(r)) => r.map(|body| Body::new(Paced::new(body, pause))),
                    Ok(Err(e)) => {
                        return Err(AttemptError {
                            connect: e.is_connect(),
                            timed_out: false,
                            error: Box::new(e),
                        });
                    }
                    Err(elapsed) => {
                        return Err(AttemptError {
                            connect: false,
                            timed_out: true,
                            error: Box::new(elapsed),
                        });
                    }
                }
            }
        };
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, body))
    }
}

/// An answer's body over h2c, failing when it pauses longer than `pause`
/// between frames, as an answer over HTTP/1.1 does (see `pool`): an
/// instance that stalls mid-answer does not hold the client for ever. Each
/// frame moves the [`Deadline`] on, not a timer of its own.
struct Paced {
    body: hyper::body::Incoming,
    pause: Duration,
    deadline: Deadline,
    failed: bool,
}

impl Paced {
    fn new(body: hyper::body::Incoming, pause: Duration) -> Paced {
        Paced {
            body,
            pause,
            deadline: Deadline::new(tokio::time::Instant::now() + pause),
            failed: false,
        }
    }
}

impl http_body::Body for Paced {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.deadline.set(tokio::time::Instant::now() + this.pause);
                Poll::Ready(frame.map(|f| f.map_err(axum::Error::new)))
            }
            Poll::Pending if this.deadline.poll_passed(cx) => {
                this.failed = true;
                Poll::Ready(Some(Err(axum::Error::new(
                    "the instance's answer paused too long",
                ))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Attempts at most for a request that reached an instance and failed.
const MAX_ATTEMPTS: usize = 3;

/// Whose fault a failed exchange was.
enum Blame {
    /// The client's streamed body went over the limit.
    TooLarge,
    /// The client's body broke off (the client went away mid-upload).
    ClientBody,
    /// The instance's: counts toward ejecting it.
    Upstream,
}

fn blame(e: &(dyn std::error::Error + 'static)) -> Blame {
    let chain = || std::iter::successors(e.source(), |err| err.source());
    if chain().any(|err| err.is::<http_body_util::LengthLimitError>()) {
        Blame::TooLarge
    } else if chain().any(|err| err.is::<axum::Error>()) {
        // Only the request body (the client's stream) fails as axum's error.
        Blame::ClientBody
    } else {
        Blame::Upstream
    }
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

/// The body length a request declares in `Content-Length`, if it does.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Bodies up to this size with a declared length are read before sending,
/// so a request can go to another instance when a connection fails.
const REPLAYABLE_BODY: u64 = 64 * 1024;

/// A request body as the attempts see it.
enum Outgoing {
    /// Held in memory: every attempt gets a copy.
    Held(axum::body::Bytes),
    /// Streamed: only the first attempt gets it; `stalled` tells whether
    /// the attempt last found the client's body with nothing ready.
    Streamed(Option<Body>, Arc<AtomicBool>),
}

impl Outgoing {
    /// The body for this attempt, and whether another attempt could follow.
    fn attempt(&mut self) -> (Body, bool) {
        match self {
            // An empty body costs no allocation.
            Outgoing::Held(bytes) if bytes.is_empty() => (Body::empty(), true),
            Outgoing::Held(bytes) => (Body::from(bytes.clone()), true),
            Outgoing::Streamed(body, stalled) => {
                let body = body.take().map_or_else(Body::empty, |body| {
                    Body::new(Watched {
                        body,
                        stalled: stalled.clone(),
                    })
                });
                (body, false)
            }
        }
    }

    /// Whether the exchange was waiting on the client's body, not on the
    /// instance, when it stopped.
    fn client_stalled(&self) -> bool {
        matches!(self, Outgoing::Streamed(_, stalled) if stalled.load(Ordering::Relaxed))
    }
}

/// A streamed request body that notes whether its last read found the
/// client with nothing to give: when the exchange then runs out of time, it
/// was the client that kept it waiting (a slow upload), which is answered
/// 408 and does not count against the instance.
struct Watched {
    body: Body,
    stalled: Arc<AtomicBool>,
}

impl http_body::Body for Watched {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        self.stalled.store(polled.is_pending(), Ordering::Relaxed);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A non-empty request body as the attempts will see it: held when its
/// declared length is small enough to replay, streamed otherwise.
async fn prepare_body(body: Body, headers: &HeaderMap, limit: u64) -> Result<Outgoing, Response> {
    let declared = declared_length(headers);
    let limited = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    if declared.is_some_and(|n| n <= REPLAYABLE_BODY) {
        return match limited.collect().await {
            Ok(collected) => Ok(Outgoing::Held(collected.to_bytes())),
            Err(_) => Err(crate::kernel::error::payload_too_large().into_response()),
        };
    }
    Ok(Outgoing::Streamed(
        Some(Body::new(limited)),
        Arc::new(AtomicBool::new(false)),
    ))
}

/// The token check of a route's policy when it needs no waiting: no token
/// to check, or a token whose verdict is remembered. `None` when the token
/// must be verified.
///
/// What comes of a check is settled by [`settle`].
fn checked_now(
    gw: &Gateway,
    policy: AuthPolicy,
    headers: &HeaderMap,
) -> Option<Result<Option<Principal>, TokenError>> {
    let token = match policy {
        AuthPolicy::Public => Err(TokenError::Missing),
        _ => bearer::bearer_token(headers),
    };
    match token {
        Err(TokenError::Missing) if policy != AuthPolicy::Required => Some(Ok(None)),
        Err(e) => Some(Err(e)),
        Ok(token) => gw
            .inner
            .check
            .check_remembered(token)
            .map(|remembered| remembered.map(Some)),
    }
}

/// Applies the route's token policy to what came of the check: the
/// principal when a token verified.
///
/// Every request that does not carry a token proven good is anonymous
/// traffic and takes one request from its client address's allowance: no
/// token, a token that is not a bearer token, and a token refused as
/// forged, expired or revoked alike, so that guessing at tokens is limited
/// like any other anonymous traffic. A token that cannot be checked because
/// auth is away is the platform's fault, not the client's, and is not
/// counted. A valid token counts only against its user's allowance. A
/// route without rate limits counts against neither.
#[allow(
    clippy::result_large_err,
    reason = "the refusal is the answer the client gets, made once"
)]
fn settle(
    gw: &Gateway,
    route: &RouteConfig,
    checked: Result<Option<Principal>, TokenError>,
    client_ip: IpAddr,
    verdict: &mut Option<Verdict>,
) -> Result<Option<Principal>, Response> {
    if !matches!(checked, Ok(Some(_)) | Err(TokenError::Unavailable))
        && route.rate_limit
        && let Some(limiter) = &gw.inner.per_ip
    {
        let v = limiter.check(RateKey::Address(client_ip));
        if matches!(v, Verdict::Refused { .. }) {
            return Err(ratelimit::refusal(v));
        }
        *verdict = Some(v);
    }
    checked.map_err(|e| {
        let mut refused = bearer::refusal(e);
        if let Some(v) = *verdict {
            ratelimit::annotate(v, refused.headers_mut());
        }
        refused
    })
}

/// Takes one request from the allowance of the verified user, if any,
/// on a rate limited route.
#[allow(
    clippy::result_large_err,
    reason = "the refusal is the answer the client gets, made once"
)]
fn limit_user(
    gw: &Gateway,
    route: &RouteConfig,
    principal: Option<&Principal>,
    verdict: &mut Option<Verdict>,
) -> Result<(), Response> {
    if !route.rate_limit {
        return Ok(());
    }
    if let (Some(p), Some(limiter)) = (principal, &gw.inner.per_user) {
        let v = limiter.check(RateKey::User(p.user_id));
        if matches!(v, Verdict::Refused { .. }) {
            return Err(ratelimit::refusal(v));
        }
        *verdict = Some(v);
    }
    Ok(())
}

impl Gateway {
    /// `answer`, a refusal, after it has spent one request of the client
    /// address's allowance when `limited`: 429 instead once that is spent.
    fn charge_refusal(&self, client: IpAddr, limited: bool, mut answer: Response) -> Response {
        if let (true, Some(limiter)) = (limited, &self.inner.per_ip) {
            let v = limiter.check(RateKey::Address(client));
            if matches!(v, Verdict::Refused { .. }) {
                return ratelimit::refusal(v);
            }
            ratelimit::annotate(v, answer.headers_mut());
        }
        answer
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.inner
            .trusted
            .iter()
            .any(|(net, bits)| in_cidr(ip, *net, *bits))
    }

    /// The client's address: the peer, unless the peer is a trusted proxy,
    /// then the nearest untrusted address in `X-Forwarded-For`.
    fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        forwarded_for(headers)
            .into_iter()
            .rev()
            .find(|ip| !self.trusts(*ip))
            .unwrap_or(peer)
    }
}
