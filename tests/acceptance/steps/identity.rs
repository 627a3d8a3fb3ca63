//! `identity.feature`: registering, verifying the address, resetting a
//! forgotten password, and guesses slowed down without locking the owner
//! out. Signing in here asks identity over gRPC, as auth does.

use std::time::{Duration, Instant};

use cucumber::{given, then, when};
use gatehouse::proto::identity::v1 as pb;
use gatehouse::proto::identity::v1::identity_client::IdentityClient;
use serde_json::{Value, json};

use crate::Platform;
use crate::binary;
use crate::support::{self, PASSWORD};

impl Platform {
    /// Registers `email` (tagged) with `password` at identity; keeps the
    /// answer, and the new user's id.
    pub(crate) async fn register(&mut self, email: &str, password: &str) {
        let email = self.email(email);
        let base = self.identity_base();
        let r = support::register_response(&self.http, &base, &email, password).await;
        self.record(r).await;
        if self.status == 201 {
            let id = self.body["id"].as_str().unwrap().to_owned();
            self.ids.insert(email.to_lowercase(), id);
        }
    }

    /// The id of `email`, registered earlier in the scenario.
    pub(crate) fn user_id(&self, email: &str) -> String {
        self.ids
            .get(&self.email(email).to_lowercase())
            .cloned()
            .expect("the user registered earlier")
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
