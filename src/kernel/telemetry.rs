//! One place that sets up logging: readable text in a terminal, JSON lines
//! otherwise (or when asked). The filter comes from `RUST_LOG` when set, else
//! from `log.level`. See the README's logging section for the field habits:
//! structured fields, units in names, never secrets or tokens.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use super::config::{ConfigError, LogConfig, LogFormat};

/// Installs the global subscriber. Call once, early in `main`.
pub fn init(log: &LogConfig) -> Result<(), ConfigError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => {
            EnvFilter::try_new(spec).map_err(|e| ConfigError(format!("RUST_LOG: {e}")))?
        }
        _ => EnvFilter::try_new(&log.level).map_err(|e| ConfigError(format!("log.level: {e}")))?,
    };
    let json = match log.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry
            .with(tracing_subscriber::fmt::layer().json().flatten_event(true))
            .try_init()
    } else {
        registry.with(tracing_subscriber::fmt::layer()).try_init()
    };
    result.map_err(|e| ConfigError(format!("logging: {e}")))
}
