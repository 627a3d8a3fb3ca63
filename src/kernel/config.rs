//! Layered configuration: built-in defaults, then a TOML file (`--config`),
//! then `GATEHOUSE_*` environment variables, each layer overriding the one
//! before. Nested keys use a double underscore in the environment:
//! `GATEHOUSE_DATABASE__URL` sets `database.url`.
//!
//! The sections here are the kernel's own; each service adds its section to
//! the top-level [`crate::config::Config`]. A bad value is one error naming
//! the key, reported before anything starts.

use std::collections::BTreeMap;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A configuration that cannot be used; the message names the key or file.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// Loads `T` from its defaults, the optional TOML file and the environment.
pub fn load<T>(file: Option<&Path>) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    // GATEHOUSE_CONFIG_FILE names the file (the binaries' --config), and
    // GATEHOUSE_SMTP_PASSWORD holds a secret: neither is a key of the config.
    figment = figment.merge(
        Env::prefixed("GATEHOUSE_")
            .ignore(&[CONFIG_FILE_VARIABLE, SMTP_PASSWORD_VARIABLE])
            .split("__"),
    );
    figment.extract().map_err(|e| ConfigError(e.to_string()))
}

/// The variable, without `GATEHOUSE_`, that names the config file.
const CONFIG_FILE_VARIABLE: &str = "CONFIG_FILE";
/// The variable, without `GATEHOUSE_`, that holds the mail server's
/// password by default (`identity.mail.smtp.password_env`).
const SMTP_PASSWORD_VARIABLE: &str = "SMTP_PASSWORD";

/// How logs are written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter such as `info` or `gatehouse=debug,info`; `RUST_LOG` wins when set.
    pub level: String,
    /// `auto` (JSON unless stdout is a terminal), `json` or `text`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Auto,
    Json,
    Text,
}

/// Settings every HTTP/gRPC server shares.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The URL people and applications reach the platform at (the
    /// gateway, or what is in front of it): the OpenID Connect issuer, the
    /// access tokens' `iss` and the base of the links mailed to users,
    /// unless `auth.oidc.issuer`, `tokens.issuer` or
    /// `identity.link_base_url` say otherwise. Scheme and host, no path.
    pub public_url: String,
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub body_limit_bytes: usize,
    /// Longest a request may take before it is answered with a timeout.
    pub request_timeout_ms: u64,
    /// After a stop signal, how long in-flight requests may take to finish.
    pub shutdown_grace_ms: u64,
    /// How long a client may take to send a request's headers; slower
    /// connections are closed.
    pub header_read_timeout_ms: u64,
    /// How long an HTTP/2 connection may go without a byte either way
    /// before it is wound up (a GOAWAY; its requests in flight may finish),
    /// and then closed after as long again without one.
    pub http2_idle_timeout_ms: u64,
    /// How long a write to a client may wait for room before the client,
    /// which has stopped reading, is cut off.
    pub write_timeout_ms: u64,
    /// Most requests one HTTP/2 client connection may have in flight at
    /// once (each may take a connection to an upstream instance).
    pub http2_max_concurrent_streams: u32,
    /// Where the process serves its metrics (and a liveness answer) to
    /// operators: loopback by default, never a port clients reach.
    pub ops_listen: std::net::SocketAddr,
    /// Peers (addresses or blocks such as `10.0.0.0/8`) whose `Forwarded:
    /// for=` names the client a request is from, beside requests carrying a
    /// service's credential (the gateway's forwards, services' calls to
    /// each other), which are believed wherever they come from. A request
    /// from any other peer is from the peer, loopback ones included.
    pub trusted_proxies: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            public_url: "http://127.0.0.1:8080".into(),
            body_limit_bytes: 64 * 1024,
            request_timeout_ms: 30_000,
            shutdown_grace_ms: 30_000,
            header_read_timeout_ms: 10_000,
            http2_idle_timeout_ms: 180_000,
            write_timeout_ms: 10_000,
            http2_max_concurrent_streams: 32,
            ops_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 9464)),
            trusted_proxies: Vec::new(),
        }
    }
}

/// Which database every service of this process uses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite` (a file per service under `data_dir`) or `postgres`.
    pub backend: DatabaseBackend,
    /// PostgreSQL connection URL; each service works in its own schema there.
    pub url: String,
    /// Connections per service pool.
    pub pool_size: u32,
    /// How long a request waits for a pooled connection before answering 503.
    pub acquire_timeout_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            backend: DatabaseBackend::Sqlite,
            url: String::new(),
            pool_size: 8,
            acquire_timeout_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatabaseBackend {
    Sqlite,
    Postgres,
}

/// Where services find each other.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// `in_process` (services of this process register themselves),
    /// `static` (the addresses below) or `etcd` (the `etcd` feature).
    pub backend: RegistryBackend,
    /// For `static`: service name to the base URLs of its instances,
    /// e.g. `identity = ["http://10.0.0.5:4102"]`.
    pub instances: BTreeMap<String, Vec<String>>,
    pub etcd: EtcdConfig,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistryBackend {
    #[default]
    InProcess,
    Static,
    Etcd,
}

/// The etcd registry: each instance a key under a lease of its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdConfig {
    /// The cluster's client URLs, e.g. `["http://10.0.0.12:2379"]`.
    pub endpoints: Vec<String>,
    /// Every key of the registry starts with this; deployments sharing a
    /// cluster keep apart by choosing different ones.
    pub prefix: String,
    /// How long an instance that stops renewing its lease (its process
    /// died, its machine is cut off) stays listed. Renewed every third.
    pub lease_ttl_secs: u64,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            prefix: "/gatehouse/services/".to_owned(),
            lease_ttl_secs: 10,
        }
    }
}

/// The Redis server a deployment shares (the `redis` feature): what the
/// gateway's replicas count rate limits in, and what replicas of a service
/// keep shared caches in. Nothing is kept there that cannot be lost.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]`; empty: no Redis, every limit
    /// and cache in the process.
    pub url: String,
    /// Every key gatehouse writes starts with this.
    pub prefix: String,
    /// The longest a command may take; past it, or while Redis is away,
    /// the command fails at once and its user falls back (see each user).
    pub command_timeout_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            prefix: "gatehouse:".to_owned(),
            command_timeout_ms: 100,
        }
    }
}

/// How events travel between services.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    /// `in_process`: reaches only services inside this process; `outbox`:
    /// each consumer pulls a producer's events straight from its outbox
    /// over gRPC, found through the registry; `kafka`: through a Kafka
    /// broker (the `kafka` feature).
    pub backend: BusBackend,
    /// How long an outbox keeps an event after it was published: a
    /// consumer away for longer misses what was removed meanwhile.
    pub keep_hours: u64,
    pub kafka: KafkaConfig,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            backend: BusBackend::default(),
            keep_hours: 168,
            kafka: KafkaConfig::default(),
        }
    }
}

/// The Kafka backend of the bus: a topic per producing service, keyed by
/// subject.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `host:port` of the brokers to start from.
    pub brokers: Vec<String>,
    /// A service's topic is this prefix and its name (`gatehouse.identity`).
    pub topic_prefix: String,
    /// Partitions of a topic created at startup.
    pub partitions: i32,
    /// Copies of each partition of a topic created at startup.
    pub replication: i16,
    /// The partitions this process's consumers read, as `"i/n"`: those
    /// whose number leaves `i` divided by `n`. Empty: all of them.
    pub share: String,
    /// The longest a fetch waits at the broker for new events.
    pub fetch_wait_ms: i32,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: vec!["127.0.0.1:9092".to_owned()],
            topic_prefix: "gatehouse.".to_owned(),
            partitions: 3,
            replication: 1,
            share: String::new(),
            fetch_wait_ms: 100,
        }
    }
}

/// Which partitions of a topic a process reads (`bus.kafka.share`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub index: i32,
    pub of: i32,
}

impl Share {
    /// Reads `"i/n"` (`0 <= i < n`); empty is every partition.
    pub fn parse(text: &str) -> Result<Share, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Share { index: 0, of: 1 });
        }
        let invalid = || {
            ConfigError(format!(
                "bus.kafka.share: {text:?} is not \"i/n\" with 0 <= i < n"
            ))
        };
        let (index, of) = text.split_once('/').ok_or_else(invalid)?;
        let index: i32 = index.trim().parse().map_err(|_| invalid())?;
        let of: i32 = of.trim().parse().map_err(|_| invalid())?;
        if of < 1 || index < 0 || index >= of {
            return Err(invalid());
        }
        Ok(Share { index, of })
    }

    pub fn owns(self, partition: i32) -> bool {
        partition.rem_euclid(self.of) == self.index
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BusBackend {
    #[default]
    InProcess,
    Outbox,
    Kafka,
}

/// Outgoing gRPC calls to other services.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RpcConfig {
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    /// Where the keys that sign and check service calls are
    /// (`gatehouse credentials issue` makes them). Empty: keys made in
    /// memory at start, which only a process whose calls stay inside it
    /// (the in-process registry) can use.
    pub credentials_dir: String,
    /// How long a service keeps authz's answers to its permission checks
    /// (0: asks every time). Authz's change events drop the responses a
    /// change may alter at once; a process whose bus reaches no other
    /// process keeps none.
    pub permission_cache_ms: u64,
}

impl Default for RpcConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 2_000,
            request_timeout_ms: 10_000,
            credentials_dir: String::new(),
            permission_cache_ms: 5_000,
        }
    }
}

/// The `[tokens]` config section: what auth signs and every verifier
/// expects (see `middleware::token`, which reads it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    /// The `iss` claim; empty: `server.public_url`.
    pub issuer: String,
    /// The `aud` claim.
    pub audience: String,
    /// Lifetime of an access token.
    pub access_token_ttl_secs: u64,
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: "gatehouse".into(),
            access_token_ttl_secs: 900,
        }
    }
}

impl TokenConfig {
    /// This config with an empty issuer made `public_url`, so that access
    /// tokens name the platform's public place.
    pub fn issued_at(mut self, public_url: &str) -> Self {
        if self.issuer.is_empty() {
            self.issuer = public_url.trim_end_matches('/').to_owned();
        }
        self
    }

    /// How long an access token lives.
    pub fn access_ttl(&self) -> chrono::Duration {
        chrono::Duration::seconds(i64::try_from(self.access_token_ttl_secs).unwrap_or(900))
    }
}
