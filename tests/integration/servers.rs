//! The real servers tests start or use beside gatehouse's own processes: a
//! fresh PostgreSQL database (`it-postgres`), a tansu broker (`it-kafka`),
//! an etcd server (`it-etcd`) and a mail server (`it-smtp`). Shared by the
//! integration suites and the acceptance runner.

/// A PostgreSQL database made for a test and dropped with it (under
/// `it-postgres`; empty otherwise).
pub struct TestDatabase {
    #[cfg(feature = "it-postgres")]
    pub name: String,
}

#[cfg(feature = "it-postgres")]
pub fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

#[cfg(feature = "it-postgres")]
pub fn database_url(name: &str) -> String {
    let server = server_url();
    let base = server
        .rsplit_once('/')
        .map_or(server.as_str(), |(b, _)| b)
        .to_owned();
    format!("{base}/{name}")
}

#[cfg(feature = "it-postgres")]
impl TestDatabase {
    /// A fresh, empty database on the test server.
    pub fn new() -> TestDatabase {
        use diesel::{Connection, RunQueryDsl};
        let name = format!("gatehouse_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = diesel::PgConnection::establish(&server_url()).unwrap();
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .unwrap();
        TestDatabase { name }
    }

    pub fn url(&self) -> String {
        database_url(&self.name)
    }
}

#[cfg(feature = "it-postgres")]
impl Drop for TestDatabase {
    fn drop(&mut self) {
        use diesel::{Connection, RunQueryDsl};
        let name = self.name.clone();
        // Off the async runtime: this blocks on the network.
        let _ = std::thread::spawn(move || {
            if let Ok(mut conn) = diesel::PgConnection::establish(&server_url()) {
                let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn);
            }
        })
        .join();
    }
}

#[cfg(feature = "it-kafka")]
pub use kafka::Broker;

#[cfg(feature = "it-kafka")]
mod kafka {
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use crate::binary::free_port;
    use gatehouse::kernel::config::KafkaConfig;

    /// A tansu broker on a port of its own, keeping its topics in memory or in
    /// a SQLite file; stopped when dropped.
    pub struct Broker {
        /// None while stopped.
        child: Option<Child>,
        pub address: String,
        port: u16,
        storage: String,
        /// The directory of a file store.
        dir: Option<tempfile::TempDir>,
    }

    /// Where `scripts/kafka.sh` installs tansu, unless `GATEHOUSE_TANSU` says.
    fn tansu() -> String {
        if let Ok(path) = std::env::var("GATEHOUSE_TANSU") {
            return path;
        }
        let home = std::env::var("HOME").unwrap_or_default();
        let installed = format!("{home}/.cache/gatehouse/tools/bin/tansu");
        assert!(
            std::path::Path::new(&installed).exists(),
            "no broker at {installed}: run scripts/kafka.sh install (or set GATEHOUSE_TANSU)"
        );
        installed
    }

    impl Broker {
        /// A broker keeping its topics in memory: a restart empties it.
        pub fn start() -> Broker {
            Broker::with("memory://tansu/".to_owned(), None)
        }

        /// A broker keeping its topics in a SQLite file: a restart keeps them.
        pub fn start_kept() -> Broker {
            // The file's path is taken from the broker's working directory.
            Broker::with(
                "sqlite://tansu.db".to_owned(),
                Some(tempfile::tempdir().unwrap()),
            )
        }

        fn with(storage: String, dir: Option<tempfile::TempDir>) -> Broker {
            let port = free_port();
            Broker {
                child: Some(listening(port, &storage, dir.as_ref().map(|d| d.path()))),
                address: format!("127.0.0.1:{port}"),
                port,
                storage,
                dir,
            }
        }

        fn pid(&self) -> u32 {
            self.child.as_ref().expect("a running broker").id()
        }

        /// The settings of a bus on this broker.
        pub fn config(&self) -> KafkaConfig {
            KafkaConfig {
                brokers: vec![self.address.clone()],
                ..KafkaConfig::default()
            }
        }

        /// Stops the broker's process (SIGSTOP) until [`Broker::resume`]: it
        /// answers nothing meanwhile.
        pub fn pause(&self) {
            signal(self.pid(), "-STOP");
        }

        pub fn resume(&self) {
            signal(self.pid(), "-CONT");
        }

        /// Kills the broker's process (SIGKILL): its port refuses connections
        /// until [`Broker::start_again`].
        pub fn kill(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }

        /// Starts the broker again on its port and store.
        pub fn start_again(&mut self) {
            self.kill();
            let cwd = self.dir.as_ref().map(|d| d.path().to_path_buf());
            self.child = Some(listening(self.port, &self.storage, cwd.as_deref()));
        }
    }

    /// A tansu process listening on `port`, keeping its topics in `storage`,
    /// working in `cwd` when given.
    fn listening(port: u16, storage: &str, cwd: Option<&std::path::Path>) -> Child {
        let listener = format!("tcp://127.0.0.1:{port}");
        let mut command = Command::new(tansu());
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        let child = command
            .args(["broker", "--listener-url", &listener])
            .args(["--advertised-listener-url", &listener])
            .args(["--storage-engine", storage])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let address = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&address).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {address}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    fn signal(pid: u32, which: &str) {
        let status = Command::new("kill")
            .args([which, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    impl Drop for Broker {
        fn drop(&mut self) {
            self.kill();
        }
    }
}

#[cfg(feature = "it-etcd")]
pub use etcd::{Etcd, listed};

#[cfg(feature = "it-etcd")]
mod etcd {
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use crate::binary::free_port;
    use gatehouse::kernel::config::EtcdConfig;
    use serde_json::Value;

    /// An etcd server on free loopback ports, its data in a directory of its own.
    pub struct Etcd {
        child: Child,
        pub url: String,
        _dir: tempfile::TempDir,
    }

    impl Etcd {
        pub async fn start() -> Etcd {
            let dir = tempfile::tempdir().unwrap();
            let (client, peer) = (free_port(), free_port());
            let url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let child = Command::new(std::env::var("GATEHOUSE_ETCD").unwrap_or("etcd".into()))
                .args(["--name", "test", "--data-dir"])
                .arg(dir.path().join("data"))
                .args([
                    "--listen-client-urls",
                    &url,
                    "--advertise-client-urls",
                    &url,
                ])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("test={peer_url}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("no etcd: run scripts/etcd.sh install (or set GATEHOUSE_ETCD)");
            let etcd = Etcd {
                child,
                url,
                _dir: dir,
            };
            etcd.healthy().await;
            etcd
        }

        /// Waits (up to 30 s) until the server has a leader and answers.
        async fn healthy(&self) {
            let deadline = Instant::now() + Duration::from_secs(30);
            let http = reqwest::Client::new();
            loop {
                let answer = http.get(format!("{}/health", self.url)).send().await;
                if let Ok(answer) = answer
                    && let Ok(body) = answer.json::<Value>().await
                    && body["health"] == "true"
                {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd at {} never became healthy",
                    self.url
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        /// Registry settings for this server under a prefix of the test's own.
        pub fn config(&self, ttl_secs: u64) -> EtcdConfig {
            EtcdConfig {
                endpoints: vec![self.url.clone()],
                prefix: format!("/test-{}/", uuid::Uuid::new_v4()),
                lease_ttl_secs: ttl_secs,
            }
        }

        /// The environment that puts a service process on `config`.
        pub fn env(config: &EtcdConfig) -> Vec<(&'static str, String)> {
            vec![
                ("GATEHOUSE_REGISTRY__BACKEND", "etcd".to_owned()),
                (
                    "GATEHOUSE_REGISTRY__ETCD__ENDPOINTS",
                    format!("[\"{}\"]", config.endpoints[0]),
                ),
                ("GATEHOUSE_REGISTRY__ETCD__PREFIX", config.prefix.clone()),
                (
                    "GATEHOUSE_REGISTRY__ETCD__LEASE_TTL_SECS",
                    config.lease_ttl_secs.to_string(),
                ),
                ("GATEHOUSE_BUS__BACKEND", "outbox".to_owned()),
            ]
        }
    }

    impl Drop for Etcd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// The URLs of the instances of `service` that `registry` lists now.
    /// A registry that cannot list fails the test: an empty list must mean
    /// that etcd lists none, never that it could not be asked.
    pub async fn listed(
        registry: &gatehouse::kernel::registry::etcd::EtcdRegistry,
        service: &str,
    ) -> Vec<String> {
        use gatehouse::kernel::registry::Registry as _;
        match registry.resolve(service).await {
            Ok(found) => found.iter().map(|i| i.url.clone()).collect(),
            Err(e) => panic!("etcd could not list {service}: {e}"),
        }
    }
}

#[cfg(feature = "it-smtp")]
#[allow(unused_imports, reason = "the acceptance runner sends no mail")]
pub use smtp::{Security, Sink};

#[cfg(feature = "it-smtp")]
mod smtp {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use crate::binary::free_port;

    /// How a client reaches the sink.
    #[derive(Clone, Copy)]
    pub enum Security {
        Starttls,
        Tls,
    }

    impl Security {
        /// As the sink and `identity.mail.smtp.security` spell it.
        fn name(self) -> &'static str {
            match self {
                Security::Starttls => "starttls",
                Security::Tls => "tls",
            }
        }
    }

    /// A mail server (aiosmtpd, through `scripts/smtp-sink.py`) on a port of
    /// its own, with a certificate for `localhost` from a CA of the test's,
    /// requiring TLS and a sign-in; each mail it takes is a JSON file in
    /// its directory. Stopped when dropped.
    pub struct Sink {
        child: Option<Child>,
        pub port: u16,
        security: Security,
        dir: tempfile::TempDir,
        /// The CA's certificate, for the client to trust.
        pub ca_file: PathBuf,
    }

    pub const USER: &str = "gatehouse";
    pub const PASSWORD: &str = "mail-server-password";

    /// The Python of the environment `scripts/smtp.sh install` makes.
    fn python() -> String {
        let home = std::env::var("HOME").unwrap_or_default();
        let installed = format!("{home}/.cache/gatehouse/smtp-venv/bin/python");
        assert!(
            Path::new(&installed).exists(),
            "no aiosmtpd at {installed}: run scripts/smtp.sh install"
        );
        installed
    }

    impl Sink {
        /// A sink on a free port, not started: see [`Sink::start`].
        pub fn stopped(security: Security) -> Sink {
            let dir = tempfile::tempdir().unwrap();
            let ca = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca_cert = params.self_signed(&ca).unwrap();
            let key = rcgen::KeyPair::generate().unwrap();
            let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
                .unwrap()
                .signed_by(&key, &ca_cert, &ca)
                .unwrap();
            let ca_file = dir.path().join("ca.pem");
            std::fs::write(&ca_file, ca_cert.pem()).unwrap();
            std::fs::write(dir.path().join("cert.pem"), leaf.pem()).unwrap();
            std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
            std::fs::create_dir(dir.path().join("mail")).unwrap();
            Sink {
                child: None,
                port: free_port(),
                security,
                dir,
                ca_file,
            }
        }

        /// Starts it and waits until it takes connections.
        pub fn start(&mut self) {
            let dir = self.dir.path();
            let security = self.security.name();
            let child = Command::new(python())
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/smtp-sink.py"))
                .args(["--port", &self.port.to_string(), "--security", security])
                .arg("--dir")
                .arg(dir.join("mail"))
                .arg("--cert")
                .arg(dir.join("cert.pem"))
                .arg("--key")
                .arg(dir.join("key.pem"))
                .args(["--user", USER, "--password", PASSWORD])
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap();
            self.child = Some(child);
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                assert!(Instant::now() < deadline, "the mail server never listened");
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        /// The settings that send identity's mail here.
        pub fn env(&self) -> Vec<(&'static str, String)> {
            let security = self.security.name();
            vec![
                ("GATEHOUSE_IDENTITY__MAIL__TRANSPORT", "smtp".into()),
                (
                    "GATEHOUSE_IDENTITY__MAIL__FROM",
                    "Example <accounts@example.org>".into(),
                ),
                ("GATEHOUSE_IDENTITY__MAIL__SMTP__HOST", "localhost".into()),
                (
                    "GATEHOUSE_IDENTITY__MAIL__SMTP__PORT",
                    self.port.to_string(),
                ),
                ("GATEHOUSE_IDENTITY__MAIL__SMTP__SECURITY", security.into()),
                ("GATEHOUSE_IDENTITY__MAIL__SMTP__USERNAME", USER.into()),
                (
                    "GATEHOUSE_IDENTITY__MAIL__SMTP__CA_FILE",
                    self.ca_file.display().to_string(),
                ),
                ("GATEHOUSE_SMTP_PASSWORD", PASSWORD.into()),
            ]
        }

        /// Every mail taken so far, oldest first.
        pub fn mail(&self) -> Vec<serde_json::Value> {
            let mut names: Vec<_> = std::fs::read_dir(self.dir.path().join("mail"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            names.sort();
            names
                .iter()
                .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
                .collect()
        }

        /// The latest mail to `to` whose subject is `subject`, waiting for
        /// it up to `within`.
        pub async fn await_mail(
            &self,
            to: &str,
            subject: &str,
            within: Duration,
        ) -> serde_json::Value {
            let deadline = Instant::now() + within;
            loop {
                if let Some(found) = self
                    .mail()
                    .into_iter()
                    .rev()
                    .find(|m| m["rcpt_tos"][0] == to && m["subject"] == subject)
                {
                    return found;
                }
                assert!(
                    Instant::now() < deadline,
                    "no mail {subject:?} reached {to}; the server has {:?}",
                    self.mail()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    impl Drop for Sink {
        fn drop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
