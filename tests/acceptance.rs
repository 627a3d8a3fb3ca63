//! Acceptance specs (`features/*.feature`) run with cucumber against the real
//! binaries, each scenario on processes of its own, each on a free port with
//! a fresh data directory:
//!
//! - `identity.feature`: `gatehouse-identity` alone;
//! - `auth.feature`: `gatehouse-identity` and `gatehouse-auth`, two processes
//!   that find each other through the static registry;
//! - `gateway.feature`: `gatehouse-gateway` in front of those two, the three
//!   wired the same way;
//! - `authz.feature`: the all-in-one `gatehouse`, its first admin made with
//!   `gatehouse admin create` on the same data directory.
//!
//! The steps talk HTTP to the services (and gRPC to identity, to sign in
//! without auth) and read the links the development notifier writes to the
//! log. A step without a definition fails the run rather than being skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "integration/binary.rs"]
#[allow(dead_code)]
mod binary;

use cucumber::{World, given, then, when};
use gatehouse::proto::identity::v1 as pb;
use gatehouse::proto::identity::v1::identity_client::IdentityClient;
use serde_json::{Value, json};

use binary::{ServiceProcess, free_port, static_registry};

const PASSWORD: &str = "correct horse battery staple";

#[derive(World, Default)]
struct Platform {
    process: Option<Service>,
    auth: Option<Service>,
    gateway: Option<Service>,
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
    /// The admin's access token.
    admin: Option<String>,
    /// The latest role and binding the admin made.
    granted: Option<(String, String)>,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("status", &self.status)
            .field("body", &self.body)
            .finish()
    }
}

/// One scenario's identity service.
struct Service {
    process: ServiceProcess,
    _data: tempfile::TempDir,
}

impl Service {
    fn start() -> Service {
        Self::spawn(
            env!("CARGO_BIN_EXE_gatehouse-identity"),
            "identity",
            free_port(),
            &[],
        )
    }

    fn spawn(binary: &str, service: &str, port: u16, env: &[(&str, String)]) -> Service {
        let data = tempfile::tempdir().unwrap();
        let mut process = ServiceProcess::spawn(binary, service, port, data.path(), env);
        process.started();
        Service {
            process,
            _data: data,
        }
    }

    /// The token of the latest link to `path` logged for the user.
    fn token(&mut self, path: &str, user_id: &str) -> String {
        let needle = format!("{path}?token=");
        let matches = |l: &str| l.contains(&needle) && l.contains(user_id);
        let line = match self.process.seen.iter().rev().find(|l| matches(l)) {
            Some(line) => line.clone(),
            None => self.process.wait_for(matches),
        };
        line.split("token=")
            .nth(1)
            .unwrap()
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .collect()
    }
}

impl Platform {
    fn service(&mut self) -> &mut Service {
        self.process
            .as_mut()
            .expect("the service was started in the background")
    }

    async fn post(&mut self, path: &str, body: Value) {
        let url = format!("{}{path}", self.service().process.base);
        let r = reqwest::Client::new()
            .post(url)
            .json(&body)
            .send()
            .await
            .unwrap();
        self.status = r.status().as_u16();
        self.body = r.json().await.unwrap_or(Value::Null);
    }

    async fn register(&mut self, email: &str, password: &str) {
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
            .get(&email.to_lowercase())
            .cloned()
            .expect("the user registered earlier")
    }

    async fn sign_in(&mut self, email: &str, password: &str) -> Result<pb::User, tonic::Status> {
        let base = self.service().process.base.clone();
        let mut grpc = IdentityClient::new(binary::signed_channel(&base, "auth", "identity").await);
        grpc.verify_credentials(pb::VerifyCredentialsRequest {
            email: email.into(),
            password: password.into(),
        })
        .await
        .map(|r| r.into_inner().user.unwrap())
    }
}

#[given("the identity service is running")]
fn running(world: &mut Platform) {
    world.process = Some(Service::start());
}

#[given("the identity and auth services are running")]
fn both_running(world: &mut Platform) {
    let (identity_port, auth_port) = (free_port(), free_port());
    let mut auth_env = static_registry(&[("identity", &[identity_port])]);
    // Reuse is detected at once (no grace window) to keep scenarios short.
    auth_env.push(("GATEHOUSE_AUTH__REFRESH_GRACE_SECS", "0".to_owned()));
    world.process = Some(Service::spawn(
        env!("CARGO_BIN_EXE_gatehouse-identity"),
        "identity",
        identity_port,
        &static_registry(&[("auth", &[auth_port])]),
    ));
    world.auth = Some(Service::spawn(
        env!("CARGO_BIN_EXE_gatehouse-auth"),
        "auth",
        auth_port,
        &auth_env,
    ));
}

#[given("the gateway, auth and identity services are running")]
fn three_running(world: &mut Platform) {
    let (identity_port, auth_port, gateway_port) = (free_port(), free_port(), free_port());
    world.process = Some(Service::spawn(
        env!("CARGO_BIN_EXE_gatehouse-identity"),
        "identity",
        identity_port,
        &static_registry(&[("auth", &[auth_port])]),
    ));
    world.auth = Some(Service::spawn(
        env!("CARGO_BIN_EXE_gatehouse-auth"),
        "auth",
        auth_port,
        &static_registry(&[("identity", &[identity_port])]),
    ));
    world.gateway = Some(Service::spawn(
        env!("CARGO_BIN_EXE_gatehouse-gateway"),
        "gateway",
        gateway_port,
        &static_registry(&[("auth", &[auth_port]), ("identity", &[identity_port])]),
    ));
}

impl Platform {
    fn gateway_base(&self) -> String {
        self.gateway
            .as_ref()
            .expect("the gateway was started in the background")
            .process
            .base
            .clone()
    }
}

#[given("the whole platform is running")]
async fn platform_running(world: &mut Platform) {
    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let env: Vec<(&str, String)> = [
        "GATEHOUSE_AUTH__LISTEN",
        "GATEHOUSE_IDENTITY__LISTEN",
        "GATEHOUSE_AUTHZ__LISTEN",
        "GATEHOUSE_AUDIT__LISTEN",
    ]
    .into_iter()
    .zip(&ports[1..])
    .map(|(key, port)| (key, format!("127.0.0.1:{port}")))
    .collect();
    let data = tempfile::tempdir().unwrap();
    let mut process = binary::ServiceProcess::spawn(
        env!("CARGO_BIN_EXE_gatehouse"),
        "gateway",
        ports[0],
        data.path(),
        &env,
    );
    let ready = format!("{}/readyz", process.base);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !reqwest::get(&ready)
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(std::time::Instant::now() < deadline, "never ready");
        assert!(process.child.try_wait().unwrap().is_none(), "it stopped");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    world.gateway = Some(Service {
        process,
        _data: data,
    });
}

#[given(expr = "{string} was made an admin from the command line")]
async fn made_admin(world: &mut Platform, email: String) {
    let data = world.gateway.as_ref().unwrap()._data.path().to_owned();
    let said = binary::make_admin(&data, &[], &email, PASSWORD);
    assert!(said.contains("granted admin"), "{said}");
    signs_in_via_gateway(world, email).await;
    assert_eq!(world.status, 200, "{}", world.body);
    let token = world.body["access_token"].as_str().unwrap().to_owned();
    // The running platform sees a grant made beside it within authz's
    // refresh interval.
    let url = format!("{}/v1/authz/roles", world.gateway_base());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let r = reqwest::Client::new()
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", r.status());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    world.admin = Some(token);
}

#[given(expr = "{string} has signed up through the gateway")]
async fn signed_up(world: &mut Platform, email: String) {
    registers_via_gateway(world, email.clone()).await;
    assert_eq!(world.status, 201, "{}", world.body);
    let id = world.body["id"].as_str().unwrap().to_owned();
    world.ids.insert(email.to_lowercase(), id);
    signs_in_via_gateway(world, email.clone()).await;
    let token = world.body["access_token"].as_str().unwrap().to_owned();
    world.tokens.insert(email.to_lowercase(), token);
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
        let mut request = reqwest::Client::new()
            .request(method, url)
            .bearer_auth(token);
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
        let token = self.tokens[&email.to_lowercase()].clone();
        self.as_user(&token, reqwest::Method::GET, "/v1/users", None)
            .await;
    }

    /// Lists the users as `email` until the answer is `status`, for at
    /// most a second.
    async fn list_users_until(&mut self, email: &str, status: u16) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            self.list_users(email).await;
            if self.status == status {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still {} {} after a second",
                self.status,
                self.body
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
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
    let role = format!("can-{}", permission.replace([':', '.'], "-"));
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
    let body = json!({"email": email, "password": PASSWORD, "display_name": "Someone"});
    world
        .send(reqwest::Client::new().post(url).json(&body))
        .await;
}

#[when(expr = "{string} signs in through the gateway")]
async fn signs_in_via_gateway(world: &mut Platform, email: String) {
    let url = format!("{}/v1/auth/login", world.gateway_base());
    let body = json!({"email": email, "password": PASSWORD});
    world
        .send(reqwest::Client::new().post(url).json(&body))
        .await;
}

#[then(expr = "with that token my profile through the gateway shows {string}")]
async fn profile_via_gateway(world: &mut Platform, email: String) {
    let url = format!("{}/v1/users/me", world.gateway_base());
    let token = world.latest("access_token");
    world
        .send(reqwest::Client::new().get(url).bearer_auth(token))
        .await;
    assert_eq!(world.status, 200, "{}", world.body);
    assert_eq!(world.body["email"], email.as_str());
}

#[when("my profile is read through the gateway without a token")]
async fn profile_without_token(world: &mut Platform) {
    read_raw(world, "/v1/users/me".to_owned()).await;
}

#[when(expr = "{string} is read through the gateway without a token")]
async fn read_raw(world: &mut Platform, path: String) {
    let (status, body) = binary::raw_get(&world.gateway_base(), &path).await;
    world.status = status;
    world.body = body;
}

#[when("the API document is read through the gateway")]
async fn api_document(world: &mut Platform) {
    let url = format!("{}/openapi.json", world.gateway_base());
    world.send(reqwest::Client::new().get(url)).await;
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
    let client = reqwest::Client::new();
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
    fn auth_base(&self) -> String {
        self.auth
            .as_ref()
            .expect("auth was started in the background")
            .process
            .base
            .clone()
    }

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
    world
        .send(
            reqwest::Client::new()
                .post(url)
                .json(&json!({"email": email, "password": password})),
        )
        .await;
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
    let url = format!("{}/v1/users/me", world.service().process.base);
    let token = world.latest("access_token");
    world
        .send(reqwest::Client::new().get(url).bearer_auth(token))
        .await;
    assert_eq!(world.status, 200, "{}", world.body);
    assert_eq!(world.body["email"], email.as_str());
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
    world
        .send(
            reqwest::Client::new()
                .post(url)
                .json(&json!({"refresh_token": token})),
        )
        .await;
}

#[when(expr = "{string} signs out")]
async fn signs_out(world: &mut Platform, _email: String) {
    let url = format!("{}/v1/auth/logout", world.auth_base());
    let token = world.latest("access_token");
    world
        .send(reqwest::Client::new().post(url).bearer_auth(token))
        .await;
}

#[when("my profile is read with the token changed in one place")]
async fn tampered(world: &mut Platform) {
    let mut token = world.latest("access_token").into_bytes();
    let i = "v4.public.".len() + 10;
    token[i] = if token[i] == b'A' { b'B' } else { b'A' };
    let url = format!("{}/v1/users/me", world.service().process.base);
    world
        .send(
            reqwest::Client::new()
                .get(url)
                .bearer_auth(String::from_utf8(token).unwrap()),
        )
        .await;
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
    assert_eq!(world.body["email"], email.as_str());
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
    let token = world.service().token("/verify-email", &id);
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
    world
        .post("/v1/password-resets", json!({"email": email}))
        .await;
}

#[given(expr = "the reset link for {string} is used to set {string}")]
#[when(expr = "the reset link for {string} is used to set {string}")]
async fn use_reset(world: &mut Platform, email: String, password: String) {
    let id = world.user_id(&email);
    let token = world.service().token("/reset-password", &id);
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

#[when(expr = "someone signs in as {string} with a wrong password {int} times")]
async fn wrong_guesses(world: &mut Platform, email: String, times: u32) {
    for _ in 0..times {
        let e = world
            .sign_in(&email, "definitely not it")
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
    }
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

#[tokio::main]
async fn main() {
    let features = concat!(env!("CARGO_MANIFEST_DIR"), "/features");
    Platform::cucumber()
        .fail_on_skipped()
        .run_and_exit(features)
        .await;
}
