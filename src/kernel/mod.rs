//! Infrastructure shared by every service, and nothing else: no business
//! rules live here. A service gets a [`ServiceContext`] from whoever starts it
//! (the all-in-one platform or its own binary) and takes what it needs.
//!
//! The map:
//! - serving: `http/` (the server side of HTTP: servers, the HTTP/1.1 loop
//!   and its wire rules, TLS, the operator listener), `health` (liveness
//!   and readiness), `error` (problem+json and gRPC statuses), `openapi`,
//!   `paging`, `queue` (bounded lines of waiters);
//! - calls between services: `rpc/` (clients through the registry),
//!   `credentials` (the keys that sign and check them), `registry/`
//!   (in-process, static or etcd), `origin` (who made a request, carried
//!   into the events it causes);
//! - events: `outbox` (written with the change), `bus` (in-process, Kafka
//!   in `kafka/`, or broker-less in `stream`), `offsets` (how far each
//!   consumer has read);
//! - state: `db/` (pools and migrations on SQLite or PostgreSQL), `cache`,
//!   `redis/`, `keyfile` and `seal` (secrets kept apart from the database);
//! - the process: `config`, `telemetry` (logs and traces), `metrics`,
//!   `clock`, `locks`, `alloc`.

pub mod alloc;
pub mod bus;
pub mod cache;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod db;
pub mod error;
pub mod health;
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod keyfile;
pub mod locks;
pub mod metrics;
pub mod offsets;
pub mod openapi;
pub mod origin;
pub mod outbox;
pub mod paging;
pub mod queue;
pub mod redis;
pub mod registry;
pub mod rpc;
pub mod seal;
pub mod stream;
pub mod telemetry;

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// Everything a service needs from the process it runs in.
///
/// Cloning is cheap; every field is shared.
#[derive(Clone)]
pub struct ServiceContext {
    /// Where embedded backends keep their files (SQLite databases, key files).
    pub data_dir: PathBuf,
    pub database: config::DatabaseConfig,
    pub server: config::ServerConfig,
    /// What access tokens carry and how long they live.
    pub tokens: config::TokenConfig,
    pub registry: Arc<dyn registry::Registry>,
    pub bus: Arc<dyn bus::EventBus>,
    /// How the bus is set up (how long outboxes keep what they published).
    pub bus_config: config::BusConfig,
    /// The Redis server shared by the deployment, if any, and this
    /// process's one connection to it.
    pub redis: Arc<redis::RedisLink>,
    pub clients: rpc::Clients,
    /// The keys that sign this process's service calls and check the calls
    /// made to it.
    pub keyring: Arc<credentials::Keyring>,
    /// How long authz's answers are kept (`rpc.permission_cache_ms`, or
    /// nothing where authz's change events cannot reach the process).
    pub permission_cache: std::time::Duration,
    pub metrics: metrics::Metrics,
    pub clock: Arc<dyn clock::Clock>,
    /// Cancelled when the process is asked to stop.
    pub shutdown: CancellationToken,
}

impl ServiceContext {
    /// The context of `service` in this process: its calls to other
    /// services carry its own credential.
    pub fn serving(&self, service: &str) -> anyhow::Result<ServiceContext> {
        let caller = self.keyring.caller(service).ok_or_else(|| {
            anyhow::anyhow!(
                "{service}: no key of it to sign its calls with; rpc.credentials_dir must hold {service}.key"
            )
        })?;
        Ok(ServiceContext {
            clients: self.clients.calling_as(caller),
            ..self.clone()
        })
    }
}
