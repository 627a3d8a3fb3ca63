//! Redis, shared by the replicas of a deployment (`[redis]`, the fred
//! client with the `redis` feature). What is kept there can be lost: rate
//! limit counts and cached responses, never data.
//!
//! A process holds one [`RedisLink`], which its services share: one
//! connection, made when a service first asks for it (see `client.rs`).

#[cfg(feature = "redis")]
mod client;

#[cfg(feature = "redis")]
pub use client::{FIRST_WAIT, Redis, RedisError};

use super::config::RedisConfig;

/// The deployment's Redis as one process sees it: its settings, and the
/// connection every service of the process uses.
pub struct RedisLink {
    config: RedisConfig,
    #[cfg(feature = "redis")]
    connection: tokio::sync::OnceCell<Option<Redis>>,
}

impl RedisLink {
    pub fn new(config: RedisConfig) -> Self {
        Self {
            config,
            #[cfg(feature = "redis")]
            connection: tokio::sync::OnceCell::new(),
        }
    }

    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// The process's connection, made on the first call (which waits for
    /// it at most [`FIRST_WAIT`]); `None` when no URL is set.
    #[cfg(feature = "redis")]
    pub async fn connection(&self) -> Result<Option<Redis>, super::config::ConfigError> {
        self.connection
            .get_or_try_init(|| Redis::connect(&self.config))
            .await
            .cloned()
    }
}
