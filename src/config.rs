//! The whole configuration of a gatehouse process: the kernel's sections and
//! one section per service. See `gatehouse.example.toml` for every key with
//! its default, and [`crate::kernel::config`] for how layers combine.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::kernel::config::{
    BusConfig, DatabaseConfig, LogConfig, RedisConfig, RegistryConfig, RpcConfig, ServerConfig,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where embedded backends keep their files (SQLite databases, keys).
    pub data_dir: PathBuf,
    pub log: LogConfig,
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub registry: RegistryConfig,
    pub bus: BusConfig,
    pub rpc: RpcConfig,
    pub redis: RedisConfig,
    pub tokens: crate::middleware::token::TokenConfig,
    #[cfg(feature = "gateway")]
    pub gateway: crate::gateway::GatewayConfig,
    /// Accepted and ignored where the gateway is not compiled in.
    #[cfg(not(feature = "gateway"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<figment::value::Value>,
    #[cfg(feature = "auth")]
    pub auth: crate::auth::AuthConfig,
    /// Accepted and ignored where the auth service is not compiled in.
    #[cfg(not(feature = "auth"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<figment::value::Value>,
    #[cfg(feature = "authz")]
    pub authz: crate::authz::AuthzConfig,
    /// Accepted and ignored where the authz service is not compiled in.
    #[cfg(not(feature = "authz"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authz: Option<figment::value::Value>,
    #[cfg(feature = "audit")]
    pub audit: crate::audit::AuditConfig,
    /// Accepted and ignored where the audit service is not compiled in.
    #[cfg(not(feature = "audit"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<figment::value::Value>,
    #[cfg(feature = "identity")]
    pub identity: crate::identity::IdentityConfig,
    /// Accepted and ignored where the identity service is not compiled in,
    /// so one config file serves every binary.
    #[cfg(not(feature = "identity"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<figment::value::Value>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            log: LogConfig::default(),
            server: ServerConfig::default(),
            database: DatabaseConfig::default(),
            registry: RegistryConfig::default(),
            bus: BusConfig::default(),
            rpc: RpcConfig::default(),
            redis: RedisConfig::default(),
            tokens: Default::default(),
            gateway: Default::default(),
            auth: Default::default(),
            authz: Default::default(),
            audit: Default::default(),
            identity: Default::default(),
        }
    }
}

impl Config {
    /// Loads defaults < `file` < `GATEHOUSE_*` environment.
    pub fn load(
        file: Option<&std::path::Path>,
    ) -> Result<Self, crate::kernel::config::ConfigError> {
        let config: Config = crate::kernel::config::load(file)?;
        config.refuse_moved_keys()?;
        Ok(config)
    }

    /// Refuses keys that moved, naming where they went.
    fn refuse_moved_keys(&self) -> Result<(), crate::kernel::config::ConfigError> {
        #[cfg(feature = "gateway")]
        permission_cache_moved("gateway", &self.gateway.permission_cache_ms)?;
        #[cfg(feature = "identity")]
        permission_cache_moved("identity", &self.identity.permission_cache_ms)?;
        #[cfg(feature = "audit")]
        permission_cache_moved("audit", &self.audit.permission_cache_ms)?;
        Ok(())
    }
}

/// Refuses `<section>.permission_cache_ms`, now `rpc.permission_cache_ms`.
#[cfg(any(feature = "gateway", feature = "identity", feature = "audit"))]
fn permission_cache_moved(
    section: &str,
    key: &Option<serde::de::IgnoredAny>,
) -> Result<(), crate::kernel::config::ConfigError> {
    match key {
        Some(_) => Err(crate::kernel::config::ConfigError(format!(
            "{section}.permission_cache_ms moved to rpc.permission_cache_ms, one setting for \
             every service that keeps authz's answers: set that instead"
        ))),
        None => Ok(()),
    }
}
