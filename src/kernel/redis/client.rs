//! The connection to Redis (the fred client).
//!
//! A [`Redis`] waits for its first connection for at most [`FIRST_WAIT`]
//! when it is made, then keeps reconnecting in the background; a server
//! that is away never stops a service from starting. A command fails at
//! once while the server is away, and within `command_timeout_ms` when it
//! is slow, so each user decides for itself what to do instead (the local
//! limiter, the owner of a cached response).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::{ClientLike, LuaInterface};
use fred::prelude::{Builder, Config, ReconnectPolicy};
use fred::types::config::Options;
use fred::types::scripts::Script;

use crate::kernel::config::{ConfigError, RedisConfig};

/// The longest [`Redis::connect`] waits for the first connection.
pub const FIRST_WAIT: Duration = Duration::from_secs(2);

/// One connection to the deployment's Redis. Cheap to clone.
#[derive(Clone)]
pub struct Redis {
    client: Client,
    prefix: Arc<str>,
    options: Options,
    timeout: Duration,
    /// Whether the last command failed: its warning is logged once per outage.
    away: Arc<AtomicBool>,
}

/// A command that failed: Redis is away, slow or refused it.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct RedisError(String);

impl Redis {
    /// A client of `config.url`, connected unless the server did not
    /// answer within [`FIRST_WAIT`]; `None` when no URL is set.
    pub async fn connect(config: &RedisConfig) -> Result<Option<Self>, ConfigError> {
        if config.url.is_empty() {
            return Ok(None);
        }
        let mut settings =
            Config::from_url(&config.url).map_err(|e| ConfigError(format!("redis.url: {e}")))?;
        // Unreachable at start is like unreachable later: keep trying.
        settings.fail_fast = false;
        let timeout = Duration::from_millis(config.command_timeout_ms.max(1));
        let client = Builder::from_config(settings)
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(1);
                c.internal_command_timeout = timeout.max(Duration::from_secs(1));
                c.max_command_attempts = 1;
            })
            // Forever, every half second.
            .set_policy(ReconnectPolicy::new_constant(0, 500))
            .build()
            .map_err(|e| ConfigError(format!("redis: {e}")))?;
        let _connection = client.connect();
        let connected = matches!(
            tokio::time::timeout(FIRST_WAIT, client.wait_for_connect()).await,
            Ok(Ok(()))
        );
        if !connected {
            tracing::warn!("redis unavailable; falling back until it answers");
        }
        Ok(Some(Self {
            client,
            prefix: config.prefix.as_str().into(),
            options: Options {
                fail_fast: true,
                timeout: Some(timeout),
                max_attempts: Some(1),
                ..Options::default()
            },
            timeout,
            away: Arc::new(AtomicBool::new(!connected)),
        }))
    }

    /// `name` under the deployment's prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Runs `command` unless the client is not connected, within the
    /// command timeout, and notes the outcome: the first failure of an
    /// outage and the first success after it are logged, not every command
    /// between.
    async fn noted<T>(
        &self,
        command: impl std::future::Future<Output = Result<T, fred::error::Error>>,
    ) -> Result<T, RedisError> {
        // A command sent while the client reconnects would wait in its
        // queue, past any timeout of its own.
        let outcome = if self.client.is_connected() {
            tokio::time::timeout(self.timeout, command)
                .await
                .unwrap_or_else(|_| {
                    Err(fred::error::Error::new(
                        fred::error::ErrorKind::Timeout,
                        "no answer in time",
                    ))
                })
        } else {
            Err(fred::error::Error::new(
                fred::error::ErrorKind::IO,
                "not connected",
            ))
        };
        match outcome {
            Ok(value) => {
                if self.away.swap(false, Ordering::Relaxed) {
                    tracing::info!("redis reachable again");
                }
                Ok(value)
            }
            Err(e) => {
                if !self.away.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "redis unavailable; falling back until it answers");
                }
                Err(RedisError(e.to_string()))
            }
        }
    }

    /// Runs `script` with `keys` and `args`, loading it first where the
    /// server does not know it yet.
    pub async fn run<R>(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<R, RedisError>
    where
        R: fred::types::FromValue,
    {
        let client = self.client.with_options(&self.options);
        let command = async {
            match client
                .evalsha::<R, _, _, _>(script.sha1().clone(), keys.clone(), args.clone())
                .await
            {
                Err(e) if e.details().starts_with("NOSCRIPT") => {
                    let lua = script.lua().cloned().unwrap_or_default();
                    match client.script_load::<String, _>(lua).await {
                        Ok(_) => client.evalsha(script.sha1().clone(), keys, args).await,
                        Err(e) => Err(e),
                    }
                }
                outcome => outcome,
            }
        };
        self.noted(command).await
    }
}
