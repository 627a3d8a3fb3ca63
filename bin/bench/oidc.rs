//! The OpenID Connect benchmark, through the gateway of a running platform
//! (`--oidc`):
//!
//! - `code_exchanges_per_sec`: authorization codes exchanged for tokens
//!   (PASETO access token, RS256 ID token, session and audit rows),
//!   against the bare RS256 signing rate of this process with one thread a
//!   core: what the machine can sign at most. The codes are made first, by
//!   a browser session that signed in once. The grants are sent by
//!   `connections` workers, enough to keep every core of the platform busy:
//!   with one a core, each grant's waits (the calls, the database's
//!   threads) would leave the cores idle and the figure would measure
//!   latency rather than what the platform can take.
//! - `refreshes_per_sec`: refresh-token rotations, each with a new ID
//!   token, against the same signing rate.
//! - `client_credentials_per_sec`: client credentials grants (a PASETO
//!   access token in a session of the client's own, no ID token), against
//!   the same signing rate.
//! - `discovery_per_sec` and `jwks_per_sec`: the two documents relying
//!   parties fetch, against `/healthz` through the same gateway, once the
//!   platform has caught up with the grants' events, in alternating rounds
//!   (medians), so that neither is measured while the other's aftermath
//!   still runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use gatehouse::auth::oidc::clients::ClientSpec;
use gatehouse::auth::oidc::jws::{Alg, SigningKey, generate};
use serde_json::Value;
use sha2::Digest as _;
use tokio::sync::Mutex;

use super::{PASSWORD, rate, register, report};

const REDIRECT: &str = "http://127.0.0.1:9/callback";

/// What the scenarios share: the gateway, a signed-in browser's cookies
/// and a first-party client.
struct Setup {
    http: reqwest::Client,
    gateway: String,
    cookies: String,
    client_id: String,
    secret: String,
}

pub async fn run(
    config: &gatehouse::config::Config,
    identity_url: &str,
    concurrency: usize,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<()> {
    let span = Duration::from_secs(seconds);
    let setup = Arc::new(sign_in(config, identity_url).await?);
    let signs = sign_rate(concurrency, span).await?;
    let about = format!(
        "RS256 signed on {concurrency} threads; grants from {connections} workers, {seconds}s each"
    );
    let concurrency = connections;

    // Codes for about as long as a run, at most 40 s (they live 60 s).
    let made = Instant::now();
    let codes = Arc::new(Mutex::new(Vec::new()));
    let s = setup.clone();
    let c = codes.clone();
    rate(
        concurrency,
        span.min(Duration::from_secs(40)),
        move |_, _| {
            let (s, c) = (s.clone(), c.clone());
            async move {
                let code = code(&s, "openid email").await?;
                c.lock().await.push(code);
                Ok(())
            }
        },
    )
    .await?;
    let codes = Arc::new(std::mem::take(&mut *codes.lock().await));
    anyhow::ensure!(
        made.elapsed() < Duration::from_secs(50),
        "making the codes took too long"
    );
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (s, codes, next) = (setup.clone(), codes.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((code, verifier)) = codes.get(i) else {
                    return Ok::<_, anyhow::Error>(());
                };
                exchange(&s, code, verifier).await?;
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    let exchanges = codes.len() as f64 / started.elapsed().as_secs_f64();
    report("code_exchanges_per_sec", exchanges, signs, &about, 0.5);

    // One refresh chain per worker.
    let mut chains = Vec::new();
    for _ in 0..concurrency {
        let (code, verifier) = code(&setup, "openid offline_access").await?;
        let tokens = exchange(&setup, &code, &verifier).await?;
        chains.push(Arc::new(Mutex::new(
            tokens["refresh_token"]
                .as_str()
                .context("no refresh token")?
                .to_owned(),
        )));
    }
    let chains = Arc::new(chains);
    let s = setup.clone();
    let refreshes = rate(concurrency, span, move |worker, _| {
        let (s, chain) = (s.clone(), chains[worker].clone());
        async move {
            let mut token = chain.lock().await;
            let answer = token_post(
                &s,
                &[("grant_type", "refresh_token"), ("refresh_token", &token)],
            )
            .await?;
            *token = answer["refresh_token"]
                .as_str()
                .context("no refresh token")?
                .to_owned();
            anyhow::ensure!(answer["id_token"].is_string(), "no ID token");
            Ok(())
        }
    })
    .await?;
    report("refreshes_per_sec", refreshes, signs, &about, 0.5);

    let s = setup.clone();
    let grants = rate(concurrency, span, move |_, _| {
        let s = s.clone();
        async move {
            let answer = token_post(&s, &[("grant_type", "client_credentials")]).await?;
            anyhow::ensure!(answer["access_token"].is_string(), "no access token");
            Ok(())
        }
    })
    .await?;
    report("client_credentials_per_sec", grants, signs, &about, 0.5);

    settle().await?;
    let against = format!(
        "through the gateway, {connections} connections, medians of {ROUNDS} rounds of {seconds}s/{ROUNDS}"
    );
    let round = span / ROUNDS as u32;
    let (mut health, mut discovery, mut jwks) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        health.push(get_rate(&setup, "/healthz", connections, round).await?);
        discovery.push(get_rate(&setup, DISCOVERY, connections, round).await?);
        jwks.push(get_rate(&setup, "/oauth2/jwks", connections, round).await?);
    }
    let health = median(health);
    report(
        "discovery_per_sec",
        median(discovery),
        health,
        &against,
        0.9,
    );
    report("jwks_per_sec", median(jwks), health, &against, 0.9);
    Ok(())
}

/// Rounds of the document measurements.
const ROUNDS: usize = 3;
const DISCOVERY: &str = "/.well-known/openid-configuration";

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

/// Waits, up to a minute, until the machine is quiet (its cores less than
/// a tenth busy over a quarter second): until the platform has handled the
/// events of the grants before, audit's records of them last.
async fn settle() -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut before = cpu_times()?;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = cpu_times()?;
        let (busy, total) = (now.0 - before.0, now.1 - before.1);
        if total > 0 && busy * 10 < total {
            return Ok(());
        }
        before = now;
    }
    anyhow::bail!("the machine stayed busy for a minute after the grants")
}

/// The machine's busy and total CPU time so far, in ticks (`/proc/stat`).
fn cpu_times() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .context("an empty /proc/stat")?
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    // user nice system idle iowait ...: idle and iowait are not busy.
    let total: u64 = ticks.iter().sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// Registers a user and a first-party client, and signs a browser in on
/// the hosted pages.
async fn sign_in(config: &gatehouse::config::Config, identity_url: &str) -> anyhow::Result<Setup> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let gateway = config.server.public_url.trim_end_matches('/').to_owned();
    let email = format!("oidc-{}@example.org", uuid::Uuid::now_v7().simple());
    register(http.clone(), identity_url.to_owned(), email.clone()).await?;
    let ctx = gatehouse::platform::context(config)?;
    let issued = gatehouse::auth::register_client(
        &ctx,
        &config.auth,
        ClientSpec {
            name: "Bench".into(),
            redirect_uris: vec![REDIRECT.into()],
            first_party: true,
            ..Default::default()
        },
    )
    .await?;
    let mut setup = Setup {
        http,
        gateway,
        cookies: String::new(),
        client_id: issued.client.id,
        secret: issued
            .secret
            .context("a confidential client has a secret")?,
    };
    let (challenge, _) = pkce();
    let page = setup
        .http
        .get(authorize_url(&setup, "openid", &challenge))
        .send()
        .await?;
    let mut cookies = set_cookies(&page);
    let body = page.text().await?;
    let field = |name: &str| -> anyhow::Result<String> {
        let marker = format!("name=\"{name}\" value=\"");
        let start = body.find(&marker).context("no sign-in form")? + marker.len();
        Ok(body[start..start + body[start..].find('"').context("a field")?].to_owned())
    };
    let signed = setup
        .http
        .post(format!("{}/oauth2/signin", setup.gateway))
        .header("cookie", cookies.join("; "))
        .form(&[
            ("request", field("request")?.as_str()),
            ("csrf", field("csrf")?.as_str()),
            ("email", &email),
            ("password", PASSWORD),
        ])
        .send()
        .await?;
    anyhow::ensure!(
        signed.status().is_redirection(),
        "sign-in answered {}",
        signed.status()
    );
    cookies.extend(set_cookies(&signed));
    setup.cookies = cookies.join("; ");
    Ok(setup)
}

/// The `name=value` of each cookie a response sets.
fn set_cookies(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_owned))
        .collect()
}

/// A PKCE challenge and its verifier.
fn pkce() -> (String, String) {
    let verifier = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    (challenge, verifier)
}

fn authorize_url(s: &Setup, scope: &str, challenge: &str) -> String {
    format!(
        "{}/oauth2/authorize?{}",
        s.gateway,
        serde_urlencoded::to_string([
            ("client_id", s.client_id.as_str()),
            ("redirect_uri", REDIRECT),
            ("response_type", "code"),
            ("scope", scope),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ])
        .unwrap_or_default()
    )
}

/// A code for the signed-in browser, and its PKCE verifier.
async fn code(s: &Setup, scope: &str) -> anyhow::Result<(String, String)> {
    let (challenge, verifier) = pkce();
    let r = s
        .http
        .get(authorize_url(s, scope, &challenge))
        .header("cookie", &s.cookies)
        .send()
        .await?;
    let location = r
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .with_context(|| format!("authorize answered {} without a redirect", r.status()))?;
    let query: Vec<(String, String)> =
        serde_urlencoded::from_str(location.split_once('?').map_or("", |(_, q)| q))?;
    let code = query
        .into_iter()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v)
        .with_context(|| format!("no code in {location}"))?;
    Ok((code, verifier))
}

async fn exchange(s: &Setup, code: &str, verifier: &str) -> anyhow::Result<Value> {
    let tokens = token_post(
        s,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ],
    )
    .await?;
    anyhow::ensure!(tokens["id_token"].is_string(), "no ID token: {tokens}");
    Ok(tokens)
}

async fn token_post(s: &Setup, form: &[(&str, &str)]) -> anyhow::Result<Value> {
    let r = s
        .http
        .post(format!("{}/oauth2/token", s.gateway))
        .basic_auth(&s.client_id, Some(&s.secret))
        .form(form)
        .send()
        .await?;
    let status = r.status();
    let body: Value = r.json().await?;
    anyhow::ensure!(
        status.is_success(),
        "the token endpoint answered {status}: {body}"
    );
    Ok(body)
}

/// RS256 signatures per second of an ID token's size, on `concurrency`
/// threads.
async fn sign_rate(concurrency: usize, span: Duration) -> anyhow::Result<f64> {
    let key = Arc::new(SigningKey::from_pkcs8(Alg::Rs256, &generate(Alg::Rs256)?)?);
    let claims = serde_json::json!({
        "iss": "http://127.0.0.1:8080", "sub": uuid::Uuid::now_v7().to_string(),
        "aud": "bench-client-id-0000000", "azp": "bench-client-id-0000000",
        "iat": 1, "exp": 2, "auth_time": 1, "sid": uuid::Uuid::now_v7().to_string(),
        "amr": ["pwd"], "at_hash": "aaaaaaaaaaaaaaaaaaaaaa", "email": "someone@example.org",
        "email_verified": false,
    });
    let start = Instant::now();
    let threads: Vec<_> = (0..concurrency)
        .map(|_| {
            let (key, claims) = (key.clone(), claims.clone());
            tokio::task::spawn_blocking(move || {
                let mut n = 0u64;
                while start.elapsed() < span {
                    key.sign(&claims)?;
                    n += 1;
                }
                Ok::<_, anyhow::Error>(n)
            })
        })
        .collect();
    let mut total = 0;
    for t in threads {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Successful GETs of `path` per second through the gateway.
async fn get_rate(
    s: &Setup,
    path: &str,
    connections: usize,
    span: Duration,
) -> anyhow::Result<f64> {
    let url = format!("{}{path}", s.gateway);
    let http = s.http.clone();
    rate(connections, span, move |_, _| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = http.get(&url).send().await?;
            anyhow::ensure!(r.status().is_success(), "{url} answered {}", r.status());
            r.bytes().await?;
            Ok(())
        }
    })
    .await
}
