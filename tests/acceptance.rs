//! Acceptance specs (`features/*.feature`) run with cucumber against the real
//! `gatehouse-identity` binary: each scenario starts its own process on a
//! free port with a fresh data directory, and reads the links the
//! development notifier writes to the log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cucumber::{World, given, then, when};
use gatehouse::proto::identity::v1 as pb;
use gatehouse::proto::identity::v1::identity_client::IdentityClient;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";

#[derive(World, Default)]
struct Platform {
    process: Option<Service>,
    status: u16,
    body: Value,
    /// Registered users' ids by lowercased email.
    ids: std::collections::HashMap<String, String>,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("status", &self.status)
            .field("body", &self.body)
            .finish()
    }
}

struct Service {
    child: Child,
    base: String,
    log: mpsc::Receiver<String>,
    seen: Vec<String>,
    _data: tempfile::TempDir,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    fn start() -> Service {
        let data = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse-identity"))
            .env("GATEHOUSE_DATA_DIR", data.path())
            .env("GATEHOUSE_IDENTITY__LISTEN", format!("127.0.0.1:{port}"))
            .env("GATEHOUSE_IDENTITY__SCRYPT__LOG_N", "4")
            .env("GATEHOUSE_LOG__FORMAT", "json")
            .env("GATEHOUSE_LOG__LEVEL", "info")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut service = Service {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            seen: Vec::new(),
            _data: data,
        };
        service.wait_for(|l| l.contains("service started"));
        service
    }

    fn wait_for(&mut self, found: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(line) = self.log.recv_timeout(Duration::from_millis(100)) {
                self.seen.push(line.clone());
                if found(&line) {
                    return line;
                }
            }
        }
        panic!(
            "the service never logged the expected line; saw:\n{}",
            self.seen.join("\n")
        );
    }

    /// The token of the latest link of `kind` (a path) logged for the user.
    fn token(&mut self, path: &str, user_id: &str) -> String {
        let needle = format!("{path}?token=");
        let line = match self
            .seen
            .iter()
            .rev()
            .find(|l| l.contains(&needle) && l.contains(user_id))
        {
            Some(line) => line.clone(),
            None => self.wait_for(|l| l.contains(&needle) && l.contains(user_id)),
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
        let url = format!("{}{path}", self.service().base);
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
        let base = self.service().base.clone();
        let mut grpc = IdentityClient::connect(base).await.unwrap();
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
