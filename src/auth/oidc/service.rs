//! The provider's domain logic over auth's store and key ring: clients
//! here; the grants in `grants.rs`, the browser's side in `browser.rs`.

use std::sync::Arc;

use super::config::OidcConfig;
use super::registry::ClientRegistry;
use crate::auth::service::Auth;

/// The OpenID Connect provider.
#[derive(Clone)]
pub struct Provider {
    pub(super) auth: Auth,
    /// The issuer, without a trailing slash.
    pub(super) issuer: Arc<str>,
    pub(super) config: Arc<OidcConfig>,
    pub(super) clients: ClientRegistry,
}

impl Provider {
    pub fn new(auth: Auth, issuer: String, config: OidcConfig) -> Self {
        Self {
            clients: ClientRegistry::new(auth.db.clone(), auth.clock.clone()),
            auth,
            issuer: issuer.into(),
            config: Arc::new(config),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn clients(&self) -> &ClientRegistry {
        &self.clients
    }
}
