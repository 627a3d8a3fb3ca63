//! The flood benchmark: the all-in-one (release build, scrypt at its
//! recommended cost, two hashes at once) under the floods of the hardening
//! tests, with the figures those tests do not assert.
//!
//! - Abandoned sign-ins: 8 a second for addresses with no account, each
//!   client hanging up after 200 ms, for 10 s, within the default rate
//!   limits, from 8 loopback addresses (each under the sign-in
//!   throttle's free failures). Figures: the process's peak resident memory (VmHWM) against
//!   its bound (two hashes of 128 MiB and 64 MiB), and how long a sign-in
//!   right after the flood took.
//! - Bursts, with the rate limits off: 200 sign-ins at once, then 1 000
//!   sign-ups at once. Figures: what they were answered (served, 503
//!   `overloaded`, anything else), and `/healthz` through the gateway,
//!   asked every 20 ms during the bursts, against the same asked idle.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt as _;

use super::footprint::{Running, Setup, ports, wait_responding};

/// Hashes at once, and what one holds at the recommended cost.
const CONCURRENT: u64 = 2;
const HASH_MIB: u64 = 128;

/// Runs the flood benchmark with the release binaries in `bin_dir`.
pub async fn run(bin_dir: &std::path::Path) -> anyhow::Result<()> {
    let data =
        std::env::temp_dir().join(format!("gatehouse-flood-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(data.join("limited"))?;
    std::fs::create_dir_all(data.join("open"))?;
    let setup = |dir: &str| Setup {
        bin_dir: bin_dir.to_owned(),
        data: data.join(dir),
    };
    let outcome = match abandoned(&setup("limited")).await {
        Ok(()) => bursts(&setup("open")).await,
        Err(e) => Err(e),
    };
    if outcome.is_ok() {
        std::fs::remove_dir_all(&data)?;
    } else {
        eprintln!("flood: the logs are in {}", data.display());
    }
    outcome
}

/// The all-in-one on `setup`'s data directory, with `extra` settings;
/// answers it and its gateway's base URL once it answers there.
async fn start(
    setup: &Setup,
    client: &reqwest::Client,
    extra: &[(&'static str, String)],
) -> anyhow::Result<(Running, String)> {
    let [gateway, auth, authz, identity, audit, ops] = ports()?;
    let mut env = vec![
        ("GATEHOUSE_GATEWAY__LISTEN", format!("127.0.0.1:{gateway}")),
        ("GATEHOUSE_AUTH__LISTEN", format!("127.0.0.1:{auth}")),
        ("GATEHOUSE_AUTHZ__LISTEN", format!("127.0.0.1:{authz}")),
        (
            "GATEHOUSE_IDENTITY__LISTEN",
            format!("127.0.0.1:{identity}"),
        ),
        ("GATEHOUSE_AUDIT__LISTEN", format!("127.0.0.1:{audit}")),
        ("GATEHOUSE_SERVER__OPS_LISTEN", format!("127.0.0.1:{ops}")),
        (
            "GATEHOUSE_IDENTITY__SCRYPT__MAX_CONCURRENT",
            CONCURRENT.to_string(),
        ),
    ];
    env.extend(extra.iter().cloned());
    let base = format!("http://127.0.0.1:{gateway}");
    let mut platform = setup.spawn("gatehouse", "gatehouse", &env)?;
    wait_responding(client, &base, &mut [&mut platform]).await?;
    Ok((platform, base))
}

/// A sign-in from the loopback address `from` whose client hangs up
/// `after` without reading the response.
async fn abandoned_login(addr: String, from: std::net::IpAddr, email: String, after: Duration) {
    let body = serde_json::json!({"email": email, "password": super::PASSWORD}).to_string();
    let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
        return;
    };
    let Ok(to) = addr.parse() else {
        return;
    };
    if socket.bind((from, 0).into()).is_err() {
        return;
    }
    let Ok(mut stream) = socket.connect(to).await else {
        return;
    };
    let request = format!(
        "POST /v1/auth/login HTTP/1.1\r\nHost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(request.as_bytes()).await.is_ok() {
        tokio::time::sleep(after).await;
    }
}

async fn abandoned(setup: &Setup) -> anyhow::Result<()> {
    // The owner signs in from an address of its own.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()?;
    let (platform, base) = start(setup, &client, &[]).await?;
    let run = uuid::Uuid::now_v7().simple().to_string();
    let owner = super::email(&run, 0, 0);
    super::register(client.clone(), base.clone(), owner.clone()).await?;
    let addr = base.trim_start_matches("http://").to_owned();
    let mut flood = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(125));
    // From 8 addresses: each stays under the sign-in throttle's free
    // failures, so every sign-in reaches a hash.
    for n in 0..80u8 {
        tick.tick().await;
        flood.spawn(abandoned_login(
            addr.clone(),
            std::net::IpAddr::from([127, 0, 0, 10 + n % 8]),
            super::email(&run, 1, u64::from(n)),
            Duration::from_millis(200),
        ));
    }
    flood.join_all().await;
    let started = Instant::now();
    super::login(client.clone(), base.clone(), owner).await?;
    let waited = started.elapsed();
    let peak = platform.peak_rss_mib()?;
    let bound = (CONCURRENT * HASH_MIB + 64) as f64;
    let verdict = if peak < bound { "ok" } else { "ABOVE BOUND" };
    println!(
        "flood_peak_rss: figure {peak:.0} MiB  (bound < {bound} MiB, {verdict}; 80 sign-ins for unknown addresses at 8/s, each client gone after 200 ms)"
    );
    println!(
        "flood_login_after: figure {:.0} ms  (a sign-in right after the flood)",
        waited.as_secs_f64() * 1000.0
    );
    platform.stop().await
}

/// Responses to a burst: 2xx, 503 `overloaded`, anything else.
#[derive(Default)]
struct Tally {
    served: usize,
    overloaded: usize,
    other: usize,
}

impl Tally {
    async fn count(&mut self, response: reqwest::Result<reqwest::Response>) {
        let Ok(response) = response else {
            self.other += 1;
            return;
        };
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        match (status, body["code"].as_str()) {
            (200..=299, _) => self.served += 1,
            (503, Some("overloaded")) => self.overloaded += 1,
            _ => self.other += 1,
        }
    }
}

/// `/healthz` through the gateway every 20 ms until `stop` is cancelled:
/// each response's time, in ms.
async fn sample_health(
    client: reqwest::Client,
    base: String,
    stop: tokio_util::sync::CancellationToken,
) -> Vec<f64> {
    let mut times = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while !stop.is_cancelled() {
        tick.tick().await;
        let started = Instant::now();
        if client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    times
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at]
}

async fn health_while<F: std::future::Future<Output = ()>>(
    client: &reqwest::Client,
    base: &str,
    work: F,
) -> Vec<f64> {
    let stop = tokio_util::sync::CancellationToken::new();
    let sampler = tokio::spawn(sample_health(client.clone(), base.to_owned(), stop.clone()));
    work.await;
    stop.cancel();
    let mut times = sampler.await.unwrap_or_default();
    times.sort_by(f64::total_cmp);
    times
}

async fn bursts(setup: &Setup) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let (platform, base) = start(
        setup,
        &client,
        &[
            ("GATEHOUSE_GATEWAY__RATE_LIMIT__PER_IP_PER_SEC", "0".into()),
            (
                "GATEHOUSE_GATEWAY__RATE_LIMIT__PER_USER_PER_SEC",
                "0".into(),
            ),
        ],
    )
    .await?;
    let run = uuid::Uuid::now_v7().simple().to_string();
    let owner = super::email(&run, 0, 0);
    super::register(client.clone(), base.clone(), owner.clone()).await?;
    let idle = health_while(&client, &base, tokio::time::sleep(Duration::from_secs(2))).await;

    let mut logins = Tally::default();
    let mut signups = Tally::default();
    let busy = health_while(&client, &base, async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..200 {
            let (client, base, owner) = (client.clone(), base.clone(), owner.clone());
            tasks.spawn(async move {
                client
                    .post(format!("{base}/v1/auth/login"))
                    .json(&serde_json::json!({"email": owner, "password": super::PASSWORD}))
                    .send()
                    .await
            });
        }
        for response in tasks.join_all().await {
            logins.count(response).await;
        }
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..1000 {
            let (client, base, email) = (client.clone(), base.clone(), super::email(&run, 2, n));
            tasks.spawn(async move {
                client
                    .post(format!("{base}/v1/users"))
                    .json(&serde_json::json!({"email": email, "password": super::PASSWORD, "display_name": "Bench"}))
                    .send()
                    .await
            });
        }
        for response in tasks.join_all().await {
            signups.count(response).await;
        }
    })
    .await;
    for (name, t) in [("200 sign-ins", &logins), ("1000 sign-ups", &signups)] {
        println!(
            "flood_burst {name}: {} served, {} overloaded (503), {} other",
            t.served, t.overloaded, t.other
        );
    }
    for (name, p) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
        println!(
            "flood_healthz_{name}: figure {:.1} ms  baseline {:.1} ms  ({} asked during the bursts, {} idle)",
            percentile(&busy, p),
            percentile(&idle, p),
            busy.len(),
            idle.len()
        );
    }
    platform.stop().await
}
