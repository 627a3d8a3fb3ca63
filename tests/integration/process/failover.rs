//! Instances killed under load: the gateway moves requests in flight on a
//! dead identity instance to the other, auth makes a password check under
//! way on one again on another, and an instance back on its port is taken
//! back in.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use super::{Backend, spawn_identity};
use crate::binary::{ServiceProcess, free_port, static_registry};
use crate::support::{PASSWORD, register, send, sign_in};

/// How many requests for `route` an instance has answered, from its metrics.
async fn answered(base: &str, route: &str) -> u64 {
    crate::binary::answered_on(base, |r| r == route).await
}

/// Auth in front of two identity instances sharing one data directory,
/// each its own process: the first identity started, the second and auth
/// on their way.
struct TwoIdentities {
    first: ServiceProcess,
    second: ServiceProcess,
    auth: ServiceProcess,
    auth_port: u16,
    ports: [u16; 2],
    identity_env: Vec<(&'static str, String)>,
    identity_dir: tempfile::TempDir,
    _auth_dir: tempfile::TempDir,
    backend: Backend,
}

impl TwoIdentities {
    fn spawn() -> TwoIdentities {
        let (auth_port, id1, id2) = (free_port(), free_port(), free_port());
        let (identity_dir, auth_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let backend = Backend::new();
        let with = |mut extra: Vec<(&'static str, String)>| {
            extra.extend(backend.env.iter().cloned());
            extra
        };
        let identity_env = with(static_registry(&[("auth", &[auth_port])]));
        let mut first = spawn_identity(id1, identity_dir.path(), &identity_env);
        first.started();
        let second = spawn_identity(id2, identity_dir.path(), &identity_env);
        let auth = ServiceProcess::spawn(
            env!("CARGO_BIN_EXE_gatehouse-auth"),
            "auth",
            auth_port,
            auth_dir.path(),
            &with(static_registry(&[("identity", &[id1, id2])])),
        );
        TwoIdentities {
            first,
            second,
            auth,
            auth_port,
            ports: [id1, id2],
            identity_env,
            identity_dir,
            _auth_dir: auth_dir,
            backend,
        }
    }

    /// `extra`, and the database settings every process of it has.
    fn with(&self, mut extra: Vec<(&'static str, String)>) -> Vec<(&'static str, String)> {
        extra.extend(self.backend.env.iter().cloned());
        extra
    }
}

#[tokio::test]
async fn the_gateway_spreads_load_and_loses_no_request_when_an_instance_dies() {
    let mut two = TwoIdentities::spawn();
    let ([id1, id2], auth_port) = (two.ports, two.auth_port);
    let (gw_port, gw_dir) = (free_port(), tempfile::tempdir().unwrap());
    let mut gateway = ServiceProcess::spawn(
        env!("CARGO_BIN_EXE_gatehouse-gateway"),
        "gateway",
        gw_port,
        gw_dir.path(),
        &two.with({
            let mut env = static_registry(&[("identity", &[id1, id2]), ("auth", &[auth_port])]);
            // The load below is one user's; this test is not about limits.
            env.push((
                "GATEHOUSE_GATEWAY__RATE_LIMIT__PER_USER_PER_SEC",
                "0".into(),
            ));
            env
        }),
    );
    for p in [&mut two.second, &mut two.auth, &mut gateway] {
        p.started();
    }
    let TwoIdentities {
        ref mut first,
        ref mut second,
        ..
    } = two;
    let gw = gateway.base.clone();
    let http = reqwest::Client::new();
    register(&http, &gw, "lb@example.org").await;
    let token = sign_in(&http, &gw, "lb@example.org", PASSWORD).await;
    let me = format!("{gw}/v1/users/me");
    for _ in 0..40 {
        let r = send(&http, Method::GET, &me, Some(&token), None).await;
        assert_eq!(r.status(), 200);
    }
    // One access-log line per request; nothing about tokens or passwords.
    let line = gateway.wait_line("gatehouse::access");
    assert!(
        line.contains("\"route\":\"/v1/users\"") && line.contains("\"status\":201"),
        "{line}"
    );
    gateway.wait_for(|l| l.contains("gatehouse::access") && l.contains("/v1/users/me"));
    assert!(
        !gateway
            .log
            .lines()
            .iter()
            .any(|l| l.contains("v4.public.") || l.contains(PASSWORD))
    );
    let (a, b) = (
        answered(&first.ops_base(), "/v1/users/me").await,
        answered(&second.ops_base(), "/v1/users/me").await,
    );
    assert_eq!(a + b, 40);
    assert!(a > 0 && b > 0, "both instances get traffic: {a} and {b}");

    // One instance dies under concurrent load: GETs in flight on it move
    // to the other instance, so no client sees an error at all.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (http, me, token, stop) = (http.clone(), me.clone(), token.clone(), stop.clone());
            tokio::spawn(async move {
                let mut answered = 0u32;
                while !stop.load(Ordering::SeqCst) {
                    let r = http
                        .get(&me)
                        .bearer_auth(&token)
                        .send()
                        .await
                        .expect("the gateway always answers");
                    assert_eq!(r.status(), 200);
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_kill = answered(&first.ops_base(), "/v1/users/me").await;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for c in clients {
        total += c.await.unwrap();
    }
    assert!(
        before_kill > a && total > 40,
        "both saw load: {before_kill} before the kill, {total} in all"
    );
    // Every later request still gets its answer.
    for i in 0..30 {
        let r = send(&http, Method::GET, &me, Some(&token), None).await;
        assert_eq!(r.status(), 200, "GET {i}");
        let url = format!("{gw}/v1/password-resets");
        let body = json!({"email": "lb@example.org"});
        let r = send(&http, Method::POST, url, None, Some(body)).await;
        assert_eq!(r.status(), 202, "POST {i}");
    }
}

/// Signs in at `auth` in a loop until `stop`: for each attempt, when it
/// started (since `epoch`) and whether it got its tokens. An attempt that
/// got no answer at all is one that failed, not the end of the loop.
async fn sign_ins(
    auth: String,
    email: &'static str,
    epoch: std::time::Instant,
    stop: Arc<AtomicBool>,
) -> Vec<(Duration, bool)> {
    let http = reqwest::Client::new();
    let mut outcomes = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let started = epoch.elapsed();
        let answer = http
            .post(format!("{auth}/v1/auth/login"))
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await;
        let signed_in = matches!(answer, Ok(a) if a.status() == 200);
        outcomes.push((started, signed_in));
    }
    outcomes
}

/// Four clients sign in without a pause through auth over two identity
/// instances; one is killed under them and started again: no sign-in
/// fails, and the instance back gets password checks again.
#[tokio::test]
async fn sign_ins_go_on_when_an_identity_instance_dies_and_come_back_to_it() {
    let mut two = TwoIdentities::spawn();
    two.second.started();
    two.auth.started();
    let TwoIdentities {
        ref mut first,
        ref mut second,
        ref mut auth,
        ports: [id1, _],
        ref identity_env,
        ref identity_dir,
        ..
    } = two;
    let http = reqwest::Client::new();
    register(&http, &first.base, "steady@example.org").await;

    // Four clients sign in without a pause; one identity instance is
    // killed under them.
    let epoch = std::time::Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(sign_ins(
                auth.base.clone(),
                "steady@example.org",
                epoch,
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Identity's gRPC calls, all of them password checks here.
    const VERIFY: &str = "/gatehouse.identity.v1.Identity/{*rest}";
    let (on_first, on_second) = (
        answered(&first.ops_base(), VERIFY).await,
        answered(&second.ops_base(), VERIFY).await,
    );
    assert!(
        on_first > 0 && on_second > 0,
        "both instances check passwords: {on_first} and {on_second}"
    );
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    // Gone from here on: a sign-in started before may have been on it.
    let killed_at = epoch.elapsed();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    let mut outcomes = Vec::new();
    for c in clients {
        outcomes.extend(c.await.unwrap());
    }
    let after: Vec<_> = outcomes.iter().filter(|(t, _)| *t > killed_at).collect();
    let failed: Vec<_> = outcomes.iter().filter(|(_, ok)| !ok).collect();
    assert!(
        after.len() > 20,
        "sign-ins went on after the kill: {}",
        after.len()
    );
    // None failed: a password check under way on the killed instance, or
    // sent on a connection to it not yet seen to be dead, is made again on
    // the other.
    assert!(
        failed.is_empty(),
        "sign-ins failed: {failed:?} (killed at {killed_at:?})"
    );
    auth.wait_line("instance ejected from service calls");

    // The instance comes back on its port: auth's probe takes it back in,
    // and then it answers sign-ins again.
    let mut back = spawn_identity(id1, identity_dir.path(), identity_env);
    back.started();
    auth.wait_line("instance back in service calls");
    for _ in 0..10 {
        sign_in(&http, &auth.base, "steady@example.org", PASSWORD).await;
    }
    let on_back = answered(&back.ops_base(), VERIFY).await;
    assert!(on_back > 0, "the instance back gets calls again");
}
