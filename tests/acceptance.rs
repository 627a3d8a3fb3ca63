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
//! replicated deployment started for the whole run (see `acceptance/cluster.rs`),
//! and so does `cluster.feature`, which kills and restarts its parts.
//!
//! The steps talk HTTP to the services (and gRPC to identity, to sign in
//! without auth) and read the links the development notifier writes to the
//! log. Each scenario names its people and roles with a tag of its own and
//! sends from a loopback address of its own, so scenarios sharing a
//! deployment meet neither each other's accounts nor each other's rate
//! limits. A step without a definition fails the run rather than being
//! skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "integration/binary.rs"]
#[allow(dead_code)]
mod binary;
#[path = "integration/servers.rs"]
#[allow(dead_code)]
mod servers;

#[cfg(feature = "it-cluster")]
#[path = "acceptance/cluster.rs"]
mod cluster;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cucumber::{World, given, then, when};
use gatehouse::proto::identity::v1 as pb;
use gatehouse::proto::identity::v1::identity_client::IdentityClient;
use serde_json::{Value, json};

use binary::{Log, ServiceProcess, free_port, static_registry};

const PASSWORD: &str = "correct horse battery staple";

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

    /// The token of the latest link to `path` logged for the user by any
    /// identity instance (by the lines' timestamps), waiting for one up to
    /// 30 s.
    async fn token(&self, path: &str, user_id: &str) -> String {
        let needle = format!("{path}?token=");
        let matches = |l: &str| l.contains(&needle) && l.contains(user_id);
        let at = |line: &String| {
            let entry: Value = serde_json::from_str(line).unwrap_or(Value::Null);
            entry["timestamp"].as_str().unwrap_or_default().to_owned()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let line = loop {
            let found = self
                .identity_logs
                .iter()
                .filter_map(|log| log.latest(matches));
            if let Some(line) = found.max_by_key(at) {
                break line;
            }
            assert!(Instant::now() < deadline, "no link to {path} was logged");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        line.split("token=")
            .nth(1)
            .unwrap()
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .collect()
    }

    async fn post(&mut self, path: &str, body: Value) {
        let url = format!("{}{path}", self.identity_base());
        let request = self.http.post(url).json(&body);
        self.send(request).await;
    }

    async fn register(&mut self, email: &str, password: &str) {
        let email = self.email(email);
        self.post(
            "/v1/users",
            json!({"email": email, "password": password, "display_name": "Someone"}),
        )
        .await;
        if self.status == 201 {
            let id = self.body["id"].as_str().unwrap().to_owned();
            self.ids.insert(email.to_lowercase(), id);
        }
    }

    fn user_id(&self, email: &str) -> String {
        self.ids
            .get(&self.email(email).to_lowercase())
            .cloned()
            .expect("the user registered earlier")
    }

    async fn sign_in(&mut self, email: &str, password: &str) -> Result<pb::User, tonic::Status> {
        self.verify(email, password, "")
            .await
            .map(|r| r.user.unwrap())
    }

    /// Signs in as `email` with the device token `device` (empty: none);
    /// answers the device token the sign-in gives.
    async fn sign_in_on(
        &mut self,
        email: &str,
        password: &str,
        device: &str,
    ) -> Result<String, tonic::Status> {
        self.verify(email, password, device)
            .await
            .map(|r| r.device_token)
    }

    async fn verify(
        &mut self,
        email: &str,
        password: &str,
        device: &str,
    ) -> Result<pb::VerifyCredentialsResponse, tonic::Status> {
        let base = self.identity_base();
        let mut grpc = IdentityClient::new(binary::signed_channel(&base, "auth", "identity").await);
        grpc.verify_credentials(pb::VerifyCredentialsRequest {
            device_token: device.into(),
            email: self.email(email),
            password: password.into(),
        })
        .await
        .map(tonic::Response::into_inner)
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

#[given("the identity service is running")]
fn running(world: &mut Platform) {
    if world.on_shared_deployment() {
        return;
    }
    let service = Service::spawn(
        env!("CARGO_BIN_EXE_gatehouse-identity"),
        "identity",
        free_port(),
        &[],
    );
    world.identity_logs.push(service.process.log.clone());
    let base = world.keep(service);
    world.identity.push(base);
}

#[given("the identity and auth services are running")]
fn both_running(world: &mut Platform) {
    if world.on_shared_deployment() {
        return;
    }
    let (identity_port, auth_port) = (free_port(), free_port());
    let mut auth_env = static_registry(&[("identity", &[identity_port])]);
    // Reuse is detected at once (no grace window) to keep scenarios short.
    auth_env.push(("GATEHOUSE_AUTH__REFRESH_GRACE_SECS", "0".to_owned()));
    let identity = Service::spawn(
        env!("CARGO_BIN_EXE_gatehouse-identity"),
        "identity",
        identity_port,
        &static_registry(&[("auth", &[auth_port])]),
    );
    world.identity_logs.push(identity.process.log.clone());
    let base = world.keep(identity);
    world.identity.push(base);
    let auth = Service::spawn(
        env!("CARGO_BIN_EXE_gatehouse-auth"),
        "auth",
        auth_port,
        &auth_env,
    );
    let base = world.keep(auth);
    world.auth.push(base);
}

#[given("the gateway, auth and identity services are running")]
fn three_running(world: &mut Platform) {
    if world.on_shared_deployment() {
        return;
    }
    let (identity_port, auth_port, gateway_port) = (free_port(), free_port(), free_port());
    let identity = Service::spawn(
        env!("CARGO_BIN_EXE_gatehouse-identity"),
        "identity",
        identity_port,
        &static_registry(&[("auth", &[auth_port])]),
    );
    world.identity_logs.push(identity.process.log.clone());
    let base = world.keep(identity);
    world.identity.push(base);
    let auth = Service::spawn(
        env!("CARGO_BIN_EXE_gatehouse-auth"),
        "auth",
        auth_port,
        &static_registry(&[("identity", &[identity_port])]),
    );
    let base = world.keep(auth);
    world.auth.push(base);
    let gateway = Service::spawn(
        env!("CARGO_BIN_EXE_gatehouse-gateway"),
        "gateway",
        gateway_port,
        &static_registry(&[("auth", &[auth_port]), ("identity", &[identity_port])]),
    );
    let base = world.keep(gateway);
    world.gateway.push(base);
}

#[given("the whole platform is running")]
async fn platform_running(world: &mut Platform) {
    if world.on_shared_deployment() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let process = binary::spawn_platform(env!("CARGO_BIN_EXE_gatehouse"), data.path(), &[]).await;
    world.admin_cli = Some((data.path().to_owned(), Vec::new()));
    let base = world.keep(Service {
        process,
        _data: data,
    });
    world.gateway.push(base);
}

#[given(expr = "{string} was made an admin from the command line")]
async fn made_admin(world: &mut Platform, email: String) {
    let (data, env) = world.admin_cli.clone().expect("the platform was started");
    let tagged = world.email(&email);
    let said =
        tokio::task::spawn_blocking(move || binary::make_admin(&data, &env, &tagged, PASSWORD))
            .await
            .unwrap();
    assert!(said.contains("granted admin"), "{said}");
    signs_in_via_gateway(world, email).await;
    assert_eq!(world.status, 200, "{}", world.body);
    let token = world.body["access_token"].as_str().unwrap().to_owned();
    // The running platform sees a grant made beside it within authz's
    // refresh interval.
    let base = world.gateway_base();
    every_authz_allows(&world.http, &base, &token, Duration::from_secs(3)).await;
    world.admin = Some(token);
}

#[given(expr = "{string} has signed up through the gateway")]
async fn signed_up(world: &mut Platform, email: String) {
    registers_via_gateway(world, email.clone()).await;
    assert_eq!(world.status, 201, "{}", world.body);
    let id = world.body["id"].as_str().unwrap().to_owned();
    let tagged = world.email(&email).to_lowercase();
    world.ids.insert(tagged.clone(), id);
    signs_in_via_gateway(world, email).await;
    let token = world.body["access_token"].as_str().unwrap().to_owned();
    world.tokens.insert(tagged, token);
}

impl Platform {
    /// Sends `method path` through the gateway with `token` (and `body`).
    async fn as_user(
        &mut self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) {
        let url = format!("{}{path}", self.gateway_base());
        let mut request = self.http.request(method, url).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send(request).await;
    }

    async fn as_admin(&mut self, method: reqwest::Method, path: &str, body: Option<Value>) {
        let token = self.admin.clone().expect("an admin was made");
        self.as_user(&token, method, path, body).await;
    }

    async fn list_users(&mut self, email: &str) {
        let token = self.tokens[&self.email(email).to_lowercase()].clone();
        self.as_user(&token, reqwest::Method::GET, "/v1/users", None)
            .await;
    }

    /// Lists the users as `email` until the answer is `status`, for at
    /// most a second.
    async fn list_users_until(&mut self, email: &str, status: u16) {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            self.list_users(email).await;
            if self.status == status {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "still {} {} after a second",
                self.status,
                self.body
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[when(expr = "{string} lists the users through the gateway")]
async fn lists_users(world: &mut Platform, email: String) {
    world.list_users(&email).await;
}

#[then(expr = "the problem names the permission {string}")]
fn names_permission(world: &mut Platform, permission: String) {
    assert_eq!(
        world.body["permission"],
        permission.as_str(),
        "{}",
        world.body
    );
}

#[when(expr = "the admin grants {string} a role allowing {string}")]
async fn grants(world: &mut Platform, email: String, permission: String) {
    let role = format!("can-{}-{}", permission.replace([':', '.'], "-"), world.tag);
    world
        .as_admin(
            reqwest::Method::POST,
            "/v1/authz/roles",
            Some(json!({"name": role, "permissions": [permission]})),
        )
        .await;
    assert_eq!(world.status, 201, "{}", world.body);
    let subject = format!("user:{}", world.user_id(&email));
    world
        .as_admin(
            reqwest::Method::POST,
            "/v1/authz/bindings",
            Some(json!({"subject": subject, "role": role})),
        )
        .await;
    assert_eq!(world.status, 201, "{}", world.body);
    let binding = world.body["id"].as_str().unwrap().to_owned();
    world.granted = Some((role, binding));
}

#[when("the admin takes that grant back")]
async fn takes_back(world: &mut Platform) {
    let (_, binding) = world.granted.clone().expect("a grant was made");
    let path = format!("/v1/authz/bindings/{binding}");
    world.as_admin(reqwest::Method::DELETE, &path, None).await;
    assert_eq!(world.status, 204, "{}", world.body);
}

#[when("the admin deletes that role")]
async fn deletes_role(world: &mut Platform) {
    let (role, _) = world.granted.clone().expect("a grant was made");
    deletes_named_role(world, role).await;
}

#[when("the admin deletes that role with force")]
async fn deletes_role_with_force(world: &mut Platform) {
    let (role, _) = world.granted.clone().expect("a grant was made");
    let path = format!("/v1/authz/roles/{role}?force=true");
    world.as_admin(reqwest::Method::DELETE, &path, None).await;
}

#[when(expr = "the admin deletes the role {string}")]
async fn deletes_named_role(world: &mut Platform, role: String) {
    let path = format!("/v1/authz/roles/{role}");
    world.as_admin(reqwest::Method::DELETE, &path, None).await;
}

#[then(expr = "within a second {string} can list the users through the gateway")]
async fn can_list(world: &mut Platform, email: String) {
    world.list_users_until(&email, 200).await;
    assert!(world.body["items"].is_array(), "{}", world.body);
}

#[then(expr = "within a second {string} is refused the users with a {int} problem {string}")]
async fn refused_users(world: &mut Platform, email: String, status: u16, code: String) {
    world.list_users_until(&email, status).await;
    assert_eq!(world.body["code"], code.as_str(), "{}", world.body);
}

#[when(expr = "{string} registers through the gateway")]
async fn registers_via_gateway(world: &mut Platform, email: String) {
    let url = format!("{}/v1/users", world.gateway_base());
    let email = world.email(&email);
    let body = json!({"email": email, "password": PASSWORD, "display_name": "Someone"});
    let request = world.http.post(url).json(&body);
    world.send(request).await;
}

#[when(expr = "{string} signs in through the gateway")]
async fn signs_in_via_gateway(world: &mut Platform, email: String) {
    let url = format!("{}/v1/auth/login", world.gateway_base());
    let body = json!({"email": world.email(&email), "password": PASSWORD});
    let request = world.http.post(url).json(&body);
    world.send(request).await;
}

#[then(expr = "with that token my profile through the gateway shows {string}")]
async fn profile_via_gateway(world: &mut Platform, email: String) {
    let url = format!("{}/v1/users/me", world.gateway_base());
    let token = world.latest("access_token");
    let request = world.http.get(url).bearer_auth(token);
    world.send(request).await;
    assert_eq!(world.status, 200, "{}", world.body);
    assert_eq!(world.body["email"], world.email(&email));
}

#[when("my profile is read through the gateway without a token")]
async fn profile_without_token(world: &mut Platform) {
    read_raw(world, "/v1/users/me".to_owned()).await;
}

#[when(expr = "{string} is read through the gateway without a token")]
async fn read_raw(world: &mut Platform, path: String) {
    let base = world.gateway_base();
    let (status, body) = binary::raw_get_from(&base, &path, world.from).await;
    world.status = status;
    world.body = body;
}

#[when("the API document is read through the gateway")]
async fn api_document(world: &mut Platform) {
    let url = format!("{}/openapi.json", world.gateway_base());
    let request = world.http.get(url);
    world.send(request).await;
}

#[then(
    expr = "the document is OpenAPI {string} with {string} on {string} and {string} on {string}"
)]
fn document_lists(
    world: &mut Platform,
    version: String,
    m1: String,
    p1: String,
    m2: String,
    p2: String,
) {
    assert_eq!(world.body["openapi"], version.as_str());
    for (method, path) in [(m1, p1), (m2, p2)] {
        assert!(
            world.body["paths"][&path][&method].is_object(),
            "{method} {path} in {}",
            world.body
        );
    }
}

#[when(expr = "{int} requests for {string} are sent at once through the gateway")]
async fn burst(world: &mut Platform, count: usize, path: String) {
    let client = world.http.clone();
    let url = format!("{}{path}", world.gateway_base());
    let sent: Vec<_> = (0..count)
        .map(|_| tokio::spawn(client.get(&url).send()))
        .collect();
    world.burst.clear();
    for answer in sent {
        world.burst.push(answer.await.unwrap().unwrap());
    }
}

#[then(expr = "some answers are {int} problems {string} with Retry-After and RateLimit headers")]
async fn some_limited(world: &mut Platform, status: u16, code: String) {
    let mut limited = 0;
    for r in std::mem::take(&mut world.burst) {
        let headers = r.headers().clone();
        assert!(headers.contains_key("ratelimit-remaining"), "{headers:?}");
        if r.status().as_u16() == status {
            limited += 1;
            assert!(headers.contains_key("retry-after"));
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["code"], code.as_str());
        } else {
            assert_eq!(r.status(), 200);
        }
    }
    assert!(limited > 0, "no request was limited");
}

impl Platform {
    async fn send(&mut self, request: reqwest::RequestBuilder) {
        let r = request.send().await.unwrap();
        self.status = r.status().as_u16();
        self.body = r.json().await.unwrap_or(Value::Null);
        if self.status == 200 && self.body["token_type"] == "Bearer" {
            self.pairs.push(self.body.clone());
        }
    }

    fn latest(&self, field: &str) -> String {
        self.pairs.last().expect("signed in before")[field]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

#[when(expr = "{string} signs in with {string}")]
async fn signs_in(world: &mut Platform, email: String, password: String) {
    let url = format!("{}/v1/auth/login", world.auth_base());
    let body = json!({"email": world.email(&email), "password": password});
    let request = world.http.post(url).json(&body);
    world.send(request).await;
}

#[given(expr = "{string} has signed in")]
async fn has_signed_in(world: &mut Platform, email: String) {
    world.register(&email, PASSWORD).await;
    signs_in(world, email, PASSWORD.to_owned()).await;
    assert_eq!(world.status, 200, "{}", world.body);
}

#[then("the answer holds a bearer token pair")]
fn holds_pair(world: &mut Platform) {
    assert_eq!(world.body["token_type"], "Bearer");
    assert!(
        world.body["access_token"]
            .as_str()
            .unwrap()
            .starts_with("v4.public.")
    );
    assert!(world.body["refresh_token"].is_string());
    assert!(world.body["expires_in"].as_i64().unwrap() > 0);
}

#[then(expr = "with that token my profile shows {string}")]
async fn profile_shows(world: &mut Platform, email: String) {
    let url = format!("{}/v1/users/me", world.identity_base());
    let token = world.latest("access_token");
    let request = world.http.get(url).bearer_auth(token);
    world.send(request).await;
    assert_eq!(world.status, 200, "{}", world.body);
    assert_eq!(world.body["email"], world.email(&email));
}

#[given("the latest refresh token is used")]
#[when("the latest refresh token is used")]
async fn refresh_latest(world: &mut Platform) {
    let token = world.latest("refresh_token");
    refresh_with(world, token).await;
}

#[when("the first refresh token is used again")]
async fn refresh_first(world: &mut Platform) {
    let token = world.pairs[0]["refresh_token"].as_str().unwrap().to_owned();
    refresh_with(world, token).await;
}

async fn refresh_with(world: &mut Platform, token: String) {
    let url = format!("{}/v1/auth/refresh", world.auth_base());
    let request = world.http.post(url).json(&json!({"refresh_token": token}));
    world.send(request).await;
}

#[when(expr = "{string} signs out")]
async fn signs_out(world: &mut Platform, _email: String) {
    let url = format!("{}/v1/auth/logout", world.auth_base());
    let token = world.latest("access_token");
    let request = world.http.post(url).bearer_auth(token);
    world.send(request).await;
}

#[when("my profile is read with the token changed in one place")]
async fn tampered(world: &mut Platform) {
    let mut token = world.latest("access_token").into_bytes();
    let i = "v4.public.".len() + 10;
    token[i] = if token[i] == b'A' { b'B' } else { b'A' };
    let url = format!("{}/v1/users/me", world.identity_base());
    let request = world
        .http
        .get(url)
        .bearer_auth(String::from_utf8(token).unwrap());
    world.send(request).await;
}

#[given(expr = "{string} has registered")]
async fn has_registered(world: &mut Platform, email: String) {
    world.register(&email, PASSWORD).await;
    assert_eq!(world.status, 201, "{}", world.body);
}

#[when(expr = "{string} registers with password {string}")]
async fn registers(world: &mut Platform, email: String, password: String) {
    world.register(&email, &password).await;
}

#[then(expr = "the answer is {int}")]
fn answer_is(world: &mut Platform, status: u16) {
    assert_eq!(world.status, status, "{}", world.body);
}

#[then(expr = "the answer is a {int} problem {string}")]
fn problem(world: &mut Platform, status: u16, code: String) {
    assert_eq!(world.status, status, "{}", world.body);
    assert_eq!(world.body["code"], code.as_str());
}

#[then(expr = "the answer shows the user {string} without any password")]
fn shows_user(world: &mut Platform, email: String) {
    assert_eq!(world.body["email"], world.email(&email));
    assert!(world.body["id"].is_string());
    let text = world.body.to_string();
    assert!(
        !text.contains("password") && !text.contains(PASSWORD) && !text.contains("scrypt"),
        "{text}"
    );
}

#[when(expr = "the link sent to {string} to verify the address is followed")]
async fn follow_verification(world: &mut Platform, email: String) {
    let id = world.user_id(&email);
    let token = world.token("/verify-email", &id).await;
    world
        .post("/v1/email-verifications/confirm", json!({"token": token}))
        .await;
}

#[then(expr = "{string} is verified")]
async fn is_verified(world: &mut Platform, email: String) {
    let user = world.sign_in(&email, PASSWORD).await.unwrap();
    assert!(user.email_verified);
}

#[given(expr = "a password reset is requested for {string}")]
#[when(expr = "a password reset is requested for {string}")]
async fn request_reset(world: &mut Platform, email: String) {
    let email = world.email(&email);
    world
        .post("/v1/password-resets", json!({"email": email}))
        .await;
}

#[given(expr = "the reset link for {string} is used to set {string}")]
#[when(expr = "the reset link for {string} is used to set {string}")]
async fn use_reset(world: &mut Platform, email: String, password: String) {
    let id = world.user_id(&email);
    let token = world.token("/reset-password", &id).await;
    world
        .post(
            "/v1/password-resets/confirm",
            json!({"token": token, "new_password": password}),
        )
        .await;
}

#[then(expr = "{string} can sign in with {string}")]
async fn can_sign_in(world: &mut Platform, email: String, password: String) {
    world.sign_in(&email, &password).await.unwrap();
}

#[then(expr = "{string} cannot sign in with {string}")]
async fn cannot_sign_in(world: &mut Platform, email: String, password: String) {
    let e = world.sign_in(&email, &password).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
}

#[when(expr = "someone guesses a wrong password for {string} until told to wait")]
async fn wrong_guesses(world: &mut Platform, email: String) {
    for _ in 0..20 {
        let e = world
            .sign_in(&email, "definitely not it")
            .await
            .unwrap_err();
        let code = e
            .metadata()
            .get("gatehouse-code")
            .unwrap()
            .to_str()
            .unwrap();
        if code == "too_many_attempts" {
            return;
        }
        assert_eq!(code, "invalid_credentials");
    }
    panic!("20 wrong guesses in a row were all checked");
}

#[given(expr = "{string} has signed in on her device")]
async fn signed_in_on_device(world: &mut Platform, email: String) {
    let token = world.sign_in_on(&email, PASSWORD, "").await.unwrap();
    world.devices.insert(email.to_lowercase(), token);
}

#[then(expr = "{string} can sign in with {string} on her device")]
async fn can_sign_in_on_device(world: &mut Platform, email: String, password: String) {
    let device = world.devices[&email.to_lowercase()].clone();
    world.sign_in_on(&email, &password, &device).await.unwrap();
}

#[then(expr = "signing in as {string} with {string} is refused as {string}")]
async fn refused_as(world: &mut Platform, email: String, password: String, code: String) {
    let e = world.sign_in(&email, &password).await.unwrap_err();
    let got = e
        .metadata()
        .get("gatehouse-code")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(got, code);
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

/// Waits (up to `within`) until authz lets `token` read the roles through
/// the gateway at `base` on every replica: the gateway spreads the reads
/// among them, so ten answers in a row must allow it.
pub async fn every_authz_allows(http: &reqwest::Client, base: &str, token: &str, within: Duration) {
    let url = format!("{base}/v1/authz/roles");
    let deadline = Instant::now() + within;
    let mut allowed_in_a_row = 0;
    while allowed_in_a_row < 10 {
        let status = http
            .get(&url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status();
        if status == 200 {
            allowed_in_a_row += 1;
        } else {
            allowed_in_a_row = 0;
            assert!(Instant::now() < deadline, "{status}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
