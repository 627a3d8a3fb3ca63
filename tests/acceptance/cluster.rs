//! The replicated deployment of the `it-cluster` profile: two gateways, two
//! auth, two identity, two authz and one audit, each its own process on
//! loopback, sharing one PostgreSQL database, the local Redis, a tansu
//! broker and an etcd server, every instance listed in etcd under a lease
//! of [`LEASE_SECS`]. It is started once for the run; every scenario of
//! `features/` runs against it, and the steps here (`cluster.feature`) kill,
//! stop and restart its parts while clients keep using it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cucumber::{given, then, when};
use gatehouse::kernel::config::EtcdConfig;
use gatehouse::kernel::registry::etcd::EtcdRegistry;
use serde_json::{Value, json};

use crate::binary::{ServiceProcess, free_port, login, make_admin};
use crate::servers::{Broker, Etcd, TestDatabase};
use crate::{PASSWORD, Platform};

/// The services and how many instances of each, in the order they start.
const LAYOUT: [(&str, usize); 5] = [
    ("identity", 2),
    ("auth", 2),
    ("authz", 2),
    ("audit", 1),
    ("gateway", 2),
];
/// Every instance's etcd lease.
const LEASE_SECS: u64 = 2;
/// How many clients make the load, each from a loopback address of its
/// own (the gateways' per-address limits hold each to 20 requests a second).
const CLIENTS: usize = 8;
/// How long the clients go on before a part is taken down, how long it
/// stays down at least, and how long they go on once it is back.
const BEFORE: Duration = Duration::from_millis(1000);
const DOWN: Duration = Duration::from_millis(1000);
const AFTER: Duration = Duration::from_millis(1000);

static DEPLOYMENT: OnceLock<Arc<Cluster>> = OnceLock::new();

/// The deployment of this run.
fn deployment() -> Arc<Cluster> {
    DEPLOYMENT
        .get()
        .expect("the replicated deployment was started")
        .clone()
}

pub struct Cluster {
    members: Vec<Member>,
    /// What every process is started with.
    env: Vec<(&'static str, String)>,
    etcd_config: EtcdConfig,
    /// Every member's data directory, and where `gatehouse admin create`
    /// runs; removed by [`Cluster::stop`].
    root: Mutex<Option<tempfile::TempDir>>,
    data: PathBuf,
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
    fn database_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("GATEHOUSE_DATABASE__BACKEND", "postgres".to_owned()),
            ("GATEHOUSE_DATABASE__URL", self.db_url.clone()),
        ]
    }

    fn bases(&self, service: &str) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.service == service)
            .map(|m| m.base.clone())
            .collect()
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
    async fn until(
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
    async fn crowd(&self) -> &[String] {
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
                    let pair = login(&http, &gateway, email, PASSWORD).await;
                    let token = pair["access_token"].as_str().unwrap();
                    crate::every_authz_allows(&http, &gateway, token, Duration::from_secs(10))
                        .await;
                }
                crowd
            })
            .await
    }

    /// Kills the `n`th instance of `service` (SIGKILL) and waits for it.
    async fn kill(&self, service: &str, n: usize) {
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
    async fn terminate(&self, service: &str, n: usize) {
        let process = self.member(service, n).process.lock().unwrap().take();
        let mut process = process.expect("a running instance");
        assert!(process.terminate().await.success());
    }

    /// Starts the `n`th instance of `service` again, on its port and data,
    /// and waits until it has started.
    async fn restart(&self, service: &'static str, n: usize) {
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
    async fn broker(self: &Arc<Self>, up: bool) {
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
    async fn served(&self, service: &str, n: usize) -> u64 {
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

/// Puts a scenario on the deployment: it talks to every instance in turn.
pub fn join(world: &mut Platform) {
    let cluster = deployment();
    world.identity = cluster.bases("identity");
    world.auth = cluster.bases("auth");
    world.gateway = cluster.bases("gateway");
    world.identity_logs = cluster
        .members
        .iter()
        .filter(|m| m.service == "identity")
        .filter_map(|m| m.process.lock().unwrap().as_ref().map(|p| p.log.clone()))
        .collect();
    world.admin_cli = Some((cluster.data.clone(), cluster.database_env()));
}

/// What a `cluster.feature` scenario set going, took down and saw.
#[derive(Default)]
pub struct Drill {
    load: Option<Load>,
    /// The part taken down, when the signal went and when it was gone.
    down: Option<Down>,
    /// Whether that part runs again.
    restored: bool,
    /// What the killed instance had answered when it was killed.
    served_before: u64,
    /// What the clients sent, once they stopped.
    sent: Vec<Sent>,
    /// The users the clients signed up.
    signed_up: Vec<String>,
}

#[derive(Clone, Copy)]
enum Part {
    Instance(&'static str, usize),
    Broker,
}

#[derive(Clone, Copy)]
struct Down {
    part: Part,
    signalled: Instant,
    gone: Instant,
}

/// Starts again whatever a scenario took down and left down (a step
/// failed on the way), and stops its clients, so that the scenarios after
/// it find the whole deployment.
pub async fn tidy(world: &mut Platform) {
    drop(world.drill.load.take());
    if let Some(down) = world.drill.down
        && !world.drill.restored
    {
        world.drill.restored = true;
        match down.part {
            Part::Instance(service, n) => {
                let cluster = deployment();
                if cluster.member(service, n).process.lock().unwrap().is_none() {
                    cluster.restart(service, n).await;
                }
            }
            Part::Broker => deployment().broker(true).await,
        }
    }
}

/// One request a client sent: when it started and ended, what it was and
/// how it went (the status, or why there was none).
struct Sent {
    started: Instant,
    ended: Instant,
    what: &'static str,
    outcome: Result<u16, String>,
    expected: u16,
}

impl Sent {
    fn failed(&self) -> bool {
        self.outcome != Ok(self.expected)
    }

    /// Whether it was under way when `down` was signalled.
    fn in_flight(&self, down: &Down) -> bool {
        self.started < down.gone && self.ended >= down.signalled
    }
}

impl std::fmt::Debug for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?}", self.what, self.outcome)
    }
}

/// Clients going on in the background until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<Vec<Sent>>>,
    signed_up: Arc<Mutex<Vec<String>>>,
}

/// What each client does in a round.
#[derive(Clone, Copy)]
enum Work {
    /// Signs in, reads its profile and the roles, and refreshes.
    Sessions,
    /// Signs a new person up.
    SignUps,
}

impl Load {
    /// `CLIENTS` clients, spread over `gateways`: each sends to its own
    /// gateway and, as a load balancer would, to the next one when its own
    /// refuses the connection.
    async fn start(work: Work, gateways: Vec<String>) -> Load {
        let cluster = deployment();
        let crowd = cluster.crowd().await.to_vec();
        let stop = Arc::new(AtomicBool::new(false));
        let signed_up = Arc::new(Mutex::new(Vec::new()));
        let clients = crowd
            .into_iter()
            .enumerate()
            .map(|(n, email)| {
                let mut gateways = gateways.clone();
                let first = n % gateways.len();
                gateways.rotate_left(first);
                let client = Client {
                    http: crate::client_from(crate::own_address()),
                    gateways,
                    sent: Vec::new(),
                };
                let (stop, signed_up) = (stop.clone(), signed_up.clone());
                tokio::spawn(client.run(work, email, stop, signed_up))
            })
            .collect();
        Load {
            stop,
            clients,
            signed_up,
        }
    }

    async fn stop(mut self) -> (Vec<Sent>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut sent = Vec::new();
        for client in std::mem::take(&mut self.clients) {
            sent.extend(client.await.unwrap());
        }
        let signed_up = std::mem::take(&mut *self.signed_up.lock().unwrap());
        (sent, signed_up)
    }
}

/// Clients left going by a scenario that failed stop with it.
impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for client in &self.clients {
            client.abort();
        }
    }
}

struct Client {
    http: reqwest::Client,
    /// Its own gateway first.
    gateways: Vec<String>,
    sent: Vec<Sent>,
}

impl Client {
    async fn run(
        mut self,
        work: Work,
        email: String,
        stop: Arc<AtomicBool>,
        signed_up: Arc<Mutex<Vec<String>>>,
    ) -> Vec<Sent> {
        // Under the gateway's 20 requests a second per address.
        let every = match work {
            Work::Sessions => Duration::from_millis(250),
            Work::SignUps => Duration::from_millis(100),
        };
        while !stop.load(Ordering::Relaxed) {
            let round = tokio::time::Instant::now();
            match work {
                Work::Sessions => self.session(&email).await,
                Work::SignUps => {
                    let email = format!("{}@cluster.example.org", uuid::Uuid::new_v4().simple());
                    let body =
                        json!({"email": email, "password": PASSWORD, "display_name": "Someone"});
                    let http = self.http.clone();
                    let sign_up = |base: &str| http.post(format!("{base}/v1/users")).json(&body);
                    if let Some(user) = self.send("sign-up", 201, sign_up).await {
                        let id = user["id"].as_str().unwrap_or_default().to_owned();
                        signed_up.lock().unwrap().push(id);
                    }
                }
            }
            tokio::time::sleep_until(round + every).await;
        }
        self.sent
    }

    async fn session(&mut self, email: &str) {
        let http = self.http.clone();
        let body = json!({"email": email, "password": PASSWORD});
        let login = |base: &str| http.post(format!("{base}/v1/auth/login")).json(&body);
        let Some(pair) = self.send("sign-in", 200, login).await else {
            return;
        };
        let access = pair["access_token"].as_str().unwrap_or_default();
        let refresh = json!({"refresh_token": pair["refresh_token"]});
        let me = |base: &str| http.get(format!("{base}/v1/users/me")).bearer_auth(access);
        self.send("profile", 200, me).await;
        let roles = |base: &str| {
            http.get(format!("{base}/v1/authz/roles"))
                .bearer_auth(access)
        };
        self.send("roles", 200, roles).await;
        let renew = |base: &str| http.post(format!("{base}/v1/auth/refresh")).json(&refresh);
        self.send("refresh", 200, renew).await;
    }

    /// Sends the request `to` makes for a gateway's base URL, to the next
    /// gateway when one refuses the connection; keeps how it went, and
    /// answers its body when it got the `expected` status.
    async fn send(
        &mut self,
        what: &'static str,
        expected: u16,
        to: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Option<Value> {
        let started = Instant::now();
        let mut answer = Err((false, "no gateway".to_owned()));
        for base in &self.gateways {
            answer = to(base)
                .send()
                .await
                .map_err(|e| (e.is_connect(), e.to_string()));
            match &answer {
                Err((true, _)) => continue,
                _ => break,
            }
        }
        let (outcome, body) = match answer {
            Ok(r) => {
                let status = r.status().as_u16();
                (Ok(status), r.json::<Value>().await.ok())
            }
            Err((_, e)) => (Err(e), None),
        };
        let ok = outcome == Ok(expected);
        self.sent.push(Sent {
            started,
            ended: Instant::now(),
            what,
            outcome,
            expected,
        });
        if ok { body } else { None }
    }
}

impl Platform {
    async fn load(&mut self, work: Work, gateways: &str) {
        let all = deployment().bases("gateway");
        let gateways = match gateways {
            "both gateways" => all,
            "the second gateway" => vec![all[1].clone()],
            other => panic!("no gateways called {other:?}"),
        };
        self.drill.load = Some(Load::start(work, gateways).await);
    }

    /// Stops the clients and keeps what they sent.
    async fn stop_load(&mut self) {
        if let Some(load) = self.drill.load.take() {
            let (sent, signed_up) = load.stop().await;
            self.drill.sent = sent;
            self.drill.signed_up = signed_up;
        }
    }

    /// Takes `part` down by `stopping`, noting when the signal went and
    /// when it was gone.
    async fn take_down(&mut self, part: Part, stopping: impl std::future::Future<Output = ()>) {
        let signalled = Instant::now();
        let down = Down {
            part,
            signalled,
            gone: signalled,
        };
        // Noted first, so that a failure on the way still starts it again.
        self.drill.down = Some(down);
        stopping.await;
        self.drill.down = Some(Down {
            gone: Instant::now(),
            ..down
        });
    }

    fn down(&self) -> Down {
        self.drill.down.expect("a part was taken down")
    }

    /// The instance taken down: its service, which one, and its URL.
    fn stopped(&self) -> (&'static str, usize, String) {
        let Part::Instance(service, n) = self.down().part else {
            panic!("an instance was taken down");
        };
        (service, n, deployment().member(service, n).base.clone())
    }
}

#[given("the replicated deployment is running")]
fn replicated(world: &mut Platform) {
    join(world);
}

#[given(
    regex = r"^clients keep signing in, reading and refreshing through (both gateways|the second gateway)$"
)]
async fn sessions(world: &mut Platform, gateways: String) {
    world.load(Work::Sessions, &gateways).await;
}

#[given(regex = r"^people keep signing up through (both gateways|the second gateway)$")]
async fn sign_ups(world: &mut Platform, gateways: String) {
    world.load(Work::SignUps, &gateways).await;
}

#[when(regex = r"^the (?:first )?(identity|auth|authz|audit) instance is killed$")]
async fn kill(world: &mut Platform, service: String) {
    tokio::time::sleep(BEFORE).await;
    let service = LAYOUT.iter().find(|(s, _)| *s == service).unwrap().0;
    let cluster = deployment();
    world.drill.served_before = cluster.served(service, 0).await;
    let part = Part::Instance(service, 0);
    world.take_down(part, cluster.kill(service, 0)).await;
}

#[when("the first gateway is stopped")]
async fn stop_gateway(world: &mut Platform) {
    tokio::time::sleep(BEFORE).await;
    let cluster = deployment();
    let part = Part::Instance("gateway", 0);
    world.take_down(part, cluster.terminate("gateway", 0)).await;
}

#[when("the broker is killed")]
async fn kill_broker(world: &mut Platform) {
    tokio::time::sleep(BEFORE).await;
    let cluster = deployment();
    world.take_down(Part::Broker, cluster.broker(false)).await;
}

#[when("it is started again")]
async fn start_again(world: &mut Platform) {
    let down = world.down();
    tokio::time::sleep_until((down.gone + DOWN).into()).await;
    match down.part {
        Part::Instance(service, n) => deployment().restart(service, n).await,
        Part::Broker => deployment().broker(true).await,
    }
    world.drill.restored = true;
}

#[then("it is gone from discovery within its lease")]
async fn gone_from_discovery(world: &mut Platform) {
    let (service, _, url) = world.stopped();
    let gone = world.down().gone;
    // etcd lets a lease run out up to its ttl after its last renewal, and
    // looks for leases that ran out every half second.
    let within = Duration::from_secs(LEASE_SECS) + Duration::from_millis(1500);
    let listed = deployment()
        .until(service, gone + within, |urls| !urls.contains(&url))
        .await;
    assert!(!listed.contains(&url), "{url} still listed: {listed:?}");
    println!(
        "      {service} instance gone from discovery {:?} after it died",
        gone.elapsed()
    );
}

#[then("it left discovery as it stopped")]
async fn left_discovery(world: &mut Platform) {
    let (service, _, url) = world.stopped();
    // It deleted its key before it exited: what is left is the watch's delay.
    let deadline = world.down().gone + Duration::from_millis(500);
    let listed = deployment()
        .until(service, deadline, |urls| !urls.contains(&url))
        .await;
    assert!(!listed.contains(&url), "{url} still listed: {listed:?}");
}

#[then("it is back in discovery")]
async fn back_in_discovery(world: &mut Platform) {
    let (service, _, url) = world.stopped();
    let deadline = Instant::now() + Duration::from_secs(5);
    let listed = deployment()
        .until(service, deadline, |urls| urls.contains(&url))
        .await;
    assert!(listed.contains(&url), "{url} not listed: {listed:?}");
}

#[then("it serves the clients again")]
async fn serves_again(world: &mut Platform) {
    let (service, n, url) = world.stopped();
    let cluster = deployment();
    let deadline = Instant::now() + Duration::from_secs(5);
    while cluster.served(service, n).await == 0 {
        assert!(
            Instant::now() < deadline,
            "{url} served nothing since it started again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[then("only requests in flight on it when it was killed failed")]
async fn only_in_flight_failed(world: &mut Platform) {
    tokio::time::sleep(AFTER).await;
    world.stop_load().await;
    let down = world.down();
    let sent = &world.drill.sent;
    assert!(
        world.drill.served_before > 0,
        "the killed instance had served no client"
    );
    let after = sent.iter().filter(|s| s.started >= down.gone).count();
    let failed: Vec<&Sent> = sent.iter().filter(|s| s.failed()).collect();
    let (in_flight, others): (Vec<&Sent>, Vec<&Sent>) =
        failed.into_iter().partition(|s| s.in_flight(&down));
    assert!(
        others.is_empty(),
        "{} of {} requests failed that were not under way at the kill: {others:?}",
        others.len(),
        sent.len()
    );
    // Each client has one request under way at a time.
    assert!(in_flight.len() <= CLIENTS, "{in_flight:?}");
    // The clients went on: enough was sent after the kill to tell.
    assert!(after >= 100, "only {after} requests after the kill");
    println!(
        "      {} requests, {after} after the kill; {} in flight at the kill failed",
        sent.len(),
        in_flight.len()
    );
}

#[then("none of the clients' requests failed")]
async fn none_failed(world: &mut Platform) {
    tokio::time::sleep(AFTER).await;
    world.stop_load().await;
    none_failed_in(&world.drill.sent);
    let sent = world.drill.sent.len();
    assert!(sent >= 100, "only {sent} requests");
}

#[then("the first gateway serves sign-ins again")]
async fn gateway_serves(world: &mut Platform) {
    let cluster = deployment();
    let base = cluster.member("gateway", 0).base.clone();
    let email = cluster.crowd().await[0].clone();
    let pair = login(&world.http, &base, &email, PASSWORD).await;
    assert!(pair["access_token"].is_string(), "{pair}");
}

#[then("every sign-up succeeded")]
async fn every_sign_up(world: &mut Platform) {
    tokio::time::sleep(AFTER).await;
    world.stop_load().await;
    none_failed_in(&world.drill.sent);
    assert!(
        world.drill.signed_up.len() >= 20,
        "only {} sign-ups",
        world.drill.signed_up.len()
    );
}

fn none_failed_in(sent: &[Sent]) {
    let failed: Vec<&Sent> = sent.iter().filter(|s| s.failed()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        sent.len()
    );
}

#[then(expr = "within {int} seconds the audit log holds the sign-up of everyone who signed up")]
async fn audit_holds_sign_ups(world: &mut Platform, seconds: u64) {
    let cluster = deployment();
    let base = cluster.member("gateway", 0).base.clone();
    let email = cluster.crowd().await[0].clone();
    let pair = login(&world.http, &base, &email, PASSWORD).await;
    let token = pair["access_token"].as_str().unwrap().to_owned();
    let wanted: std::collections::BTreeSet<String> = world
        .drill
        .signed_up
        .iter()
        .map(|id| format!("user:{id}"))
        .collect();
    let start = Instant::now();
    loop {
        let logged = registrations(&world.http, &base, &token).await;
        let missing = wanted.difference(&logged).count();
        if missing == 0 {
            println!(
                "      all {} sign-ups in the audit log {:?} after the last one",
                wanted.len(),
                start.elapsed()
            );
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(seconds),
            "{missing} of {} sign-ups never reached the audit log",
            wanted.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The subjects of every registration in the audit log.
async fn registrations(
    http: &reqwest::Client,
    base: &str,
    token: &str,
) -> std::collections::BTreeSet<String> {
    let mut subjects = std::collections::BTreeSet::new();
    let mut cursor = String::new();
    loop {
        let url =
            format!("{base}/v1/audit/events?limit=200&action=identity.user.registered{cursor}");
        let r = http.get(url).bearer_auth(token).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let page: Value = r.json().await.unwrap();
        for entry in page["items"].as_array().unwrap() {
            subjects.insert(entry["subject"].as_str().unwrap_or_default().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return subjects,
        }
    }
}
