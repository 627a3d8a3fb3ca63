//! `auth.feature`: signing in at auth, refreshing, signing out, and a
//! tampered token refused.

use cucumber::{given, then, when};
use serde_json::json;

use crate::{PASSWORD, Platform};

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
