//! A gatehouse service binary run as its own process for a test: a free
//! loopback port, a data directory, cheap password hashing, JSON logs read
//! line by line. Shared by the integration suites and the acceptance runner.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A loopback port free now, for a process about to be started. Taken
/// below the kernel's ephemeral range (32768 and up), where the ports the
/// system hands out for `:0` (operator listeners, test servers) never land,
/// and never the same twice in one test run: a port handed out and not yet
/// bound cannot be taken by another test meanwhile.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Runs that overlap (another checkout's) start at other places.
    let start = std::process::id() % COUNT;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < COUNT, "no free port left below the ephemeral range");
        let port = u16::try_from(FIRST + (start + n) % COUNT).unwrap();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The environment that wires separate processes together:
/// `GATEHOUSE_REGISTRY__BACKEND=static` and, for each `(service, ports)`,
/// its instances on loopback.
pub fn static_registry(services: &[(&str, &[u16])]) -> Vec<(&'static str, String)> {
    let mut env = vec![("GATEHOUSE_REGISTRY__BACKEND", "static".to_owned())];
    for (service, ports) in services {
        let key = match *service {
            "auth" => "GATEHOUSE_REGISTRY__INSTANCES__AUTH",
            "identity" => "GATEHOUSE_REGISTRY__INSTANCES__IDENTITY",
            "authz" => "GATEHOUSE_REGISTRY__INSTANCES__AUTHZ",
            "audit" => "GATEHOUSE_REGISTRY__INSTANCES__AUDIT",
            other => panic!("no registry variable for {other}"),
        };
        let urls: Vec<String> = ports
            .iter()
            .map(|p| format!("\"http://127.0.0.1:{p}\""))
            .collect();
        env.push((key, format!("[{}]", urls.join(","))));
    }
    env
}

/// Makes `email` an admin with `gatehouse admin create` (the password
/// given on standard input) on the data in `data` and the databases `env`
/// names; answers what the command printed.
pub fn make_admin(data: &Path, env: &[(&str, String)], email: &str, password: &str) -> String {
    use std::io::Write as _;
    let mut cli = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["admin", "create", "--email", email])
        .env("GATEHOUSE_DATA_DIR", data)
        .env("GATEHOUSE_IDENTITY__SCRYPT__LOG_N", "4")
        .env(
            "GATEHOUSE_IDENTITY__SCRYPT__ALLOW_WEAK_HASHING_FOR_TESTS",
            "true",
        )
        .envs(env.iter().cloned())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(cli.stdin.take().unwrap(), "{password}").unwrap();
    let out = cli.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}: {said}", out.status);
    said
}

/// The keys every process a test starts signs and checks its service
/// calls with: made once per test run by `gatehouse credentials issue`.
pub fn credentials() -> &'static Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("credentials-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["credentials", "issue", "--out"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

/// Signs each call as one service of the test's deployment, for another.
#[derive(Clone)]
pub struct SignedAs {
    caller: std::sync::Arc<gatehouse::kernel::credentials::Caller>,
    callee: &'static str,
}

impl tonic::service::Interceptor for SignedAs {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let token = self
            .caller
            .token(self.callee)
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        request
            .metadata_mut()
            .insert(gatehouse::kernel::credentials::HEADER, token);
        Ok(request)
    }
}

/// A channel to `callee` at `base` whose calls carry `caller`'s credential,
/// from [`credentials`].
pub async fn signed_channel(
    base: &str,
    caller: &str,
    callee: &'static str,
) -> tonic::service::interceptor::InterceptedService<tonic::transport::Channel, SignedAs> {
    let clock = std::sync::Arc::new(gatehouse::kernel::clock::SystemClock);
    let ring = gatehouse::kernel::credentials::Keyring::load(credentials(), clock).unwrap();
    let channel = tonic::transport::Channel::from_shared(base.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic::service::interceptor::InterceptedService::new(
        channel,
        SignedAs {
            caller: ring.caller(caller).unwrap(),
            callee,
        },
    )
}

pub struct ServiceProcess {
    pub child: Child,
    pub base: String,
    /// Every line it logged, appended as it is written.
    pub log: Log,
    /// How many lines of the log `wait_for` has looked at.
    read: usize,
}

/// A process's log lines, shared with the thread that reads them.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// The latest line so far that `found` accepts.
    pub fn latest(&self, found: impl Fn(&str) -> bool) -> Option<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|l| found(l))
            .cloned()
    }

    fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }

    /// Line `at`, when there is one yet.
    fn line(&self, at: usize) -> Option<String> {
        self.0.lock().unwrap().get(at).cloned()
    }
}

impl ServiceProcess {
    /// Starts `binary` (a path) with `service` listening on `port`, keeping
    /// data in `data`; `env` adds or overrides variables.
    pub fn spawn(
        binary: &str,
        service: &str,
        port: u16,
        data: &Path,
        env: &[(&str, String)],
    ) -> ServiceProcess {
        let mut cmd = Command::new(binary);
        cmd.env("GATEHOUSE_DATA_DIR", data)
            // A port of the system's choosing, read from the log: see `ops_base`.
            .env("GATEHOUSE_SERVER__OPS_LISTEN", "127.0.0.1:0")
            .env(
                format!("GATEHOUSE_{}__LISTEN", service.to_uppercase()),
                format!("127.0.0.1:{port}"),
            )
            .env("GATEHOUSE_IDENTITY__SCRYPT__LOG_N", "4")
            .env(
                "GATEHOUSE_IDENTITY__SCRYPT__ALLOW_WEAK_HASHING_FOR_TESTS",
                "true",
            )
            .env("GATEHOUSE_LOG__FORMAT", "json")
            .env("GATEHOUSE_LOG__LEVEL", "info")
            .env("GATEHOUSE_RPC__CREDENTIALS_DIR", credentials())
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            cmd.env(key, value);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let log = Log::default();
        let writer = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                writer.push(line);
            }
        });
        ServiceProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            read: 0,
        }
    }

    /// Waits (up to 60 s, for busy machines) for a log line that `found`
    /// accepts, among those written since the last wait, and returns it.
    pub fn wait_for(&mut self, found: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            while let Some(line) = self.log.line(self.read) {
                self.read += 1;
                if found(&line) {
                    return line;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "the service never logged the expected line; saw:\n{}",
            self.log.lines().join("\n")
        );
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_line(&mut self, needle: &str) -> String {
        self.wait_for(|line| line.contains(needle))
    }

    /// Where its operator endpoints (metrics) are served, as it logged.
    pub fn ops_base(&mut self) -> String {
        let logged = |l: &str| l.contains("operator endpoints listening");
        let line = match self.log.latest(logged) {
            Some(line) => line,
            None => self.wait_for(logged),
        };
        let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
        let addr = entry["fields"]["addr"]
            .as_str()
            .or_else(|| entry["addr"].as_str())
            .unwrap_or_else(|| panic!("no address in {line}"));
        format!("http://{addr}")
    }

    /// Waits until the service logged that it started.
    pub fn started(&mut self) {
        self.wait_line("service started");
    }

    /// Sends SIGTERM and waits (up to 20 s) for the exit. Async, so the
    /// test's own clients can answer the server's goodbye meanwhile.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "did not stop after SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The all-in-one (`binary`: `gatehouse`, or something that runs it) with
/// the gateway and each service on a free loopback port, keeping its data
/// in `data`, `env` added; answers once the gateway says it is ready.
pub async fn spawn_platform(
    binary: &str,
    data: &Path,
    env: &[(&'static str, String)],
) -> ServiceProcess {
    let mut all: Vec<(&str, String)> = [
        "GATEHOUSE_AUTH__LISTEN",
        "GATEHOUSE_IDENTITY__LISTEN",
        "GATEHOUSE_AUTHZ__LISTEN",
        "GATEHOUSE_AUDIT__LISTEN",
    ]
    .into_iter()
    .map(|key| (key, format!("127.0.0.1:{}", free_port())))
    .collect();
    all.extend(env.iter().cloned());
    let mut process = ServiceProcess::spawn(binary, "gateway", free_port(), data, &all);
    let ready = format!("{}/readyz", process.base);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !reqwest::get(&ready)
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "never ready");
        assert!(process.child.try_wait().unwrap().is_none(), "it stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    process
}

/// How many requests the process whose operator endpoints are at `ops`
/// answered on the routes `counted` takes (its
/// `gatehouse_http_requests_total`, summed over methods and statuses).
pub async fn answered_on(ops: &str, counted: impl Fn(&str) -> bool) -> u64 {
    let text = reqwest::get(format!("{ops}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("gatehouse_http_requests_total{"))
        .filter(|l| {
            l.split("route=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .is_some_and(&counted)
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// Sends `GET path` exactly as written (HTTP clients would resolve dot
/// segments themselves) and answers the status and the body.
pub async fn raw_get(base: &str, path: &str) -> (u16, serde_json::Value) {
    raw_get_from(base, path, std::net::Ipv4Addr::LOCALHOST.into()).await
}

/// [`raw_get`] from the loopback address `from`.
pub async fn raw_get_from(
    base: &str,
    path: &str,
    from: std::net::IpAddr,
) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((from, 0).into()).unwrap();
    let mut stream = socket.connect(addr.parse().unwrap()).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    let status = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}
