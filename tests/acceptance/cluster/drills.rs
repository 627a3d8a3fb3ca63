//! `cluster.feature`'s steps: load started, a part killed, stopped or
//! restarted, and what discovery, the clients and the audit log saw.

use std::time::{Duration, Instant};

use cucumber::{given, then, when};
use reqwest::Method;
use serde_json::Value;

use super::load::{Load, Sent, Work};
use super::{AFTER, BEFORE, CLIENTS, DOWN, Down, LAYOUT, LEASE_SECS, Part, deployment, join};
use crate::Platform;
use crate::support::{PASSWORD, send, sign_in};

impl Platform {
    async fn load(&mut self, work: Work, gateways: &str) {
        let all = deployment().bases("gateway");
        let gateways = match gateways {
            "both gateways" => all,
            "the second gateway" => vec![all[1].clone()],
            other => panic!("no gateways called {other:?}"),
        };
        self.drill.load = Some(Load::start(work, gateways).await);
    }

    /// Stops the clients and keeps what they sent.
    async fn stop_load(&mut self) {
        if let Some(load) = self.drill.load.take() {
            let (sent, signed_up) = load.stop().await;
            self.drill.sent = sent;
            self.drill.signed_up = signed_up;
        }
    }

    /// Takes `part` down by `stopping`, noting when the signal went and
    /// when it was gone.
    async fn take_down(&mut self, part: Part, stopping: impl std::future::Future<Output = ()>) {
        let signalled = Instant::now();
        let down = Down {
            part,
            signalled,
            gone: signalled,
        };
        // Noted first, so that a failure on the way still starts it again.
        self.drill.down = Some(down);
        stopping.await;
        self.drill.down = Some(Down {
            gone: Instant::now(),
            ..down
        });
    }

    fn down(&self) -> Down {
        self.drill.down.expect("a part was taken down")
    }

    /// The instance taken down: its service, which one, and its URL.
    fn stopped(&self) -> (&'static str, usize, String) {
        let Part::Instance(service, n) = self.down().part else {
            panic!("an instance was taken down");
        };
        (service, n, deployment().base(service, n))
    }
}

#[given("the replicated deployment is running")]
fn replicated(world: &mut Platform) {
    join(world);
}

#[given(
    regex = r"^clients keep signing in, reading and refreshing through (both gateways|the second gateway)$"
)]
async fn sessions(world: &mut Platform, gateways: String) {
    world.load(Work::Sessions, &gateways).await;
}

#[given(regex = r"^people keep signing up through (both gateways|the second gateway)$")]
async fn sign_ups(world: &mut Platform, gateways: String) {
    world.load(Work::SignUps, &gateways).await;
}

#[when(regex = r"^the (?:first )?(identity|auth|authz|audit) instance is killed$")]
async fn kill(world: &mut Platform, service: String) {
    tokio::time::sleep(BEFORE).await;
    let service = LAYOUT.iter().find(|(s, _)| *s == service).unwrap().0;
    let cluster = deployment();
    world.drill.served_before = cluster.served(service, 0).await;
    let part = Part::Instance(service, 0);
    world.take_down(part, cluster.kill(service, 0)).await;
}

#[when("the first gateway is stopped")]
async fn stop_gateway(world: &mut Platform) {
    tokio::time::sleep(BEFORE).await;
    let cluster = deployment();
    let part = Part::Instance("gateway", 0);
    world.take_down(part, cluster.terminate("gateway", 0)).await;
}

#[when("the broker is killed")]
async fn kill_broker(world: &mut Platform) {
    tokio::time::sleep(BEFORE).await;
    let cluster = deployment();
    world.take_down(Part::Broker, cluster.broker(false)).await;
}

#[when("it is started again")]
async fn start_again(world: &mut Platform) {
    let down = world.down();
    tokio::time::sleep_until((down.gone + DOWN).into()).await;
    match down.part {
        Part::Instance(service, n) => deployment().restart(service, n).await,
        Part::Broker => deployment().broker(true).await,
    }
    world.drill.restored = true;
}

#[then("it is gone from discovery within its lease")]
async fn gone_from_discovery(world: &mut Platform) {
    let (service, _, url) = world.stopped();
    let gone = world.down().gone;
    // etcd lets a lease run out up to its ttl after its last renewal, and
    // looks for leases that ran out every half second.
    let within = Duration::from_secs(LEASE_SECS) + Duration::from_millis(1500);
    let listed = deployment()
        .until(service, gone + within, |urls| !urls.contains(&url))
        .await;
    assert!(!listed.contains(&url), "{url} still listed: {listed:?}");
    println!(
        "      {service} instance gone from discovery {:?} after it died",
        gone.elapsed()
    );
}

#[then("it left discovery as it stopped")]
async fn left_discovery(world: &mut Platform) {
    let (service, _, url) = world.stopped();
    // It deleted its key before it exited: what is left is the watch's delay.
    let deadline = world.down().gone + Duration::from_millis(500);
    let listed = deployment()
        .until(service, deadline, |urls| !urls.contains(&url))
        .await;
    assert!(!listed.contains(&url), "{url} still listed: {listed:?}");
}

#[then("it is back in discovery")]
async fn back_in_discovery(world: &mut Platform) {
    let (service, _, url) = world.stopped();
    let deadline = Instant::now() + Duration::from_secs(5);
    let listed = deployment()
        .until(service, deadline, |urls| urls.contains(&url))
        .await;
    assert!(listed.contains(&url), "{url} not listed: {listed:?}");
}

#[then("it serves the clients again")]
async fn serves_again(world: &mut Platform) {
    let (service, n, url) = world.stopped();
    let cluster = deployment();
    let deadline = Instant::now() + Duration::from_secs(5);
    while cluster.served(service, n).await == 0 {
        assert!(
            Instant::now() < deadline,
            "{url} served nothing since it started again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[then("only requests in flight on it when it was killed failed")]
async fn only_in_flight_failed(world: &mut Platform) {
    tokio::time::sleep(AFTER).await;
    world.stop_load().await;
    let down = world.down();
    let sent = &world.drill.sent;
    assert!(
        world.drill.served_before > 0,
        "the killed instance had served no client"
    );
    let after = sent.iter().filter(|s| s.started >= down.gone).count();
    let failed: Vec<&Sent> = sent.iter().filter(|s| s.failed()).collect();
    let (in_flight, others): (Vec<&Sent>, Vec<&Sent>) =
        failed.into_iter().partition(|s| s.in_flight(&down));
    assert!(
        others.is_empty(),
        "{} of {} requests failed that were not under way at the kill: {others:?}",
        others.len(),
        sent.len()
    );
    // Each client has one request under way at a time.
    assert!(in_flight.len() <= CLIENTS, "{in_flight:?}");
    // The clients went on: enough was sent after the kill to tell.
    assert!(after >= 100, "only {after} requests after the kill");
    println!(
        "      {} requests, {after} after the kill; {} in flight at the kill failed",
        sent.len(),
        in_flight.len()
    );
}

#[then("none of the clients' requests failed")]
async fn none_failed(world: &mut Platform) {
    tokio::time::sleep(AFTER).await;
    world.stop_load().await;
    none_failed_in(&world.drill.sent);
    let sent = world.drill.sent.len();
    assert!(sent >= 100, "only {sent} requests");
}

#[then("the first gateway serves sign-ins again")]
async fn gateway_serves(world: &mut Platform) {
    let cluster = deployment();
    let base = cluster.base("gateway", 0);
    let email = cluster.crowd().await[0].clone();
    sign_in(&world.http, &base, &email, PASSWORD).await;
}

#[then("every sign-up succeeded")]
async fn every_sign_up(world: &mut Platform) {
    tokio::time::sleep(AFTER).await;
    world.stop_load().await;
    none_failed_in(&world.drill.sent);
    assert!(
        world.drill.signed_up.len() >= 20,
        "only {} sign-ups",
        world.drill.signed_up.len()
    );
}

fn none_failed_in(sent: &[Sent]) {
    let failed: Vec<&Sent> = sent.iter().filter(|s| s.failed()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        sent.len()
    );
}

#[then(expr = "within {int} seconds the audit log holds the sign-up of everyone who signed up")]
async fn audit_holds_sign_ups(world: &mut Platform, seconds: u64) {
    let cluster = deployment();
    let base = cluster.base("gateway", 0);
    let email = cluster.crowd().await[0].clone();
    let token = sign_in(&world.http, &base, &email, PASSWORD).await;
    let wanted: std::collections::BTreeSet<String> = world
        .drill
        .signed_up
        .iter()
        .map(|id| format!("user:{id}"))
        .collect();
    let start = Instant::now();
    loop {
        let logged = registrations(&world.http, &base, &token).await;
        let missing = wanted.difference(&logged).count();
        if missing == 0 {
            println!(
                "      all {} sign-ups in the audit log {:?} after the last one",
                wanted.len(),
                start.elapsed()
            );
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(seconds),
            "{missing} of {} sign-ups never reached the audit log",
            wanted.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The subjects of every registration in the audit log.
async fn registrations(
    http: &reqwest::Client,
    base: &str,
    token: &str,
) -> std::collections::BTreeSet<String> {
    let mut subjects = std::collections::BTreeSet::new();
    let mut cursor = String::new();
    loop {
        let url =
            format!("{base}/v1/audit/events?limit=200&action=identity.user.registered{cursor}");
        let r = send(http, Method::GET, url, Some(token), None).await;
        assert_eq!(r.status(), 200);
        let page: Value = r.json().await.unwrap();
        for entry in page["items"].as_array().unwrap() {
            subjects.insert(entry["subject"].as_str().unwrap_or_default().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return subjects,
        }
    }
}
