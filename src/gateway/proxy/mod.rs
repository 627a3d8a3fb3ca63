//! Forwarding one request: normalise and route it, apply the route's token
//! policy, pick an upstream instance from the registry, and stream the
//! request and the response through, with the proxy headers set and the
//! hop-by-hop and client-supplied `x-gatehouse-*` headers removed.
//!
//! Rooms: this file forwards (the plan, a kept answer or the exchange);
//! `admission.rs` routes a request and applies its policy and limits,
//! `attempt.rs` makes one attempt at one instance, `body.rs` prepares the
//! request body for the attempts, `send.rs` sends a planned request to the
//! instances in turn, `kept.rs` keeps public responses of the routes that
//! ask for it a moment and answers from them.

mod admission;
mod attempt;
mod body;
mod kept;
mod send;

use admission::{Admission, Plan, Refusal, admit_checked, limit_user, permitted, plan};
use send::send;

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::Method;
use tokio_util::sync::CancellationToken;

use super::balance::Balancer;
use super::fault::{self, Fault};
use super::headers::Peer;
use super::probe::ProbePlan;
use super::routes::RouteTable;
use super::rules::Cover;
use crate::kernel::config::ConfigError;
use crate::kernel::credentials::Caller;
use crate::kernel::http::wire;
use crate::kernel::metrics::Metrics;
use crate::kernel::origin::Cidr;
use crate::kernel::registry::Registry;
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
