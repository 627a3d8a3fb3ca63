//! The `[gateway]` config section: where it listens and its route table.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::kernel::http::io_threads::Pinning;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// The one address clients talk to.
    pub listen: SocketAddr,
    /// Timeout for an upstream answer when a route sets none.
    pub upstream_timeout_ms: u64,
    /// Largest request body forwarded, in bytes; larger ones get 413.
    pub body_limit_bytes: u64,
    /// Path asked of an ejected instance to tell whether it is back; any
    /// answer below 500 readmits it.
    pub probe_path: String,
    /// How often an ejected instance is probed.
    pub probe_interval_ms: u64,
    /// Threads that serve client connections, each with its own event loop
    /// and its own upstream connections; 0 for one per CPU core.
    pub io_threads: usize,
    /// Whether each I/O thread is bound to a CPU: `auto` (when there is one
    /// thread per CPU the process may run on), `always` or `never`.
    pub pin_io_threads: Pinning,
    /// Peers (IP addresses or CIDR blocks) whose `X-Forwarded-For` is
    /// believed; for anyone else the client is the peer itself.
    pub trusted_proxies: Vec<String>,
    /// Whether client header fields whose names hold an underscore go
    /// upstream. Off by default, as in nginx: CGI-style servers read `_` as
    /// `-`, so `x_gatehouse_user_id` would pass for a field the gateway
    /// sets. When on, names that read as a reserved one are dropped still.
    pub underscores_in_headers: bool,
    /// Moved to `rpc.permission_cache_ms`: a config that still has it is
    /// refused with a message saying so.
    #[serde(skip_serializing)]
    pub permission_cache_ms: Option<serde::de::IgnoredAny>,
    /// Routes of the team's own services, in addition to the built-in
    /// routes of the core services.
    pub routes: Vec<RouteConfig>,
    pub rate_limit: RateLimitConfig,
    pub cors: CorsConfig,
    pub tls: TlsConfig,
}

/// TLS for clients. With both files set, the gateway's listener speaks
/// TLS only (1.3 and 1.2), offering HTTP/2 and HTTP/1.1 by ALPN.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The certificate chain, leaf first, as PEM.
    pub cert_file: String,
    /// The leaf's private key, as PEM.
    pub key_file: String,
    /// How often the two files are looked at; a change is served from
    /// then on, without a restart.
    pub reload_check_secs: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: String::new(),
            key_file: String::new(),
            reload_check_secs: 5,
        }
    }
}

/// GCRA limits: per client address for anonymous traffic, per user for
/// authenticated traffic. A rate of 0 turns that limit off.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub per_ip_per_sec: u32,
    pub per_ip_burst: u32,
    pub per_user_per_sec: u32,
    pub per_user_burst: u32,
    /// Most client addresses or users tracked at once (memory bound).
    pub max_tracked_keys: usize,
    /// `local`: each gateway counts on its own. `redis`: every replica
    /// counts in the deployment's Redis (`[redis]`, the `redis` feature).
    pub backend: RateLimitBackend,
    /// With `backend = "redis"`, what a check becomes while Redis cannot
    /// answer: `local` (this gateway's own count), `open` (let through) or
    /// `closed` (refused with 503).
    pub when_redis_down: WhenRedisDown,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_ip_per_sec: 20,
            per_ip_burst: 40,
            per_user_per_sec: 50,
            per_user_burst: 100,
            max_tracked_keys: 100_000,
            backend: RateLimitBackend::Local,
            when_redis_down: WhenRedisDown::Local,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitBackend {
    Local,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenRedisDown {
    Local,
    Open,
    Closed,
}

/// Cross-origin requests from browsers. No allowed origins: no CORS headers
/// at all (same-origin only).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Exact origins, e.g. `https://app.example.org`.
    pub allowed_origins: Vec<String>,
    pub allowed_methods: Vec<String>,
    pub allowed_headers: Vec<String>,
    pub exposed_headers: Vec<String>,
    pub allow_credentials: bool,
    pub max_age_secs: u64,
}

impl Default for CorsConfig {
    fn default() -> Self {
        let list = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect();
        Self {
            allowed_origins: Vec::new(),
            allowed_methods: list(&["GET", "POST", "PUT", "PATCH", "DELETE"]),
            allowed_headers: list(&["authorization", "content-type", "if-match", "x-request-id"]),
            exposed_headers: list(&["etag", "location", "retry-after", "x-request-id"]),
            allow_credentials: false,
            max_age_secs: 600,
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            upstream_timeout_ms: 30_000,
            body_limit_bytes: 10 * 1024 * 1024,
            probe_path: "/healthz".into(),
            probe_interval_ms: 1_000,
            io_threads: 0,
            pin_io_threads: Pinning::Auto,
            trusted_proxies: Vec::new(),
            underscores_in_headers: false,
            permission_cache_ms: None,
            routes: Vec::new(),
            rate_limit: RateLimitConfig::default(),
            tls: TlsConfig::default(),
            cors: CorsConfig::default(),
        }
    }
}

/// One route: requests whose normalised path is `prefix` or lies below it
/// go to `service`. The longest matching prefix wins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub prefix: String,
    /// The service name, as registered in the registry.
    pub service: String,
    /// `public`, `optional` (a token is checked when sent) or `required`.
    #[serde(default)]
    pub auth: AuthPolicy,
    /// Remove the prefix before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Upstream timeout for this route; the gateway default when absent.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Allowed methods; all when empty.
    #[serde(default)]
    pub methods: Vec<String>,
    /// How the gateway talks to the service's instances.
    #[serde(default)]
    pub upstream_protocol: UpstreamProtocol,
    /// Whether the gateway's rate limits apply to the route (the default).
    /// Requests on a route without them count against no allowance, and
    /// their responses carry no `RateLimit-*` fields: for traffic a service
    /// limits by itself, or that comes from callers known not to abuse it.
    #[serde(default = "limited")]
    pub rate_limit: bool,
    /// Whether the gateway keeps the route's public responses a moment and
    /// answers the same `GET` from them (see `proxy/kept.rs`): a `GET`
    /// without credentials, cookies or `Origin`, answered 200 with
    /// `Cache-Control: public, max-age=N`, for at most a second.
    #[serde(default)]
    pub keep_public: bool,
    /// Path templates with a permission per method (see `gateway::rules`):
    /// on a route with rules, a request goes on only when one covers it,
    /// and its user holds that permission; the route must be `required`.
    #[serde(default)]
    pub rules: Vec<RouteRule>,
    /// Removed: a route-wide permission. A config naming it is refused at
    /// start, naming `rules`.
    #[serde(default, skip_serializing)]
    pub permission: Option<serde::de::IgnoredAny>,
    /// Removed: the path segment naming the resource. A config naming it is
    /// refused at start, naming `rules`.
    #[serde(default, skip_serializing)]
    pub resource_segment: Option<serde::de::IgnoredAny>,
}

/// One rule of a route: a path template, the permission each method
/// needs there, and the resource that permission is asked at:
///
/// ```toml
/// [[gateway.routes.rules]]
/// path = "/billing/invoices/{id}"
/// GET = "billing.invoices:read"
/// POST = "billing.invoices:write"
/// resource = "billing.invoices:{id}"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteRule {
    /// The whole path, from the root: literal segments, `{name}` for one
    /// segment, and last `{name*}` for the rest.
    pub path: String,
    /// The resource the permission is asked at, from the path's variables
    /// (`billing.invoices:{id}`); at the permission's type when absent.
    #[serde(default)]
    pub resource: Option<String>,
    /// The permission (`resource_type:action`) each method needs, by
    /// method in capitals; a method not named is refused.
    #[serde(flatten)]
    pub methods: std::collections::BTreeMap<String, String>,
}

fn limited() -> bool {
    true
}

impl RouteConfig {
    /// A route with the defaults: no prefix stripping, the gateway's
    /// timeout, every method, HTTP/1.1 upstream, rate limited.
    pub fn new(prefix: &str, service: &str, auth: AuthPolicy) -> Self {
        Self {
            prefix: prefix.into(),
            service: service.into(),
            auth,
            strip_prefix: false,
            timeout_ms: None,
            methods: Vec::new(),
            upstream_protocol: UpstreamProtocol::default(),
            rate_limit: true,
            keep_public: false,
            rules: Vec::new(),
            permission: None,
            resource_segment: None,
        }
    }

    /// Whether the route takes `method`: every method when the route lists
    /// none. Methods are case-sensitive (RFC 9110 section 9.1): `get` is
    /// not `GET`.
    pub fn allows(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m == method)
    }
}

/// The protocol spoken to upstream instances: HTTP/1.1 over pooled
/// keep-alive connections, or HTTP/2 without TLS (prior knowledge), which
/// multiplexes every request to an instance over one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    H2c,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthPolicy {
    Public,
    Optional,
    #[default]
    Required,
}
