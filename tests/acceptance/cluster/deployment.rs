//! The deployment's parts: every instance started on a port and data
//! directory of its own, which it keeps across restarts; the servers they
//! share; and the admins the drills' clients sign in as.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse::kernel::config::EtcdConfig;
use gatehouse::kernel::registry::etcd::EtcdRegistry;

use super::{CLIENTS, DEPLOYMENT, LAYOUT, LEASE_SECS};
use crate::binary::{Log, ServiceProcess, free_port, make_admin};
use crate::servers::{Broker, Etcd, TestDatabase};
use crate::support::{PASSWORD, sign_in};

pub struct Cluster {
    members: Vec<Member>,
    /// What every process is started with.
    env: Vec<(&'static str, String)>,
    etcd_config: EtcdConfig,
    /// Every member's data directory, and where `gatehouse admin create`
    /// runs; removed by [`Cluster::stop`].
    root: Mutex<Option<tempfile::TempDir>>,
    pub(super) data: PathBuf,
    db_url: String,
    broker: Mutex<Option<Broker>>,
    etcd: Mutex<Option<Etcd>>,
    db: Mutex<Option<TestDatabase>>,
    registry: tokio::sync::OnceCell<EtcdRegistry>,
    /// The admins the clients sign in as, made once per run.
    crowd: tokio::sync::OnceCell<Vec<String>>,
}

/// One instance of a service: its port and data directory stay the same
/// across restarts.
struct Member {
    service: &'static str,
    base: String,
    port: u16,
    data: PathBuf,
    /// None while it is down.
    process: Mutex<Option<ServiceProcess>>,
}

impl Member {
    fn binary(&self) -> &'static str {
        match self.service {
            "identity" => env!("CARGO_BIN_EXE_gatehouse-identity"),
            "auth" => env!("CARGO_BIN_EXE_gatehouse-auth"),
            "authz" => env!("CARGO_BIN_EXE_gatehouse-authz"),
            "audit" => env!("CARGO_BIN_EXE_gatehouse-audit"),
            _ => env!("CARGO_BIN_EXE_gatehouse-gateway"),
        }
    }

    fn spawn(&self, env: &[(&'static str, String)]) -> ServiceProcess {
        ServiceProcess::spawn(self.binary(), self.service, self.port, &self.data, env)
    }
}

impl Cluster {
    /// Starts the servers and every instance, and waits until etcd lists
    /// them all.
    pub async fn start() -> Arc<Cluster> {
        let db = TestDatabase::new();
        let broker = Broker::start_kept();
        let etcd = Etcd::start().await;
        let etcd_config = etcd.config(LEASE_SECS);
        let redis = std::env::var("REDIS_URL").unwrap_or("redis://127.0.0.1:6379".into());
        let mut env: Vec<(&'static str, String)> = Etcd::env(&etcd_config)
            .into_iter()
            .filter(|(key, _)| *key != "GATEHOUSE_BUS__BACKEND")
            .collect();
        let key = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        env.extend([
            ("GATEHOUSE_DATABASE__BACKEND", "postgres".to_owned()),
            ("GATEHOUSE_DATABASE__URL", db.url()),
            ("GATEHOUSE_BUS__BACKEND", "kafka".to_owned()),
            (
                "GATEHOUSE_BUS__KAFKA__BROKERS",
                format!("[\"{}\"]", broker.address),
            ),
            ("GATEHOUSE_REDIS__URL", redis),
            (
                "GATEHOUSE_REDIS__PREFIX",
                format!("cluster-{}:", uuid::Uuid::new_v4()),
            ),
            ("GATEHOUSE_GATEWAY__RATE_LIMIT__BACKEND", "redis".to_owned()),
            // Redis away fails the scenarios rather than passing on local limits.
            (
                "GATEHOUSE_GATEWAY__RATE_LIMIT__WHEN_REDIS_DOWN",
                "closed".to_owned(),
            ),
            // The replicas of auth open each other's signing keys.
            ("GATEHOUSE_AUTH__KEY_ENCRYPTION_KEY", key),
            // Reuse is detected at once (no grace window) to keep scenarios short.
            ("GATEHOUSE_AUTH__REFRESH_GRACE_SECS", "0".to_owned()),
        ]);
        let root = tempfile::tempdir().unwrap();
        let members = LAYOUT
            .iter()
            .flat_map(|(service, count)| (0..*count).map(|_| *service))
            .map(|service| {
                let port = free_port();
                let data = root.path().join(format!("{service}-{port}"));
                std::fs::create_dir(&data).unwrap();
                Member {
                    service,
                    base: format!("http://127.0.0.1:{port}"),
                    port,
                    data,
                    process: Mutex::new(None),
                }
            })
            .collect();
        let cluster = Arc::new(Cluster {
            members,
            env,
            etcd_config,
            data: root.path().to_owned(),
            root: Mutex::new(Some(root)),
            db_url: db.url(),
            broker: Mutex::new(Some(broker)),
            etcd: Mutex::new(Some(etcd)),
            db: Mutex::new(Some(db)),
            registry: tokio::sync::OnceCell::new(),
            crowd: tokio::sync::OnceCell::new(),
        });
        let mut started: Vec<ServiceProcess> = cluster
            .members
            .iter()
            .map(|m| m.spawn(&cluster.env))
            .collect();
        for process in &mut started {
            process.started();
        }
        for (member, process) in cluster.members.iter().zip(started) {
            *member.process.lock().unwrap() = Some(process);
        }
        for (service, count) in LAYOUT {
            let deadline = Instant::now() + Duration::from_secs(30);
            let listed = cluster
                .until(service, deadline, |urls| urls.len() == count)
                .await;
            assert_eq!(listed.len(), count, "{service}: {listed:?}");
        }
        assert!(DEPLOYMENT.set(cluster.clone()).is_ok(), "started twice");
        cluster
    }

    /// Stops every process and server, drops the database and removes the
    /// data directories.
    pub fn stop(&self) {
        for member in &self.members {
            drop(member.process.lock().unwrap().take());
        }
        drop(self.broker.lock().unwrap().take());
        drop(self.etcd.lock().unwrap().take());
        drop(self.db.lock().unwrap().take());
        drop(self.root.lock().unwrap().take());
    }

    /// The settings that put a process (or `gatehouse admin create`) on
    /// the deployment's database.
    pub(super) fn database_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("GATEHOUSE_DATABASE__BACKEND", "postgres".to_owned()),
            ("GATEHOUSE_DATABASE__URL", self.db_url.clone()),
        ]
    }

    /// The base URLs of the instances of `service`.
    pub(super) fn bases(&self, service: &str) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.service == service)
            .map(|m| m.base.clone())
            .collect()
    }

    /// The logs of the running instances of `service`.
    pub(super) fn logs(&self, service: &str) -> Vec<Log> {
        self.members
            .iter()
            .filter(|m| m.service == service)
            .filter_map(|m| m.process.lock().unwrap().as_ref().map(|p| p.log.clone()))
            .collect()
    }

    /// The base URL of the `n`th instance of `service`.
    pub(super) fn base(&self, service: &str, n: usize) -> String {
        self.member(service, n).base.clone()
    }

    /// Whether the `n`th instance of `service` runs.
    pub(super) fn is_running(&self, service: &str, n: usize) -> bool {
        self.member(service, n).process.lock().unwrap().is_some()
    }

    /// The `n`th instance of `service`.
    fn member(&self, service: &str, n: usize) -> &Member {
        self.members
            .iter()
            .filter(|m| m.service == service)
            .nth(n)
            .unwrap_or_else(|| panic!("the deployment has no instance {n} of {service}"))
    }

    /// The instance URLs etcd lists for `service` once `enough` holds of
    /// them, or at `deadline`.
    pub(super) async fn until(
        &self,
        service: &str,
        deadline: Instant,
        enough: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let registry = self
            .registry
            .get_or_init(|| async { EtcdRegistry::new(&self.etcd_config).unwrap() })
            .await;
        loop {
            let listed = crate::servers::listed(registry, service).await;
            if enough(&listed) || Instant::now() > deadline {
                return listed;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The admins the clients sign in as (each made with `gatehouse admin
    /// create`, so each may read everything), once authz lets each of them
    /// read the roles.
    pub(super) async fn crowd(&self) -> &[String] {
        self.crowd
            .get_or_init(|| async {
                let env = self.database_env();
                let data = self.data.clone();
                let crowd: Vec<String> = tokio::task::spawn_blocking(move || {
                    (0..CLIENTS)
                        .map(|n| {
                            let email = format!("client-{n}@cluster.example.org");
                            make_admin(&data, &env, &email, PASSWORD);
                            email
                        })
                        .collect()
                })
                .await
                .unwrap();
                let gateway = self.bases("gateway")[0].clone();
                let http = reqwest::Client::new();
                for email in &crowd {
                    let token = sign_in(&http, &gateway, email, PASSWORD).await;
                    crate::every_authz_allows(&http, &gateway, &token, Duration::from_secs(10))
                        .await;
                }
                crowd
            })
            .await
    }

    /// Kills the `n`th instance of `service` (SIGKILL) and waits for it.
    pub(super) async fn kill(&self, service: &str, n: usize) {
        let process = self.member(service, n).process.lock().unwrap().take();
        let mut process = process.expect("a running instance");
        tokio::task::spawn_blocking(move || {
            process.child.kill().unwrap();
            process.child.wait().unwrap();
        })
        .await
        .unwrap();
    }

    /// Stops the `n`th instance of `service` as an operator would (SIGTERM).
    pub(super) async fn terminate(&self, service: &str, n: usize) {
        let process = self.member(service, n).process.lock().unwrap().take();
        let mut process = process.expect("a running instance");
        assert!(process.terminate().await.success());
    }

    /// Starts the `n`th instance of `service` again, on its port and data,
    /// and waits until it has started.
    pub(super) async fn restart(&self, service: &'static str, n: usize) {
        let member = self.member(service, n);
        let env = self.env.clone();
        let (binary, port, data) = (member.binary(), member.port, member.data.clone());
        let process = tokio::task::spawn_blocking(move || {
            let mut process = ServiceProcess::spawn(binary, service, port, &data, &env);
            process.started();
            process
        })
        .await
        .unwrap();
        *member.process.lock().unwrap() = Some(process);
    }

    /// Kills the broker (SIGKILL), or starts it again on its port and file.
    pub(super) async fn broker(self: &Arc<Self>, up: bool) {
        let cluster = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut broker = cluster.broker.lock().unwrap();
            let broker = broker.as_mut().expect("the deployment's broker");
            if up {
                broker.start_again();
            } else {
                broker.kill();
            }
        })
        .await
        .unwrap();
    }

    /// The requests the `n`th instance of `service` answered since it
    /// started: those of the API and of the services' gRPC methods, not
    /// health checks.
    pub(super) async fn served(&self, service: &str, n: usize) -> u64 {
        let ops = {
            let mut process = self.member(service, n).process.lock().unwrap();
            process.as_mut().expect("a running instance").ops_base()
        };
        crate::binary::answered_on(&ops, |route| {
            route.starts_with("/v1/") || route.starts_with("/gatehouse.")
        })
        .await
    }
}
