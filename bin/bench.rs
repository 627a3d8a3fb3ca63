//! `gatehouse-bench`: the load tool behind `just bench`. It drives a running
//! platform and prints, per scenario, the figure, its baseline and the ratio
//! on one line.
//!
//! - `registrations_per_sec`: registrations through HTTP against the bare
//!   scrypt hash rate with the same parameters and concurrency. Hashing
//!   dominates a registration, so the ratio shows what everything else
//!   (HTTP, JSON, database, outbox) costs.
//! - `logins_per_sec`: logins through auth (which asks identity over gRPC)
//!   against the same scrypt bound.
//! - `token_checks_per_sec`: the shared token check with its verified-token
//!   cache against full signature verification, in this process.
//! - `me_per_sec`: `GET /v1/users/me` on the platform (token check on)
//!   against the same routes and server stack with the check off, served by
//!   a child process of this tool that puts a fixed principal into each
//!   request instead.
//!
//! With `--edge`, it runs the gateway-against-nginx benchmark instead (see
//! `edge.rs`), and with `--edge-tls` the same over TLS; `--serve-upstream` serves that benchmark's upstream. With
//! `--footprint`, it starts the release binaries itself and measures their
//! idle memory and the all-in-one's start (see `footprint.rs`); with
//! `--flood`, the all-in-one under floods of sign-ins and sign-ups (see
//! `flood.rs`). With
//! `--authz`, it measures authz's checks over gRPC on a policy it makes
//! itself (see `authz.rs`). With `--audit`, audit's ingest and lag on the
//! local PostgreSQL (see `audit.rs`). With `--oidc`, the OpenID Connect
//! provider through the platform's gateway (see `oidc.rs`).
#![allow(
    clippy::disallowed_methods,
    reason = "the load tool stamps what it sends with the wall clock"
)]

#[path = "bench/audit.rs"]
mod audit;
#[path = "bench/authz.rs"]
mod authz;
#[path = "bench/edge.rs"]
mod edge;
#[path = "bench/flood.rs"]
mod flood;
#[path = "bench/footprint.rs"]
mod footprint;
#[path = "bench/oidc.rs"]
mod oidc;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use gatehouse::middleware::bearer::{KeySet, KeySource, TokenCheck};
use gatehouse::middleware::token::{self, TokenConfig};
use pasetors::keys::{AsymmetricKeyPair, Generate};
use pasetors::version4::V4;

const PASSWORD: &str = "benchmark password 123";

#[derive(Parser)]
#[command(name = "gatehouse-bench")]
struct Cli {
    /// Base URL of the identity service.
    #[arg(long, default_value = "http://127.0.0.1:4102")]
    identity_url: String,
    /// Base URL of the auth service.
    #[arg(long, default_value = "http://127.0.0.1:4101")]
    auth_url: String,
    /// The config the platform runs with (for its scrypt parameters).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Requests (and hashes) in flight at once; default one per CPU core.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Connections for the request-rate scenarios.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Serve the signed-in routes without a token check (used by the tool itself).
    #[arg(long, hide = true, requires = "user_id")]
    serve_unchecked: Option<u16>,
    #[arg(long, hide = true)]
    user_id: Option<uuid::Uuid>,
    /// Serve the edge benchmark's upstream on this port.
    #[arg(long)]
    serve_upstream: Option<u16>,
    /// Serve the edge benchmark's bare reference proxy on this port...
    #[arg(long, requires = "bare_upstream")]
    serve_bare_proxy: Option<u16>,
    /// ...forwarding to this upstream (`host:port`).
    #[arg(long)]
    bare_upstream: Option<String>,
    /// Run the edge benchmark: upstream, nginx, gateway, bare proxy and
    /// pinned nginx base URLs.
    #[arg(long, num_args = 5, value_names = ["UPSTREAM", "NGINX", "GATEWAY", "BARE", "NGINX_PINNED"])]
    edge: Option<Vec<String>>,
    /// Run the TLS edge benchmark: nginx and the gateway, both over TLS with
    /// the same certificate in front of the same upstream.
    #[arg(long, num_args = 2, value_names = ["NGINX_TLS", "GATEWAY_TLS"])]
    edge_tls: Option<Vec<String>>,
    /// Run the footprint benchmark with the release binaries in this directory.
    #[arg(long, value_name = "BIN_DIR")]
    footprint: Option<PathBuf>,
    /// Run the flood benchmark with the release binaries in this directory.
    #[arg(long, value_name = "BIN_DIR")]
    flood: Option<PathBuf>,
    /// Run the authz benchmark (self-contained: it starts authz itself).
    #[arg(long)]
    authz: bool,
    /// Run the audit benchmark (self-contained, on the local PostgreSQL).
    #[arg(long)]
    audit: bool,
    /// Run the OpenID Connect benchmark against the running platform's
    /// gateway (`server.public_url`).
    #[arg(long)]
    oidc: bool,
    /// wrk threads for the edge benchmark.
    #[arg(long, default_value_t = 1)]
    wrk_threads: usize,
    /// wrk connections for the edge benchmark.
    #[arg(long, default_value_t = 32)]
    wrk_connections: usize,
    /// Rounds of the edge benchmark's seven runs; figures are their medians.
    #[arg(long, default_value_t = 3)]
    edge_rounds: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The reference proxy runs its own runtimes, one per core.
    if let (Some(port), Some(upstream)) = (cli.serve_bare_proxy, cli.bare_upstream.clone()) {
        return edge::serve_bare_proxy(port, upstream);
    }
    tokio::runtime::Runtime::new()?.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = gatehouse::config::Config::load(cli.config.as_deref())?;
    if let (Some(port), Some(user)) = (cli.serve_unchecked, cli.user_id) {
        return serve_unchecked(config, port, user).await;
    }
    if let Some(port) = cli.serve_upstream {
        return edge::serve_upstream(port).await;
    }
    if let Some(urls) = &cli.edge {
        return edge_benchmark(&cli, urls).await;
    }
    if let Some(urls) = &cli.edge_tls {
        let [nginx, gateway] = &urls[..] else {
            anyhow::bail!("--edge-tls takes two URLs");
        };
        return edge::run_tls(&edge::Edge {
            upstream: String::new(),
            nginx: nginx.clone(),
            gateway: gateway.clone(),
            bare: String::new(),
            nginx_pinned: String::new(),
            token: String::new(),
            seconds: cli.seconds,
            threads: cli.wrk_threads,
            connections: cli.wrk_connections,
            rounds: cli.edge_rounds,
        });
    }
    if let Some(bin_dir) = &cli.footprint {
        return footprint::run(bin_dir).await;
    }
    if let Some(bin_dir) = &cli.flood {
        return flood::run(bin_dir).await;
    }
    if cli.authz {
        return authz::run(cli.seconds, cli.connections).await;
    }
    if cli.audit {
        return audit::run(cli.seconds).await;
    }
    let concurrency = cli
        .concurrency
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    if cli.oidc {
        return oidc::run(
            &config,
            &cli.identity_url,
            concurrency,
            cli.connections,
            cli.seconds,
        )
        .await;
    }
    let params = gatehouse::identity::password::params(&config.identity.scrypt)?;
    let span = Duration::from_secs(cli.seconds);
    let setup = format!(
        "scrypt log_n={} r={} p={}, concurrency {concurrency}, {}s each",
        params.log_n(),
        params.r(),
        params.p(),
        cli.seconds
    );
    let client = reqwest::Client::new();
    for base in [&cli.identity_url, &cli.auth_url] {
        let ready = client.get(format!("{base}/readyz")).send().await?;
        anyhow::ensure!(ready.status().is_success(), "{base} is not ready");
    }
    let run = uuid::Uuid::now_v7().simple().to_string();

    let hashes = hash_rate(params, concurrency, span).await?;
    let (c, url, r) = (client.clone(), cli.identity_url.clone(), run.clone());
    let registrations = rate(concurrency, span, move |worker, n| {
        register(c.clone(), url.clone(), email(&r, worker, n))
    })
    .await?;
    report("registrations_per_sec", registrations, hashes, &setup, 0.9);

    // One account per worker, made before the clock starts.
    for worker in 0..concurrency {
        register(
            client.clone(),
            cli.identity_url.clone(),
            email(&run, worker, 0),
        )
        .await?;
    }
    let (c, url, r) = (client.clone(), cli.auth_url.clone(), run.clone());
    let logins = rate(concurrency, span, move |worker, _| {
        login(c.clone(), url.clone(), email(&r, worker, 0))
    })
    .await?;
    report("logins_per_sec", logins, hashes, &setup, 0.9);

    let (on, off) = me_rates(&cli, &client, &email(&run, 0, 0), span).await?;
    report(
        "me_per_sec",
        on,
        off,
        &format!(
            "token check on vs off, {} connections, {}s each",
            cli.connections, cli.seconds
        ),
        0.8,
    );

    let (uncached, cached) = token_check_rates(&config.tokens, span).await?;
    report(
        "token_checks_per_sec",
        cached,
        uncached,
        &format!(
            "cached vs full verification, one task, {}s each",
            cli.seconds
        ),
        20.0,
    );
    Ok(())
}

/// Signs a new user in for the token of the edge benchmark's `required`
/// route, then runs it.
async fn edge_benchmark(cli: &Cli, urls: &[String]) -> anyhow::Result<()> {
    let [upstream, nginx, gateway, bare, nginx_pinned] = urls else {
        anyhow::bail!("--edge takes five URLs");
    };
    let client = reqwest::Client::new();
    let who = email(&uuid::Uuid::now_v7().simple().to_string(), 0, 0);
    register(client.clone(), cli.identity_url.clone(), who.clone()).await?;
    let pair: serde_json::Value = client
        .post(format!("{}/v1/auth/login", cli.auth_url))
        .json(&serde_json::json!({"email": who, "password": PASSWORD}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = pair["access_token"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("login answered no access token"))?;
    edge::run(&edge::Edge {
        upstream: upstream.clone(),
        nginx: nginx.clone(),
        gateway: gateway.clone(),
        bare: bare.clone(),
        nginx_pinned: nginx_pinned.clone(),
        token: token.to_owned(),
        seconds: cli.seconds,
        threads: cli.wrk_threads,
        connections: cli.wrk_connections,
        rounds: cli.edge_rounds,
    })
}

fn report(name: &str, figure: f64, baseline: f64, setup: &str, target: f64) {
    let ratio = figure / baseline;
    let verdict = if ratio >= target {
        "ok"
    } else {
        "BELOW TARGET"
    };
    println!(
        "{name}: figure {figure:.2}/s  baseline {baseline:.2}/s  ratio {ratio:.3}  (target >= {target}, {verdict}; {setup})"
    );
}

fn email(run: &str, worker: usize, n: u64) -> String {
    format!("bench-{run}-{worker}-{n}@example.org")
}

/// Successful operations per second: `concurrency` workers each calling
/// `op` (with their number and a counter) one call after another for `span`.
async fn rate<F, Fut>(concurrency: usize, span: Duration, op: F) -> anyhow::Result<f64>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let op = Arc::new(op);
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let (op, done) = (op.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while start.elapsed() < span {
                n += 1;
                op(worker, n).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for w in workers {
        w.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

async fn register(client: reqwest::Client, base: String, email: String) -> anyhow::Result<()> {
    let body = serde_json::json!({"email": email, "password": PASSWORD, "display_name": "Bench"});
    let status = post_when_taken(&client, &format!("{base}/v1/users"), &body).await?;
    anyhow::ensure!(status == 201, "registration answered {status}");
    Ok(())
}

async fn login(client: reqwest::Client, base: String, email: String) -> anyhow::Result<()> {
    let body = serde_json::json!({"email": email, "password": PASSWORD});
    let status = post_when_taken(&client, &format!("{base}/v1/auth/login"), &body).await?;
    anyhow::ensure!(status == 200, "login answered {status}");
    Ok(())
}

/// POSTs `body` to `url` as a well-behaved client does: a 503 (password
/// hashing is busy: `overloaded`) is sent again after its `Retry-After`,
/// for up to a minute. Answers the status of the response taken.
async fn post_when_taken(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> anyhow::Result<u16> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = client.post(url).json(body).send().await?;
        let status = r.status().as_u16();
        if status != 503 || Instant::now() > deadline {
            return Ok(status);
        }
        let wait = r
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(1);
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
}

/// Bare hashes per second: `concurrency` threads hashing for `span`.
async fn hash_rate(
    params: scrypt::Params,
    concurrency: usize,
    span: Duration,
) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let done = done.clone();
        workers.push(tokio::task::spawn_blocking(move || {
            while start.elapsed() < span {
                gatehouse::identity::password::hash_blocking(&params, PASSWORD)?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for w in workers {
        w.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// A key source holding one key, so no network is involved.
struct OneKey {
    kid: String,
    key: pasetors::keys::AsymmetricPublicKey<V4>,
}

#[async_trait::async_trait]
impl KeySource for OneKey {
    async fn fetch(&self) -> Result<KeySet, gatehouse::middleware::bearer::FetchError> {
        Ok(KeySet {
            keys: HashMap::from([(self.kid.clone(), self.key.clone())]),
            ttl: Duration::from_secs(3600),
        })
    }
}

/// Token checks per second without and with the verified-token cache.
async fn token_check_rates(tokens: &TokenConfig, span: Duration) -> anyhow::Result<(f64, f64)> {
    let pair = AsymmetricKeyPair::<V4>::generate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let kid = token::key_id_of(&pair.public);
    let now = chrono::Utc::now();
    let token = token::sign(
        &pair.secret,
        &pasetors::paserk::Id::from(&pair.public),
        token::UserId::now_v7(),
        token::SessionId::now_v7(),
        &tokens.issuer_audience(),
        now,
        now + chrono::Duration::hours(1),
    )?;
    let check = TokenCheck::new(
        Arc::new(OneKey {
            kid,
            key: pair.public,
        }),
        tokens.issuer_audience(),
        Arc::new(gatehouse::kernel::clock::SystemClock),
        Duration::from_secs(900),
    );
    let measure = async |cached: bool| -> anyhow::Result<f64> {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < span {
            let verdict = if cached {
                check.check(&token).await
            } else {
                check.verify_uncached(&token).await
            };
            verdict.map_err(|e| anyhow::anyhow!("{e}"))?;
            n += 1;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    };
    let uncached = measure(false).await?;
    let cached = measure(true).await?;
    Ok((uncached, cached))
}

/// `GET /v1/users/me` per second with the token check on (the platform) and
/// off (a child process serving the same routes behind a fixed principal).
async fn me_rates(
    cli: &Cli,
    client: &reqwest::Client,
    email: &str,
    span: Duration,
) -> anyhow::Result<(f64, f64)> {
    let pair: serde_json::Value = client
        .post(format!("{}/v1/auth/login", cli.auth_url))
        .json(&serde_json::json!({"email": email, "password": PASSWORD}))
        .send()
        .await?
        .json()
        .await?;
    let token = pair["access_token"].as_str().unwrap_or_default().to_owned();
    let me: serde_json::Value = client
        .get(format!("{}/v1/users/me", cli.identity_url))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    let user_id = me["id"].as_str().unwrap_or_default().to_owned();
    let get_me = |base: String| {
        let (c, t) = (client.clone(), token.clone());
        move |_, _| {
            let (c, t, url) = (c.clone(), t.clone(), format!("{base}/v1/users/me"));
            async move {
                let r = c.get(url).bearer_auth(t).send().await?;
                anyhow::ensure!(
                    r.status().as_u16() == 200,
                    "/v1/users/me answered {}",
                    r.status()
                );
                r.bytes().await?;
                Ok(())
            }
        }
    };
    let on = rate(cli.connections, span, get_me(cli.identity_url.clone())).await?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "--serve-unchecked",
            &port.to_string(),
            "--user-id",
            &user_id,
        ])
        .kill_on_drop(true)
        .spawn()?;
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the unchecked server did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let off = rate(cli.connections, span, get_me(base)).await;
    child.kill().await?;
    Ok((on, off?))
}

/// The child process of `me_rates`: identity's signed-in routes under the
/// usual server stack, with a fixed principal instead of the token check.
async fn serve_unchecked(
    config: gatehouse::config::Config,
    port: u16,
    user_id: uuid::Uuid,
) -> anyhow::Result<()> {
    use gatehouse::kernel::health::Probes;
    use gatehouse::kernel::http::server::{self, ServiceApp};
    let ctx = gatehouse::platform::context(&config)?;
    let (identity, db, _relay) = gatehouse::identity::open(
        &ctx,
        config.identity.clone(),
        Arc::new(gatehouse::identity::mail::notifier::LogNotifier),
    )
    .await?;
    let principal = gatehouse::middleware::token::Principal {
        user_id: user_id.into(),
        session_id: uuid::Uuid::nil().into(),
        expires_at: chrono::Utc::now() + chrono::Duration::days(1),
    };
    let http = gatehouse::identity::http::signed_in_routes()
        .route_layer(axum::middleware::from_fn(
            move |mut req: axum::extract::Request, next: axum::middleware::Next| {
                req.extensions_mut().insert(principal.clone());
                next.run(req)
            },
        ))
        .with_state(identity);
    let app = ServiceApp {
        name: "identity",
        http,
        grpc: tonic::service::Routes::default(),
        probes: Probes(vec![Arc::new(db)]),
        io_threads: None,
    };
    let router = server::router(app, &ctx)?;
    let listener = server::bind(std::net::SocketAddr::from(([127, 0, 0, 1], port))).await?;
    axum::serve(listener, router).await?;
    Ok(())
}
