//! Sending a planned request to an instance of its route's service: the
//! instances from the registry, the request body held for the attempts,
//! the proxy fields, one attempt after another while one may follow, and
//! an instance that keeps failing ejected and probed.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{self, HeaderValue};
use smallvec::SmallVec;

use super::admission::{Admission, Plan};
use super::attempt::{Attempt, Blame, MAX_ATTEMPTS, blame, split_url};
use super::body::{Outgoing, prepare_body};
use super::{Gateway, fault};
use crate::gateway::balance::Lease;
use crate::gateway::client::upstream;
use crate::gateway::config::{RouteConfig, UpstreamProtocol};
use crate::gateway::fault::Fault;
use crate::gateway::h1_client::is_idempotent;
use crate::gateway::headers::upstream_headers;
use crate::gateway::probe;
use crate::kernel::registry::Instance;

/// Sends the planned request to an instance of the route's service. The
/// route's timeout bounds reading a held request body (408 when the client
/// is too slow) and each instance's response (504).
pub(super) async fn send(gw: &Gateway, plan: &mut Plan) -> Response {
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
