//! The single-service binaries as their own processes: configured through
//! the environment, reached over HTTP and gRPC, stopped with SIGTERM.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gatehouse::proto::identity::v1 as pb;
use gatehouse::proto::identity::v1::identity_client::IdentityClient;
use serde_json::json;

use crate::binary::{
    ServiceProcess, free_port, login, make_admin, signed_channel, spawn_platform, static_registry,
};
use crate::support::PASSWORD;

/// Under `it-postgres` the binary runs on PostgreSQL (a fresh database),
/// otherwise on SQLite in the data directory.
pub struct Backend {
    pub env: Vec<(&'static str, String)>,
    #[cfg(feature = "it-postgres")]
    _db: crate::support::TestDatabase,
}

impl Backend {
    pub fn new() -> Backend {
        #[cfg(feature = "it-postgres")]
        {
            let db = crate::support::TestDatabase::new();
            Backend {
                env: vec![
                    ("GATEHOUSE_DATABASE__BACKEND", "postgres".to_owned()),
                    ("GATEHOUSE_DATABASE__URL", db.url()),
                ],
                _db: db,
            }
        }
        #[cfg(not(feature = "it-postgres"))]
        Backend { env: Vec::new() }
    }
}

fn spawn_identity(
    port: u16,
    data: &std::path::Path,
    env: &[(&'static str, String)],
) -> ServiceProcess {
    ServiceProcess::spawn(
        env!("CARGO_BIN_EXE_gatehouse-identity"),
        "identity",
        port,
        data,
        env,
    )
}

#[tokio::test]
async fn the_identity_binary_serves_http_and_grpc_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let backend = Backend::new();
    let mut proc = spawn_identity(port, dir.path(), &backend.env);
    let warning = proc.wait_line("reach no other process");
    assert!(warning.contains("WARN"), "{warning}");
    proc.wait_line("service started");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();

    assert_eq!(
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = http
        .post(format!("{base}/v1/users"))
        .json(&json!({"email": "proc@example.org", "password": PASSWORD, "display_name": "Proc"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // The development notifier writes the verification link to the log.
    let line = proc.wait_line("/verify-email?token=");
    let token = line
        .split("token=")
        .nth(1)
        .unwrap()
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect::<String>();
    assert_eq!(token.len(), 64);
    let r = http
        .post(format!("{base}/v1/email-verifications/confirm"))
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Reaching the port is not enough to call the internal API: a call
    // needs the credential of a service of the deployment.
    let mut unsigned = IdentityClient::connect(base.clone()).await.unwrap();
    let refused = unsigned
        .verify_credentials(pb::VerifyCredentialsRequest {
            device_token: String::new(),
            email: "proc@example.org".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("no service credential"),
        "{refused:?}"
    );
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Channel::from_shared(base.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    let mut grpc = IdentityClient::new(signed_channel(&base, "auth", "identity").await);
    let user = grpc
        .verify_credentials(pb::VerifyCredentialsRequest {
            device_token: String::new(),
            email: "proc@example.org".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert!(user.email_verified);

    let status = proc.terminate().await;
    assert!(status.success(), "{status:?}");
    // The data survives the restart.
    let mut proc = spawn_identity(port, dir.path(), &backend.env);
    proc.wait_line("service started");
    let r = http
        .post(format!("{base}/v1/users"))
        .json(&json!({"email": "proc@example.org", "password": PASSWORD, "display_name": "Again"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
}

#[tokio::test]
async fn a_bad_config_is_one_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse-identity"))
        .env("GATEHOUSE_DATA_DIR", dir.path())
        .env("GATEHOUSE_IDENTITY__LISTEN", format!("127.0.0.1:{port}"))
        .env("GATEHOUSE_DATABASE__POOL_SIZE", "lots")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("pool_size"), "{err}");
}

#[tokio::test]
async fn separate_processes_without_credentials_refuse_to_start_and_issue_makes_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatehouse-identity"));
    cmd.env("GATEHOUSE_DATA_DIR", dir.path())
        .env(
            "GATEHOUSE_IDENTITY__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .envs(static_registry(&[("auth", &[free_port()])]));
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gatehouse credentials issue"), "{err}");

    // Issued for one service, then for the rest, into the same directory:
    // the second refuses to overwrite what the first made.
    let keys = dir.path().join("keys");
    let issue = |services: &str| {
        Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["credentials", "issue", "--out"])
            .arg(&keys)
            .args(["--services", services])
            .output()
            .unwrap()
    };
    let made = issue("identity,auth");
    assert!(made.status.success(), "{made:?}");
    let said = String::from_utf8_lossy(&made.stdout);
    assert!(said.contains("identity, auth"), "{said}");
    let again = issue("identity");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    let unknown = issue("billing");
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no service is called billing"));
    let mut files: Vec<String> = std::fs::read_dir(&keys)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["auth.key", "identity.key", "services.pub"]);

    // With them, the same process starts.
    let mut proc = ServiceProcess::spawn(
        env!("CARGO_BIN_EXE_gatehouse-identity"),
        "identity",
        free_port(),
        dir.path(),
        &[
            static_registry(&[("auth", &[free_port()])]),
            vec![("GATEHOUSE_RPC__CREDENTIALS_DIR", keys.display().to_string())],
        ]
        .concat(),
    );
    proc.started();
    let status = proc.terminate().await;
    assert!(status.success(), "{status:?}");
}

/// A scrypt cost below OWASP's floor stops identity at startup, naming the
/// floor and the key that allows it for tests.
#[test]
fn a_hashing_cost_below_the_floor_stops_identity_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .env("GATEHOUSE_DATA_DIR", dir.path())
        .env("GATEHOUSE_IDENTITY__SCRYPT__LOG_N", "10")
        .envs(listening_on("127.0.0.1"))
        .env("GATEHOUSE_SERVER__OPS_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("below the floor of log_n = 17"), "{said}");
    assert!(said.contains("allow_weak_hashing_for_tests"), "{said}");
}

/// Under umask 022 the all-in-one keeps its data directory (0700) and its
/// database files (0600), password hashes and sealed keys among them, to
/// its owner, a directory left open by an older run included.
#[tokio::test]
async fn the_data_directory_and_its_databases_are_the_owners_alone() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let wrapper = dir.path().join("gatehouse-umask-022");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\numask 022\nexec {} \"$@\"\n",
            env!("CARGO_BIN_EXE_gatehouse")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let platform = spawn_platform(wrapper.to_str().unwrap(), &data, &[]).await;
    let http = reqwest::Client::new();
    // A registration writes identity's database (and its journal).
    let r = http
        .post(format!("{}/v1/users", platform.base))
        .json(&json!({"email": "mode@example.org", "password": PASSWORD, "display_name": "M"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            files.push(path.file_name().unwrap().to_string_lossy().into_owned());
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
    for db in [
        "identity.db",
        "auth.db",
        "audit.db",
        "authz.db",
        "identity.db-wal",
    ] {
        assert!(files.iter().any(|f| f == db), "{db} not among {files:?}");
    }
}

/// The all-in-one on its default in-process registry fronts a team's own
/// service listed under [registry.instances], next to the built-in
/// services, with no keys issued; listing a service it runs itself there is
/// refused at start.
#[tokio::test]
async fn the_all_in_one_routes_to_a_teams_service_listed_in_its_config() {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_url = format!("http://{}", upstream.local_addr().unwrap());
    let app = axum::Router::new()
        .fallback(|uri: http::Uri| async move { axum::Json(json!({"billing": uri.path()})) });
    tokio::spawn(async move { axum::serve(upstream, app).await });
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gatehouse.toml");
    std::fs::write(
        &config,
        format!(
            "[registry.instances]\nbilling = [\"{upstream_url}\"]\n\n\
             [[gateway.routes]]\nprefix = \"/billing\"\nservice = \"billing\"\nauth = \"public\"\n"
        ),
    )
    .unwrap();
    let platform = spawn_platform(
        env!("CARGO_BIN_EXE_gatehouse"),
        &dir.path().join("data"),
        &[
            ("GATEHOUSE_CONFIG_FILE", config.display().to_string()),
            // As a new user runs it: no credentials directory.
            ("GATEHOUSE_RPC__CREDENTIALS_DIR", String::new()),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let billing = http
        .get(format!("{}/billing/invoices/7", platform.base))
        .send()
        .await
        .unwrap();
    assert_eq!(billing.status(), 200);
    let body: serde_json::Value = billing.json().await.unwrap();
    assert_eq!(body["billing"], "/billing/invoices/7");
    let registered = http
        .post(format!("{}/v1/users", platform.base))
        .json(&json!({"email": "team@example.org", "password": PASSWORD, "display_name": "T"}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);
    drop(platform);

    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .env("GATEHOUSE_DATA_DIR", dir.path().join("data"))
        .env("GATEHOUSE_CONFIG_FILE", &config)
        .env(
            "GATEHOUSE_REGISTRY__INSTANCES__IDENTITY",
            "[\"http://127.0.0.1:1\"]",
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("lists identity, which this process runs itself"),
        "{said}"
    );
}

#[test]
fn hash_calibrate_prints_parameters_for_this_machine() {
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["hash", "calibrate", "--target-ms", "5"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("ms/hash"), "{text}");
    assert!(text.contains("[identity.scrypt]\nlog_n = "), "{text}");
}

#[tokio::test]
async fn identity_and_auth_as_separate_processes_find_each_other_through_the_static_registry() {
    let (identity_dir, auth_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (identity_port, auth_port) = (free_port(), free_port());
    let backend = Backend::new();
    let mut identity_env = static_registry(&[("auth", &[auth_port])]);
    identity_env.extend(backend.env.iter().cloned());
    let mut auth_env = static_registry(&[("identity", &[identity_port])]);
    auth_env.extend(backend.env.iter().cloned());
    let mut identity = spawn_identity(identity_port, identity_dir.path(), &identity_env);
    let mut auth = ServiceProcess::spawn(
        env!("CARGO_BIN_EXE_gatehouse-auth"),
        "auth",
        auth_port,
        auth_dir.path(),
        &auth_env,
    );
    identity.started();
    auth.started();
    let http = reqwest::Client::new();

    let r = http
        .post(format!("{}/v1/users", identity.base))
        .json(&json!({"email": "two@example.org", "password": PASSWORD, "display_name": "Two"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Auth checks the password with identity over gRPC ...
    let pair: serde_json::Value = login(&http, &auth.base, "two@example.org", PASSWORD).await;
    let token = pair["access_token"].as_str().unwrap();
    // ... and identity verifies the token with keys fetched from auth.
    let me = http
        .get(format!("{}/v1/users/me", identity.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    let refreshed = http
        .post(format!("{}/v1/auth/refresh", auth.base))
        .json(&json!({"refresh_token": pair["refresh_token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), 200);
    let second: serde_json::Value = login(&http, &auth.base, "two@example.org", PASSWORD).await;
    let logout = http
        .post(format!("{}/v1/auth/logout", auth.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    let sessions = http
        .get(format!("{}/v1/auth/sessions", auth.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(sessions.status(), 401);
    // With auth down, identity keeps verifying new tokens with the keys it has.
    drop(auth);
    let me = http
        .get(format!("{}/v1/users/me", identity.base))
        .bearer_auth(second["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
}

#[test]
fn keys_rotate_publishes_a_new_signing_key() {
    let dir = tempfile::tempdir().unwrap();
    let rotate = || {
        Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["keys", "rotate"])
            .env("GATEHOUSE_DATA_DIR", dir.path())
            .output()
            .unwrap()
    };
    let first = rotate();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let first = String::from_utf8(first.stdout).unwrap();
    assert!(first.starts_with("published k4.pid."), "{first}");
    let second = String::from_utf8(rotate().stdout).unwrap();
    assert_ne!(first, second);
    // The key-encryption key was made once, readable by its owner only.
    assert!(dir.path().join("auth.kek").exists());
}

/// How many requests for `route` an instance has answered, from its metrics.
async fn answered(base: &str, route: &str) -> u64 {
    crate::binary::answered_on(base, |r| r == route).await
}

/// Auth in front of two identity instances sharing one data directory,
/// each its own process: the first identity started, the second and auth
/// on their way.
struct TwoIdentities {
    first: ServiceProcess,
    second: ServiceProcess,
    auth: ServiceProcess,
    auth_port: u16,
    ports: [u16; 2],
    identity_env: Vec<(&'static str, String)>,
    identity_dir: tempfile::TempDir,
    _auth_dir: tempfile::TempDir,
    backend: Backend,
}

impl TwoIdentities {
    fn spawn() -> TwoIdentities {
        let (auth_port, id1, id2) = (free_port(), free_port(), free_port());
        let (identity_dir, auth_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let backend = Backend::new();
        let with = |mut extra: Vec<(&'static str, String)>| {
            extra.extend(backend.env.iter().cloned());
            extra
        };
        let identity_env = with(static_registry(&[("auth", &[auth_port])]));
        let mut first = spawn_identity(id1, identity_dir.path(), &identity_env);
        first.started();
        let second = spawn_identity(id2, identity_dir.path(), &identity_env);
        let auth = ServiceProcess::spawn(
            env!("CARGO_BIN_EXE_gatehouse-auth"),
            "auth",
            auth_port,
            auth_dir.path(),
            &with(static_registry(&[("identity", &[id1, id2])])),
        );
        TwoIdentities {
            first,
            second,
            auth,
            auth_port,
            ports: [id1, id2],
            identity_env,
            identity_dir,
            _auth_dir: auth_dir,
            backend,
        }
    }

    /// `extra`, and the database settings every process of it has.
    fn with(&self, mut extra: Vec<(&'static str, String)>) -> Vec<(&'static str, String)> {
        extra.extend(self.backend.env.iter().cloned());
        extra
    }
}

#[tokio::test]
async fn the_gateway_spreads_load_and_loses_no_request_when_an_instance_dies() {
    let mut two = TwoIdentities::spawn();
    let ([id1, id2], auth_port) = (two.ports, two.auth_port);
    let (gw_port, gw_dir) = (free_port(), tempfile::tempdir().unwrap());
    let mut gateway = ServiceProcess::spawn(
        env!("CARGO_BIN_EXE_gatehouse-gateway"),
        "gateway",
        gw_port,
        gw_dir.path(),
        &two.with({
            let mut env = static_registry(&[("identity", &[id1, id2]), ("auth", &[auth_port])]);
            // The load below is one user's; this test is not about limits.
            env.push((
                "GATEHOUSE_GATEWAY__RATE_LIMIT__PER_USER_PER_SEC",
                "0".into(),
            ));
            env
        }),
    );
    for p in [&mut two.second, &mut two.auth, &mut gateway] {
        p.started();
    }
    let TwoIdentities {
        ref mut first,
        ref mut second,
        ..
    } = two;
    let gw = gateway.base.clone();
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{gw}/v1/users"))
        .json(&json!({"email": "lb@example.org", "password": PASSWORD, "display_name": "LB"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let pair: serde_json::Value = login(&http, &gw, "lb@example.org", PASSWORD).await;
    let token = pair["access_token"].as_str().unwrap().to_owned();
    for _ in 0..40 {
        let r = http
            .get(format!("{gw}/v1/users/me"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // One access-log line per request; nothing about tokens or passwords.
    let line = gateway.wait_line("gatehouse::access");
    assert!(
        line.contains("\"route\":\"/v1/users\"") && line.contains("\"status\":201"),
        "{line}"
    );
    gateway.wait_for(|l| l.contains("gatehouse::access") && l.contains("/v1/users/me"));
    assert!(
        !gateway
            .log
            .lines()
            .iter()
            .any(|l| l.contains("v4.public.") || l.contains(PASSWORD))
    );
    let (a, b) = (
        answered(&first.ops_base(), "/v1/users/me").await,
        answered(&second.ops_base(), "/v1/users/me").await,
    );
    assert_eq!(a + b, 40);
    assert!(a > 0 && b > 0, "both instances get traffic: {a} and {b}");

    // One instance dies under concurrent load: GETs in flight on it move
    // to the other instance, so no client sees an error at all.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (http, gw, token, stop) = (http.clone(), gw.clone(), token.clone(), stop.clone());
            tokio::spawn(async move {
                let mut answered = 0u32;
                while !stop.load(Ordering::SeqCst) {
                    let r = http
                        .get(format!("{gw}/v1/users/me"))
                        .bearer_auth(&token)
                        .send()
                        .await
                        .expect("the gateway always answers");
                    assert_eq!(r.status(), 200);
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_kill = answered(&first.ops_base(), "/v1/users/me").await;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for c in clients {
        total += c.await.unwrap();
    }
    assert!(
        before_kill > a && total > 40,
        "both saw load: {before_kill} before the kill, {total} in all"
    );
    // Every later request still gets its answer.
    for i in 0..30 {
        let r = http
            .get(format!("{gw}/v1/users/me"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET {i}");
        let r = http
            .post(format!("{gw}/v1/password-resets"))
            .json(&json!({"email": "lb@example.org"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "POST {i}");
    }
}

#[tokio::test]
async fn the_authz_binary_answers_checks_over_grpc_and_stops_on_sigterm() {
    use gatehouse::proto::authz::v1 as authz;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let backend = Backend::new();
    let mut proc = ServiceProcess::spawn(
        env!("CARGO_BIN_EXE_gatehouse-authz"),
        "authz",
        port,
        dir.path(),
        &backend.env,
    );
    proc.started();
    let base = format!("http://127.0.0.1:{port}");
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let mut client =
        authz::authz_client::AuthzClient::new(signed_channel(&base, "gateway", "authz").await);
    let answer = client
        .check(authz::CheckRequest {
            question: Some(authz::Question {
                user_id: uuid::Uuid::now_v7().to_string(),
                permission: "users:read".into(),
                resource: String::new(),
            }),
            at_least_revision: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.revision, 1,
        "a fresh policy is at its first revision"
    );
    let answer = answer.answer.unwrap();
    assert!(!answer.allowed);
    assert_eq!(answer.denial, "not_granted");
    assert!(proc.terminate().await.success());
}

/// The four binaries a deployment of separate processes runs, on one data
/// directory (each service keeps its own file, or schema, in it), the first
/// admin made with `gatehouse admin create` beside them: authz's admin API
/// and identity's, which asks authz over gRPC, both through the gateway.
#[tokio::test]
async fn the_authz_binary_behind_the_gateway_guards_the_admin_apis() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::new();
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let (identity, auth, authz, gateway) = (ports[0], ports[1], ports[2], ports[3]);
    let with = |services: &[(&str, &[u16])], extra: &[(&'static str, String)]| {
        let mut env = static_registry(services);
        env.extend(backend.env.iter().cloned());
        env.extend(extra.iter().cloned());
        env
    };
    let mut processes = vec![
        ServiceProcess::spawn(
            env!("CARGO_BIN_EXE_gatehouse-identity"),
            "identity",
            identity,
            dir.path(),
            // Without a shared bus it keeps no answer of authz, so the
            // refusal below does not outlive the grant after it.
            &with(&[("auth", &[auth]), ("authz", &[authz])], &[]),
        ),
        ServiceProcess::spawn(
            env!("CARGO_BIN_EXE_gatehouse-auth"),
            "auth",
            auth,
            dir.path(),
            &with(&[("identity", &[identity])], &[]),
        ),
        ServiceProcess::spawn(
            env!("CARGO_BIN_EXE_gatehouse-authz"),
            "authz",
            authz,
            dir.path(),
            &with(&[("auth", &[auth])], &[]),
        ),
        ServiceProcess::spawn(
            env!("CARGO_BIN_EXE_gatehouse-gateway"),
            "gateway",
            gateway,
            dir.path(),
            &with(
                &[
                    ("auth", &[auth]),
                    ("identity", &[identity]),
                    ("authz", &[authz]),
                ],
                &[],
            ),
        ),
    ];
    for process in &mut processes {
        process.started();
    }
    let base = format!("http://127.0.0.1:{gateway}");
    let http = reqwest::Client::new();
    let register = |email: &str| {
        http.post(format!("{base}/v1/users"))
            .json(&json!({"email": email, "password": PASSWORD, "display_name": "Ann"}))
            .send()
    };
    let ann = register("ann@example.org").await.unwrap();
    assert_eq!(ann.status(), 201);
    let ann_id = ann.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ann = login(&http, &base, "ann@example.org", PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let users = || {
        http.get(format!("{base}/v1/users"))
            .bearer_auth(&ann)
            .send()
    };
    assert_eq!(users().await.unwrap().status(), 403);

    // The first admin, from the command line on the same data.
    make_admin(dir.path(), &backend.env, "root@example.org", PASSWORD);
    let root = login(&http, &base, "root@example.org", PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Authz reads a write made beside it within its refresh interval (1 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let roles = http
            .get(format!("{base}/v1/authz/roles"))
            .bearer_auth(&root)
            .send()
            .await
            .unwrap();
        if roles.status() == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", roles.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let created = http
        .post(format!("{base}/v1/authz/bindings"))
        .bearer_auth(&root)
        .json(&json!({"subject": format!("user:{ann_id}"), "role": "auditor"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let role = http
        .post(format!("{base}/v1/authz/roles"))
        .bearer_auth(&root)
        .json(&json!({"name": "support", "permissions": ["users:read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(role.status(), 201);
    let bound = http
        .post(format!("{base}/v1/authz/bindings"))
        .bearer_auth(&root)
        .json(&json!({"subject": format!("user:{ann_id}"), "role": "support"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bound.status(), 201);
    let listed = users().await.unwrap();
    assert_eq!(listed.status(), 200, "identity asked authz over gRPC");
    // What authz answers Ann asking about herself.
    let check = async |permission: &str| -> serde_json::Value {
        http.post(format!("{base}/v1/authz/check"))
            .bearer_auth(&ann)
            .json(&json!({ "permission": permission }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    let check_audit = check("audit:read").await;
    assert_eq!(check_audit["allowed"], true, "{check_audit}");
    assert_eq!(check_audit["grant"]["role"], "auditor");

    // A role granted from the command line, on the same data: authz reads
    // it within its refresh interval; granted twice, it is held once.
    let grant = || {
        let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args([
                "admin",
                "grant",
                "--email",
                "ann@example.org",
                "--role",
                "admin",
            ])
            .env("GATEHOUSE_DATA_DIR", dir.path())
            .envs(backend.env.iter().cloned())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(grant().contains("granted admin to ann@example.org"));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let answer = check("authz:write").await;
        if answer["allowed"] == true {
            assert_eq!(answer["grant"]["role"], "admin", "{answer}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(grant().contains("ann@example.org holds admin already"));
    for process in &mut processes {
        assert!(process.terminate().await.success());
    }
}

/// `gatehouse audit verify` on the log of a data directory (or a
/// deployment's database): it holds, every time it is asked, until a row
/// is changed, removed or added behind the store's back, and then the
/// command fails naming the entry.
#[tokio::test]
async fn audit_verify_names_the_entry_that_was_changed_removed_or_added() {
    use diesel::RunQueryDsl;
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::new();
    let verify = || {
        Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["audit", "verify"])
            .env("GATEHOUSE_DATA_DIR", dir.path())
            .envs(backend.env.iter().cloned())
            .output()
            .unwrap()
    };
    let empty = verify();
    assert!(empty.status.success());
    assert!(String::from_utf8_lossy(&empty.stdout).contains("0 entries verified"));

    let mut config = gatehouse::config::Config {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    for (key, value) in &backend.env {
        match *key {
            "GATEHOUSE_DATABASE__BACKEND" => {
                config.database.backend = gatehouse::kernel::config::DatabaseBackend::Postgres;
            }
            "GATEHOUSE_DATABASE__URL" => config.database.url = value.clone(),
            _ => {}
        }
    }
    let db = gatehouse::audit::open_db(&config.database, &config.data_dir)
        .await
        .unwrap();
    let entries: Vec<gatehouse::audit::model::NewEntry> = (0..3)
        .map(|n| gatehouse::audit::model::NewEntry {
            event_id: Some(format!("event-{n}")),
            at: chrono::Utc::now(),
            actor: "user:ann".into(),
            action: "authz.binding.created".into(),
            subject: "user:bob".into(),
            outcome: "success".into(),
            client_ip: String::new(),
            request_id: String::new(),
            trace_id: String::new(),
            details: "{}".into(),
        })
        .collect();
    let key = gatehouse::audit::keys::AuditKey::load(dir.path()).unwrap();
    let sealing = key.entry_key();
    db.run(move |conn| gatehouse::audit::store::append(conn, &entries, &sealing))
        .await
        .unwrap();
    let signed = db
        .run(move |conn| gatehouse::audit::store::checkpoint(conn, &key, chrono::Utc::now()))
        .await
        .unwrap();
    assert_eq!(signed.map(|c| c.seq), Some(3));
    // Many times over: a command ends with its pool's threads at rest, so
    // its exit never races a connection being opened (on PostgreSQL that
    // race crashed the process now and then).
    for _ in 0..30 {
        let held = verify();
        assert!(
            held.status.success(),
            "{}: {}",
            held.status,
            String::from_utf8_lossy(&held.stderr)
        );
        assert!(String::from_utf8_lossy(&held.stdout).contains("3 entries verified"));
    }

    db.run(|conn| {
        diesel::sql_query("UPDATE entries SET subject = 'user:mallory' WHERE seq = 2")
            .execute(conn)
            .map_err(gatehouse::audit::error::AuditError::from)
    })
    .await
    .unwrap();
    let broken = verify();
    assert_eq!(
        broken.status.code(),
        Some(1),
        "{}: {}",
        broken.status,
        String::from_utf8_lossy(&broken.stderr)
    );
    assert!(
        String::from_utf8_lossy(&broken.stdout).contains("entry 2 was altered"),
        "{}",
        String::from_utf8_lossy(&broken.stdout)
    );
    let sql = |statement: &'static str| {
        db.run(move |conn| {
            diesel::sql_query(statement)
                .execute(conn)
                .map_err(gatehouse::audit::error::AuditError::from)
        })
    };
    sql("UPDATE entries SET subject = 'user:bob' WHERE seq = 2")
        .await
        .unwrap();
    assert!(verify().status.success(), "holds again once put back");

    // A row removed, then put back.
    sql("CREATE TABLE kept AS SELECT * FROM entries WHERE seq = 2")
        .await
        .unwrap();
    sql("DELETE FROM entries WHERE seq = 2").await.unwrap();
    let removed = verify();
    assert_eq!(removed.status.code(), Some(1));
    let said = String::from_utf8_lossy(&removed.stdout);
    assert!(said.contains("entry 2 was deleted"), "{said}");
    sql("INSERT INTO entries SELECT * FROM kept").await.unwrap();
    assert!(verify().status.success(), "holds again once put back");

    // A row added after the last, chained as the store would chain it, but
    // without audit's key to make its MAC.
    let last = db
        .run(|conn| {
            gatehouse::audit::store::list(conn, &gatehouse::audit::store::Filter::default(), 2, 1)
                .map_err(gatehouse::audit::error::AuditError::from)
        })
        .await
        .unwrap();
    let forged = gatehouse::audit::model::Entry::chain(
        4,
        uuid::Uuid::now_v7(),
        gatehouse::audit::model::NewEntry {
            event_id: None,
            at: chrono::Utc::now(),
            actor: "user:mallory".into(),
            action: "authz.binding.created".into(),
            subject: "user:mallory".into(),
            outcome: "success".into(),
            client_ip: String::new(),
            request_id: String::new(),
            trace_id: String::new(),
            details: r#"{"role":"admin"}"#.into(),
        },
        &last[0].hash,
    );
    crate::audit::insert_behind_the_store(&db, forged).await;
    let added = verify();
    assert_eq!(added.status.code(), Some(1));
    let said = String::from_utf8_lossy(&added.stdout);
    assert!(said.contains("entry 4 was forged"), "{said}");
}

/// Signs in at `auth` in a loop until `stop`: for each attempt, when it
/// started (since `epoch`) and whether it got its tokens.
async fn sign_ins(
    auth: String,
    email: &'static str,
    epoch: std::time::Instant,
    stop: Arc<AtomicBool>,
) -> Vec<(Duration, bool)> {
    let http = reqwest::Client::new();
    let mut outcomes = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let started = epoch.elapsed();
        let answer = http
            .post(format!("{auth}/v1/auth/login"))
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await;
        let signed_in = matches!(answer, Ok(a) if a.status() == 200);
        outcomes.push((started, signed_in));
    }
    outcomes
}

/// Four clients sign in without a pause through auth over two identity
/// instances; one is killed under them and started again: no sign-in
/// fails, and the instance back gets password checks again.
#[tokio::test]
async fn sign_ins_go_on_when_an_identity_instance_dies_and_come_back_to_it() {
    let mut two = TwoIdentities::spawn();
    two.second.started();
    two.auth.started();
    let TwoIdentities {
        ref mut first,
        ref mut second,
        ref mut auth,
        ports: [id1, _],
        ref identity_env,
        ref identity_dir,
        ..
    } = two;
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{}/v1/users", first.base))
        .json(&json!({"email": "steady@example.org", "password": PASSWORD, "display_name": "S"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    // Four clients sign in without a pause; one identity instance is
    // killed under them.
    let epoch = std::time::Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(sign_ins(
                auth.base.clone(),
                "steady@example.org",
                epoch,
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Identity's gRPC calls, all of them password checks here.
    const VERIFY: &str = "/gatehouse.identity.v1.Identity/{*rest}";
    let (on_first, on_second) = (
        answered(&first.ops_base(), VERIFY).await,
        answered(&second.ops_base(), VERIFY).await,
    );
    assert!(
        on_first > 0 && on_second > 0,
        "both instances check passwords: {on_first} and {on_second}"
    );
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    // Gone from here on: a sign-in started before may have been on it.
    let killed_at = epoch.elapsed();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    let mut outcomes = Vec::new();
    for c in clients {
        outcomes.extend(c.await.unwrap());
    }
    let after: Vec<_> = outcomes.iter().filter(|(t, _)| *t > killed_at).collect();
    let failed: Vec<_> = outcomes.iter().filter(|(_, ok)| !ok).collect();
    assert!(
        after.len() > 20,
        "sign-ins went on after the kill: {}",
        after.len()
    );
    // None failed: a password check under way on the killed instance, or
    // sent on a connection to it not yet seen to be dead, is made again on
    // the other.
    assert!(
        failed.is_empty(),
        "sign-ins failed: {failed:?} (killed at {killed_at:?})"
    );
    auth.wait_line("instance ejected from service calls");

    // The instance comes back on its port: auth's probe takes it back in,
    // and then it answers sign-ins again.
    let mut back = spawn_identity(id1, identity_dir.path(), identity_env);
    back.started();
    auth.wait_line("instance back in service calls");
    for _ in 0..10 {
        let pair = login(&http, &auth.base, "steady@example.org", PASSWORD).await;
        assert!(pair["access_token"].is_string(), "{pair}");
    }
    let on_back = answered(&back.ops_base(), VERIFY).await;
    assert!(on_back > 0, "the instance back gets calls again");
}

/// Auth instances on one database open each other's signing keys, so they
/// need one key-encryption key: an instance given another refuses to start
/// and says why, where it would have failed every sign-in it took.
#[tokio::test]
async fn an_auth_instance_with_another_key_encryption_key_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::new();
    let with_key = |hex: char| {
        let mut env = backend.env.clone();
        env.push((
            "GATEHOUSE_AUTH__KEY_ENCRYPTION_KEY",
            hex.to_string().repeat(64),
        ));
        env
    };
    let auth = env!("CARGO_BIN_EXE_gatehouse-auth");
    let mut first = ServiceProcess::spawn(auth, "auth", free_port(), dir.path(), &with_key('a'));
    first.started();
    // Another with the same key opens the key the first sealed.
    let mut second = ServiceProcess::spawn(auth, "auth", free_port(), dir.path(), &with_key('a'));
    second.started();

    let other = tokio::process::Command::new(auth)
        .env("GATEHOUSE_DATA_DIR", dir.path())
        .env(
            "GATEHOUSE_AUTH__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("GATEHOUSE_SERVER__OPS_LISTEN", "127.0.0.1:0")
        .env(
            "GATEHOUSE_RPC__CREDENTIALS_DIR",
            crate::binary::credentials(),
        )
        .envs(with_key('b'))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), other)
        .await
        .expect("an auth with another key-encryption key started")
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("does not open the signing keys in the database"),
        "{said}"
    );
    // The instances that share the key run on.
    assert!(first.child.try_wait().unwrap().is_none());
    assert!(second.child.try_wait().unwrap().is_none());
}

/// The all-in-one's listeners, each on a free port of `host`.
fn listening_on(host: &str) -> Vec<(&'static str, String)> {
    [
        "GATEHOUSE_GATEWAY__LISTEN",
        "GATEHOUSE_AUTH__LISTEN",
        "GATEHOUSE_IDENTITY__LISTEN",
        "GATEHOUSE_AUTHZ__LISTEN",
        "GATEHOUSE_AUDIT__LISTEN",
    ]
    .into_iter()
    .map(|key| (key, format!("{host}:{}", free_port())))
    .collect()
}

#[tokio::test]
async fn mail_to_the_log_is_refused_for_a_process_listening_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    // The gateway on every address, the rest on loopback.
    let mut env = listening_on("127.0.0.1");
    env[0].1 = format!("0.0.0.0:{}", free_port());
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .env("GATEHOUSE_DATA_DIR", dir.path())
        .envs(env.clone())
        .env("GATEHOUSE_SERVER__OPS_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("identity.mail.transport = \"log\""), "{said}");
    assert!(said.contains(&env[0].1), "{said}");

    // With mail sent by SMTP it starts, listening there.
    let mut platform = ServiceProcess::spawn(
        env!("CARGO_BIN_EXE_gatehouse"),
        "gateway",
        free_port(),
        dir.path(),
        &[
            env.as_slice(),
            &[
                ("GATEHOUSE_IDENTITY__MAIL__TRANSPORT", "smtp".to_owned()),
                (
                    "GATEHOUSE_IDENTITY__MAIL__SMTP__HOST",
                    "localhost".to_owned(),
                ),
            ],
        ]
        .concat(),
    );
    platform.wait_for(|l| l.contains("service started") && l.contains("\"gateway\""));
    assert!(
        platform
            .log
            .latest(|l| l.contains("mail goes to the log"))
            .is_none()
    );
    platform.terminate().await;

    // On loopback alone, mail to the log is taken, with a warning.
    let mut platform = ServiceProcess::spawn(
        env!("CARGO_BIN_EXE_gatehouse"),
        "gateway",
        free_port(),
        dir.path(),
        &listening_on("127.0.0.1"),
    );
    platform.wait_line("mail goes to the log");
    platform.terminate().await;
}
