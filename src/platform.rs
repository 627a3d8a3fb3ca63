//! Starting services in a process: the all-in-one platform (every compiled-in
//! service, each on its own loopback port, talking to each other only over
//! gRPC through the registry) and the single-service binaries.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::kernel::ServiceContext;
use crate::kernel::bus::{EventBus, InProcessBus};
use crate::kernel::clock::SystemClock;
use crate::kernel::config::{BusBackend, RegistryBackend};
use crate::kernel::credentials::{Keyring, SERVICES};
use crate::kernel::http::server::{self, Running};
use crate::kernel::metrics::Metrics;
use crate::kernel::registry::{InProcessRegistry, Registry, StaticRegistry};
use crate::kernel::rpc::Clients;

/// A service this build can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    #[cfg(feature = "identity")]
    Identity,
    #[cfg(feature = "auth")]
    Auth,
    #[cfg(feature = "authz")]
    Authz,
    #[cfg(feature = "audit")]
    Audit,
    #[cfg(feature = "gateway")]
    Gateway,
}

impl Service {
    /// The name it registers under and signs its calls as.
    pub fn name(self) -> &'static str {
        match self {
            #[cfg(feature = "identity")]
            Service::Identity => "identity",
            #[cfg(feature = "auth")]
            Service::Auth => "auth",
            #[cfg(feature = "authz")]
            Service::Authz => "authz",
            #[cfg(feature = "audit")]
            Service::Audit => "audit",
            #[cfg(feature = "gateway")]
            Service::Gateway => "gateway",
        }
    }

    /// Every service compiled into this binary, in the order they start:
    /// each one that follows another's events first, so that on the
    /// in-process bus none of the events a service's relay publishes as it
    /// starts (its outbox's backlog) is missed.
    pub fn compiled() -> Vec<Service> {
        vec![
            #[cfg(feature = "audit")]
            Service::Audit,
            #[cfg(feature = "authz")]
            Service::Authz,
            #[cfg(feature = "auth")]
            Service::Auth,
            #[cfg(feature = "identity")]
            Service::Identity,
            #[cfg(feature = "gateway")]
            Service::Gateway,
        ]
    }
}

/// Builds the shared infrastructure from config.
pub fn context(config: &Config) -> anyhow::Result<ServiceContext> {
    let registry: Arc<dyn Registry> = match config.registry.backend {
        RegistryBackend::InProcess => Arc::new(InProcessRegistry::with_instances(
            &config.registry.instances,
        )),
        RegistryBackend::Static => Arc::new(StaticRegistry::new(&config.registry.instances)),
        #[cfg(feature = "etcd")]
        RegistryBackend::Etcd => Arc::new(crate::kernel::registry::etcd::EtcdRegistry::new(
            &config.registry.etcd,
        )?),
        #[cfg(not(feature = "etcd"))]
        RegistryBackend::Etcd => anyhow::bail!(
            "registry.backend = \"etcd\" needs a build with the etcd feature (cargo build --features etcd)"
        ),
    };
    let clock = Arc::new(SystemClock);
    let keyring = Arc::new(if config.rpc.credentials_dir.is_empty() {
        Keyring::ephemeral(&SERVICES, clock.clone())?
    } else {
        Keyring::load(
            std::path::Path::new(&config.rpc.credentials_dir),
            clock.clone(),
        )?
    });
    // Until a service takes its own (`ServiceContext::serving`), calls are
    // signed with the first key the process holds.
    let caller = keyring
        .own()
        .next()
        .and_then(|service| keyring.caller(service));
    let clients = Clients::new(registry.clone(), &config.rpc, caller);
    let metrics = Metrics::new()?;
    let bus: Arc<dyn EventBus> = match config.bus.backend {
        BusBackend::InProcess => Arc::new(InProcessBus::default()),
        BusBackend::Outbox => Arc::new(crate::kernel::stream::OutboxBus::new(
            clients.clone(),
            keyring.clone(),
            metrics.clone(),
        )),
        #[cfg(feature = "kafka")]
        BusBackend::Kafka => Arc::new(crate::kernel::kafka::KafkaBus::new(
            config.bus.kafka.clone(),
            metrics.clone(),
        )?),
        #[cfg(not(feature = "kafka"))]
        BusBackend::Kafka => anyhow::bail!(
            "bus.backend = \"kafka\" needs a build with the kafka feature (cargo build --features kafka)"
        ),
    };
    Ok(ServiceContext {
        data_dir: config.data_dir.clone(),
        database: config.database.clone(),
        server: config.server.clone(),
        tokens: config.tokens.clone().issued_at(&config.server.public_url),
        clients,
        keyring,
        permission_cache: std::time::Duration::from_millis(config.rpc.permission_cache_ms),
        registry,
        bus,
        bus_config: config.bus.clone(),
        redis: Arc::new(crate::kernel::redis::RedisLink::new(config.redis.clone())),
        metrics,
        clock,
        shutdown: CancellationToken::new(),
    })
}

/// Starts one service with its production wiring, in a process that
/// listens on `beyond_loopback` (one address others can reach) if any.
#[cfg_attr(
    not(feature = "identity"),
    allow(
        unused_variables,
        reason = "only identity's mail asks where the process listens"
    )
)]
pub async fn start(
    service: Service,
    ctx: &ServiceContext,
    config: &Config,
    beyond_loopback: Option<std::net::SocketAddr>,
) -> anyhow::Result<Running> {
    let ctx = &ctx.serving(service.name())?;
    match service {
        #[cfg(feature = "identity")]
        Service::Identity => {
            let notifier = crate::identity::mail::notifier(&config.identity.mail, beyond_loopback)?;
            crate::identity::start(ctx, config.identity.clone(), notifier).await
        }
        #[cfg(feature = "auth")]
        Service::Auth => crate::auth::start(ctx, config.auth.clone()).await,
        #[cfg(feature = "authz")]
        Service::Authz => crate::authz::start(ctx, config.authz.clone()).await,
        #[cfg(feature = "audit")]
        Service::Audit => crate::audit::start(ctx, config.audit.clone()).await,
        #[cfg(feature = "gateway")]
        Service::Gateway => crate::gateway::start(ctx, config.gateway.clone()).await,
    }
}

/// Runs `services` until SIGINT/SIGTERM, then stops them gracefully.
/// `standalone` marks a single-service binary, whose in-process bus reaches
/// no other service.
pub async fn run(config: Config, services: &[Service], standalone: bool) -> anyhow::Result<()> {
    if config.rpc.credentials_dir.is_empty()
        && config.registry.backend != RegistryBackend::InProcess
    {
        anyhow::bail!(
            "services in other processes need keys to sign and check their calls: \
             make them with `gatehouse credentials issue --out DIR` and set rpc.credentials_dir \
             (GATEHOUSE_RPC__CREDENTIALS_DIR) on every process"
        );
    }
    if config.registry.backend == RegistryBackend::InProcess
        && let Some(own) = services
            .iter()
            .find(|s| config.registry.instances.contains_key(s.name()))
    {
        anyhow::bail!(
            "registry.instances lists {name}, which this process runs itself: with \
             registry.backend = \"in_process\" it lists only services this process does not \
             run (a team's own); drop {name} from it, or run {name} apart on another backend",
            name = own.name()
        );
    }
    let stop = server::stop_signal();
    let mut ctx = context(&config)?;
    if standalone && !ctx.bus.crosses_processes() {
        tracing::warn!(
            "the event bus is in-process: events of this process reach no other process, \
             and no answer of authz is kept here; set bus.backend = \"outbox\" on every \
             process when services run as separate processes"
        );
        // Authz's change events would not reach this process to drop the
        // answers it kept, so it keeps none.
        ctx.permission_cache = std::time::Duration::ZERO;
    }
    let mut running = vec![crate::kernel::http::ops::start(&ctx, config.server.ops_listen).await?];
    let beyond_loopback = listens_beyond_loopback(&config, services);
    for service in services {
        match start(*service, &ctx, &config, beyond_loopback).await {
            Ok(r) => {
                tracing::info!(service = r.name, addr = %r.addr, "service started");
                running.push(r);
            }
            Err(e) => {
                ctx.shutdown.cancel();
                for r in running {
                    let _ = r.task.await;
                }
                return Err(e);
            }
        }
    }
    stop.await;
    ctx.shutdown.cancel();
    for r in running {
        if let Err(e) = r.task.await {
            tracing::error!(service = r.name, error = %e, "service did not stop cleanly");
        }
    }
    tracing::info!("all services stopped");
    Ok(())
}

/// An address the process running `services` listens on that is not
/// loopback: its ops listener, or a service's.
fn listens_beyond_loopback(config: &Config, services: &[Service]) -> Option<std::net::SocketAddr> {
    let listen = |service: &Service| match service {
        #[cfg(feature = "identity")]
        Service::Identity => config.identity.listen,
        #[cfg(feature = "auth")]
        Service::Auth => config.auth.listen,
        #[cfg(feature = "authz")]
        Service::Authz => config.authz.listen,
        #[cfg(feature = "audit")]
        Service::Audit => config.audit.listen,
        #[cfg(feature = "gateway")]
        Service::Gateway => config.gateway.listen,
    };
    std::iter::once(config.server.ops_listen)
        .chain(services.iter().map(listen))
        .find(|addr| !addr.ip().is_loopback())
}

/// Loads config and starts logging and tracing for the process `name`; the
/// first thing every binary does, inside its Tokio runtime.
pub fn init(
    config_file: Option<&std::path::Path>,
    name: &str,
) -> anyhow::Result<(Config, crate::kernel::telemetry::Telemetry)> {
    let config = Config::load(config_file)?;
    let telemetry = crate::kernel::telemetry::init(&config.log, name)?;
    Ok((config, telemetry))
}

/// Loads config, runs `services` until stopped, and flushes telemetry: the
/// body of every serving binary.
pub async fn serve(
    config_file: Option<&std::path::Path>,
    name: &str,
    services: &[Service],
    standalone: bool,
) -> anyhow::Result<()> {
    let (config, telemetry) = init(config_file, name)?;
    let result = run(config, services, standalone).await;
    telemetry.shutdown();
    result
}

/// The command line of a single-service binary.
#[derive(clap::Parser)]
struct ServiceCli {
    /// TOML config file; `GATEHOUSE_*` environment variables override it.
    #[arg(long, short, env = "GATEHOUSE_CONFIG_FILE")]
    config: Option<std::path::PathBuf>,
}

/// The whole `main` of a single-service binary named `name`: parse the
/// command line, run `service` until stopped, report a failure on stderr.
pub fn service_main(name: &'static str, service: Service) -> std::process::ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = ServiceCli::command()
        .name(name)
        .about(format!("{name}: one gatehouse service in its own process"))
        .version(env!("CARGO_PKG_VERSION"))
        .get_matches();
    let result = ServiceCli::from_arg_matches(&matches)
        .map_err(anyhow::Error::from)
        .and_then(|cli| {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(serve(cli.config.as_deref(), name, &[service], true))
        });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
