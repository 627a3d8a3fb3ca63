//! The gateway: the single entry point for external traffic. It routes
//! requests by path prefix to services found through the registry, checks
//! tokens at the edge per route policy, and streams requests and answers
//! through; the same middleware as every service (request id, tracing,
//! metrics) runs in front of it.
//!
//! Rooms: `config.rs` (the `[gateway]` section and route shape), `edge.rs`
//! (what answers a client connection: the gateway's own paths to its
//! router, everything else to the proxy), `routes.rs` (the route table and
//! path normalisation), `proxy/` (forwarding: admission with the token policy and rate
//! limits, attempts, retries), `fault.rs` (the gateway's own responses, in one table),
//! `headers.rs` (what headers travel up and down), `balance.rs` (instance
//! choice and passive health), `probe.rs` (active checks of ejected
//! instances), `pool/` (each I/O thread's HTTP/1.1 connections to
//! instances), `h1_client/` (exchanges with an instance over such a connection,
//! driven by the request's own task, by the rules of `kernel::http::wire`),
//! `client.rs` (hyper's clients: h2c upstreams and the gateway's own
//! requests), `openapi.rs` (the merged API document at `/openapi.json` and
//! the docs page at `/docs`). This file wires them up.
//! The gateway has no database.

pub mod balance;
pub mod client;
pub mod config;
pub mod edge;
pub mod fault;
pub mod h1_client;
pub mod headers;
pub mod openapi;
pub mod pool;
pub mod probe;
pub mod proxy;
pub mod routes;
pub mod rules;

use std::sync::Arc;
use std::time::Duration;

pub use config::GatewayConfig;

use crate::kernel::ServiceContext;
use crate::kernel::health::Probes;
use crate::kernel::http::io_threads::IoPlan;
use crate::kernel::http::observe::ObserveLayer;
use crate::kernel::http::server::{self, Running, ServiceApp};
use crate::kernel::metrics::Tracked;
use crate::middleware::bearer::TokenCheck;
use crate::middleware::permit::Permits;
use crate::middleware::ratelimit::{Limiter, SharedLimit};
use http::{HeaderName, HeaderValue, Method};
use tower::Layer as _;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub const NAME: &str = "gateway";

/// The limiter every replica shares, when `rate_limit.backend` is `redis`.
#[cfg(feature = "redis")]
async fn shared_limits(
    ctx: &ServiceContext,
    limits: &config::RateLimitConfig,
    per_ip: &Option<Limiter>,
    per_user: &Option<Limiter>,
) -> anyhow::Result<Option<Arc<dyn SharedLimit>>> {
    use crate::middleware::ratelimit::redis::{Fallback, RedisLimits};
    if limits.backend != config::RateLimitBackend::Redis {
        return Ok(None);
    }
    let redis = ctx.redis.connection().await?.ok_or_else(|| {
        anyhow::anyhow!(
            "gateway.rate_limit.backend = \"redis\" needs redis.url (GATEHOUSE_REDIS__URL)"
        )
    })?;
    let fallback = match limits.when_redis_down {
        config::WhenRedisDown::Local => Fallback::Local {
            per_ip: per_ip.clone(),
            per_user: per_user.clone(),
        },
        config::WhenRedisDown::Open => Fallback::Open,
        config::WhenRedisDown::Closed => Fallback::Closed,
    };
    Ok(Some(Arc::new(RedisLimits::new(
        redis,
        (limits.per_ip_per_sec, limits.per_ip_burst),
        (limits.per_user_per_sec, limits.per_user_burst),
        fallback,
    ))))
}

#[cfg(not(feature = "redis"))]
async fn shared_limits(
    _: &ServiceContext,
    limits: &config::RateLimitConfig,
    _: &Option<Limiter>,
    _: &Option<Limiter>,
) -> anyhow::Result<Option<Arc<dyn SharedLimit>>> {
    if limits.backend == config::RateLimitBackend::Redis {
        anyhow::bail!(
            "gateway.rate_limit.backend = \"redis\" needs a build with the redis feature (cargo build --features redis)"
        );
    }
    Ok(None)
}

/// TLS for clients, when `[gateway.tls]` names a certificate and key.
fn tls(
    config: &config::TlsConfig,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    match (config.cert_file.is_empty(), config.key_file.is_empty()) {
        (true, true) => Ok(None),
        (false, false) => {
            let files = crate::kernel::http::tls::TlsFiles {
                cert: config.cert_file.clone().into(),
                key: config.key_file.clone().into(),
                check_every: Duration::from_secs(config.reload_check_secs.max(1)),
            };
            Ok(Some(crate::kernel::http::tls::server(&files, shutdown)?))
        }
        _ => anyhow::bail!("gateway.tls: set both cert_file and key_file, or neither"),
    }
}

pub async fn start(ctx: &ServiceContext, config: GatewayConfig) -> anyhow::Result<Running> {
    let table = routes::RouteTable::new(&config.routes)?;
    if !config.probe_path.starts_with('/') {
        anyhow::bail!(
            "gateway.probe_path: {:?} must start with '/'",
            config.probe_path
        );
    }
    let limits = &config.rate_limit;
    let per_ip = Limiter::new(
        limits.per_ip_per_sec,
        limits.per_ip_burst,
        limits.max_tracked_keys,
    );
    let per_user = Limiter::new(
        limits.per_user_per_sec,
        limits.per_user_burst,
        limits.max_tracked_keys,
    );
    let shared = shared_limits(ctx, limits, &per_ip, &per_user).await?;
    let (check, revocations) = TokenCheck::for_service(ctx, NAME).await?;
    let permits = Permits::for_service(ctx, NAME).await?;
    let changes = permits.listen(NAME, &ctx.bus, ctx.shutdown.clone()).await?;
    let gateway = proxy::Gateway::new(
        table,
        proxy::Settings {
            registry: ctx.registry.clone(),
            check,
            default_timeout: Duration::from_millis(config.upstream_timeout_ms),
            body_limit: config.body_limit_bytes,
            trusted_proxies: config.trusted_proxies.clone(),
            underscores_in_headers: config.underscores_in_headers,
            metrics: ctx.metrics.clone(),
            per_ip: per_ip.clone(),
            per_user: per_user.clone(),
            shared,
            probe: probe::ProbePlan {
                path: config.probe_path.clone(),
                interval: Duration::from_millis(config.probe_interval_ms.max(10)),
            },
            shutdown: ctx.shutdown.clone(),
            permits: permits.clone(),
            caller: ctx.keyring.caller(NAME),
        },
    )?;
    let mut background = vec![revocations, changes];
    for limiter in [&per_ip, &per_user].into_iter().flatten() {
        background.push(limiter.spawn_housekeeping(ctx.shutdown.clone()));
    }
    let cors = cors_layer(&config.cors)?;
    let mut http = openapi::routes(gateway.clone());
    if let Some(cors) = &cors {
        http = http.layer(cors.clone());
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    let app = ServiceApp {
        name: NAME,
        http,
        grpc: tonic::service::Routes::new(health_service),
        probes: Probes::default(),
        io_threads: Some(IoPlan {
            count: config.io_threads,
            pinning: config.pin_io_threads,
        }),
    };
    // Proxied requests pass the same shared layers as the gateway's own,
    // then CORS, then the proxy.
    let tracked = Tracked {
        metrics: ctx.metrics.clone(),
        service: NAME,
    };
    let cors_layers = tower::ServiceBuilder::new().option_layer(cors);
    let tls = tls(&config.tls, ctx.shutdown.clone())?;
    let secure = tls.is_some();
    let launch = server::Launch {
        listen: config.listen,
        tls,
        advertise_url: None,
        health,
        background,
    };
    server::launch_with(ctx, app, launch, move |router| {
        move |addr| {
            // A handle of the connection's own: its requests count their
            // references on it rather than on the gateway's shared one,
            // which requests on the other I/O threads touch too.
            let gateway = Arc::new(gateway.clone());
            let peer = headers::Peer::new(addr, secure);
            // The observe layer is the connection's own too, for the same reason.
            let observe = ObserveLayer::new(tracked.clone());
            let forward = {
                let gateway = gateway.clone();
                let peer = peer.clone();
                tower::service_fn(move |req| proxy::forward(&gateway, &peer, req))
            };
            edge::Edge {
                local: crate::kernel::http::connection::with_peer(router.clone(), addr),
                forwarded: observe.layer(cors_layers.service(forward.clone())),
                own_cors: observe.layer(forward),
            }
        }
    })
    .await
}

/// The CORS layer, or none when no origin is allowed. Preflight requests
/// are answered here; a disallowed origin gets no CORS headers.
fn cors_layer(c: &config::CorsConfig) -> anyhow::Result<Option<CorsLayer>> {
    if c.allowed_origins.is_empty() {
        return Ok(None);
    }
    let values = |items: &[String], what: &str| {
        items
            .iter()
            .map(|i| {
                HeaderValue::from_str(i)
                    .map_err(|_| anyhow::anyhow!("gateway.cors.{what}: bad value {i:?}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    };
    let methods = c
        .allowed_methods
        .iter()
        .map(|m| {
            Method::from_bytes(m.as_bytes())
                .map_err(|_| anyhow::anyhow!("gateway.cors.allowed_methods: bad method {m:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let names = |items: &[String], what: &str| {
        items
            .iter()
            .map(|i| {
                HeaderName::from_bytes(i.as_bytes())
                    .map_err(|_| anyhow::anyhow!("gateway.cors.{what}: bad header {i:?}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(values(
                &c.allowed_origins,
                "allowed_origins",
            )?))
            .allow_methods(methods)
            .allow_headers(names(&c.allowed_headers, "allowed_headers")?)
            .expose_headers(names(&c.exposed_headers, "exposed_headers")?)
            .allow_credentials(c.allow_credentials)
            .max_age(Duration::from_secs(c.max_age_secs)),
    ))
}
