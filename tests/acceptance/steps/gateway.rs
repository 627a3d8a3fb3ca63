//! `gateway.feature`: the journey through the one entry point, tokens
//! checked at the edge, paths and routes refused, the API document, and a
//! burst slowed down.

use cucumber::{then, when};
use reqwest::Method;
use serde_json::Value;

use crate::support::{self, PASSWORD};
use crate::{Platform, binary};

#[when(expr = "{string} registers through the gateway")]
pub(super) async fn registers_via_gateway(world: &mut Platform, email: String) {
    let (base, email) = (world.gateway_base(), world.email(&email));
    let r = support::register_response(&world.http, &base, &email, PASSWORD).await;
    world.record(r).await;
}

#[when(expr = "{string} signs in through the gateway")]
pub(super) async fn signs_in_via_gateway(world: &mut Platform, email: String) {
    let (base, email) = (world.gateway_base(), world.email(&email));
    let r = support::login_response(&world.http, &base, &email, PASSWORD).await;
    world.record(r).await;
}

#[then(expr = "with that token my profile through the gateway shows {string}")]
async fn profile_via_gateway(world: &mut Platform, email: String) {
    let url = format!("{}/v1/users/me", world.gateway_base());
    let token = world.latest("access_token");
    world.send(Method::GET, url, Some(&token), None).await;
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
    world.send(Method::GET, url, None, None).await;
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
