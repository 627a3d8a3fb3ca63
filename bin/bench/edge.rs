//! The edge benchmark: what the gateway costs in front of a service, next
//! to nginx doing the same job. `scripts/bench-edge.sh` starts the pieces;
//! this module serves the small upstream and drives `wrk` against
//!
//! - (a) the upstream directly,
//! - (b) nginx proxying it (keep-alive to the upstream, no access log),
//! - (c) the gateway on a `public` route,
//! - (d) the gateway on a `required` route with a valid token, rate limits on,
//! - (e) for reference, a bare proxy of this tool's own on the crates the
//!   gateway is built on (hyper-util's pooled client behind hyper's server,
//!   one event loop per core, nothing else), to tell what the gateway's
//!   features cost from what the libraries cost,
//! - (f) the gateway on a `public` route with the per-address rate limit,
//! - (g) for reference, nginx with each worker pinned to a CPU
//!   (`worker_cpu_affinity auto`), as the gateway pins its I/O threads,
//!
//! with the same `wrk` settings, one after the other, and prints requests
//! per second and p99 latency with their ratios to (b) and to (a).

use std::convert::Infallible;
use std::process::Command;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// The upstream's one response: small, fixed, JSON.
const ANSWER: &str = r#"{"ok":true}"#;

/// Serves the upstream on `port` until the process is stopped: every
/// request gets `ANSWER`, over HTTP/1.1 keep-alive or h2c.
pub async fn serve_upstream(port: u16) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|_req| async {
                Ok::<_, Infallible>(
                    http::Response::builder()
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .body(Full::new(Bytes::from_static(ANSWER.as_bytes())))
                        .unwrap_or_default(),
                )
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Serves the bare reference proxy on `port`, forwarding every request to
/// `upstream` (`host:port`): one current-thread runtime per core, each with
/// its own listener (SO_REUSEPORT) and its own pooled client.
pub fn serve_bare_proxy(port: u16, upstream: String) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads: Vec<_> = (0..cores)
        .map(|_| {
            let upstream = upstream.clone();
            std::thread::spawn(move || -> anyhow::Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(bare_proxy_loop(port, upstream))
            })
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("proxy thread panicked"))??;
    }
    Ok(())
}

async fn bare_proxy_loop(port: u16, upstream: String) -> anyhow::Result<()> {
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseport(true)?;
    socket.bind(std::net::SocketAddr::from(([127, 0, 0, 1], port)))?;
    let listener = socket.listen(1024)?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, hyper::body::Incoming> =
        Client::builder(TokioExecutor::new()).build(connector);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (client, upstream) = (client.clone(), upstream.clone());
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let client = client.clone();
                    let uri = format!(
                        "http://{upstream}{}",
                        req.uri().path_and_query().map_or("/", |p| p.as_str())
                    );
                    async move {
                        let (mut parts, body) = req.into_parts();
                        parts.uri = uri.parse()?;
                        let response = client
                            .request(http::Request::from_parts(parts, body))
                            .await?;
                        Ok::<_, anyhow::Error>(response)
                    }
                });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Where each party of the benchmark listens, and the `wrk` settings.
pub struct Edge {
    pub upstream: String,
    pub nginx: String,
    pub gateway: String,
    pub bare: String,
    pub nginx_pinned: String,
    pub token: String,
    pub seconds: u64,
    pub threads: usize,
    pub connections: usize,
    /// How many times the runs are made.
    pub rounds: usize,
}

/// One `wrk` run's outcome.
#[derive(Clone, Copy)]
struct Run {
    rps: f64,
    p99_ms: f64,
}

/// The parties, in the order each round runs them.
const PARTIES: [&str; 7] = [
    "(a) upstream directly",
    "(b) nginx proxy",
    "(c) gateway, public route",
    "(d) gateway, token + rate limits",
    "(e) reference: bare hyper proxy",
    "(f) gateway, public + rate limits",
    "(g) reference: nginx, pinned workers",
];

/// The middle value (the mean of the two middle ones for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

pub fn run(edge: &Edge) -> anyhow::Result<()> {
    println!(
        "edge benchmark: wrk -t{} -c{} -d{}s, {} rounds of the seven runs one after the other on \
         this machine; medians, ratios taken within each round",
        edge.threads, edge.connections, edge.seconds, edge.rounds
    );
    let public = format!("{}/bench/public/x", edge.gateway);
    let required = format!("{}/bench/private/x", edge.gateway);
    let limited = format!("{}/bench/limited/x", edge.gateway);
    let targets: [(String, Option<&str>); 7] = [
        (format!("{}/bench/public/x", edge.upstream), None),
        (format!("{}/bench/public/x", edge.nginx), None),
        (public, None),
        (required, Some(&edge.token)),
        (format!("{}/bench/public/x", edge.bare), None),
        (limited, None),
        (format!("{}/bench/public/x", edge.nginx_pinned), None),
    ];
    // Rounds rather than one run each: on a small shared machine a single
    // run of nginx or of the gateway can land on a slow or a fast spell.
    let mut rounds: Vec<[Run; 7]> = Vec::with_capacity(edge.rounds);
    for _ in 0..edge.rounds.max(1) {
        let mut round = [Run {
            rps: 0.0,
            p99_ms: 0.0,
        }; 7];
        for (slot, (url, token)) in round.iter_mut().zip(&targets) {
            *slot = wrk(edge, url, *token)?;
        }
        rounds.push(round);
    }
    let of = |party: usize, f: &dyn Fn(&Run) -> f64| {
        median(rounds.iter().map(|r| f(&r[party])).collect())
    };
    let of_round = |party: usize, f: &dyn Fn(&Run, &[Run; 7]) -> f64| {
        median(rounds.iter().map(|r| f(&r[party], r)).collect())
    };
    let mut ratio_to_nginx = [0.0; 7];
    let mut p99_to_nginx = [0.0; 7];
    for (party, name) in PARTIES.iter().enumerate() {
        let rps = of(party, &|r| r.rps);
        let p99 = of(party, &|r| r.p99_ms);
        ratio_to_nginx[party] = of_round(party, &|run, round| run.rps / round[1].rps);
        p99_to_nginx[party] = of_round(party, &|run, round| run.p99_ms / round[1].p99_ms);
        let to_direct = of_round(party, &|run, round| run.rps / round[0].rps);
        println!(
            "{name:<34} {rps:>9.0} req/s ({:.2}x nginx, {to_direct:.2}x direct)  p99 {p99:>6.2} ms ({:.2}x nginx)",
            ratio_to_nginx[party], p99_to_nginx[party],
        );
    }
    // Each round's req/s and p99 of `party` against those of `baseline`.
    let per_round = |party: usize, baseline: usize| {
        rounds
            .iter()
            .map(|r| {
                format!(
                    "{:.2}x/{:.2}x",
                    r[party].rps / r[baseline].rps,
                    r[party].p99_ms / r[baseline].p99_ms
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "rounds, req/s and p99 vs nginx: (c) {}; (d) {}",
        per_round(2, 1),
        per_round(3, 1)
    );
    println!(
        "rounds, req/s and p99 of (c) vs pinned nginx (g): {}",
        per_round(2, 6)
    );
    let verdict = |ok: bool| if ok { "ok" } else { "BELOW TARGET" };
    println!(
        "targets: (c) >= 1.0x (b): {}; (d) >= 0.9x (b): {}; p99 (c) <= (b): {}",
        verdict(ratio_to_nginx[2] >= 1.0),
        verdict(ratio_to_nginx[3] >= 0.9),
        verdict(p99_to_nginx[2] <= 1.0),
    );
    Ok(())
}

/// The TLS edge benchmark: nginx and the gateway each terminating TLS
/// (the same certificate) for the same upstream, on a `public` route
/// without rate limits, HTTP/1.1 with keep-alive as wrk speaks it, in
/// rounds one after the other; medians, ratios taken within each round.
pub fn run_tls(edge: &Edge) -> anyhow::Result<()> {
    println!(
        "TLS edge benchmark: wrk -t{} -c{} -d{}s over TLS, {} rounds of nginx then the gateway",
        edge.threads, edge.connections, edge.seconds, edge.rounds
    );
    let targets = [
        format!("{}/bench/public/x", edge.nginx),
        format!("{}/bench/public/x", edge.gateway),
    ];
    let mut rounds: Vec<[Run; 2]> = Vec::with_capacity(edge.rounds);
    for _ in 0..edge.rounds.max(1) {
        rounds.push([wrk(edge, &targets[0], None)?, wrk(edge, &targets[1], None)?]);
    }
    let of = |party: usize, f: &dyn Fn(&Run) -> f64| {
        median(rounds.iter().map(|r| f(&r[party])).collect())
    };
    let ratio = median(rounds.iter().map(|r| r[1].rps / r[0].rps).collect());
    let p99_ratio = median(rounds.iter().map(|r| r[1].p99_ms / r[0].p99_ms).collect());
    for (party, name) in ["nginx over TLS", "gateway over TLS"].iter().enumerate() {
        println!(
            "{name:<34} {:>9.0} req/s  p99 {:>6.2} ms",
            of(party, &|r| r.rps),
            of(party, &|r| r.p99_ms)
        );
    }
    let per_round = rounds
        .iter()
        .map(|r| format!("{:.2}x", r[1].rps / r[0].rps))
        .collect::<Vec<_>>()
        .join(" ");
    println!(
        "gateway vs nginx over TLS: {ratio:.2}x req/s (rounds: {per_round}), p99 {p99_ratio:.2}x"
    );
    let verdict = if ratio >= 0.9 { "ok" } else { "BELOW TARGET" };
    println!("target: gateway >= 0.9x nginx over TLS: {verdict}");
    Ok(())
}

/// Runs `wrk` against `url` and reads its requests per second and p99.
/// Any non-2xx answer or socket error fails the run: a fast error is not
/// a fast proxy.
fn wrk(edge: &Edge, url: &str, token: Option<&str>) -> anyhow::Result<Run> {
    let mut cmd = Command::new("wrk");
    cmd.arg(format!("-t{}", edge.threads))
        .arg(format!("-c{}", edge.connections))
        .arg(format!("-d{}s", edge.seconds))
        .arg("--latency");
    if let Some(token) = token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {token}"));
    }
    let out = cmd.arg(url).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "wrk failed on {url}: {text}");
    parse(&text).ok_or_else(|| anyhow::anyhow!("unexpected wrk output for {url}: {text}"))
}

fn parse(text: &str) -> Option<Run> {
    if text.contains("Non-2xx or 3xx responses") || text.contains("Socket errors") {
        return None;
    }
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))?
        .trim()
        .parse()
        .ok()?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))?
        .trim();
    Some(Run {
        rps,
        p99_ms: millis(p99)?,
    })
}

/// `wrk`'s latency figures (`812.00us`, `1.25ms`, `2.01s`) in milliseconds.
fn millis(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    match unit {
        "us" => Some(value / 1000.0),
        "ms" => Some(value),
        "s" => Some(value * 1000.0),
        "m" => Some(value * 60_000.0),
        _ => None,
    }
}
