//! The footprint benchmark: how much memory the binaries keep while idle,
//! and how soon the all-in-one responds after it starts.
//!
//! - Resident memory (VmRSS) of the all-in-one and of each single-service
//!   binary (identity, auth, authz and the gateway as four processes), each on a
//!   fresh data directory with the default scrypt cost: a few seconds after
//!   start, and again a few seconds after a burst of registrations and
//!   logins through the gateway has ended.
//! - Start to first response: the all-in-one started again on the data
//!   directory of the first run, timed from the spawn until auth and
//!   identity both answer through the gateway.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// Idle resident memory targets, in MiB.
const SINGLE_TARGET_MIB: f64 = 30.0;
const ALL_IN_ONE_TARGET_MIB: f64 = 60.0;
/// Start to first response target, in milliseconds.
const START_TARGET_MS: f64 = 300.0;
/// How long a process is left alone before its memory is read.
const SETTLE: Duration = Duration::from_secs(3);
/// Accounts registered, and logins per account, in the burst.
const ACCOUNTS: usize = 4;
const LOGINS_EACH: usize = 4;

/// A process under measurement.
pub(super) struct Running {
    name: &'static str,
    child: Child,
}

impl Running {
    /// Its resident memory now (VmRSS), in MiB.
    fn rss_mib(&self) -> anyhow::Result<f64> {
        self.status_mib("VmRSS:")
    }

    /// The most resident memory it has held (VmHWM), in MiB.
    pub(super) fn peak_rss_mib(&self) -> anyhow::Result<f64> {
        self.status_mib("VmHWM:")
    }

    fn status_mib(&self, field: &str) -> anyhow::Result<f64> {
        let pid = self
            .child
            .id()
            .ok_or_else(|| anyhow::anyhow!("{} has exited", self.name))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no {field} for {}", self.name))?;
        Ok(kib / 1024.0)
    }

    /// Asks the process to stop (SIGTERM) and waits for it.
    pub(super) async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await?;
        }
        tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await??;
        Ok(())
    }
}

/// Free loopback ports, one per name.
pub(super) fn ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ports = [0u16; N];
    for (port, l) in ports.iter_mut().zip(&listeners) {
        *port = l.local_addr()?.port();
    }
    Ok(ports)
}

pub(super) struct Setup {
    pub(super) bin_dir: PathBuf,
    pub(super) data: PathBuf,
}

impl Setup {
    pub(super) fn spawn(
        &self,
        name: &'static str,
        binary: &str,
        env: &[(&str, String)],
    ) -> anyhow::Result<Running> {
        let log = std::fs::File::create(self.data.join(format!("{binary}.log")))?;
        let mut cmd = Command::new(self.bin_dir.join(binary));
        cmd.env("GATEHOUSE_DATA_DIR", &self.data)
            .env("GATEHOUSE_LOG__FORMAT", "json")
            .env("GATEHOUSE_LOG__LEVEL", "warn")
            .env_remove("RUST_LOG")
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for (key, value) in env {
            cmd.env(key, value);
        }
        Ok(Running {
            name,
            child: cmd.spawn()?,
        })
    }
}

/// Whether auth and identity both answer through the gateway at `base`:
/// auth's public keys, and identity's refusal of an empty registration.
async fn responding(client: &reqwest::Client, base: &str) -> bool {
    let keys = client.get(format!("{base}/v1/auth/keys")).send().await;
    if !keys.is_ok_and(|r| r.status().is_success()) {
        return false;
    }
    let refusal = client
        .post(format!("{base}/v1/users"))
        .json(&serde_json::json!({}))
        .send()
        .await;
    refusal.is_ok_and(|r| r.status().is_client_error())
}

/// Waits until [`answering`], polling every few milliseconds.
pub(super) async fn wait_responding(
    client: &reqwest::Client,
    base: &str,
    running: &mut [&mut Running],
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while !responding(client, base).await {
        for r in running.iter_mut() {
            if let Some(status) = r.child.try_wait()? {
                anyhow::bail!("{} exited with {status} (see its log)", r.name);
            }
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(60),
            "no answer through the gateway at {base}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(start.elapsed())
}

/// Registers `ACCOUNTS` accounts and signs each in `LOGINS_EACH` times,
/// all at once, through the gateway at `base`.
async fn burst(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let run = uuid::Uuid::now_v7().simple().to_string();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..ACCOUNTS {
        let (client, base, email) = (client.clone(), base.to_owned(), super::email(&run, n, 0));
        tasks.spawn(async move {
            super::register(client.clone(), base.clone(), email.clone()).await?;
            let mut logins = tokio::task::JoinSet::new();
            for _ in 0..LOGINS_EACH {
                logins.spawn(super::login(client.clone(), base.clone(), email.clone()));
            }
            while let Some(done) = logins.join_next().await {
                done??;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

fn report(name: &str, figure: f64, unit: &str, target: f64, setup: &str) {
    let verdict = if figure <= target {
        "ok"
    } else {
        "ABOVE TARGET"
    };
    println!("{name}: figure {figure:.1} {unit}  (target <= {target} {unit}, {verdict}; {setup})");
}

/// Reads each process's memory after `SETTLE`, runs the burst, and reads it
/// again `SETTLE` after the burst has ended.
async fn measure(
    client: &reqwest::Client,
    base: &str,
    processes: &[&Running],
    target: f64,
) -> anyhow::Result<()> {
    tokio::time::sleep(SETTLE).await;
    for p in processes {
        report(
            &format!("rss_after_start {}", p.name),
            p.rss_mib()?,
            "MiB",
            target,
            &format!("{}s after the first response", SETTLE.as_secs()),
        );
    }
    burst(client, base).await?;
    tokio::time::sleep(SETTLE).await;
    for p in processes {
        report(
            &format!("rss_after_logins {}", p.name),
            p.rss_mib()?,
            "MiB",
            target,
            &format!(
                "{}s after {ACCOUNTS} registrations and {} logins at once",
                SETTLE.as_secs(),
                ACCOUNTS * LOGINS_EACH
            ),
        );
    }
    Ok(())
}

/// Runs the footprint benchmark with the release binaries in `bin_dir`.
pub async fn run(bin_dir: &Path) -> anyhow::Result<()> {
    let data = std::env::temp_dir().join(format!(
        "gatehouse-footprint-{}",
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&data)?;
    let setup = Setup {
        bin_dir: bin_dir.to_owned(),
        data: data.clone(),
    };
    let outcome = all_in_one(&setup).await;
    let outcome = match outcome {
        Ok(()) => {
            let apart = Setup {
                bin_dir: bin_dir.to_owned(),
                data: data.join("apart"),
            };
            std::fs::create_dir_all(&apart.data)?;
            single_services(&apart).await
        }
        Err(e) => Err(e),
    };
    if outcome.is_ok() {
        std::fs::remove_dir_all(&data)?;
    } else {
        eprintln!("footprint: the logs are in {}", data.display());
    }
    outcome
}

/// The all-in-one: memory on a fresh data directory, then the start on
/// that same directory.
async fn all_in_one(setup: &Setup) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()?;
    let [gateway, auth, authz, identity, ops] = ports()?;
    let env = [
        ("GATEHOUSE_GATEWAY__LISTEN", format!("127.0.0.1:{gateway}")),
        ("GATEHOUSE_AUTH__LISTEN", format!("127.0.0.1:{auth}")),
        ("GATEHOUSE_AUTHZ__LISTEN", format!("127.0.0.1:{authz}")),
        (
            "GATEHOUSE_IDENTITY__LISTEN",
            format!("127.0.0.1:{identity}"),
        ),
        ("GATEHOUSE_SERVER__OPS_LISTEN", format!("127.0.0.1:{ops}")),
    ];
    let base = format!("http://127.0.0.1:{gateway}");
    let mut first = setup.spawn("gatehouse", "gatehouse", &env)?;
    wait_responding(&client, &base, &mut [&mut first]).await?;
    measure(&client, &base, &[&first], ALL_IN_ONE_TARGET_MIB).await?;
    first.stop().await?;

    let mut again = setup.spawn("gatehouse", "gatehouse", &env)?;
    let took = wait_responding(&client, &base, &mut [&mut again]).await?;
    report(
        "start_to_first_response gatehouse",
        took.as_secs_f64() * 1000.0,
        "ms",
        START_TARGET_MS,
        "existing data directory, auth and identity through the gateway",
    );
    again.stop().await
}

/// Identity, auth, authz and the gateway as four processes that find each
/// other through the static registry.
async fn single_services(setup: &Setup) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let [
        gateway,
        auth,
        authz,
        identity,
        ops_gateway,
        ops_auth,
        ops_authz,
        ops_identity,
    ] = ports()?;
    // Separate processes sign and check their calls with keys of their own.
    let credentials = setup.data.join("credentials");
    let issued = Command::new(setup.bin_dir.join("gatehouse"))
        .args(["credentials", "issue", "--out"])
        .arg(&credentials)
        .stdout(Stdio::null())
        .status()
        .await?;
    anyhow::ensure!(issued.success(), "gatehouse credentials issue failed");
    let instances = |port: u16| format!(r#"["http://127.0.0.1:{port}"]"#);
    let common = |ops: u16| {
        vec![
            (
                "GATEHOUSE_RPC__CREDENTIALS_DIR",
                credentials.display().to_string(),
            ),
            ("GATEHOUSE_REGISTRY__BACKEND", "static".to_owned()),
            ("GATEHOUSE_REGISTRY__INSTANCES__AUTH", instances(auth)),
            (
                "GATEHOUSE_REGISTRY__INSTANCES__IDENTITY",
                instances(identity),
            ),
            ("GATEHOUSE_SERVER__OPS_LISTEN", format!("127.0.0.1:{ops}")),
        ]
    };
    let with = |mut env: Vec<(&'static str, String)>, key: &'static str, port: u16| {
        env.push((key, format!("127.0.0.1:{port}")));
        env
    };
    let mut id = setup.spawn(
        "gatehouse-identity",
        "gatehouse-identity",
        &with(common(ops_identity), "GATEHOUSE_IDENTITY__LISTEN", identity),
    )?;
    let mut au = setup.spawn(
        "gatehouse-auth",
        "gatehouse-auth",
        &with(common(ops_auth), "GATEHOUSE_AUTH__LISTEN", auth),
    )?;
    let mut gw = setup.spawn(
        "gatehouse-gateway",
        "gatehouse-gateway",
        &with(common(ops_gateway), "GATEHOUSE_GATEWAY__LISTEN", gateway),
    )?;
    let mut az = setup.spawn(
        "gatehouse-authz",
        "gatehouse-authz",
        &with(common(ops_authz), "GATEHOUSE_AUTHZ__LISTEN", authz),
    )?;
    let base = format!("http://127.0.0.1:{gateway}");
    wait_responding(&client, &base, &mut [&mut id, &mut au, &mut gw, &mut az]).await?;
    measure(&client, &base, &[&id, &au, &gw, &az], SINGLE_TARGET_MIB).await?;
    for p in [gw, au, az, id] {
        p.stop().await?;
    }
    Ok(())
}
