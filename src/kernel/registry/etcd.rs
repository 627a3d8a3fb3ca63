//! The etcd registry (`registry.backend = "etcd"`). An instance is the key
//! `<prefix><service>/<id>`, its value the instance as JSON, held under a
//! lease of its own. The registering process renews the lease every third
//! of its time-to-live while the service is ready; when the service turns
//! unready its key is withdrawn until it is ready again, and when the
//! process dies the lease runs out and etcd drops the key. A graceful stop
//! deletes the key at once.
//!
//! Every process watches the prefix and keeps what it saw at hand, so
//! [`Registry::resolve_now`] answers from memory and a change reaches the
//! gateway and the gRPC clients as soon as etcd reports it. While etcd
//! cannot be reached the last list seen stays in use, and is read again
//! from scratch once etcd answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use tokio::sync::{OnceCell, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{Instance, Instances, Registered, Registry, RegistryError};
use crate::kernel::config::{ConfigError, EtcdConfig};
use crate::kernel::health::Probes;
use crate::kernel::locks;

/// etcd grants no lease shorter than this (with its default timings).
const MIN_TTL_SECS: u64 = 2;
/// The longest a call to etcd may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The wait before trying etcd again after it failed.
const RETRY: Duration = Duration::from_secs(1);
/// The longest `resolve` waits for the first list from etcd.
const FIRST_LIST_WAIT: Duration = Duration::from_secs(5);
/// The longest a graceful stop waits to withdraw an instance.
const WITHDRAW_WAIT: Duration = Duration::from_secs(3);

pub struct EtcdRegistry {
    shared: Arc<Shared>,
    /// Instances this process registered, by id: what stops their upkeep.
    held: Mutex<HashMap<String, Held>>,
    /// Stops the watch when the registry is dropped.
    _watching: DropGuard,
}

struct Shared {
    config: EtcdConfig,
    client: OnceCell<Client>,
    /// What the watch saw: instances by key.
    seen: RwLock<Registered>,
    /// Whether `seen` holds a whole list read from etcd.
    listed: watch::Sender<bool>,
}

struct Held {
    stop: CancellationToken,
    upkeep: JoinHandle<()>,
}

impl EtcdRegistry {
    /// Checks the config and starts watching the registry's keys. Must be
    /// called on a Tokio runtime.
    pub fn new(config: &EtcdConfig) -> Result<Self, ConfigError> {
        if config.endpoints.is_empty() {
            return Err(ConfigError(
                "registry.etcd.endpoints: name at least one etcd client URL".into(),
            ));
        }
        if config.lease_ttl_secs < MIN_TTL_SECS {
            return Err(ConfigError(format!(
                "registry.etcd.lease_ttl_secs: {} is below etcd's shortest lease ({MIN_TTL_SECS})",
                config.lease_ttl_secs
            )));
        }
        if !config.prefix.ends_with('/') {
            return Err(ConfigError(format!(
                "registry.etcd.prefix: {:?} must end with '/'",
                config.prefix
            )));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| ConfigError("the etcd registry needs a Tokio runtime".into()))?;
        let shared = Arc::new(Shared {
            config: config.clone(),
            client: OnceCell::new(),
            seen: RwLock::default(),
            listed: watch::Sender::new(false),
        });
        let watching = CancellationToken::new();
        runtime.spawn(follow(shared.clone(), watching.clone()));
        Ok(Self {
            shared,
            held: Mutex::default(),
            _watching: watching.drop_guard(),
        })
    }
}

impl Shared {
    async fn client(&self) -> Result<Client, RegistryError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), CALL_TIMEOUT);
        self.client
            .get_or_try_init(|| Client::connect(&self.config.endpoints, Some(options)))
            .await
            .cloned()
            .map_err(unavailable)
    }

    fn key(&self, instance: &Instance) -> String {
        format!("{}{}/{}", self.config.prefix, instance.service, instance.id)
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.config.lease_ttl_secs)
    }

    fn instances_of(&self, service: &str) -> Instances {
        locks::read(&self.seen).instances_of(service)
    }
}

fn unavailable(e: etcd_client::Error) -> RegistryError {
    RegistryError::Unavailable(format!("etcd: {e}"))
}

#[async_trait]
impl Registry for EtcdRegistry {
    async fn register(&self, instance: Instance, readiness: Probes) -> Result<(), RegistryError> {
        let listing = Listing {
            key: self.shared.key(&instance),
            value: serde_json::to_string(&instance)
                .map_err(|e| RegistryError::Unavailable(e.to_string()))?,
        };
        // The first listing is made here, so an etcd that cannot be
        // reached is a startup error rather than a silent absence.
        let lease = listing.put(&self.shared).await?;
        let stop = CancellationToken::new();
        let upkeep = tokio::spawn(upkeep(
            self.shared.clone(),
            listing,
            lease,
            readiness,
            stop.clone(),
        ));
        let replaced = locks::lock(&self.held).insert(instance.id, Held { stop, upkeep });
        if let Some(old) = replaced {
            old.stop.cancel();
        }
        Ok(())
    }

    async fn deregister(&self, instance_id: &str) -> Result<(), RegistryError> {
        let held = locks::lock(&self.held).remove(instance_id);
        let Some(Held { stop, upkeep }) = held else {
            return Ok(());
        };
        stop.cancel();
        tokio::time::timeout(WITHDRAW_WAIT, upkeep)
            .await
            .map_err(|_| RegistryError::Unavailable("etcd: withdrawal timed out".into()))?
            .map_err(|e| RegistryError::Unavailable(e.to_string()))
    }

    async fn resolve(&self, service: &str) -> Result<Instances, RegistryError> {
        let mut listed = self.shared.listed.subscribe();
        match tokio::time::timeout(FIRST_LIST_WAIT, listed.wait_for(|done| *done)).await {
            Ok(Ok(_)) => Ok(self.shared.instances_of(service)),
            _ => Err(RegistryError::Unavailable(
                "etcd: no list of instances read yet".into(),
            )),
        }
    }

    fn resolve_now(&self, service: &str) -> Option<Instances> {
        (*self.shared.listed.borrow()).then(|| self.shared.instances_of(service))
    }

    fn kind(&self) -> &'static str {
        "etcd"
    }
}

/// One instance's key and value.
struct Listing {
    key: String,
    value: String,
}

impl Listing {
    /// Lists the instance under a new lease, and answers the lease.
    async fn put(&self, shared: &Shared) -> Result<i64, RegistryError> {
        let mut client = shared.client().await?;
        let ttl = i64::try_from(shared.config.lease_ttl_secs).unwrap_or(i64::MAX);
        let lease = client
            .lease_grant(ttl, None)
            .await
            .map_err(unavailable)?
            .id();
        let options = PutOptions::new().with_lease(lease);
        client
            .put(self.key.as_str(), self.value.as_str(), Some(options))
            .await
            .map_err(unavailable)?;
        Ok(lease)
    }

    /// Removes the instance and its lease.
    async fn withdraw(&self, shared: &Shared, lease: i64) -> Result<(), RegistryError> {
        let mut client = shared.client().await?;
        client
            .delete(self.key.as_str(), None)
            .await
            .map_err(unavailable)?;
        // The key is gone; a lease left over runs out by itself.
        let _ = client.lease_revoke(lease).await;
        Ok(())
    }
}

/// Why an instance's listing ended.
enum Ended {
    Stopped,
    Unready(String),
    Lost(String),
}

/// Keeps `listing` in etcd while the service is ready, until `stop`.
async fn upkeep(
    shared: Arc<Shared>,
    listing: Listing,
    first: i64,
    readiness: Probes,
    stop: CancellationToken,
) {
    let mut lease = Some(first);
    loop {
        if let Some(held) = lease {
            match renew(&shared, held, &readiness, &stop).await {
                Ended::Stopped => {
                    if let Err(e) = listing.withdraw(&shared, held).await {
                        tracing::warn!(key = %listing.key, error = %e,
                            "could not withdraw the instance; it leaves when its lease runs out");
                    }
                    return;
                }
                Ended::Unready(reason) => {
                    tracing::warn!(key = %listing.key, reason = %reason,
                        "not ready: withdrawn from the registry until it is");
                    if let Err(e) = listing.withdraw(&shared, held).await {
                        tracing::warn!(key = %listing.key, error = %e, "could not withdraw the instance");
                    }
                }
                Ended::Lost(reason) => {
                    tracing::warn!(key = %listing.key, reason = %reason,
                        "registration lost; registering again");
                }
            }
            lease = None;
        }
        // Listed again once the service is ready and etcd answers.
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RETRY) => {}
        }
        if readiness.ready().await.is_ok() {
            match listing.put(&shared).await {
                Ok(held) => {
                    tracing::info!(key = %listing.key, "registered again");
                    lease = Some(held);
                }
                Err(e) => tracing::warn!(key = %listing.key, error = %e, "cannot register yet"),
            }
        }
    }
}

/// Renews `lease` every third of its time-to-live, after checking that the
/// service is still ready.
async fn renew(shared: &Shared, lease: i64, readiness: &Probes, stop: &CancellationToken) -> Ended {
    let period = shared.ttl() / 3;
    let client = match shared.client().await {
        Ok(client) => client,
        Err(e) => return Ended::Lost(e.to_string()),
    };
    let (mut keeper, mut responses) = match client.clone().lease_keep_alive(lease).await {
        Ok(pair) => pair,
        Err(e) => return Ended::Lost(e.to_string()),
    };
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ended::Stopped,
            _ = ticks.tick() => {}
        }
        if let Err(reason) = readiness.ready().await {
            return Ended::Unready(reason.to_string());
        }
        if let Err(e) = keeper.keep_alive().await {
            return Ended::Lost(e.to_string());
        }
        match tokio::time::timeout(period, responses.message()).await {
            Ok(Ok(Some(response))) if response.ttl() > 0 => {}
            Ok(Ok(Some(_))) => return Ended::Lost("the lease ran out".into()),
            Ok(Ok(None)) => return Ended::Lost("etcd closed the renewal stream".into()),
            Ok(Err(e)) => return Ended::Lost(e.to_string()),
            Err(_) => return Ended::Lost("etcd did not answer a renewal in time".into()),
        }
    }
}

/// Follows the registry's keys until `stop`: a whole list, then every
/// change after it; again from a whole list whenever the watch breaks.
async fn follow(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            outcome = watch_once(&shared) => if let Err(e) = outcome {
                tracing::warn!(error = %e, "registry watch interrupted; reading the list again");
            },
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RETRY) => {}
        }
    }
}

async fn watch_once(shared: &Shared) -> Result<(), RegistryError> {
    let prefix = shared.config.prefix.as_str();
    let mut client = shared.client().await?;
    let listed = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(unavailable)?;
    let revision = listed.header().map_or(0, |h| h.revision());
    let mut fresh = Registered::default();
    for kv in listed.kvs() {
        if let Some(instance) = parse(kv.key(), kv.value()) {
            fresh
                .by_id
                .insert(String::from_utf8_lossy(kv.key()).into_owned(), instance);
        }
    }
    // Each service listed once, however many instances it has.
    let services: std::collections::BTreeSet<String> =
        fresh.by_id.values().map(|i| i.service.clone()).collect();
    for service in services {
        fresh.relist(&service);
    }
    *locks::write(&shared.seen) = fresh;
    shared.listed.send_replace(true);

    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut changes = client
        .watch(prefix, Some(options))
        .await
        .map_err(unavailable)?;
    while let Some(response) = changes.message().await.map_err(unavailable)? {
        if response.canceled() {
            return Err(RegistryError::Unavailable(format!(
                "etcd cancelled the watch: {}",
                response.cancel_reason()
            )));
        }
        let mut seen = locks::write(&shared.seen);
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let service = match event.event_type() {
                EventType::Put => match parse(kv.key(), kv.value()) {
                    Some(instance) => {
                        let service = instance.service.clone();
                        seen.by_id.insert(key, instance);
                        service
                    }
                    None => continue,
                },
                EventType::Delete => match seen.by_id.remove(&key) {
                    Some(gone) => gone.service,
                    None => continue,
                },
            };
            seen.relist(&service);
        }
    }
    Err(RegistryError::Unavailable("etcd ended the watch".into()))
}

/// The instance a key holds; `None` (and a warning) for a value that is not one.
fn parse(key: &[u8], value: &[u8]) -> Option<Instance> {
    match serde_json::from_slice::<Instance>(value) {
        Ok(instance) => Some(instance),
        Err(e) => {
            tracing::warn!(key = %String::from_utf8_lossy(key), error = %e,
                "registry key holds no instance; ignored");
            None
        }
    }
}
