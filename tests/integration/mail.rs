//! Identity's mail through a real mail server (aiosmtpd, `it-smtp`), sent
//! by the all-in-one binary as a deployment runs it: over STARTTLS or TLS,
//! signed in, from the configured address. A reset link in a mail works;
//! mail sent while the mail server is down, and kept across a restart,
//! arrives once it is back; a recipient the server refuses for good is
//! dropped without holding up the rest. No link's token reaches the log.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::binary::{ServiceProcess, spawn_platform};
use crate::process::Backend;
use crate::servers::{Security, Sink};
use crate::support::{PASSWORD, login, login_response, register, send};

const WITHIN: Duration = Duration::from_secs(20);

/// The token in a mail's link to `path` on the platform's link base.
fn token_in(mail: &Value, path: &str) -> String {
    let body = mail["body"].as_str().unwrap();
    let link = format!("http://127.0.0.1:8080{path}?token=");
    let at = body
        .find(&link)
        .unwrap_or_else(|| panic!("no {link} link in {body}"));
    let token: String = body[at + link.len()..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    assert_eq!(token.len(), 64, "{body}");
    token
}

async fn post(base: &str, path: &str, body: Value) -> reqwest::Response {
    let url = format!("{base}{path}");
    send(&reqwest::Client::new(), Method::POST, url, None, Some(body)).await
}

/// Confirms the address with the link in its verification mail `welcome`;
/// answers the link's token.
async fn confirm_address(base: &str, welcome: &Value) -> String {
    let verify = token_in(welcome, "/verify-email");
    let body = json!({"token": verify});
    let r = post(base, "/v1/email-verifications/confirm", body).await;
    assert_eq!(r.status(), 200);
    verify
}

/// The platform's count of mail deliveries with `outcome`.
async fn deliveries(process: &mut ServiceProcess, outcome: &str) -> u64 {
    let text = reqwest::get(format!("{}/metrics", process.ops_base()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("gatehouse_mail_deliveries_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |n| n.parse().unwrap())
}

async fn await_deliveries(process: &mut ServiceProcess, outcome: &str, count: u64) {
    let deadline = std::time::Instant::now() + WITHIN;
    while deliveries(process, outcome).await < count {
        assert!(
            std::time::Instant::now() < deadline,
            "fewer than {count} deliveries {outcome}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_no_token_logged(process: &ServiceProcess, tokens: &[&str]) {
    for line in process.log.lines() {
        for token in tokens {
            assert!(!line.contains(token), "a link's token was logged: {line}");
        }
    }
}

#[tokio::test]
async fn a_reset_mail_arrives_over_starttls_signed_in_and_its_link_sets_the_password() {
    let mut sink = Sink::stopped(Security::Starttls);
    sink.start();
    let backend = Backend::new();
    let data = tempfile::tempdir().unwrap();
    let mut env = sink.env();
    env.extend(backend.env.iter().cloned());
    let mut platform = spawn_platform(env!("CARGO_BIN_EXE_gatehouse"), data.path(), &env).await;
    let base = platform.base.clone();
    let http = reqwest::Client::new();

    register(&http, &base, "mia@example.org").await;
    let welcome = sink
        .await_mail("mia@example.org", "Confirm your email address", WITHIN)
        .await;
    assert_eq!(welcome["from"], "Example <accounts@example.org>");
    assert_eq!(welcome["to"], "mia@example.org");
    assert_eq!(welcome["content_type"], "text/plain");
    assert_eq!(welcome["tls"], true, "sent before STARTTLS");
    assert_eq!(welcome["login"], "gatehouse");
    let verify = confirm_address(&base, &welcome).await;

    let r = post(
        &base,
        "/v1/password-resets",
        json!({"email": "mia@example.org"}),
    )
    .await;
    assert_eq!(r.status(), 202);
    let reset = sink
        .await_mail("mia@example.org", "Reset your password", WITHIN)
        .await;
    let body = reset["body"].as_str().unwrap();
    assert!(
        body.contains("mia@example.org") && body.contains("UTC"),
        "{body}"
    );
    let token = token_in(&reset, "/reset-password");
    let new_password = "a password from the mail";
    let r = post(
        &base,
        "/v1/password-resets/confirm",
        json!({"token": token, "new_password": new_password}),
    )
    .await;
    assert_eq!(r.status(), 204);
    assert!(login(&http, &base, "mia@example.org", new_password).await["access_token"].is_string());
    let old = login_response(&http, &base, "mia@example.org", PASSWORD).await;
    assert_ne!(old.status(), 200, "the old password still signs in");

    // A recipient refused for good is dropped, and the next mail goes out.
    register(&http, &base, "refused@example.org").await;
    await_deliveries(&mut platform, "refused", 1).await;
    register(&http, &base, "noa@example.org").await;
    sink.await_mail("noa@example.org", "Confirm your email address", WITHIN)
        .await;
    assert_eq!(deliveries(&mut platform, "failed").await, 0);
    assert_no_token_logged(&platform, &[&verify, &token]);
}

#[tokio::test]
async fn mail_sent_while_the_mail_server_is_down_arrives_once_it_is_back_across_a_restart() {
    let mut sink = Sink::stopped(Security::Tls);
    let backend = Backend::new();
    let data = tempfile::tempdir().unwrap();
    let mut env = sink.env();
    env.extend(backend.env.iter().cloned());
    env.extend([
        (
            "GATEHOUSE_IDENTITY__MAIL__RETRY_INITIAL_MS",
            "100".to_owned(),
        ),
        ("GATEHOUSE_IDENTITY__MAIL__RETRY_MAX_MS", "400".to_owned()),
    ]);
    let mut platform = spawn_platform(env!("CARGO_BIN_EXE_gatehouse"), data.path(), &env).await;
    let base = platform.base.clone();

    register(&reqwest::Client::new(), &base, "ola@example.org").await;
    let r = post(
        &base,
        "/v1/password-resets",
        json!({"email": "ola@example.org"}),
    )
    .await;
    assert_eq!(r.status(), 202);
    // Both tried, and tried again, with no mail server there.
    await_deliveries(&mut platform, "failed", 4).await;
    assert_eq!(deliveries(&mut platform, "sent").await, 0);

    // Stopped with both still queued, and started again on the same data.
    assert!(platform.terminate().await.success());
    drop(platform);
    let mut platform = spawn_platform(env!("CARGO_BIN_EXE_gatehouse"), data.path(), &env).await;
    let base = platform.base.clone();
    sink.start();
    let welcome = sink
        .await_mail("ola@example.org", "Confirm your email address", WITHIN)
        .await;
    assert_eq!(welcome["tls"], true);
    let reset = sink
        .await_mail("ola@example.org", "Reset your password", WITHIN)
        .await;
    await_deliveries(&mut platform, "sent", 2).await;
    let token = token_in(&reset, "/reset-password");
    let r = post(
        &base,
        "/v1/password-resets/confirm",
        json!({"token": token, "new_password": "kept while the server was down"}),
    )
    .await;
    assert_eq!(r.status(), 204);
    let verify = confirm_address(&base, &welcome).await;
    // Each mail went out once.
    assert_eq!(sink.mail().len(), 2);
    assert_no_token_logged(&platform, &[&verify, &token]);
}
