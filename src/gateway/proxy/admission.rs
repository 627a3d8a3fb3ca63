//! Admission: a request routed, and what its route's policy makes of it
//! that needs no waiting (refusals, the token already known, the rate
//! limits), as the plan of its exchange.

use std::net::IpAddr;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::Method;
use http::header::{self, HeaderMap, HeaderValue};

use super::body::declared_length;
use super::{Gateway, fault};
use crate::gateway::config::{AuthPolicy, RouteConfig};
use crate::gateway::fault::Fault;
use crate::gateway::headers::{Peer, forwarded_for};
use crate::gateway::routes::normalise;
use crate::gateway::rules::Cover;
use crate::kernel::credentials::SERVICES;
use crate::kernel::error::Problem;
use crate::middleware::bearer::{self};
use crate::middleware::ratelimit::{self, RateKey, Verdict};
use crate::middleware::token::{Holder, TokenError};

/// Every method but the tunnels and echoes the gateway takes on no route.
const ALL_BUT_TUNNELS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// A request admitted to its route, with what its exchange needs.
pub(super) struct Plan {
    /// The route's place in the table.
    pub(super) route: usize,
    /// The request's head; taken by the last attempt when that attempt
    /// needs it as its own.
    pub(super) head: Option<http::request::Parts>,
    pub(super) body: Body,
    pub(super) peer: Peer,
    pub(super) client_ip: IpAddr,
    /// The path and query to send upstream.
    pub(super) target: String,
    pub(super) admission: Admission,
    /// The rate limit verdict whose headers the response carries.
    pub(super) verdict: Option<Verdict>,
    /// The key the shared limiter is still to count this request against.
    pub(super) shared_due: Option<RateKey>,
    /// What the route's rules make of the request: `None` on a route
    /// without rules.
    pub(super) cover: Option<Cover>,
}

/// Where the route's token policy stands for a request.
pub(super) enum Admission {
    /// Decided: the user or client, when a token verified.
    Decided(Option<Holder>),
    /// The token is not known yet: it is verified in the exchange.
    Unverified,
}

/// A request that goes no further: the response, and the key the shared
/// limiter is still to count it against (which turns the response into a
/// 429 once that allowance is spent).
pub(super) struct Refusal {
    pub(super) response: Response,
    pub(super) shared_due: Option<RateKey>,
}

/// Routes `req` and applies everything about it that needs no waiting:
/// the plan of its exchange, or the response when it goes no further.
#[allow(
    clippy::result_large_err,
    reason = "the refusal is the response the client gets, made once"
)]
pub(super) fn plan(
    gw: &Gateway,
    peer: &Peer,
    req: Request,
    label: &mut Option<&'static str>,
) -> Result<Plan, Refusal> {
    let client_ip = gw.client_ip(peer.ip(), req.headers());
    // A request refused here is traffic like any other: it spends its
    // client address's allowance, so refusals cannot be had without limit.
    let refuse = |limited: bool, response: Response| gw.count_refusal(client_ip, limited, response);
    let Ok(segments) = normalise(req.uri().path()) else {
        return Err(refuse(true, fault(Fault::InvalidPath)));
    };
    if !req
        .uri()
        .query()
        .is_none_or(crate::kernel::http::wire::valid_query)
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
    let (mut verdict, mut shared_due) = (None, None);
    let admission = match checked_now(gw, config.auth, req.headers()) {
        Some(checked) => {
            let decided = admit_checked(
                gw,
                config,
                checked,
                client_ip,
                &mut verdict,
                &mut shared_due,
            )
            .and_then(|principal| {
                limit_user(
                    gw,
                    config,
                    principal.as_ref(),
                    &mut verdict,
                    &mut shared_due,
                )
                .map(|()| principal)
            });
            match decided {
                Ok(principal) => Admission::Decided(principal),
                Err(response) => {
                    return Err(Refusal {
                        response,
                        shared_due,
                    });
                }
            }
        }
        None => Admission::Unverified,
    };
    let target = route.upstream_target(&segments, req.uri().query());
    let cover = route.cover(method.as_str(), &segments);
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
        shared_due,
        cover,
    })
}

/// The token check of a route's policy when it needs no waiting: no token
/// to check, or a token whose verdict is remembered. `None` when the token
/// must be verified.
///
/// What comes of a check is decided by [`admit_checked`].
fn checked_now(
    gw: &Gateway,
    policy: AuthPolicy,
    headers: &HeaderMap,
) -> Option<Result<Option<Holder>, TokenError>> {
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
    reason = "the refusal is the response the client gets, made once"
)]
pub(super) fn admit_checked(
    gw: &Gateway,
    route: &RouteConfig,
    checked: Result<Option<Holder>, TokenError>,
    client_ip: IpAddr,
    verdict: &mut Option<Verdict>,
    shared_due: &mut Option<RateKey>,
) -> Result<Option<Holder>, Response> {
    if !matches!(checked, Ok(Some(_)) | Err(TokenError::Unavailable)) && route.rate_limit {
        gw.count_local(RateKey::Address(client_ip), verdict, shared_due)?;
    }
    checked.map_err(|e| {
        let mut refused = bearer::refusal(e);
        if let Some(v) = *verdict {
            ratelimit::annotate(v, refused.headers_mut());
        }
        refused
    })
}

/// Takes one request from the allowance of the verified user (or client), if any,
/// on a rate limited route.
#[allow(
    clippy::result_large_err,
    reason = "the refusal is the response the client gets, made once"
)]
pub(super) fn limit_user(
    gw: &Gateway,
    route: &RouteConfig,
    caller: Option<&Holder>,
    verdict: &mut Option<Verdict>,
    shared_due: &mut Option<RateKey>,
) -> Result<(), Response> {
    match caller {
        Some(c) if route.rate_limit => {
            gw.count_local(RateKey::User(c.subject().as_uuid()), verdict, shared_due)
        }
        _ => Ok(()),
    }
}

impl Gateway {
    /// The credential for a request to `service`: its own service token
    /// when `service` is one of the platform's, which then believes the
    /// client address the request's `Forwarded` names; none for a team's.
    pub(super) fn vouch(&self, service: &str) -> Option<HeaderValue> {
        if service == crate::gateway::NAME || !SERVICES.contains(&service) {
            return None;
        }
        let token = self.inner.caller.as_ref()?.token(service).ok()?;
        HeaderValue::from_bytes(token.as_bytes()).ok()
    }

    /// Takes one request from `key`'s allowance, if its kind of key is
    /// limited: here, into `verdict` (the response once it is spent), or, when
    /// replicas share their counts, left `shared_due` to [`Gateway::count_shared`].
    #[allow(
        clippy::result_large_err,
        reason = "the refusal is the response the client gets, made once"
    )]
    fn count_local(
        &self,
        key: RateKey,
        verdict: &mut Option<Verdict>,
        shared_due: &mut Option<RateKey>,
    ) -> Result<(), Response> {
        let local = match key {
            RateKey::User(_) => &self.inner.per_user,
            _ => &self.inner.per_ip,
        };
        if let Some(limiter) = local {
            if self.inner.shared.is_some() {
                *shared_due = Some(key);
            } else {
                *verdict = Some(limiter.spend(key)?);
            }
        }
        Ok(())
    }

    /// Counts the request against `shared_due` in the shared limiter: the
    /// verdict into `verdict`, or the response the client gets instead.
    pub(super) async fn count_shared(
        &self,
        shared_due: &mut Option<RateKey>,
        verdict: &mut Option<Verdict>,
    ) -> Result<(), Response> {
        if let (Some(key), Some(shared)) = (shared_due.take(), &self.inner.shared)
            && let Some(v) = shared.spend(key).await?
        {
            *verdict = Some(v);
        }
        Ok(())
    }

    /// `response`, a refusal, after it has spent one request of the client
    /// address's allowance when `limited`: 429 instead once that is spent.
    fn count_refusal(&self, client: IpAddr, limited: bool, mut response: Response) -> Refusal {
        let (mut verdict, mut shared_due) = (None, None);
        if limited
            && let Err(refused) =
                self.count_local(RateKey::Address(client), &mut verdict, &mut shared_due)
        {
            return Refusal {
                response: refused,
                shared_due: None,
            };
        }
        if let Some(v) = verdict {
            ratelimit::annotate(v, response.headers_mut());
        }
        Refusal {
            response,
            shared_due,
        }
    }

    pub(super) fn trusts(&self, ip: IpAddr) -> bool {
        self.inner.trusted.iter().any(|net| net.contains(ip))
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

/// Asks authz whether the request's user holds the route's `permission`
/// (at `resource`): 403 naming it when not, 503 when authz
/// cannot say. The route requires a token, so a user is known by now.
pub(super) async fn permitted(
    gw: &Gateway,
    admission: &Admission,
    resource: Option<&str>,
    permission: &str,
) -> Result<(), Response> {
    let Admission::Decided(Some(caller)) = admission else {
        return Err(bearer::refusal(TokenError::Missing));
    };
    match gw
        .inner
        .permits
        .allowed(caller.subject(), permission, resource)
        .await
    {
        Ok(true) => Ok(()),
        Ok(false) => Err(crate::gateway::fault::forbidden(permission)),
        Err(e) => {
            tracing::warn!(error = %e, "a route's permission check failed");
            Err(fault(Fault::AuthzUnavailable))
        }
    }
}
