//! The `[audit]` config section, with its documented defaults.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Address the service's HTTP and gRPC server binds.
    pub listen: SocketAddr,
    /// URL other services reach this instance at; defaults to `http://<listen>`.
    pub advertise_url: Option<String>,
    /// The services whose events are recorded.
    pub sources: Vec<String>,
    /// How often the chain's head is signed, when entries were added: at
    /// most what can vanish unseen from the log's end.
    pub checkpoint_every_secs: u64,
    /// Where the newest checkpoint is kept outside the database (the
    /// witness); empty: `audit.witness` under the data directory.
    pub witness_path: String,
    /// Entries older than this many days are removed (0: kept for ever).
    /// What remains stays verifiable from the newest checkpoint removed.
    pub retention_days: u64,
    /// Moved to `rpc.permission_cache_ms`: a config that still has it is
    /// refused with a message saying so.
    #[serde(skip_serializing)]
    pub permission_cache_ms: Option<serde::de::IgnoredAny>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4104)),
            advertise_url: None,
            sources: vec!["identity".into(), "auth".into(), "authz".into()],
            checkpoint_every_secs: 1,
            witness_path: String::new(),
            retention_days: 0,
            permission_cache_ms: None,
        }
    }
}
