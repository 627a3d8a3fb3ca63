//! Forwarding one request: normalise and route it, apply the route's token
//! policy, pick an upstream instance from the registry, and stream the
//! request and the answer through, with the proxy headers set and the
//! hop-by-hop and client-supplied `x-gatehouse-*` headers removed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Uri};
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::balance::Balancer;
use super::config::AuthPolicy;
use super::routes::{RouteTable, normalise};
use crate::kernel::error::Problem;
use crate::kernel::metrics::{Metrics, RouteLabel};
use crate::kernel::registry::Registry;
use crate::middleware::bearer::{self, TokenCheck};
use crate::middleware::ratelimit::{self, Limiter, Verdict};
use crate::middleware::token::{Principal, TokenError};

/// Headers that describe one connection, not the message.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

pub const USER_ID: HeaderName = HeaderName::from_static("x-gatehouse-user-id");
pub const SESSION_ID: HeaderName = HeaderName::from_static("x-gatehouse-session-id");

/// The gateway's shared state. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    table: RouteTable,
    registry: Arc<dyn Registry>,
    client: Client<HttpConnector, Body>,
    check: TokenCheck,
    default_timeout: Duration,
    body_limit: u64,
    trusted: Vec<(IpAddr, u8)>,
    balancer: Balancer,
    metrics: Metrics,
    per_ip: Option<Limiter>,
    per_user: Option<Limiter>,
}

/// What the gateway needs besides its route table.
pub struct Settings {
    pub registry: Arc<dyn Registry>,
    pub check: TokenCheck,
    pub default_timeout: Duration,
    pub body_limit: u64,
    pub trusted_proxies: Vec<String>,
    pub metrics: Metrics,
    pub per_ip: Option<Limiter>,
    pub per_user: Option<Limiter>,
}

impl Gateway {
    pub fn new(table: RouteTable, settings: Settings) -> Result<Self, String> {
        let trusted = settings
            .trusted_proxies
            .iter()
            .map(|t| {
                parse_cidr(t).ok_or_else(|| format!("gateway.trusted_proxies: bad entry {t:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        Ok(Self {
            inner: Arc::new(Inner {
                table,
                registry: settings.registry,
                client: Client::builder(TokioExecutor::new()).build(connector),
                check: settings.check,
                default_timeout: settings.default_timeout,
                body_limit: settings.body_limit,
                trusted,
                balancer: Balancer::default(),
                metrics: settings.metrics,
                per_ip: settings.per_ip,
                per_user: settings.per_user,
            }),
        })
    }
}

fn problem(status: StatusCode, code: &'static str, title: &str) -> Response {
    Problem::new(status, code, title).into_response()
}

/// The handler behind every path the gateway does not serve itself.
pub async fn forward(
    State(gw): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let mut label = String::from("unrouted");
    let mut response = route_and_forward(&gw, peer, req, &mut label).await;
    // The access log: one line per request, never the path's query or any token.
    tracing::info!(
        target: "gatehouse::access",
        method = %method,
        route = %label,
        status = response.status().as_u16(),
        duration_ms = started.elapsed().as_millis() as u64,
        peer = %peer.ip(),
        "request"
    );
    response.extensions_mut().insert(RouteLabel(label));
    response
}

async fn route_and_forward(
    gw: &Gateway,
    peer: SocketAddr,
    req: Request,
    label: &mut String,
) -> Response {
    let Ok((segments, _)) = normalise(req.uri().path()) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            "The request path is not valid",
        );
    };
    let Some(route) = gw.inner.table.find(&segments) else {
        return Problem::not_found().into_response();
    };
    let config = &route.config;
    label.clone_from(&config.prefix);
    if declared_length(req.headers()).is_some_and(|n| n > gw.inner.body_limit) {
        return crate::kernel::error::payload_too_large().into_response();
    }
    if !config.methods.is_empty()
        && !config
            .methods
            .iter()
            .any(|m| m.eq_ignore_ascii_case(req.method().as_str()))
    {
        let mut r = problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method not allowed on this route",
        );
        if let Ok(allow) = HeaderValue::from_str(&config.methods.join(", ")) {
            r.headers_mut().insert(header::ALLOW, allow);
        }
        return r;
    }
    let client_ip = gw.client_ip(peer.ip(), req.headers());
    let token = bearer::bearer(&req).map(str::to_owned);
    // Anonymous traffic is limited per client address before any token work.
    let mut verdict = None;
    if (token.is_err() || config.auth == AuthPolicy::Public)
        && let Some(limiter) = &gw.inner.per_ip
    {
        let v = limiter.check(&client_ip.to_string());
        if matches!(v, Verdict::Refused { .. }) {
            return ratelimit::refusal(v);
        }
        verdict = Some(v);
    }
    let principal = match admit(&gw.inner.check, config.auth, token).await {
        Ok(p) => p,
        Err(e) => return bearer::refusal(e),
    };
    if let (Some(p), Some(limiter)) = (&principal, &gw.inner.per_user) {
        let v = limiter.check(&p.user_id.to_string());
        if matches!(v, Verdict::Refused { .. }) {
            return ratelimit::refusal(v);
        }
        verdict = Some(v);
    }
    let mut response = send(
        gw,
        config,
        peer,
        client_ip,
        principal.as_ref(),
        &route.upstream_path(&segments),
        req,
    )
    .await;
    if let Some(v) = verdict {
        ratelimit::annotate(v, response.headers_mut());
    }
    response
}

/// Sends the request to an instance of the route's service.
async fn send(
    gw: &Gateway,
    config: &super::config::RouteConfig,
    peer: SocketAddr,
    client_ip: IpAddr,
    principal: Option<&Principal>,
    path: &str,
    req: Request,
) -> Response {
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let timeout = config
        .timeout_ms
        .map_or(gw.inner.default_timeout, Duration::from_millis);

    let instances = match gw.inner.registry.resolve(&config.service).await {
        Ok(list) if !list.is_empty() => list,
        _ => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_unavailable",
                "No instance of the service is available",
            );
        }
    };
    let (mut parts, body) = req.into_parts();
    let headers = upstream_headers(
        &parts.headers,
        peer.ip(),
        client_ip,
        principal,
        gw.trusts(peer.ip()),
    );
    let mut body = match prepare_body(body, &parts.headers, gw.inner.body_limit).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let mut tried: Vec<String> = Vec::new();
    while let Some(lease) = gw.inner.balancer.pick(&instances, &tried) {
        let instance = lease.instance.clone();
        tried.push(instance.url.clone());
        let Ok(uri) = format!("{}{path}{query}", instance.url).parse::<Uri>() else {
            return problem(
                StatusCode::BAD_GATEWAY,
                "bad_upstream",
                "The upstream address is not valid",
            );
        };
        parts.uri = uri;
        let (this_body, more) = body.attempt();
        let mut upstream = Request::from_parts(parts.clone(), this_body);
        *upstream.headers_mut() = headers.clone();
        let outcome = tokio::time::timeout(timeout, gw.inner.client.request(upstream)).await;
        let status = match &outcome {
            Err(_) => "timeout".to_owned(),
            Ok(Ok(r)) => r.status().as_u16().to_string(),
            Ok(Err(e)) if e.is_connect() => "connect_error".to_owned(),
            Ok(Err(_)) => "error".to_owned(),
        };
        gw.inner
            .metrics
            .gateway_upstream_requests_total
            .with_label_values(&[
                config.prefix.as_str(),
                instance.url.as_str(),
                status.as_str(),
            ])
            .inc();
        match outcome {
            Ok(Ok(response)) => {
                lease.succeeded();
                return downstream(response);
            }
            Err(_) => {
                lease.failed();
                return problem(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    "The service did not answer in time",
                );
            }
            Ok(Err(e)) => {
                if lease.failed() {
                    tracing::warn!(service = %config.service, instance = %instance.url, "upstream instance ejected after repeated failures");
                }
                // Nothing reached the instance: safe to send elsewhere.
                if e.is_connect() && more {
                    tracing::warn!(service = %config.service, instance = %instance.url, "upstream connect failed; trying another instance");
                    continue;
                }
                tracing::warn!(service = %config.service, instance = %instance.url, error = %e, "upstream request failed");
                return problem(
                    StatusCode::BAD_GATEWAY,
                    "upstream_failed",
                    "The service failed to answer",
                );
            }
        }
    }
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "upstream_unavailable",
        "No instance of the service could be reached",
    )
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
    /// Streamed: only the first attempt gets it.
    Streamed(Option<Body>),
}

impl Outgoing {
    /// The body for this attempt, and whether another attempt could follow.
    fn attempt(&mut self) -> (Body, bool) {
        match self {
            Outgoing::Held(bytes) => (Body::from(bytes.clone()), true),
            Outgoing::Streamed(body) => (body.take().unwrap_or_else(Body::empty), false),
        }
    }
}

async fn prepare_body(body: Body, headers: &HeaderMap, limit: u64) -> Result<Outgoing, Response> {
    let declared = declared_length(headers);
    let limited = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    if http_body::Body::is_end_stream(&limited) || declared.is_some_and(|n| n <= REPLAYABLE_BODY) {
        return match limited.collect().await {
            Ok(collected) => Ok(Outgoing::Held(collected.to_bytes())),
            Err(_) => Err(crate::kernel::error::payload_too_large().into_response()),
        };
    }
    Ok(Outgoing::Streamed(Some(Body::new(limited))))
}

/// Applies the route's token policy: the principal when a token verified.
async fn admit(
    check: &TokenCheck,
    policy: AuthPolicy,
    token: Result<String, TokenError>,
) -> Result<Option<Principal>, TokenError> {
    if policy == AuthPolicy::Public {
        return Ok(None);
    }
    match token {
        Ok(token) => check.check(&token).await.map(Some),
        Err(TokenError::Missing) if policy == AuthPolicy::Optional => Ok(None),
        Err(e) => Err(e),
    }
}

impl Gateway {
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

fn forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// The headers sent upstream.
fn upstream_headers(
    incoming: &HeaderMap,
    peer: IpAddr,
    client: IpAddr,
    principal: Option<&Principal>,
    peer_trusted: bool,
) -> HeaderMap {
    let mut headers = incoming.clone();
    strip_hop_by_hop(&mut headers);
    let spoofable: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-gatehouse-"))
        .cloned()
        .collect();
    for name in spoofable {
        headers.remove(name);
    }
    let host = incoming
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    // The upstream gets its own Host; the client's travels in X-Forwarded-Host.
    headers.remove(header::HOST);
    let chain = if peer_trusted {
        let mut chain: Vec<String> = forwarded_for(incoming)
            .iter()
            .map(ToString::to_string)
            .collect();
        chain.push(peer.to_string());
        chain.join(", ")
    } else {
        peer.to_string()
    };
    let set = |headers: &mut HeaderMap, name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    set(&mut headers, "x-forwarded-for", chain);
    set(&mut headers, "x-forwarded-proto", "http".into());
    set(&mut headers, "x-forwarded-host", host.clone());
    let node = match client {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    set(
        &mut headers,
        "forwarded",
        format!("for={node};proto=http;host=\"{host}\""),
    );
    if let Some(p) = principal {
        set(&mut headers, "x-gatehouse-user-id", p.user_id.to_string());
        set(
            &mut headers,
            "x-gatehouse-session-id",
            p.session_id.to_string(),
        );
    }
    crate::kernel::telemetry::inject_headers(&mut headers);
    headers
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named.into_iter().chain(HOP_BY_HOP) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// The upstream's answer, streamed back without its hop-by-hop headers.
fn downstream(response: http::Response<hyper::body::Incoming>) -> Response {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Body::new(body.map_err(axum::Error::new)))
}

fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let (addr, bits) = match text.split_once('/') {
        Some((a, b)) => (a.parse::<IpAddr>().ok()?, b.parse::<u8>().ok()?),
        None => {
            let a = text.parse::<IpAddr>().ok()?;
            (a, if a.is_ipv4() { 32 } else { 128 })
        }
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some((addr, bits))
}

fn in_cidr(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_blocks_match_their_members_only() {
        let (net, bits) = parse_cidr("10.0.0.0/8").unwrap();
        assert!(in_cidr("10.2.3.4".parse().unwrap(), net, bits));
        assert!(!in_cidr("11.0.0.1".parse().unwrap(), net, bits));
        let (one, b) = parse_cidr("127.0.0.1").unwrap();
        assert!(in_cidr("127.0.0.1".parse().unwrap(), one, b));
        assert!(!in_cidr("127.0.0.2".parse().unwrap(), one, b));
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert!(parse_cidr("nonsense").is_none());
        let (v6, b6) = parse_cidr("fd00::/8").unwrap();
        assert!(in_cidr("fd12::1".parse().unwrap(), v6, b6));
    }

    #[test]
    fn clients_cannot_forge_identity_or_hop_by_hop_headers() {
        let mut incoming = HeaderMap::new();
        incoming.insert("x-gatehouse-user-id", HeaderValue::from_static("admin"));
        incoming.insert("x-gatehouse-anything", HeaderValue::from_static("x"));
        incoming.insert("connection", HeaderValue::from_static("close, x-secret"));
        incoming.insert("x-secret", HeaderValue::from_static("1"));
        incoming.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        incoming.insert("host", HeaderValue::from_static("api.example.org"));
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        let out = upstream_headers(&incoming, peer, peer, None, false);
        assert!(out.get("x-gatehouse-user-id").is_none());
        assert!(out.get("x-gatehouse-anything").is_none());
        assert!(out.get("x-secret").is_none());
        assert!(out.get("connection").is_none());
        assert_eq!(out["x-forwarded-for"], "203.0.113.9");
        assert_eq!(out["x-forwarded-host"], "api.example.org");
        assert_eq!(
            out["forwarded"],
            "for=203.0.113.9;proto=http;host=\"api.example.org\""
        );
        // Behind a trusted proxy, its chain is kept and extended.
        let out = upstream_headers(&incoming, peer, "6.6.6.6".parse().unwrap(), None, true);
        assert_eq!(out["x-forwarded-for"], "6.6.6.6, 203.0.113.9");
        assert_eq!(
            out["forwarded"],
            "for=6.6.6.6;proto=http;host=\"api.example.org\""
        );
    }
}
