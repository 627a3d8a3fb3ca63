//! `auth.feature`: signing in at auth, refreshing, signing out, and a
//! tampered token refused.

use cucumber::{given, then, when};
use reqwest::Method;
use serde_json::json;

use crate::Platform;
use crate::support::{self, PASSWORD};

#[when(expr = "{string} signs in with {string}")]
async fn signs_in(world: &mut Platform, email: String, password: String) {
    let (base, email) = (world.auth_base(), world.email(&email));
    let r = support::login_response(&world.http, &base, &email, &password).await;
    world.record(r).await;
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
    world.send(Method::GET, url, Some(&token), None).await;
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
    let body = json!({"refresh_token": token});
    world.send(Method::POST, url, None, Some(body)).await;
}

#[when(expr = "{string} signs out")]
async fn signs_out(world: &mut Platform, _email: String) {
    let url = format!("{}/v1/auth/logout", world.auth_base());
    let token = world.latest("access_token");
    world.send(Method::POST, url, Some(&token), None).await;
}

#[when("my profile is read with the token changed in one place")]
async fn tampered(world: &mut Platform) {
    let mut token = world.latest("access_token").into_bytes();
    let i = "v4.public.".len() + 10;
    token[i] = if token[i] == b'A' { b'B' } else { b'A' };
    let url = format!("{}/v1/users/me", world.identity_base());
    let token = String::from_utf8(token).unwrap();
    world.send(Method::GET, url, Some(&token), None).await;
}
