//! `authz.feature`: the first admin made from the command line, roles
//! granted and taken back through the admin API, and what opens and closes
//! to the user within a second.

use std::time::{Duration, Instant};

use cucumber::{given, then, when};
use reqwest::Method;
use serde_json::{Value, json};

use super::gateway::{registers_via_gateway, signs_in_via_gateway};
use crate::support::PASSWORD;
use crate::{Platform, binary, every_authz_allows};

impl Platform {
    /// Sends `method path` through the gateway with `token` (and `body`).
    async fn as_user(&mut self, token: &str, method: Method, path: &str, body: Option<Value>) {
        let url = format!("{}{path}", self.gateway_base());
        self.send(method, url, Some(token), body).await;
    }

    async fn as_admin(&mut self, method: Method, path: &str, body: Option<Value>) {
        let token = self.admin.clone().expect("an admin was made");
        self.as_user(&token, method, path, body).await;
    }

    async fn list_users(&mut self, email: &str) {
        let token = self.tokens[&self.email(email).to_lowercase()].clone();
        self.as_user(&token, Method::GET, "/v1/users", None).await;
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
            Method::POST,
            "/v1/authz/roles",
            Some(json!({"name": role, "permissions": [permission]})),
        )
        .await;
    assert_eq!(world.status, 201, "{}", world.body);
    let subject = format!("user:{}", world.user_id(&email));
    world
        .as_admin(
            Method::POST,
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
    world.as_admin(Method::DELETE, &path, None).await;
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
    world.as_admin(Method::DELETE, &path, None).await;
}

#[when(expr = "the admin deletes the role {string}")]
async fn deletes_named_role(world: &mut Platform, role: String) {
    let path = format!("/v1/authz/roles/{role}");
    world.as_admin(Method::DELETE, &path, None).await;
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
