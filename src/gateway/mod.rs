//! The gateway: the single entry point for external traffic. It routes
//! requests by path prefix to services found through the registry, checks
//! tokens at the edge per route policy, and streams requests and answers
//! through; the same middleware as every service (request id, tracing,
//! metrics) runs in front of it.
//!
//! Rooms: `config.rs` (the `[gateway]` section and route shape),
//! `routes.rs` (the route table and path normalisation), `proxy.rs`
//! (forwarding and proxy headers). The gateway has no database.

pub mod config;
pub mod proxy;
pub mod routes;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::any;

pub use config::GatewayConfig;

use crate::kernel::ServiceContext;
use crate::kernel::health::Probes;
use crate::kernel::server::{self, Running, ServiceApp};
use crate::middleware::bearer::{AuthKeys, TokenCheck};

pub const NAME: &str = "gateway";

pub async fn start(ctx: &ServiceContext, config: GatewayConfig) -> anyhow::Result<Running> {
    let table = routes::RouteTable::new(&config.routes).map_err(anyhow::Error::msg)?;
    let check = TokenCheck::new(
        Arc::new(AuthKeys {
            clients: ctx.clients.clone(),
        }),
        ctx.tokens.expect(),
        ctx.clock.clone(),
        ctx.tokens.access_ttl().to_std().unwrap_or_default(),
    );
    let revocations = check
        .listen_for_revocations(NAME, &ctx.bus, ctx.shutdown.clone())
        .await
        .map_err(anyhow::Error::msg)?;
    let gateway = proxy::Gateway::new(
        table,
        proxy::Settings {
            registry: ctx.registry.clone(),
            check,
            default_timeout: Duration::from_millis(config.upstream_timeout_ms),
            body_limit: config.body_limit_bytes,
            trusted_proxies: config.trusted_proxies.clone(),
            metrics: ctx.metrics.clone(),
        },
    )
    .map_err(anyhow::Error::msg)?;
    let http = Router::new()
        .route("/", any(proxy::forward))
        .route("/{*path}", any(proxy::forward))
        .with_state(gateway);
    let (health, health_service) = tonic_health::server::health_reporter();
    let app = ServiceApp {
        name: NAME,
        http,
        grpc: tonic::service::Routes::new(health_service),
        probes: Probes::default(),
    };
    server::launch(ctx, app, config.listen, None, health, vec![revocations]).await
}
