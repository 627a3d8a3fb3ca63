//! Where services find each other. A service registers its instance when it
//! starts serving and deregisters when it stops; callers resolve a service
//! name to the base URLs of its live instances. A resolved list is shared,
//! not copied: callers on every request's path (the gateway) pay for a
//! reference count, not for the instances' strings.
//!
//! Backends: [`InProcessRegistry`] for the all-in-one process (and the
//! fixed addresses of a team's own services beside it),
//! [`StaticRegistry`] for fixed addresses from config, and with the `etcd`
//! feature [`etcd::EtcdRegistry`], where instances come and go on their own.

#[cfg(feature = "etcd")]
pub mod etcd;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use super::health::Probes;
use super::locks;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// One running copy of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Unique per instance, e.g. `identity-127.0.0.1:4102`.
    pub id: String,
    pub service: String,
    /// Base URL, e.g. `http://127.0.0.1:4102`.
    pub url: String,
}

impl Instance {
    pub fn new(service: &str, url: String) -> Self {
        Self {
            id: format!("{service}-{url}"),
            service: service.to_owned(),
            url,
        }
    }
}

/// The live instances of one service, ordered by id.
pub type Instances = Arc<[Instance]>;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Registry: Send + Sync {
    /// Lists `instance` until it is deregistered. `readiness` is the
    /// service's own: a registry that can withdraw an instance while it is
    /// not ready (etcd) runs it as often as it renews the listing.
    async fn register(&self, instance: Instance, readiness: Probes) -> Result<(), RegistryError>;
    async fn deregister(&self, instance_id: &str) -> Result<(), RegistryError>;
    /// Live instances of `service`; empty when there are none.
    async fn resolve(&self, service: &str) -> Result<Instances, RegistryError>;
    /// What [`Registry::resolve`] would answer, when the registry holds it at
    /// hand with nothing to wait for; `None` sends the caller to `resolve`.
    /// Saves callers on every request's path a boxed future.
    fn resolve_now(&self, _service: &str) -> Option<Instances> {
        None
    }
    /// A name for logs and readiness output.
    fn kind(&self) -> &'static str;
}

/// Services of one process registering with each other.
#[derive(Default)]
pub struct InProcessRegistry {
    state: RwLock<Registered>,
}

/// Instances by a key of the backend's (the in-process registry: the
/// instance's id), and each service's list as `resolve` answers it,
/// rebuilt when the service's instances change.
#[derive(Default)]
struct Registered {
    by_id: HashMap<String, Instance>,
    by_service: HashMap<String, Instances>,
}

impl Registered {
    fn instances_of(&self, service: &str) -> Instances {
        self.by_service
            .get(service)
            .cloned()
            .unwrap_or_else(|| Arc::new([]))
    }

    fn relist(&mut self, service: &str) {
        let mut found: Vec<Instance> = self
            .by_id
            .values()
            .filter(|i| i.service == service)
            .cloned()
            .collect();
        if found.is_empty() {
            self.by_service.remove(service);
            return;
        }
        found.sort_by(|a, b| a.id.cmp(&b.id));
        self.by_service.insert(service.to_owned(), found.into());
    }
}

impl InProcessRegistry {
    /// A registry for the services of this process, that also lists
    /// `configured` (`[registry.instances]`): a team's own services, which
    /// this process does not run, at fixed addresses.
    pub fn with_instances(configured: &BTreeMap<String, Vec<String>>) -> Self {
        let mut state = Registered::default();
        for (service, urls) in configured {
            for instance in configured_instances(service, urls) {
                state.by_id.insert(instance.id.clone(), instance);
            }
            state.relist(service);
        }
        Self {
            state: RwLock::new(state),
        }
    }

    fn state(&self) -> std::sync::RwLockWriteGuard<'_, Registered> {
        locks::write(&self.state)
    }

    fn instances_of(&self, service: &str) -> Instances {
        locks::read(&self.state).instances_of(service)
    }
}

#[async_trait]
impl Registry for InProcessRegistry {
    async fn register(&self, instance: Instance, _: Probes) -> Result<(), RegistryError> {
        let mut state = self.state();
        let service = instance.service.clone();
        state.by_id.insert(instance.id.clone(), instance);
        state.relist(&service);
        Ok(())
    }

    async fn deregister(&self, instance_id: &str) -> Result<(), RegistryError> {
        let mut state = self.state();
        if let Some(gone) = state.by_id.remove(instance_id) {
            state.relist(&gone.service);
        }
        Ok(())
    }

    async fn resolve(&self, service: &str) -> Result<Instances, RegistryError> {
        Ok(self.instances_of(service))
    }

    fn resolve_now(&self, service: &str) -> Option<Instances> {
        Some(self.instances_of(service))
    }

    fn kind(&self) -> &'static str {
        "in_process"
    }
}

/// The instances `[registry.instances]` lists for `service`.
fn configured_instances<'a>(
    service: &'a str,
    urls: &'a [String],
) -> impl Iterator<Item = Instance> + 'a {
    urls.iter()
        .map(move |u| Instance::new(service, u.trim_end_matches('/').to_owned()))
}

/// Addresses fixed in config (`[registry.instances]`). Registration is a
/// no-op: whoever wrote the config already knows where the service is.
pub struct StaticRegistry {
    instances: BTreeMap<String, Instances>,
}

impl StaticRegistry {
    pub fn new(config: &BTreeMap<String, Vec<String>>) -> Self {
        let instances = config
            .iter()
            .map(|(service, urls)| {
                (
                    service.clone(),
                    configured_instances(service, urls).collect(),
                )
            })
            .collect();
        Self { instances }
    }
}

impl StaticRegistry {
    fn instances_of(&self, service: &str) -> Instances {
        self.instances
            .get(service)
            .cloned()
            .unwrap_or_else(|| Arc::new([]))
    }
}

#[async_trait]
impl Registry for StaticRegistry {
    async fn register(&self, instance: Instance, _: Probes) -> Result<(), RegistryError> {
        tracing::debug!(service = %instance.service, url = %instance.url,
            "static registry: registration is taken from config");
        Ok(())
    }

    async fn deregister(&self, _instance_id: &str) -> Result<(), RegistryError> {
        Ok(())
    }

    async fn resolve(&self, service: &str) -> Result<Instances, RegistryError> {
        Ok(self.instances_of(service))
    }

    fn resolve_now(&self, service: &str) -> Option<Instances> {
        Some(self.instances_of(service))
    }

    fn kind(&self) -> &'static str {
        "static"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_process_registry_forgets_deregistered_instances() {
        let r = InProcessRegistry::default();
        let a = Instance::new("identity", "http://127.0.0.1:1".into());
        let b = Instance::new("identity", "http://127.0.0.1:2".into());
        r.register(a.clone(), Probes::default()).await.unwrap();
        r.register(b.clone(), Probes::default()).await.unwrap();
        r.register(
            Instance::new("auth", "http://127.0.0.1:3".into()),
            Probes::default(),
        )
        .await
        .unwrap();
        assert_eq!(
            *r.resolve("identity").await.unwrap(),
            [a.clone(), b.clone()]
        );
        r.deregister(&a.id).await.unwrap();
        assert_eq!(
            *r.resolve("identity").await.unwrap(),
            *std::slice::from_ref(&b)
        );
        assert_eq!(*r.resolve_now("identity").unwrap(), [b]);
        assert!(r.resolve("audit").await.unwrap().is_empty());
        assert!(r.resolve_now("audit").unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_in_process_registry_lists_configured_instances_beside_its_own() {
        let mut cfg = BTreeMap::new();
        cfg.insert(
            "billing".to_owned(),
            vec!["http://10.1.1.1:8000/".to_owned()],
        );
        let r = InProcessRegistry::with_instances(&cfg);
        let own = Instance::new("identity", "http://127.0.0.1:4102".into());
        r.register(own.clone(), Probes::default()).await.unwrap();
        let billing = r.resolve("billing").await.unwrap();
        assert_eq!(billing.len(), 1);
        assert_eq!(billing[0].url, "http://10.1.1.1:8000");
        assert_eq!(*r.resolve("identity").await.unwrap(), [own]);
    }

    #[tokio::test]
    async fn static_registry_resolves_from_config() {
        let mut cfg = BTreeMap::new();
        cfg.insert(
            "identity".to_owned(),
            vec!["http://10.1.1.1:4102/".to_owned()],
        );
        let r = StaticRegistry::new(&cfg);
        let found = r.resolve("identity").await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].url, "http://10.1.1.1:4102");
        assert_eq!(r.resolve_now("identity"), Some(found));
        assert!(r.resolve("auth").await.unwrap().is_empty());
        assert!(r.resolve_now("auth").unwrap().is_empty());
    }
}
