//! `gatehouse-bench`: the load tool behind `just bench`. It drives a running
//! platform and prints, per scenario, the figure, its baseline and the ratio
//! on one line.
//!
//! Scenario `registrations`: registrations per second through HTTP against
//! the bare scrypt hash rate with the same parameters and concurrency on the
//! same machine. Hashing dominates a registration, so the ratio shows what
//! everything else (HTTP, JSON, database, outbox) costs.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
#[command(name = "gatehouse-bench")]
struct Cli {
    /// Base URL of the identity service.
    #[arg(long, default_value = "http://127.0.0.1:4102")]
    identity_url: String,
    /// The config the platform runs with (for its scrypt parameters).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Requests (and hashes) in flight at once; default one per CPU core.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = gatehouse::config::Config::load(cli.config.as_deref())?;
    let params = gatehouse::identity::password::params(&config.identity.scrypt)
        .map_err(anyhow::Error::msg)?;
    let concurrency = cli
        .concurrency
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let span = Duration::from_secs(cli.seconds);

    let hashes = hash_rate(params, concurrency, span).await?;
    let registrations = registration_rate(&cli.identity_url, concurrency, span).await?;
    report(
        "registrations_per_sec",
        registrations,
        hashes,
        &format!(
            "scrypt log_n={} r={} p={}, concurrency {concurrency}, {}s each",
            params.log_n(),
            params.r(),
            params.p(),
            cli.seconds
        ),
        0.9,
    );
    Ok(())
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
                gatehouse::identity::password::hash_blocking(&params, "benchmark password 123")
                    .map_err(anyhow::Error::msg)?;
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

/// Successful registrations per second through HTTP.
async fn registration_rate(base: &str, concurrency: usize, span: Duration) -> anyhow::Result<f64> {
    let client = reqwest::Client::new();
    let ready = client.get(format!("{base}/readyz")).send().await?;
    anyhow::ensure!(
        ready.status().is_success(),
        "identity at {base} is not ready"
    );
    let run = uuid::Uuid::now_v7().simple().to_string();
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let (client, done, run) = (client.clone(), done.clone(), run.clone());
        let url = format!("{base}/v1/users");
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while start.elapsed() < span {
                n += 1;
                let body = serde_json::json!({
                    "email": format!("bench-{run}-{worker}-{n}@example.org"),
                    "password": "benchmark password 123",
                    "display_name": "Bench",
                });
                let r = client.post(&url).json(&body).send().await?;
                anyhow::ensure!(
                    r.status().as_u16() == 201,
                    "registration answered {}",
                    r.status()
                );
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    for w in workers {
        w.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}
