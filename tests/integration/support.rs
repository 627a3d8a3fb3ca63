//! `TestApp`: the identity service started in-process on a free port with an
//! isolated database, a memory notifier and a clock the test controls; and
//! the requests every suite makes (`send`, `register`, `login`), as plain
//! functions of a client and a base URL, so suites that start real
//! processes make them the same way. `TestApp`'s methods wrap them.

use std::sync::Arc;

use chrono::Utc;
use gatehouse::config::Config;
use gatehouse::identity::IdentityConfig;
use gatehouse::identity::mail::notifier::{MemoryNotifier, NoticeKind};
use gatehouse::kernel::ServiceContext;
use gatehouse::kernel::clock::ManualClock;
use gatehouse::kernel::http::server::Running;
use gatehouse::kernel::rpc::RpcChannel;
use gatehouse::proto::identity::v1::identity_client::IdentityClient;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub const PASSWORD: &str = "correct horse battery staple";

/// Sends `method url`, with `token` as its bearer token and `body` as its
/// JSON when given; answers the response as it came.
pub async fn send(
    http: &reqwest::Client,
    method: Method,
    url: impl reqwest::IntoUrl,
    token: Option<&str>,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = http.request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

/// Registers `email` with `password` at `base` (identity, or the gateway in
/// front of it); answers the response as it came.
pub async fn register_response(
    http: &reqwest::Client,
    base: &str,
    email: &str,
    password: &str,
) -> reqwest::Response {
    let url = format!("{base}/v1/users");
    let body = json!({"email": email, "password": password, "display_name": "Test User"});
    send(http, Method::POST, url, None, Some(body)).await
}

/// Registers `email` with [`PASSWORD`] at `base`; answers the new user.
pub async fn register(http: &reqwest::Client, base: &str, email: &str) -> Value {
    let r = register_response(http, base, email, PASSWORD).await;
    json_with(r, StatusCode::CREATED).await
}

/// Signs `email` in with `password` at `base` (auth, or the gateway in
/// front of it); answers the response as it came.
pub async fn login_response(
    http: &reqwest::Client,
    base: &str,
    email: &str,
    password: &str,
) -> reqwest::Response {
    let url = format!("{base}/v1/auth/login");
    let body = json!({"email": email, "password": password});
    send(http, Method::POST, url, None, Some(body)).await
}

/// Signs `email` in with `password` at `base`; answers the token pair.
pub async fn login(http: &reqwest::Client, base: &str, email: &str, password: &str) -> Value {
    let r = login_response(http, base, email, password).await;
    json_with(r, StatusCode::OK).await
}

/// Signs `email` in with `password` at `base`; answers the access token.
pub async fn sign_in(http: &reqwest::Client, base: &str, email: &str, password: &str) -> String {
    let pair = login(http, base, email, password).await;
    pair["access_token"].as_str().unwrap().to_owned()
}

/// The JSON body of `r`, which must have `status`.
async fn json_with(r: reqwest::Response, status: StatusCode) -> Value {
    let got = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(got, status, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// scrypt parameters cheap enough for tests.
pub fn cheap_identity() -> IdentityConfig {
    let mut c = IdentityConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    c.scrypt.log_n = 4;
    c.scrypt.allow_weak_hashing_for_tests = true;
    c.scrypt.r = 8;
    c.scrypt.p = 1;
    c
}

pub struct TestApp {
    /// Identity's base URL.
    pub base: String,
    /// Auth's base URL.
    pub auth_base: String,
    /// The gateway's base URL.
    pub gateway_base: String,
    /// The operator listener's base URL (metrics).
    pub ops_base: String,
    pub ctx: ServiceContext,
    pub notifier: MemoryNotifier,
    pub clock: Arc<ManualClock>,
    pub http: reqwest::Client,
    running: Vec<Running>,
    storage: Arc<Storage>,
}

/// Where an app keeps its data; shared when a test restarts on the same data.
struct Storage {
    config: Config,
    _dir: tempfile::TempDir,
    _db: Option<TestDatabase>,
}

pub struct Builder {
    server: Option<gatehouse::kernel::config::ServerConfig>,
    gateway: gatehouse::gateway::GatewayConfig,
    identity: IdentityConfig,
    auth: gatehouse::auth::AuthConfig,
    storage: Option<Arc<Storage>>,
    bus: Option<Arc<dyn gatehouse::kernel::bus::EventBus>>,
    /// Pull events from the services' outboxes (`bus.backend = "outbox"`).
    outbox: bool,
    authz: bool,
    audit: bool,
    permission_cache_ms: Option<u64>,
}

impl TestApp {
    pub async fn start() -> TestApp {
        Self::builder().start().await
    }

    pub fn builder() -> Builder {
        Builder {
            server: None,
            gateway: gatehouse::gateway::GatewayConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                ..Default::default()
            },
            identity: cheap_identity(),
            auth: gatehouse::auth::AuthConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                ..Default::default()
            },
            storage: None,
            bus: None,
            outbox: false,
            authz: false,
            audit: false,
            permission_cache_ms: None,
        }
    }

    /// Registers a user, makes it an admin (as `gatehouse admin grant`
    /// does), signs it in and answers its access token. The running authz
    /// sees the grant once its refresh interval has passed on the app's
    /// clock, which this moves on.
    pub async fn admin(&self, email: &str) -> String {
        let user = self.register(email).await;
        let id = uuid::Uuid::parse_str(user["id"].as_str().unwrap()).unwrap();
        gatehouse::authz::grant(&self.ctx, id, "admin")
            .await
            .unwrap();
        self.clock.advance(chrono::Duration::seconds(2));
        sign_in(&self.http, &self.auth_base, email, PASSWORD).await
    }

    /// A request through the gateway with a bearer token.
    pub fn through(&self, method: Method, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.with_token(method, format!("{}{path}", self.gateway_base), token)
    }

    /// `POST path` to identity with the JSON `body`.
    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        let url = format!("{}{path}", self.base);
        send(&self.http, Method::POST, url, None, Some(body)).await
    }

    /// Registers an instance of `service` at `url` (a stand-in upstream) in
    /// the app's registry, where the gateway finds it.
    pub async fn register_instance(&self, service: &str, url: impl Into<String>) {
        self.ctx
            .registry
            .register(
                gatehouse::kernel::registry::Instance::new(service, url.into()),
                gatehouse::kernel::health::Probes::default(),
            )
            .await
            .unwrap();
    }

    /// The gateway's answer to `GET path`, read as JSON.
    pub async fn gateway_json(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.gateway_base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The process's metrics, as the operator listener serves them.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.ops_base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `GET path` from identity.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        let url = format!("{}{path}", self.base);
        send(&self.http, Method::GET, url, None, None).await
    }

    /// `POST path` to auth with the JSON `body`.
    pub async fn auth_post(&self, path: &str, body: Value) -> reqwest::Response {
        let url = format!("{}{path}", self.auth_base);
        send(&self.http, Method::POST, url, None, Some(body)).await
    }

    /// Logs in at auth and answers the token response.
    pub async fn login(&self, email: &str, password: &str) -> Value {
        login(&self.http, &self.auth_base, email, password).await
    }

    /// Registers a user, logs in, and answers the access token.
    pub async fn signed_in(&self, email: &str) -> String {
        self.register(email).await;
        sign_in(&self.http, &self.auth_base, email, PASSWORD).await
    }

    /// A request to identity or auth (`base`) with a bearer token.
    pub fn with_token(&self, method: Method, url: String, token: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .header("authorization", format!("Bearer {token}"))
    }

    /// `GET /v1/users/me` with `token`.
    pub async fn me(&self, token: &str) -> reqwest::Response {
        let url = format!("{}/v1/users/me", self.base);
        send(&self.http, Method::GET, url, Some(token), None).await
    }

    /// Registers a user at identity and answers its JSON.
    pub async fn register(&self, email: &str) -> Value {
        let user = register(&self.http, &self.base, email).await;
        // Its verification mail goes out after the answer.
        self.await_token(NoticeKind::EmailVerification, email).await;
        user
    }

    /// The token of the latest notice of `kind` to `email`, once one has
    /// been delivered (waiting up to 5 s).
    pub async fn await_token(&self, kind: NoticeKind, email: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if let Some(token) = self.last_token(kind, email) {
                return token;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {kind:?} notice reached {email}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// A gRPC client reached the way other services reach identity: by name
    /// through the registry.
    pub async fn grpc(&self) -> IdentityClient<RpcChannel> {
        IdentityClient::new(self.ctx.clients.channel("identity").await.unwrap())
    }

    pub fn last_token(&self, kind: NoticeKind, email: &str) -> Option<String> {
        self.notifier.last_token(kind, email)
    }

    /// Identity's events from now on, read as the consumer `test`.
    pub async fn identity_events(
        &self,
    ) -> tokio::sync::mpsc::Receiver<gatehouse::kernel::bus::Delivery> {
        self.ctx
            .bus
            .subscribe("test", &["identity"], gatehouse::kernel::bus::Start::Latest)
            .await
            .unwrap()
    }

    pub fn notices(&self) -> usize {
        self.notifier.sent.lock().unwrap().len()
    }

    /// Waits (up to 5 s) until `count` notices have been sent: links go out
    /// after their request has been answered.
    pub async fn await_notices(&self, count: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.notices() < count {
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of {count} notices were sent",
                self.notices()
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Stops the service gracefully and waits for it.
    pub async fn stop(&mut self) {
        self.ctx.shutdown.cancel();
        for r in self.running.drain(..) {
            r.task.await.unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.ctx.shutdown.cancel();
    }
}

impl Builder {
    pub fn identity(mut self, change: impl FnOnce(&mut IdentityConfig)) -> Self {
        change(&mut self.identity);
        self
    }

    pub fn auth(mut self, change: impl FnOnce(&mut gatehouse::auth::AuthConfig)) -> Self {
        change(&mut self.auth);
        self
    }

    pub fn server(
        mut self,
        change: impl FnOnce(&mut gatehouse::kernel::config::ServerConfig),
    ) -> Self {
        let mut server = gatehouse::kernel::config::ServerConfig::default();
        change(&mut server);
        self.server = Some(server);
        self
    }

    /// Keep authz's answers this long (`rpc.permission_cache_ms`).
    pub fn permission_cache_ms(mut self, ms: u64) -> Self {
        self.permission_cache_ms = Some(ms);
        self
    }

    pub fn gateway(mut self, change: impl FnOnce(&mut gatehouse::gateway::GatewayConfig)) -> Self {
        change(&mut self.gateway);
        self
    }

    /// Serve the data of `app` (stopped first) instead of a fresh store.
    pub fn storage_of(mut self, app: &TestApp) -> Self {
        self.storage = Some(app.storage.clone());
        self
    }

    /// Start authz too.
    pub fn with_authz(mut self) -> Self {
        self.authz = true;
        self
    }

    /// Start audit too (authz with it, which answers `audit:read`).
    pub fn with_audit(mut self) -> Self {
        self.authz = true;
        self.audit = true;
        self
    }

    /// Use this event bus instead of the in-process one.
    pub fn bus(mut self, bus: Arc<dyn gatehouse::kernel::bus::EventBus>) -> Self {
        self.bus = Some(bus);
        self
    }

    /// Use the broker-less bus: each consumer pulls its sources' outboxes
    /// over gRPC, as separate processes do.
    pub fn outbox_bus(mut self) -> Self {
        self.outbox = true;
        self
    }

    pub async fn start(self) -> TestApp {
        let storage = self.storage.unwrap_or_else(|| {
            let dir = tempfile::tempdir().unwrap();
            let mut config = Config {
                data_dir: dir.path().to_path_buf(),
                ..Default::default()
            };
            let db = database_for(&mut config);
            Arc::new(Storage {
                config,
                _dir: dir,
                _db: db,
            })
        });
        let mut ctx = gatehouse::platform::context(&storage.config).unwrap();
        if let Some(bus) = self.bus {
            ctx.bus = bus;
        }
        if self.outbox {
            ctx.bus = Arc::new(gatehouse::kernel::stream::OutboxBus::new(
                ctx.clients.clone(),
                ctx.keyring.clone(),
                ctx.metrics.clone(),
            ));
        }
        if let Some(server) = self.server {
            ctx.server = server;
        }
        if let Some(ms) = self.permission_cache_ms {
            ctx.permission_cache = std::time::Duration::from_millis(ms);
        }
        let clock = Arc::new(ManualClock::new(Utc::now()));
        ctx.clock = clock.clone();
        let notifier = MemoryNotifier::default();
        // Audit follows every service's events: it starts before them.
        let audit = if self.audit {
            let config = gatehouse::audit::AuditConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                ..Default::default()
            };
            Some(gatehouse::audit::start(&ctx, config).await.unwrap())
        } else {
            None
        };
        let identity = gatehouse::identity::start(&ctx, self.identity, Arc::new(notifier.clone()))
            .await
            .unwrap();
        let auth = gatehouse::auth::start(&ctx, self.auth).await.unwrap();
        let gateway = gatehouse::gateway::start(&ctx, self.gateway).await.unwrap();
        let mut running = vec![identity, auth];
        if self.authz {
            let config = gatehouse::authz::AuthzConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                ..Default::default()
            };
            running.push(gatehouse::authz::start(&ctx, config).await.unwrap());
        }
        let ops = gatehouse::kernel::http::ops::start(&ctx, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        TestApp {
            gateway_base: format!("http://{}", gateway.addr),
            ops_base: format!("http://{}", ops.addr),
            base: format!("http://{}", running[0].addr),
            auth_base: format!("http://{}", running[1].addr),
            running: {
                running.extend([gateway, ops]);
                running.extend(audit);
                running
            },
            ctx,
            notifier,
            clock,
            http: reqwest::Client::new(),
            storage,
        }
    }
}

pub use crate::servers::TestDatabase;
#[cfg(feature = "it-postgres")]
pub use crate::servers::database_url;

/// Under `it-postgres`, puts `config` on a fresh database made for one app
/// and dropped with it; otherwise leaves it on SQLite.
fn database_for(config: &mut Config) -> Option<TestDatabase> {
    #[cfg(feature = "it-postgres")]
    {
        let db = TestDatabase::new();
        config.database.backend = gatehouse::kernel::config::DatabaseBackend::Postgres;
        config.database.url = db.url();
        config.database.pool_size = 4;
        Some(db)
    }
    #[cfg(not(feature = "it-postgres"))]
    {
        let _ = config;
        None
    }
}

/// Asserts a problem+json answer with the given status and code; returns the body.
pub async fn assert_problem(r: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(r.status().as_u16(), status, "status");
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert_eq!(ct, "application/problem+json");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status);
    assert_eq!(body["type"], format!("urn:gatehouse:problem:{code}"));
    body
}

/// The `gatehouse-code` of a gRPC error.
pub fn grpc_code(status: &tonic::Status) -> String {
    status
        .metadata()
        .get("gatehouse-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// A loopback address nobody listens on (until a test binds it).
pub fn closed_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The URL of a loopback port nobody listens on.
pub fn closed_url() -> String {
    format!("http://{}", closed_addr())
}
