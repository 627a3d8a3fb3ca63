//! The binaries as their own processes: configured through the environment,
//! reached over HTTP and gRPC, stopped with SIGTERM. By topic:
//!
//! - `services`: each service binary serving alone or beside the others,
//!   wired through the static registry, and stopping on SIGTERM;
//! - `startup`: what a binary checks as it starts, and the settings it
//!   refuses there with one clear error;
//! - `commands`: the `gatehouse` subcommands an operator runs beside them;
//! - `failover`: instances killed under load, and taken back.

mod commands;
mod failover;
mod services;
mod startup;

use crate::binary::ServiceProcess;

/// Under `it-postgres` the binary runs on PostgreSQL (a fresh database),
/// otherwise on SQLite in the data directory.
pub struct Backend {
    pub env: Vec<(&'static str, String)>,
    #[cfg(feature = "it-postgres")]
    _db: crate::support::TestDatabase,
}

impl Backend {
    pub fn new() -> Backend {
        #[cfg(feature = "it-postgres")]
        {
            let db = crate::support::TestDatabase::new();
            Backend {
                env: vec![
                    ("GATEHOUSE_DATABASE__BACKEND", "postgres".to_owned()),
                    ("GATEHOUSE_DATABASE__URL", db.url()),
                ],
                _db: db,
            }
        }
        #[cfg(not(feature = "it-postgres"))]
        Backend { env: Vec::new() }
    }
}

fn spawn_identity(
    port: u16,
    data: &std::path::Path,
    env: &[(&'static str, String)],
) -> ServiceProcess {
    ServiceProcess::spawn(
        env!("CARGO_BIN_EXE_gatehouse-identity"),
        "identity",
        port,
        data,
        env,
    )
}
