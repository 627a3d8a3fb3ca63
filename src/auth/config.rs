//! The `[auth]` config section, with its documented defaults.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Address the service's HTTP and gRPC server binds.
    pub listen: SocketAddr,
    /// URL other services reach this instance at; defaults to `http://<listen>`.
    pub advertise_url: Option<String>,
    /// Absolute lifetime of a session; refresh tokens stop working after it.
    pub session_ttl_secs: u64,
    /// How long a client that lost a refresh answer may present the same
    /// refresh token again and get the same new pair instead of a revocation.
    pub refresh_grace_secs: u64,
    /// How long verifiers may cache the public keys. A new key is published
    /// this long before it signs, so no verifier meets an unknown key id.
    pub key_cache_ttl_secs: u64,
    /// Rotate the signing key when it is older than this; 0 turns the
    /// schedule off (`gatehouse keys rotate` still works).
    pub key_rotation_interval_secs: u64,
    /// The key that encrypts signing keys at rest: 64 hex characters
    /// (32 bytes). When empty, a key file `auth.kek` readable only by its
    /// owner is created under `data_dir` on first start.
    pub key_encryption_key: String,
    /// The OpenID Connect provider.
    pub oidc: super::oidc::config::OidcConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4101)),
            advertise_url: None,
            session_ttl_secs: 30 * 86_400,
            refresh_grace_secs: 5,
            key_cache_ttl_secs: 300,
            key_rotation_interval_secs: 30 * 86_400,
            key_encryption_key: String::new(),
            oidc: Default::default(),
        }
    }
}
