//! Services as separate processes on each bus that crosses processes (the
//! outbox bus, and with `it-kafka` the Kafka bus): events cross process
//! boundaries, each consumer resumes where it left off, and the audit log
//! gets every event once. With `it-redis`, every process also shares its
//! rate limits and authz's answers through the local Redis, so the same
//! tests show those answers voided as soon as the change arrives.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::binary::{ServiceProcess, free_port, make_admin, static_registry};
use crate::process::Backend;
use crate::support::{PASSWORD, register, send, sign_in};

const SERVICES: [&str; 4] = ["identity", "auth", "authz", "audit"];

/// The bus the processes of a deployment share.
enum Bus {
    Outbox,
    #[cfg(feature = "it-kafka")]
    Kafka(crate::servers::Broker),
}

impl Bus {
    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Bus::Outbox => vec![("GATEHOUSE_BUS__BACKEND", "outbox".to_owned())],
            #[cfg(feature = "it-kafka")]
            Bus::Kafka(broker) => vec![
                ("GATEHOUSE_BUS__BACKEND", "kafka".to_owned()),
                (
                    "GATEHOUSE_BUS__KAFKA__BROKERS",
                    format!("[\"{}\"]", broker.address),
                ),
            ],
        }
    }
}

/// The five processes of a deployment on one data directory (one database).
struct Deployment {
    dir: tempfile::TempDir,
    backend: Backend,
    bus: Bus,
    ports: Vec<u16>,
    gateway_port: u16,
    processes: Vec<ServiceProcess>,
    http: reqwest::Client,
    /// The Redis key prefix of this deployment's processes.
    redis_prefix: String,
}

impl Deployment {
    fn env(&self) -> Vec<(&'static str, String)> {
        let instances: Vec<(&str, &[u16])> = SERVICES
            .iter()
            .zip(&self.ports)
            .map(|(s, p)| (*s, std::slice::from_ref(p)))
            .collect();
        let mut env = static_registry(&instances);
        env.extend(self.backend.env.iter().cloned());
        env.extend(self.bus.env());
        if cfg!(feature = "it-redis") {
            let url = std::env::var("REDIS_URL").unwrap_or("redis://127.0.0.1:6379".into());
            env.push(("GATEHOUSE_REDIS__URL", url));
            env.push(("GATEHOUSE_REDIS__PREFIX", self.redis_prefix.clone()));
            env.push(("GATEHOUSE_GATEWAY__RATE_LIMIT__BACKEND", "redis".into()));
            // Redis away fails the suite rather than passing on local limits.
            env.push((
                "GATEHOUSE_GATEWAY__RATE_LIMIT__WHEN_REDIS_DOWN",
                "closed".into(),
            ));
        }
        env
    }

    fn spawn(&self, service: &str) -> ServiceProcess {
        let (binary, port) = match service {
            "identity" => (env!("CARGO_BIN_EXE_gatehouse-identity"), self.ports[0]),
            "auth" => (env!("CARGO_BIN_EXE_gatehouse-auth"), self.ports[1]),
            "authz" => (env!("CARGO_BIN_EXE_gatehouse-authz"), self.ports[2]),
            "audit" => (env!("CARGO_BIN_EXE_gatehouse-audit"), self.ports[3]),
            _ => (env!("CARGO_BIN_EXE_gatehouse-gateway"), self.gateway_port),
        };
        let mut process =
            ServiceProcess::spawn(binary, service, port, self.dir.path(), &self.env());
        process.started();
        process
    }

    fn start(bus: Bus) -> Deployment {
        let mut deployment = Deployment {
            dir: tempfile::tempdir().unwrap(),
            backend: Backend::new(),
            bus,
            ports: (0..4).map(|_| free_port()).collect(),
            gateway_port: free_port(),
            processes: Vec::new(),
            http: reqwest::Client::new(),
            redis_prefix: format!("test-{}:", uuid::Uuid::new_v4()),
        };
        for service in SERVICES.iter().chain(&["gateway"]) {
            let process = deployment.spawn(service);
            deployment.processes.push(process);
        }
        deployment
    }

    fn gateway(&self) -> String {
        format!("http://127.0.0.1:{}", self.gateway_port)
    }

    /// Registers `email` through the gateway; answers the new user's id.
    async fn register(&self, email: &str) -> String {
        let user = register(&self.http, &self.gateway(), email).await;
        user["id"].as_str().unwrap().to_owned()
    }

    /// Signs in through the gateway; answers the access token.
    async fn sign_in(&self, email: &str, password: &str) -> String {
        sign_in(&self.http, &self.gateway(), email, password).await
    }

    async fn get(&self, base: &str, path: &str, token: &str) -> reqwest::Response {
        let url = format!("{base}{path}");
        send(&self.http, Method::GET, url, Some(token), None).await
    }

    /// How long until `GET path` at `base` with `token` answers `status`
    /// (failing after 10 s).
    async fn until(&self, base: &str, path: &str, token: &str, status: u16) -> Duration {
        let start = Instant::now();
        loop {
            if self.get(base, path, token).await.status() == status {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{path} never answered {status}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The audit entries `query` finds, read by `token`'s holder.
    async fn entries(&self, query: &str, token: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut cursor = String::new();
        loop {
            let path = format!("/v1/audit/events?limit=200&{query}{cursor}");
            let r = self.get(&self.gateway(), &path, token).await;
            assert_eq!(r.status(), 200);
            let page: Value = r.json().await.unwrap();
            all.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = format!("&cursor={next}"),
                None => return all,
            }
        }
    }

    /// The audit entries `query` finds once `enough` holds of them (audit
    /// pulls events a moment after they happen), or after 10 s.
    async fn entries_when(
        &self,
        query: &str,
        token: &str,
        enough: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.entries(query, token).await;
            if enough(&found) || Instant::now() > deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The broker of a deployment on Kafka.
    #[cfg(feature = "it-kafka")]
    fn broker(&mut self) -> &mut crate::servers::Broker {
        match &mut self.bus {
            Bus::Kafka(broker) => broker,
            Bus::Outbox => panic!("a deployment on the outbox bus has no broker"),
        }
    }

    /// Makes `email` an admin from the command line, on the deployment's data.
    fn make_admin(&self, email: &str) {
        make_admin(self.dir.path(), &self.backend.env, email, PASSWORD);
    }
}

#[tokio::test]
async fn separate_processes_share_their_events_over_the_outbox_bus() {
    share_events(Bus::Outbox).await;
}

#[cfg(feature = "it-kafka")]
#[tokio::test]
async fn separate_processes_share_their_events_through_kafka() {
    share_events(Bus::Kafka(crate::servers::Broker::start())).await;
}

async fn share_events(bus: Bus) {
    let mut d = Deployment::start(bus);
    let gateway = d.gateway();
    let identity = format!("http://127.0.0.1:{}", d.ports[0]);
    let ann = d.register("ann@example.org").await;
    let first = d.sign_in("ann@example.org", PASSWORD).await;
    let second = d.sign_in("ann@example.org", PASSWORD).await;
    let third = d.sign_in("ann@example.org", PASSWORD).await;
    assert_eq!(d.get(&gateway, "/v1/users/me", &first).await.status(), 200);
    assert_eq!(d.get(&identity, "/v1/users/me", &first).await.status(), 200);

    // A session ended at auth is refused by the gateway and by identity,
    // each in its own process, within a second.
    let url = format!("{gateway}/v1/auth/logout");
    let r = send(&d.http, Method::POST, url, Some(&first), None).await;
    assert_eq!(r.status(), 204);
    // Refused everywhere within a second of the sign-out: by the gateway,
    // and by identity, authz and audit, which check tokens for their own
    // APIs.
    let logged_out = Instant::now();
    let authz = format!("http://127.0.0.1:{}", d.ports[2]);
    let audit = format!("http://127.0.0.1:{}", d.ports[3]);
    d.until(&gateway, "/v1/users/me", &first, 401).await;
    d.until(&identity, "/v1/users/me", &first, 401).await;
    d.until(&authz, "/v1/authz/permissions", &first, 401).await;
    d.until(&audit, "/v1/audit/events", &first, 401).await;
    let everywhere = logged_out.elapsed();
    assert!(everywhere < Duration::from_secs(1), "{everywhere:?}");
    assert_eq!(
        d.get(&authz, "/v1/authz/permissions", &second)
            .await
            .status(),
        200
    );

    // Identity's event (a new password) ends Ann's other sessions at auth,
    // whose revocations reach the gateway.
    let url = format!("{gateway}/v1/users/me/password");
    let body = json!({"current_password": PASSWORD, "new_password": "a new password for ann"});
    let r = send(&d.http, Method::POST, url, Some(&second), Some(body)).await;
    assert_eq!(r.status(), 204);
    let ended = d.until(&gateway, "/v1/users/me", &third, 401).await;
    assert!(ended < Duration::from_secs(1), "{ended:?}");
    assert_eq!(d.get(&gateway, "/v1/users/me", &second).await.status(), 200);

    // A gateway started after those revocations still refuses them.
    let mut old = d.processes.pop().unwrap();
    assert!(old.terminate().await.success());
    let restarted = d.spawn("gateway");
    d.processes.push(restarted);
    assert_eq!(d.get(&gateway, "/v1/users/me", &first).await.status(), 401);
    assert_eq!(d.get(&gateway, "/v1/users/me", &third).await.status(), 401);
    assert_eq!(d.get(&gateway, "/v1/users/me", &second).await.status(), 200);

    // Authz's changes reach the answers audit keeps (5 s by default): a
    // grant opens the log to Ann within a second.
    d.make_admin("root@example.org");
    let root = d.sign_in("root@example.org", PASSWORD).await;
    d.until(&gateway, "/v1/audit/events", &root, 200).await;
    assert_eq!(
        d.get(&gateway, "/v1/audit/events", &second).await.status(),
        403
    );
    let url = format!("{gateway}/v1/authz/bindings");
    let body = json!({"subject": format!("user:{ann}"), "role": "auditor"});
    let r = send(&d.http, Method::POST, url, Some(&root), Some(body)).await;
    assert_eq!(r.status(), 201);
    let opened = d.until(&gateway, "/v1/audit/events", &second, 200).await;
    assert!(opened < Duration::from_secs(1), "{opened:?}");

    // Audit has every service's events, each once.
    let has =
        |action: &'static str| move |found: &[Value]| found.iter().any(|e| e["action"] == action);
    let about_ann = d
        .entries_when(
            &format!("subject=user:{ann}"),
            &root,
            has("identity.password.changed"),
        )
        .await;
    let actions: Vec<&str> = about_ann
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"identity.user.registered"), "{actions:?}");
    assert!(
        actions.contains(&"identity.password.changed"),
        "{actions:?}"
    );
    let ended = d
        .entries_when("action=auth.session.revoked", &root, |found| {
            found.len() >= 2
        })
        .await;
    assert_eq!(
        ended.len(),
        2,
        "the sign-out and the password change: {ended:?}"
    );
    let grants = d
        .entries_when("action=authz.binding.created", &root, |found| {
            found.iter().any(|e| e["details"]["role"] == "auditor")
        })
        .await;
    assert!(
        grants.iter().any(|e| e["details"]["role"] == "auditor"),
        "{grants:?}"
    );

    // Audit killed mid-stream and started again: what happened meanwhile
    // is recorded, once.
    let audit_base = format!("http://127.0.0.1:{}", d.ports[3]);
    let at = d
        .processes
        .iter()
        .position(|p| p.base == audit_base)
        .unwrap();
    let mut audit = d.processes.remove(at);
    audit.child.kill().unwrap();
    audit.child.wait().unwrap();
    let mut later = Vec::new();
    for n in 0..5 {
        later.push(d.register(&format!("later{n}@example.org")).await);
    }
    let mut restarted = d.spawn("audit");
    let audit_ops = restarted.ops_base();
    d.processes.push(restarted);
    let registered = d
        .entries_when("action=identity.user.registered", &root, |found| {
            found.len() >= 7
        })
        .await;
    let mut subjects: Vec<&str> = registered
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    assert_eq!(
        subjects.len(),
        7,
        "Ann, root and five more, once each: {subjects:?}"
    );
    subjects.sort_unstable();
    subjects.dedup();
    assert_eq!(subjects.len(), 7);
    for id in &later {
        assert!(subjects.contains(&format!("user:{id}").as_str()));
    }
    // Caught up: no lag left on identity's stream, as its metric says.
    let caught_up = r#"gatehouse_bus_consumer_lag{consumer="audit",source="identity"} 0"#;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = d
            .http
            .get(format!("{audit_ops}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains(caught_up) {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // So does its readiness.
    let ready: Value = d
        .http
        .get(format!("{audit_base}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["lag"]["audit"]["identity"], 0, "{ready}");
    let r = d.get(&gateway, "/v1/audit/verify", &root).await;
    let verified: Value = r.json().await.unwrap();
    assert_eq!(verified["holds"], true, "{verified}");
    for process in &mut d.processes {
        assert!(process.terminate().await.success());
    }
}

/// The broker (keeping its topics in a file) killed, and started again
/// 30 s later, while users register and fail to sign in: once it is back,
/// audit holds every event once, each user's in the order they happened.
#[cfg(feature = "it-kafka")]
#[tokio::test]
async fn a_broker_down_for_thirty_seconds_loses_and_repeats_no_event() {
    let mut d = Deployment::start(Bus::Kafka(crate::servers::Broker::start_kept()));
    let gateway = d.gateway();
    d.make_admin("root@example.org");
    let root = d.sign_in("root@example.org", PASSWORD).await;
    d.until(&gateway, "/v1/audit/events", &root, 200).await;
    let before = d.register("before@example.org").await;

    d.broker().kill();
    let stopped = Instant::now();
    let mut users = vec![before];
    while stopped.elapsed() < Duration::from_secs(30) {
        let email = format!("during{}@example.org", users.len());
        users.push(d.register(&email).await);
        // Each from a client of their own: one address's failures across
        // accounts are throttled after twenty.
        let n = u8::try_from(users.len() % 250).unwrap() + 1;
        let client = reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 2, n]))
            .build()
            .unwrap();
        let refused = crate::support::login_response(&client, &gateway, &email, "not the password");
        let refused: Value = refused.await.json().await.unwrap();
        assert_eq!(refused["code"], "invalid_credentials", "{refused}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let during = users.len() - 1;
    assert!(during >= 20, "only {during} users registered meanwhile");
    d.broker().start_again();

    let registered = d
        .entries_when("action=identity.user.registered", &root, |found| {
            found.len() > users.len()
        })
        .await;
    let failed = d
        .entries_when("action=identity.login.failed", &root, |found| {
            found.len() >= users.len() - 1
        })
        .await;
    // Each user's entries, in the log's order.
    let mut of_user: std::collections::BTreeMap<String, Vec<(i64, String)>> =
        std::collections::BTreeMap::new();
    for e in registered.iter().chain(&failed) {
        of_user
            .entry(e["subject"].as_str().unwrap().to_owned())
            .or_default()
            .push((
                e["seq"].as_i64().unwrap(),
                e["action"].as_str().unwrap().to_owned(),
            ));
    }
    assert_eq!(
        registered.len(),
        users.len() + 1,
        "root and every user, once"
    );
    assert_eq!(failed.len(), users.len() - 1, "every failed sign-in, once");
    for (n, id) in users.iter().enumerate() {
        let mut entries = of_user.remove(&format!("user:{id}")).unwrap_or_default();
        entries.sort_unstable();
        let actions: Vec<&str> = entries.iter().map(|(_, a)| a.as_str()).collect();
        let expected = if n == 0 {
            vec!["identity.user.registered"]
        } else {
            vec!["identity.user.registered", "identity.login.failed"]
        };
        assert_eq!(actions, expected, "user {n}");
    }
    let r = d.get(&gateway, "/v1/audit/verify", &root).await;
    let verified: Value = r.json().await.unwrap();
    assert_eq!(verified["holds"], true, "{verified}");
    for process in &mut d.processes {
        assert!(process.terminate().await.success());
    }
}
