//! The all-in-one under floods of sign-ins and sign-ups, with password
//! hashing at its real cost (scrypt's recommended parameters, 128 MiB a
//! hash): memory stays bounded by the hashes allowed at once, whatever the
//! clients do, and work beyond the bounded queue is refused as overloaded
//! rather than failing or timing out, so no instance is taken for failed.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::AsyncWriteExt as _;

use crate::binary::{ServiceProcess, spawn_platform};
use crate::process::Backend;
use crate::support::{PASSWORD, login_response, register, register_response};

/// Hashes at once in these tests.
const CONCURRENT: u64 = 2;
/// What one hash holds: 128 × r × 2^log_n bytes at the recommended cost.
const HASH_MIB: u64 = 128;

/// The whole platform in one process, with real hashing costs.
struct Platform {
    process: ServiceProcess,
    _data: tempfile::TempDir,
    _backend: Backend,
}

impl Platform {
    async fn spawn(extra: &[(&'static str, String)]) -> Platform {
        let backend = Backend::new();
        let recommended = scrypt::Params::recommended();
        let mut env: Vec<(&'static str, String)> = vec![
            (
                "GATEHOUSE_IDENTITY__SCRYPT__LOG_N",
                recommended.log_n().to_string(),
            ),
            (
                "GATEHOUSE_IDENTITY__SCRYPT__MAX_CONCURRENT",
                CONCURRENT.to_string(),
            ),
        ];
        env.extend(backend.env.iter().cloned());
        env.extend(extra.iter().cloned());
        let data = tempfile::tempdir().unwrap();
        let process = spawn_platform(env!("CARGO_BIN_EXE_gatehouse"), data.path(), &env).await;
        Platform {
            process,
            _data: data,
            _backend: backend,
        }
    }

    fn base(&self) -> &str {
        &self.process.base
    }

    /// The most memory the process has held (VmHWM), in MiB.
    fn peak_rss_mib(&self) -> u64 {
        self.status_mib("VmHWM:")
    }

    /// The memory the process holds now (VmRSS), in MiB.
    fn rss_mib(&self) -> u64 {
        self.status_mib("VmRSS:")
    }

    fn status_mib(&self, field: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.process.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib / 1024
    }

    /// Log lines saying an instance was taken out of service.
    fn ejections(&self) -> Vec<String> {
        self.process
            .log
            .lines()
            .into_iter()
            .filter(|l| l.contains("ejected"))
            .collect()
    }
}

/// A sign-in sent by hand from the loopback address `from`, whose client
/// hangs up `after` without reading the answer.
async fn abandoned_login(addr: String, from: std::net::IpAddr, email: String, after: Duration) {
    let body = json!({"email": email, "password": PASSWORD}).to_string();
    let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
        return;
    };
    if socket.bind((from, 0).into()).is_err() {
        return;
    }
    let Ok(mut stream) = socket.connect(addr.parse().unwrap()).await else {
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

/// What a burst's answers came to: 2xx, 503 `overloaded` with
/// `Retry-After`, and anything else (status and code).
#[derive(Debug, Default)]
struct Tally {
    served: usize,
    overloaded: usize,
    other: Vec<(u16, String)>,
}

impl Tally {
    async fn count(&mut self, response: reqwest::Response) {
        let status = response.status().as_u16();
        let retry_after = response.headers().contains_key("retry-after");
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let code = body["code"].as_str().unwrap_or("").to_owned();
        match status {
            200..=299 => self.served += 1,
            503 if code == "overloaded" && retry_after => self.overloaded += 1,
            _ => self.other.push((status, code)),
        }
    }
}

/// 8 sign-ins a second for addresses with no account, within the default
/// per-address rate limit and, spread over 8 client addresses, under the
/// sign-in throttle's free failures, each client hanging up after 200 ms,
/// for 10 s: each hash still running holds its permit, so memory grows by
/// no more than the hashes allowed at once (and 64 MiB), and the owner
/// signs in right after. The release build's absolute peak is
/// `just bench flood`'s figure.
#[tokio::test]
async fn abandoned_sign_ins_keep_memory_bounded_and_sign_in_working() {
    let platform = Platform::spawn(&[]).await;
    let http = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let owner = "owner@flood.example.org";
    register(&http, platform.base(), owner).await;
    // The process's own memory before the flood: a test build holds more
    // than a release build (24 MiB idle), which the bound is for.
    let before = platform.rss_mib();

    let addr = platform.base().trim_start_matches("http://").to_owned();
    let mut flood = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(125));
    for n in 0..80u8 {
        tick.tick().await;
        flood.spawn(abandoned_login(
            addr.clone(),
            std::net::IpAddr::from([127, 0, 0, 10 + n % 8]),
            format!("nobody{n}@flood.example.org"),
            Duration::from_millis(200),
        ));
    }
    flood.join_all().await;

    let started = Instant::now();
    let signed_in = login_response(&http, platform.base(), owner, PASSWORD).await;
    let waited = started.elapsed();
    let status = signed_in.status();
    let body: serde_json::Value = signed_in.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body["access_token"].is_string(), "{body}");

    let peak = platform.peak_rss_mib();
    let bound = CONCURRENT * HASH_MIB + 64;
    eprintln!(
        "abandoned sign-ins: peak RSS {peak} MiB, {before} MiB before (bound {bound} over it); \
         the owner's sign-in after them took {} ms",
        waited.as_millis()
    );
    assert!(
        peak - before < bound,
        "peak RSS {peak} MiB, {before} MiB before the flood: over {bound} MiB more"
    );
    assert_eq!(platform.ejections(), Vec::<String>::new());
}

/// 200 sign-ins at once, then 1 000 sign-ups at once, with the rate limits
/// off: each is served or refused as overloaded (503, `Retry-After`), none
/// fails or times out, no instance is taken out of service, and sign-in
/// works after.
#[tokio::test]
async fn bursts_are_served_or_refused_as_overloaded_and_eject_nothing() {
    let platform = Platform::spawn(&[
        ("GATEHOUSE_GATEWAY__RATE_LIMIT__PER_IP_PER_SEC", "0".into()),
        (
            "GATEHOUSE_GATEWAY__RATE_LIMIT__PER_USER_PER_SEC",
            "0".into(),
        ),
    ])
    .await;
    let http = reqwest::Client::new();
    let owner = "owner@burst.example.org";
    register(&http, platform.base(), owner).await;
    let platform = std::sync::Arc::new(platform);

    let mut logins = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let (platform, http) = (platform.clone(), http.clone());
        logins.spawn(async move { login_response(&http, platform.base(), owner, PASSWORD).await });
    }
    let mut tally = Tally::default();
    for response in logins.join_all().await {
        tally.count(response).await;
    }
    eprintln!("200 sign-ins at once: {tally:?}");
    assert!(tally.other.is_empty(), "{tally:?}");
    assert!(tally.served > 0 && tally.overloaded > 0, "{tally:?}");

    let mut signups = tokio::task::JoinSet::new();
    for n in 0..1000 {
        let (platform, http) = (platform.clone(), http.clone());
        signups.spawn(async move {
            let email = format!("new{n}@burst.example.org");
            register_response(&http, platform.base(), &email, PASSWORD).await
        });
    }
    let mut tally = Tally::default();
    for response in signups.join_all().await {
        tally.count(response).await;
    }
    eprintln!("1 000 sign-ups at once: {tally:?}");
    assert!(tally.other.is_empty(), "{tally:?}");
    assert!(tally.served > 0 && tally.overloaded > 0, "{tally:?}");

    assert_eq!(platform.ejections(), Vec::<String>::new());
    let after = login_response(&http, platform.base(), owner, PASSWORD).await;
    assert_eq!(after.status(), 200);
}
