//! The etcd registry against a real etcd (`it-etcd`), each test on an etcd
//! server of its own (scripts/etcd.sh installs it): instances come and go
//! with their lease and their readiness, and separate processes find each
//! other through it, following changes without a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gatehouse::kernel::config::EtcdConfig;
use gatehouse::kernel::health::{Probe, Probes};
use gatehouse::kernel::registry::etcd::EtcdRegistry;
use gatehouse::kernel::registry::{Instance, Registry};

use crate::binary::{ServiceProcess, free_port};
use crate::servers::Etcd;
use crate::support::{PASSWORD, login, register_response};

/// Waits (up to `within`) until `registry` lists exactly `urls` for
/// `service`, and answers how long that took.
async fn until_listed(
    registry: &EtcdRegistry,
    service: &str,
    urls: &[&str],
    within: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let listed = crate::servers::listed(registry, service).await;
        if listed == urls {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{service} listed {listed:?}, not {urls:?}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A readiness probe the test turns on and off.
/// A readiness probe the test turns on and off, counting the times it
/// was asked while off.
struct Switch(Arc<AtomicBool>, Arc<std::sync::atomic::AtomicUsize>);

#[async_trait]
impl Probe for Switch {
    fn name(&self) -> &'static str {
        "switch"
    }
    async fn check(&self) -> Result<(), gatehouse::kernel::health::ProbeError> {
        if self.0.load(Ordering::SeqCst) {
            Ok(())
        } else {
            self.1.fetch_add(1, Ordering::SeqCst);
            Err("switched off".into())
        }
    }
}

#[tokio::test]
async fn other_processes_see_instances_arrive_and_leave_at_once() {
    let etcd = Etcd::start().await;
    let config = etcd.config(10);
    let (here, there) = (
        EtcdRegistry::new(&config).unwrap(),
        EtcdRegistry::new(&config).unwrap(),
    );
    assert!(there.resolve("identity").await.unwrap().is_empty());
    let a = Instance::new("identity", "http://10.0.0.1:4102".into());
    let b = Instance::new("identity", "http://10.0.0.2:4102".into());
    here.register(a.clone(), Probes::default()).await.unwrap();
    here.register(b.clone(), Probes::default()).await.unwrap();
    let both = ["http://10.0.0.1:4102", "http://10.0.0.2:4102"];
    // Well within the lease: seen through the watch, not by polling.
    until_listed(&there, "identity", &both, Duration::from_secs(5)).await;
    assert_eq!(there.resolve_now("identity").unwrap().len(), 2);
    assert!(there.resolve("auth").await.unwrap().is_empty());

    here.deregister(&a.id).await.unwrap();
    until_listed(
        &there,
        "identity",
        &["http://10.0.0.2:4102"],
        Duration::from_secs(5),
    )
    .await;
    // A registry started now reads the list as it is.
    let late = EtcdRegistry::new(&config).unwrap();
    assert_eq!(*late.resolve("identity").await.unwrap(), [b]);
}

#[tokio::test]
async fn an_instance_that_is_not_ready_is_withdrawn_until_it_is() {
    let etcd = Etcd::start().await;
    let config = etcd.config(2);
    let (here, there) = (
        EtcdRegistry::new(&config).unwrap(),
        EtcdRegistry::new(&config).unwrap(),
    );
    let ready = Arc::new(AtomicBool::new(true));
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let probes = Probes(vec![Arc::new(Switch(ready.clone(), refused.clone()))]);
    let instance = Instance::new("authz", "http://10.0.0.3:4103".into());
    here.register(instance, probes).await.unwrap();
    let url = ["http://10.0.0.3:4103"];
    until_listed(&there, "authz", &url, Duration::from_secs(5)).await;

    ready.store(false, Ordering::SeqCst);
    until_listed(&there, "authz", &[], Duration::from_secs(10)).await;
    // It stays away while unready: each time the instance asks whether it
    // may come back (once a second, past its 2 s lease), it is told no,
    // and it is not listed after any of them.
    let asked = refused.load(Ordering::SeqCst);
    for more in 1..=3 {
        let deadline = Instant::now() + Duration::from_secs(5);
        while refused.load(Ordering::SeqCst) < asked + more {
            assert!(Instant::now() < deadline, "the instance stopped asking");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(crate::servers::listed(&there, "authz").await.is_empty());
    }

    ready.store(true, Ordering::SeqCst);
    until_listed(&there, "authz", &url, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn an_unreachable_etcd_is_a_startup_error_and_a_bad_config_is_refused() {
    let config = EtcdConfig {
        endpoints: vec![format!("http://127.0.0.1:{}", free_port())],
        prefix: "/gatehouse/".into(),
        lease_ttl_secs: 10,
    };
    let registry = EtcdRegistry::new(&config).unwrap();
    let instance = Instance::new("identity", "http://10.0.0.1:4102".into());
    let refused = registry.register(instance, Probes::default()).await;
    assert!(refused.unwrap_err().to_string().contains("etcd"));
    assert!(registry.resolve("identity").await.is_err());
    assert_eq!(registry.resolve_now("identity"), None);

    let short = EtcdConfig {
        lease_ttl_secs: 1,
        ..config.clone()
    };
    let e = EtcdRegistry::new(&short).err().unwrap().to_string();
    assert!(e.contains("lease_ttl_secs"), "{e}");
    let unended = EtcdConfig {
        prefix: "/gatehouse".into(),
        ..config
    };
    let e = EtcdRegistry::new(&unended).err().unwrap().to_string();
    assert!(e.contains("registry.etcd.prefix"), "{e}");
}

/// Starts `service` listening on `port` on the etcd registry `config`,
/// keeping data in `data`.
fn spawn(service: &str, port: u16, data: &std::path::Path, config: &EtcdConfig) -> ServiceProcess {
    let binary = match service {
        "identity" => env!("CARGO_BIN_EXE_gatehouse-identity"),
        "auth" => env!("CARGO_BIN_EXE_gatehouse-auth"),
        _ => env!("CARGO_BIN_EXE_gatehouse-gateway"),
    };
    let mut process = ServiceProcess::spawn(binary, service, port, data, &Etcd::env(config));
    process.started();
    process
}

#[tokio::test]
async fn a_killed_process_leaves_with_its_lease_a_stopped_one_at_once_and_both_come_back() {
    let etcd = Etcd::start().await;
    let data = tempfile::tempdir().unwrap();
    let watcher_config = etcd.config(2);
    let watcher = EtcdRegistry::new(&watcher_config).unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");

    let mut identity = spawn("identity", port, data.path(), &watcher_config);
    until_listed(&watcher, "identity", &[&url], Duration::from_secs(5)).await;
    identity.child.kill().unwrap();
    identity.child.wait().unwrap();
    // Gone when its 2 s lease runs out (etcd checks leases twice a second).
    until_listed(&watcher, "identity", &[], Duration::from_secs(6)).await;

    // A lease far longer than the test: only the deregistration on SIGTERM
    // can take it away in time.
    let long = EtcdConfig {
        lease_ttl_secs: 600,
        ..watcher_config
    };
    let mut identity = spawn("identity", port, data.path(), &long);
    until_listed(&watcher, "identity", &[&url], Duration::from_secs(5)).await;
    assert!(identity.terminate().await.success());
    until_listed(&watcher, "identity", &[], Duration::from_secs(5)).await;
    let _identity = spawn("identity", port, data.path(), &long);
    until_listed(&watcher, "identity", &[&url], Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_gateway_and_service_clients_follow_instances_without_a_restart() {
    let etcd = Etcd::start().await;
    let data = tempfile::tempdir().unwrap();
    let config = etcd.config(2);
    let watcher = EtcdRegistry::new(&config).unwrap();
    let first = free_port();
    let mut identity = spawn("identity", first, data.path(), &config);
    let _auth = spawn("auth", free_port(), data.path(), &config);
    let gateway_port = free_port();
    let _gateway = spawn("gateway", gateway_port, data.path(), &config);
    let gateway = format!("http://127.0.0.1:{gateway_port}");
    let http = reqwest::Client::new();
    let register = |email: &'static str| register_response(&http, &gateway, email, PASSWORD);
    assert_eq!(register("ann@example.org").await.status(), 201);
    let signed_in = login(&http, &gateway, "ann@example.org", PASSWORD).await;
    assert!(signed_in["access_token"].is_string(), "{signed_in}");

    // The only identity stops: nothing answers for it.
    assert!(identity.terminate().await.success());
    until_listed(&watcher, "identity", &[], Duration::from_secs(5)).await;
    let refused = register("bob@example.org").await;
    assert_eq!(refused.status(), 503);

    // Another starts on a port neither the gateway nor auth has heard of:
    // the gateway routes to it, and auth's calls to identity reach it.
    let second = free_port();
    let _identity = spawn("identity", second, data.path(), &config);
    until_listed(
        &watcher,
        "identity",
        &[&format!("http://127.0.0.1:{second}")],
        Duration::from_secs(5),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = register("bob@example.org").await;
        if answer.status() == 201 {
            break;
        }
        assert!(Instant::now() < deadline, "still {}", answer.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let signed_in = login(&http, &gateway, "ann@example.org", PASSWORD).await;
    assert!(signed_in["access_token"].is_string(), "{signed_in}");
}
