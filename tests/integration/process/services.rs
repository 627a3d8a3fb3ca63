//! Each service binary serving HTTP and gRPC, alone or beside the others as
//! a deployment of separate processes wires them (the static registry,
//! service credentials), and stopping on SIGTERM.

use std::process::Command;
use std::time::Duration;

use gatehouse::proto::identity::v1 as pb;
use gatehouse::proto::identity::v1::identity_client::IdentityClient;
use reqwest::Method;
use serde_json::json;

use super::{Backend, spawn_identity};
use crate::binary::{ServiceProcess, free_port, make_admin, signed_channel, static_registry};
use crate::support::{PASSWORD, login, register, register_response, send, sign_in};

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

    let ready = send(&http, Method::GET, format!("{base}/readyz"), None, None).await;
    assert_eq!(ready.status(), 200);
    register(&http, &base, "proc@example.org").await;
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
    let url = format!("{base}/v1/email-verifications/confirm");
    let body = json!({"token": token});
    let r = send(&http, Method::POST, url, None, Some(body)).await;
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
    let again = register_response(&http, &base, "proc@example.org", PASSWORD).await;
    assert_eq!(again.status(), 409);
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

    register(&http, &identity.base, "two@example.org").await;
    // Auth checks the password with identity over gRPC ...
    let pair = login(&http, &auth.base, "two@example.org", PASSWORD).await;
    let token = pair["access_token"].as_str().unwrap();
    // ... and identity verifies the token with keys fetched from auth.
    let me = format!("{}/v1/users/me", identity.base);
    let r = send(&http, Method::GET, &me, Some(token), None).await;
    assert_eq!(r.status(), 200);
    let body = json!({"refresh_token": pair["refresh_token"]});
    let url = format!("{}/v1/auth/refresh", auth.base);
    let refreshed = send(&http, Method::POST, url, None, Some(body)).await;
    assert_eq!(refreshed.status(), 200);
    let second = sign_in(&http, &auth.base, "two@example.org", PASSWORD).await;
    let url = format!("{}/v1/auth/logout", auth.base);
    let logout = send(&http, Method::POST, url, Some(token), None).await;
    assert_eq!(logout.status(), 204);
    let url = format!("{}/v1/auth/sessions", auth.base);
    let sessions = send(&http, Method::GET, url, Some(token), None).await;
    assert_eq!(sessions.status(), 401);
    // With auth down, identity keeps verifying new tokens with the keys it has.
    drop(auth);
    let r = send(&http, Method::GET, &me, Some(&second), None).await;
    assert_eq!(r.status(), 200);
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
                ..Default::default()
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
    let ann_id = register(&http, &base, "ann@example.org").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ann = sign_in(&http, &base, "ann@example.org", PASSWORD).await;
    let users_url = format!("{base}/v1/users");
    let users = || send(&http, Method::GET, &users_url, Some(&ann), None);
    assert_eq!(users().await.status(), 403);

    // The first admin, from the command line on the same data.
    make_admin(dir.path(), &backend.env, "root@example.org", PASSWORD);
    let root = sign_in(&http, &base, "root@example.org", PASSWORD).await;
    let as_root = |method: Method, path: &str, body: Option<serde_json::Value>| {
        send(&http, method, format!("{base}{path}"), Some(&root), body)
    };
    // Authz reads a write made beside it within its refresh interval (1 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let roles = as_root(Method::GET, "/v1/authz/roles", None).await;
        if roles.status() == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", roles.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = json!({"subject": format!("user:{ann_id}"), "role": "auditor"});
    let created = as_root(Method::POST, "/v1/authz/bindings", Some(body)).await;
    assert_eq!(created.status(), 201);
    let body = json!({"name": "support", "permissions": ["users:read"]});
    let role = as_root(Method::POST, "/v1/authz/roles", Some(body)).await;
    assert_eq!(role.status(), 201);
    let body = json!({"subject": format!("user:{ann_id}"), "role": "support"});
    let bound = as_root(Method::POST, "/v1/authz/bindings", Some(body)).await;
    assert_eq!(bound.status(), 201);
    let listed = users().await;
    assert_eq!(listed.status(), 200, "identity asked authz over gRPC");
    // What authz answers Ann asking about herself.
    let check = async |permission: &str| -> serde_json::Value {
        let url = format!("{base}/v1/authz/check");
        let body = json!({ "permission": permission });
        let r = send(&http, Method::POST, url, Some(&ann), Some(body)).await;
        r.json().await.unwrap()
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
