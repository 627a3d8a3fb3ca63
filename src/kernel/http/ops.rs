//! The operator listener: the process's metrics (and a liveness answer) on
//! an address of their own, loopback by default. Metrics name internal
//! addresses, routes and timings, so they are never served on a port that
//! clients reach: not the gateway's, not a service's.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;

use super::server::{METRICS_PATH, Running};
use crate::kernel::ServiceContext;
use crate::kernel::health::HEALTH_PATH;
use crate::kernel::metrics::{self, Tracked};

/// Serves the operator endpoints of every service in this process on
/// `listen` until shutdown.
pub async fn start(ctx: &ServiceContext, listen: SocketAddr) -> anyhow::Result<Running> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("server.ops_listen: cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    let router = Router::new()
        .route(METRICS_PATH, get(metrics::endpoint))
        .route(HEALTH_PATH, get(|| async { "ok" }))
        .with_state(Tracked {
            metrics: ctx.metrics.clone(),
            service: NAME,
        });
    let shutdown = ctx.shutdown.clone();
    tracing::info!(%addr, "operator endpoints listening");
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "operator listener failed");
        }
    });
    Ok(Running {
        name: NAME,
        addr,
        task,
    })
}

/// The listener's name in logs.
pub const NAME: &str = "ops";
