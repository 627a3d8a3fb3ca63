//! What a binary checks as it starts: a bad setting, a missing credential,
//! a hashing cost below the floor, a key-encryption key its peers cannot
//! share, mail to the log on a process listening beyond loopback, each
//! refused with one clear error; and what it sets up, its data directory
//! kept to its owner and a team's own service routed from its config.

use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use super::Backend;
use crate::binary::{ServiceProcess, free_port, spawn_platform, static_registry};
use crate::support::{register, send};

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
    // A registration writes identity's database (and its journal).
    register(&reqwest::Client::new(), &platform.base, "mode@example.org").await;
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
    let url = format!("{}/billing/invoices/7", platform.base);
    let billing = send(&http, Method::GET, url, None, None).await;
    assert_eq!(billing.status(), 200);
    let body: serde_json::Value = billing.json().await.unwrap();
    assert_eq!(body["billing"], "/billing/invoices/7");
    register(&http, &platform.base, "team@example.org").await;
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
