//! Acceptance specs (`features/*.feature`) run with cucumber against the real
//! binaries. By default each scenario runs on processes of its own, each on a
//! free port with a fresh data directory:
//!
//! - `identity.feature`: `gatehouse-identity` alone;
//! - `auth.feature`: `gatehouse-identity` and `gatehouse-auth`, two processes
//!   that find each other through the static registry;
//! - `gateway.feature`: `gatehouse-gateway` in front of those two, the three
//!   wired the same way;
//! - `authz.feature`: the all-in-one `gatehouse`, its first admin made with
//!   `gatehouse admin create` on the same data directory.
//!
//! With the `it-cluster` gate, every scenario runs instead against one
//! replicated deployment started for the whole run (see `acceptance/cluster/`),
//! and so does `cluster.feature`, which kills and restarts its parts.
//!
//! This file holds the runner and the world, the state a scenario keeps;
//! the steps of each feature are in `acceptance/steps/`. The steps talk
//! HTTP to the services, with the requests the integration suites make
//! (`integration/support.rs`), and gRPC to identity, to sign in without
//! auth; they read the links the development notifier writes to the log.
//! Each scenario names its people and roles with a tag of its own and sends
//! from a loopback address of its own, so scenarios sharing a deployment
//! meet neither each other's accounts nor each other's rate limits. A step
//! without a definition fails the run rather than being skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "integration/binary.rs"]
#[allow(dead_code)]
mod binary;
#[path = "integration/servers.rs"]
#[allow(dead_code)]
mod servers;
#[path = "integration/support.rs"]
#[allow(dead_code, unused_imports)]
#[allow(
    clippy::disallowed_methods,
    reason = "the in-process app, unused here, sets its clock by the wall clock"
)]
mod support;

#[path = "acceptance/steps/mod.rs"]
mod steps;

#[cfg(feature = "it-cluster")]
#[path = "acceptance/cluster/mod.rs"]
mod cluster;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cucumber::World;
use reqwest::Method;
use serde_json::Value;

use binary::{Log, ServiceProcess};

#[derive(World)]
#[world(init = Self::new)]
struct Platform {
    /// The processes this scenario started (none on a shared deployment).
    own: Vec<Service>,
    /// Base URLs of the instances of each service the scenario talks to;
    /// requests take them in turn.
    identity: Vec<String>,
    auth: Vec<String>,
    gateway: Vec<String>,
    /// The identity instances' logs, where the links they send are found.
    identity_logs: Vec<Log>,
    /// How many requests picked an instance so far.
    turn: usize,
    /// The data directory and the database settings `gatehouse admin
    /// create` works on.
    admin_cli: Option<(PathBuf, Vec<(&'static str, String)>)>,
    /// Added to every email address and role name the scenario makes.
    tag: String,
    /// Sends every request from this scenario's own loopback address.
    http: reqwest::Client,
    from: IpAddr,
    /// Token pairs received, oldest first.
    pairs: Vec<Value>,
    status: u16,
    body: Value,
    /// Registered users' ids by lowercased email.
    ids: std::collections::HashMap<String, String>,
    /// Answers to a burst of requests.
    burst: Vec<reqwest::Response>,
    /// Access tokens of signed-in users, by lowercased email.
    tokens: std::collections::HashMap<String, String>,
    /// Device tokens of users' earlier sign-ins, by lowercased email.
    devices: std::collections::HashMap<String, String>,
    /// The admin's access token.
    admin: Option<String>,
    /// The latest role and binding the admin made.
    granted: Option<(String, String)>,
    /// What `cluster.feature` started, stopped and measured.
    #[cfg(feature = "it-cluster")]
    drill: cluster::Drill,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("tag", &self.tag)
            .field("status", &self.status)
            .field("body", &self.body)
            .finish()
    }
}

/// A loopback address no other scenario of this run sends from, when the
/// run shares one deployment (Linux answers on all of 127.0.0.0/8);
/// 127.0.0.1 otherwise.
fn own_address() -> IpAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    if !cfg!(feature = "it-cluster") {
        return std::net::Ipv4Addr::LOCALHOST.into();
    }
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let [_, _, high, low] = (n + 1).to_be_bytes();
    IpAddr::from([127, 1, high, low])
}

/// A client whose connections start at `from`.
fn client_from(from: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// One process a scenario started, with its data directory.
struct Service {
    process: ServiceProcess,
    _data: tempfile::TempDir,
}

impl Service {
    fn spawn(binary: &str, service: &str, port: u16, env: &[(&str, String)]) -> Service {
        let data = tempfile::tempdir().unwrap();
        let mut process = ServiceProcess::spawn(binary, service, port, data.path(), env);
        process.started();
        Service {
            process,
            _data: data,
        }
    }
}

impl Platform {
    fn new() -> Platform {
        let from = own_address();
        Platform {
            own: Vec::new(),
            identity: Vec::new(),
            auth: Vec::new(),
            gateway: Vec::new(),
            identity_logs: Vec::new(),
            turn: 0,
            admin_cli: None,
            tag: uuid::Uuid::new_v4().simple().to_string()[..10].to_owned(),
            http: client_from(from),
            from,
            pairs: Vec::new(),
            status: 0,
            body: Value::Null,
            ids: std::collections::HashMap::new(),
            burst: Vec::new(),
            tokens: std::collections::HashMap::new(),
            devices: std::collections::HashMap::new(),
            admin: None,
            granted: None,
            #[cfg(feature = "it-cluster")]
            drill: cluster::Drill::default(),
        }
    }

    /// Keeps a process started for this scenario; answers its base URL.
    fn keep(&mut self, service: Service) -> String {
        let base = service.process.base.clone();
        self.own.push(service);
        base
    }

    /// The scenario's own form of the address `email`: the same mailbox
    /// name, tagged, so that scenarios sharing a deployment never meet.
    fn email(&self, email: &str) -> String {
        let (name, domain) = email.split_once('@').expect("an email address");
        format!("{name}+{}@{domain}", self.tag)
    }

    /// The next of `bases`, in turn.
    fn pick(&mut self, bases: fn(&Platform) -> &Vec<String>, what: &str) -> String {
        let all = bases(self);
        assert!(!all.is_empty(), "no {what} was started in the background");
        let base = all[self.turn % all.len()].clone();
        self.turn += 1;
        base
    }

    fn identity_base(&mut self) -> String {
        self.pick(|p| &p.identity, "identity service")
    }

    fn auth_base(&mut self) -> String {
        self.pick(|p| &p.auth, "auth service")
    }

    fn gateway_base(&mut self) -> String {
        self.pick(|p| &p.gateway, "gateway")
    }

    /// Keeps `r` as the answer the next steps look at, and a token pair
    /// it holds among the pairs received.
    async fn record(&mut self, r: reqwest::Response) {
        self.status = r.status().as_u16();
        self.body = r.json().await.unwrap_or(Value::Null);
        if self.status == 200 && self.body["token_type"] == "Bearer" {
            self.pairs.push(self.body.clone());
        }
    }

    /// Sends `method url`, with `token` and the JSON `body` when given, and
    /// keeps the answer.
    async fn send(
        &mut self,
        method: Method,
        url: String,
        token: Option<&str>,
        body: Option<Value>,
    ) {
        let r = support::send(&self.http, method, url, token, body).await;
        self.record(r).await;
    }

    /// `POST path` to identity with the JSON `body`; keeps the answer.
    async fn post(&mut self, path: &str, body: Value) {
        let url = format!("{}{path}", self.identity_base());
        self.send(Method::POST, url, None, Some(body)).await;
    }

    /// A field of the latest token pair received.
    fn latest(&self, field: &str) -> String {
        self.pairs.last().expect("signed in before")[field]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Puts the scenario on the shared replicated deployment, when the run
    /// has one; answers whether it did.
    fn on_shared_deployment(&mut self) -> bool {
        #[cfg(feature = "it-cluster")]
        {
            cluster::join(self);
            true
        }
        #[cfg(not(feature = "it-cluster"))]
        false
    }
}

/// Waits (up to `within`) until authz lets `token` read the roles through
/// the gateway at `base` on every replica: the gateway spreads the reads
/// among them, so ten answers in a row must allow it.
async fn every_authz_allows(http: &reqwest::Client, base: &str, token: &str, within: Duration) {
    let url = format!("{base}/v1/authz/roles");
    let deadline = Instant::now() + within;
    let mut allowed_in_a_row = 0;
    while allowed_in_a_row < 10 {
        let r = support::send(http, Method::GET, &url, Some(token), None).await;
        let status = r.status();
        if status == 200 {
            allowed_in_a_row += 1;
        } else {
            allowed_in_a_row = 0;
            assert!(Instant::now() < deadline, "{status}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a scenario belongs to the replicated deployment's own feature,
/// which only a run with one (`it-cluster`) has.
fn needs_cluster(
    feature: &cucumber::gherkin::Feature,
    scenario: &cucumber::gherkin::Scenario,
) -> bool {
    feature
        .tags
        .iter()
        .chain(&scenario.tags)
        .any(|t| t == "cluster")
}

/// Runs the scenarios of `features/` that `wanted` takes; answers whether
/// any failed.
async fn run(
    wanted: fn(&cucumber::gherkin::Feature, &cucumber::gherkin::Scenario) -> bool,
) -> bool {
    let features = concat!(env!("CARGO_MANIFEST_DIR"), "/features");
    // Scenarios sharing one deployment run a few at a time: their "within
    // a second" is about the deployment, not about a machine of two cores
    // starved by two dozen scenarios at once.
    let at_once = if cfg!(feature = "it-cluster") { 4 } else { 64 };
    let run = Platform::cucumber()
        .max_concurrent_scenarios(at_once)
        .fail_on_skipped()
        .after(|_, _, _, _, world| {
            Box::pin(async move {
                #[cfg(feature = "it-cluster")]
                if let Some(world) = world {
                    cluster::tidy(world).await;
                }
                #[cfg(not(feature = "it-cluster"))]
                let _ = world;
            })
        })
        .filter_run(features, move |feature, _, scenario| {
            wanted(feature, scenario)
        })
        .await;
    cucumber::writer::Stats::execution_has_failed(&run)
}

#[tokio::main]
async fn main() {
    let everyday = |feature: &_, scenario: &_| !needs_cluster(feature, scenario);
    #[cfg(not(feature = "it-cluster"))]
    let failed = run(everyday).await;
    // On the shared deployment every feature runs first, then the drills
    // that take its parts down: the broker's store then holds what their
    // load wrote, and tansu reads it back more slowly.
    #[cfg(feature = "it-cluster")]
    let failed = {
        let deployment = cluster::Cluster::start().await;
        let features_failed = run(everyday).await;
        let drills_failed = run(needs_cluster).await;
        deployment.stop();
        features_failed || drills_failed
    };
    std::process::exit(i32::from(failed));
}
