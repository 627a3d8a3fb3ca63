//! The `[authz]` config section, with its documented defaults.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthzConfig {
    /// Address the service's HTTP and gRPC server binds.
    pub listen: SocketAddr,
    /// URL other services reach this instance at; defaults to `http://<listen>`.
    pub advertise_url: Option<String>,
    /// The longest chain of resource parents a binding reaches down.
    pub max_parent_depth: usize,
    /// How old the policy held in memory may grow before a check looks for
    /// writes of other instances.
    pub refresh_ms: u64,
    /// How many users' reaches (the groups they are in, however deep) are
    /// kept between checks at one revision; 0 works each out per check.
    pub reach_cache_entries: u64,
}

impl Default for AuthzConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4103)),
            advertise_url: None,
            max_parent_depth: 8,
            refresh_ms: 1000,
            reach_cache_entries: 100_000,
        }
    }
}
