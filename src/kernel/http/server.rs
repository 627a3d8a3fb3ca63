//! Serving one service: its HTTP routes and its gRPC services on one port,
//! under one tower stack, with graceful shutdown.
//!
//! gRPC requests are told apart by path (`/package.Service/Method`), so the
//! tonic routes merge into the axum router; the listener speaks HTTP/1.1 and
//! h2c on the same socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use http::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

use super::connection::{Checked, ConnectionService, with_peer};
use super::h1_server;
use super::io_threads::{IoPlan, IoThreads};
use super::observe::ObserveLayer;
use crate::kernel::ServiceContext;
use crate::kernel::config::ServerConfig;
use crate::kernel::error::Problem;
use crate::kernel::health::{self, Probes};
use crate::kernel::metrics::Tracked;

/// What a service hands over to be served.
pub struct ServiceApp {
    pub name: &'static str,
    /// Public HTTP routes (`/v1/...`).
    pub http: Router,
    /// gRPC services, already registered with `grpc_health`.
    pub grpc: tonic::service::Routes,
    pub probes: Probes,
    /// Serve connections on threads of their own (see `io_threads.rs`).
    /// `None` serves them on the process's runtime, which suits services
    /// whose requests mostly wait on others.
    pub io_threads: Option<IoPlan>,
}

/// What a service with a database of its own hands over: [`serve_service`]
/// adds what every such service serves alike.
pub struct Service<G> {
    pub name: &'static str,
    pub db: crate::kernel::db::Db,
    /// Its public routes (`/v1/...`).
    pub http: Router,
    /// Its API document, served at `/openapi.json`.
    pub api: utoipa::openapi::OpenApi,
    /// Its gRPC server.
    pub grpc: G,
    /// Whether it produces events: its outbox is then served to the
    /// broker-less bus (`kernel::stream`).
    pub produces_events: bool,
    pub listen: SocketAddr,
    pub advertise_url: Option<String>,
    /// Its background tasks, awaited when it stops.
    pub background: Vec<JoinHandle<()>>,
}

/// Serves `service`: its routes with its API document, its gRPC server
/// beside gRPC health (serving) and, when it produces events, its outbox
/// stream; ready while its database answers; registered once listening.
pub async fn serve_service<G>(ctx: &ServiceContext, service: Service<G>) -> anyhow::Result<Running>
where
    G: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    G::Future: Send + 'static,
{
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<G>().await;
    let mut grpc = tonic::service::Routes::new(service.grpc).add_service(health_service);
    if service.produces_events {
        grpc = grpc.add_service(crate::kernel::stream::server(
            service.name,
            service.db.clone(),
            ctx.shutdown.clone(),
        ));
    }
    let app = ServiceApp {
        name: service.name,
        http: service
            .http
            .merge(crate::kernel::openapi::serve(&service.api)),
        grpc,
        probes: Probes(vec![Arc::new(service.db)]),
        io_threads: None,
    };
    launch(
        ctx,
        app,
        service.listen,
        service.advertise_url,
        health,
        service.background,
    )
    .await
}

/// Connections the system holds for a listener before it accepts them (it
/// caps this at `net.core.somaxconn`). A burst of clients, or a gateway
/// opening a connection per request of a burst, can bring a thousand at
/// once, and those beyond a full queue are dropped: their clients see a
/// connect timeout, and a gateway counts that against the instance.
const BACKLOG: u32 = 4096;

/// Binds the address now, so a taken port is a startup error rather than a
/// failure later in a background task.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std's and tokio's own listeners do: a restart binds at once.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Assembles the full router: public routes, health and gRPC (whose
/// calls must carry a service credential, see [`crate::kernel::credentials`]),
/// under the shared stack ([`ObserveLayer`], body limit, timeout).
pub fn router(
    app: ServiceApp,
    ctx: &ServiceContext,
) -> Result<Router, crate::kernel::config::ConfigError> {
    let (config, metrics) = (&ctx.server, &ctx.metrics);
    let callee = ctx.keyring.callee(app.name);
    let vouching = super::observe::Vouching {
        proxies: crate::kernel::origin::Cidr::parse_all(
            &config.trusted_proxies,
            "server.trusted_proxies",
        )?,
        callee: callee.clone(),
    };
    let tracked = Tracked {
        metrics: metrics.clone(),
        service: app.name,
    };
    let timeout = Duration::from_millis(config.request_timeout_ms);
    // Metrics are not served here but on the operator listener (`ops.rs`).
    Ok(app
        .http
        .merge(health::routes(app.probes, metrics.clone(), app.name))
        .merge(
            app.grpc
                .into_axum_router()
                .layer(axum::middleware::from_fn_with_state(
                    callee,
                    crate::kernel::credentials::require,
                )),
        )
        // Every route's other methods: a problem, with the `Allow` field
        // the router adds to it.
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed on this route",
            )
        })
        .fallback(|| async { Problem::not_found() })
        .layer(DefaultBodyLimit::max(config.body_limit_bytes))
        .layer(
            ServiceBuilder::new()
                .layer(ObserveLayer::new(tracked).with_origin(vouching))
                .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                    Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "timeout",
                        "The request took too long",
                    )
                    .into_response()
                }))
                .timeout(timeout),
        ))
}

/// Where the operator listener serves the process's metrics.
pub const METRICS_PATH: &str = "/metrics";

/// Whether `router` answers `path` for every service itself (health,
/// readiness, gRPC health), whatever the service's own routes.
pub fn is_kernel_path(path: &str) -> bool {
    path == health::HEALTH_PATH
        || path == health::READY_PATH
        || path.starts_with("/grpc.health.v1.Health/")
}

/// Serves `listener` until `shutdown` is cancelled, then lets in-flight
/// requests finish for at most the configured grace period. `front` makes
/// the service that answers one connection, given its peer's address.
///
/// Each connection starts in the kernel's own loop for plain HTTP/1.1
/// requests (`http1/`), which hands it to hyper (HTTP/1.1 and h2c on one
/// socket) the moment it asks for more. Either way a client that sends its
/// headers too slowly is cut off after `header_read_timeout_ms` instead of
/// holding a connection open.
pub fn spawn<F, S>(
    name: &'static str,
    listener: TcpListener,
    front: F,
    config: &ServerConfig,
    shutdown: CancellationToken,
    io: Option<IoThreads>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> JoinHandle<std::io::Result<()>>
where
    F: Fn(SocketAddr) -> S + Send + Sync + 'static,
    S: ConnectionService,
    S::Future: Send + 'static,
{
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let header_timeout = Duration::from_millis(config.header_read_timeout_ms);
    let idle_timeout = Duration::from_millis(config.http2_idle_timeout_ms.max(1));
    let write_timeout = Duration::from_millis(config.write_timeout_ms.max(1));
    let max_streams = config.http2_max_concurrent_streams.max(1);
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::spawn(async move {
        let addr = listener.local_addr()?;
        tracing::info!(service = name, %addr, "listening");
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            // One flat buffer per answer: for the small heads and bodies of
            // API traffic, copying the body next to the head and writing
            // once costs less than hyper's queue of buffers for writev.
            .writev(false);
        // Each stream of an HTTP/2 client may become a connection to an
        // upstream instance: one client connection takes only so many.
        builder.http2().max_concurrent_streams(max_streams);
        // The wire's limits, as the kernel's own loop keeps them.
        super::wire::limit_hyper(&mut builder);
        let graceful = GracefulShutdown::new();
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, go on.
                        tracing::warn!(service = name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = shutdown.cancelled() => break,
            };
            let _ = stream.set_nodelay(true);
            let serving = h1_server::Serving {
                service: Checked(front(peer)),
                hyper: builder.clone(),
                watcher: graceful.watcher(),
                // A token of the connection's own: waiting on it between
                // requests shares no lock with other connections.
                shutdown: shutdown.child_token(),
                header_timeout,
                idle_timeout,
                write_timeout,
            };
            let tls = tls.clone();
            let Some(io) = &io else {
                tokio::spawn(serve(stream, serving, tls, header_timeout));
                continue;
            };
            // Moved to the thread's own reactor, so its readiness events
            // wake that thread alone.
            match stream.into_std() {
                Ok(stream) => io.spawn(async move {
                    match tokio::net::TcpStream::from_std(stream) {
                        Ok(stream) => serve(stream, serving, tls, header_timeout).await,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot move a connection to its thread")
                        }
                    }
                }),
                Err(e) => tracing::warn!(error = %e, "cannot move a connection to its thread"),
            }
        }
        drop(listener);
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(grace) => {
                tracing::warn!(service = name, grace_ms = grace.as_millis() as u64,
                    "in-flight requests did not finish within the grace period");
            }
        }
        if let Some(io) = io {
            io.stop();
        }
        Ok(())
    })
}

/// Serves one connection: over TLS when `tls` is set, once its handshake
/// is done (within `handshake_limit`, as a request head must be).
async fn serve<S>(
    stream: tokio::net::TcpStream,
    serving: h1_server::Serving<S>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handshake_limit: Duration,
) where
    S: ConnectionService,
    S::Future: Send + 'static,
{
    let Some(acceptor) = tls else {
        return h1_server::serve(stream, serving).await;
    };
    match tokio::time::timeout(handshake_limit, acceptor.accept(stream)).await {
        // Whichever protocol ALPN chose: the loop hands an HTTP/2
        // connection (its preface) to hyper at once.
        Ok(Ok(secured)) => h1_server::serve(secured, serving).await,
        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!("TLS handshake took too long"),
    }
}

/// A started service.
pub struct Running {
    pub name: &'static str,
    /// The address it listens on (useful when it was asked for port 0).
    pub addr: SocketAddr,
    /// Ends when the service has stopped after the shutdown signal.
    pub task: JoinHandle<()>,
}

/// Binds `listen`, serves `app` there, registers the instance, and on
/// shutdown deregisters it first (so callers stop sending), then waits for
/// the server and the service's background tasks to finish.
pub async fn launch(
    ctx: &ServiceContext,
    app: ServiceApp,
    listen: SocketAddr,
    advertise_url: Option<String>,
    health: tonic_health::server::HealthReporter,
    background: Vec<JoinHandle<()>>,
) -> anyhow::Result<Running> {
    let launch = Launch {
        listen,
        tls: None,
        advertise_url,
        health,
        background,
    };
    launch_with(ctx, app, launch, |router| {
        move |peer| with_peer(router.clone(), peer)
    })
    .await
}

/// Where and how [`launch_with`] starts a service.
pub struct Launch {
    pub listen: SocketAddr,
    /// TLS for every connection (the gateway's `[gateway.tls]`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub advertise_url: Option<String>,
    pub health: tonic_health::server::HealthReporter,
    pub background: Vec<JoinHandle<()>>,
}

/// [`launch`], with `front` choosing what answers each connection: given
/// the service's full router, it makes the per-connection service (the
/// gateway sends what the router does not serve to its proxy).
pub async fn launch_with<F, M, S>(
    ctx: &ServiceContext,
    app: ServiceApp,
    launch: Launch,
    front: F,
) -> anyhow::Result<Running>
where
    F: FnOnce(Router) -> M,
    M: Fn(SocketAddr) -> S + Send + Sync + 'static,
    S: ConnectionService,
    S::Future: Send + 'static,
{
    let Launch {
        listen,
        tls,
        advertise_url,
        health,
        background,
    } = launch;
    let name = app.name;
    let io = app
        .io_threads
        .map(|plan| IoThreads::start(name, plan))
        .transpose()
        .map_err(|e| anyhow::anyhow!("{name}: cannot start its I/O threads: {e}"))?;
    let listener = bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("{name}: cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    let readiness = app.probes.clone();
    let router = router(app, ctx)?;
    let served = spawn(
        name,
        listener,
        front(router),
        &ctx.server,
        ctx.shutdown.clone(),
        io,
        tls,
    );
    if advertise_url.is_none() && addr.ip().is_unspecified() && ctx.registry.kind() != "in_process"
    {
        tracing::warn!(service = name, %addr,
            "registered at a wildcard address, which other machines cannot reach; \
             set the service's advertise_url");
    }
    let instance = crate::kernel::registry::Instance::new(
        name,
        advertise_url.unwrap_or_else(|| format!("http://{addr}")),
    );
    ctx.registry.register(instance.clone(), readiness).await?;
    let registry = ctx.registry.clone();
    let shutdown = ctx.shutdown.clone();
    let task = tokio::spawn(async move {
        shutdown.cancelled().await;
        if let Err(e) = registry.deregister(&instance.id).await {
            tracing::warn!(service = name, error = %e, "deregistration failed");
        }
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        match served.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(service = name, error = %e, "server failed"),
            Err(e) => tracing::error!(service = name, error = %e, "server task failed"),
        }
        for task in background {
            if let Err(e) = task.await {
                tracing::error!(service = name, error = %e, "background task failed");
            }
        }
        tracing::info!(service = name, "stopped");
    });
    Ok(Running { name, addr, task })
}

/// Resolves when the process receives SIGINT or SIGTERM.
pub fn stop_signal() -> impl std::future::Future<Output = ()> {
    // The handlers are installed here, not when the future is first
    // polled: a signal that comes between a service saying it started and
    // the process waiting for one would otherwise end it abruptly.
    #[cfg(unix)]
    let (interrupt, terminate) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let received = |stream: std::io::Result<tokio::signal::unix::Signal>, name| async move {
                match stream {
                    Ok(mut stream) => {
                        stream.recv().await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for {name}");
                        std::future::pending::<()>().await;
                    }
                }
            };
            tokio::select! {
                () = received(interrupt, "SIGINT") => {},
                () = received(terminate, "SIGTERM") => {},
            }
        }
        #[cfg(not(unix))]
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
        tracing::info!("stop signal received; finishing in-flight requests");
    }
}
