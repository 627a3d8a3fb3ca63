//! The gateway over TLS: HTTP/2 and HTTP/1.1 by ALPN, both carried through
//! to the services; TLS 1.2 and 1.3 only; a renewed certificate served
//! without a restart, and a broken one not taken.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{PASSWORD, TestApp, login_response, register_response};

/// A self-signed certificate for `localhost`: its PEM and its key's PEM.
fn certificate() -> (String, String) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    (made.cert.pem(), made.key_pair.serialize_pem())
}

/// Puts `pem` at `path` the way a renewal does: written aside, then moved.
fn install(path: &Path, pem: &str) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, pem).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

/// A client that trusts `cert` alone; HTTP/1.1 only when `http1`.
fn client(cert: &str, http1: bool) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cert.as_bytes()).unwrap())
        .timeout(Duration::from_secs(5));
    let builder = if http1 { builder.http1_only() } else { builder };
    builder.build().unwrap()
}

/// What the test's thread logs at ERROR, as text. A `#[tokio::test]` runs
/// every task on that thread, the gateway's certificate watcher among them.
#[derive(Clone, Default)]
struct Logged(Arc<Mutex<Vec<u8>>>);

impl Logged {
    /// Starts keeping what this thread logs, until the guard is dropped.
    fn start() -> (Logged, tracing::subscriber::DefaultGuard) {
        let logged = Logged::default();
        let writer = logged.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::ERROR)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logged, tracing::subscriber::set_default(subscriber))
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Waits (up to 15 s) until a line containing `needle` is logged past
    /// byte `from`.
    async fn wait_past(&self, from: usize, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !String::from_utf8_lossy(&self.0.lock().unwrap()[from..]).contains(needle) {
            assert!(Instant::now() < deadline, "never logged: {needle}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl std::io::Write for Logged {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether `openssl s_client` completes a handshake at `port` with only
/// `version` (`-tls1_1`, `-tls1_2`, ...) allowed. Awaited, as the
/// gateway answering it runs on the test's own thread.
async fn handshakes(port: u16, version: &str) -> bool {
    let out = tokio::process::Command::new("timeout")
        .args(["10", "openssl", "s_client", "-brief"])
        .args(["-connect", &format!("127.0.0.1:{port}"), version])
        // Lets the client offer old versions at all; the server decides.
        .args(["-cipher", "DEFAULT:@SECLEVEL=0"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stderr).contains("CONNECTION ESTABLISHED")
}

#[tokio::test]
async fn the_gateway_serves_http2_and_http1_over_tls_and_takes_a_renewed_certificate() {
    let (logged, _guard) = Logged::start();
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (first, first_key) = certificate();
    install(&cert_file, &first);
    install(&key_file, &first_key);
    let (cert, key) = (
        cert_file.to_string_lossy().into_owned(),
        key_file.to_string_lossy().into_owned(),
    );
    let app = TestApp::builder()
        .gateway(move |g| {
            g.tls.cert_file = cert;
            g.tls.key_file = key;
            g.tls.reload_check_secs = 1;
        })
        .start()
        .await;
    let port = app.gateway_base.rsplit(':').next().unwrap().to_owned();
    let base = format!("https://localhost:{port}");

    // HTTP/2 by ALPN, through to identity and back.
    let h2 = client(&first, false);
    let created = register_response(&h2, &base, "h2@example.org", PASSWORD).await;
    assert_eq!(created.version(), reqwest::Version::HTTP_2);
    assert_eq!(created.status(), 201);
    // HTTP/1.1 for a client that offers nothing else.
    let h1 = client(&first, true);
    let created = register_response(&h1, &base, "h1@example.org", PASSWORD).await;
    assert_eq!(created.version(), reqwest::Version::HTTP_11);
    assert_eq!(created.status(), 201);
    let signed_in = login_response(&h1, &base, "h1@example.org", PASSWORD).await;
    assert_eq!(signed_in.status(), 200);
    // Plain HTTP gets no answer on the TLS port.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");
    // TLS 1.2 and 1.3 only.
    let port: u16 = port.parse().unwrap();
    assert!(handshakes(port, "-tls1_2").await);
    assert!(handshakes(port, "-tls1_3").await);
    assert!(!handshakes(port, "-tls1_1").await);

    // A renewed certificate is served from the next connection on.
    let (second, second_key) = certificate();
    install(&key_file, &second_key);
    install(&cert_file, &second);
    let renewed = client(&second, true);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match renewed.get(format!("{base}/healthz")).send().await {
            Ok(answer) if answer.status() == 200 => break,
            other => assert!(Instant::now() < deadline, "not renewed: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        client(&first, true)
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_err(),
        "the old certificate is still served"
    );

    // A broken file is not taken: once the watcher has read it and said
    // so, the renewed certificate stays.
    let seen = logged.len();
    install(
        &cert_file,
        "-----BEGIN CERTIFICATE-----\nnot a certificate\n",
    );
    logged.wait_past(seen, "TLS certificate not reloaded").await;
    let still = client(&second, true)
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(still.status(), 200);
}

#[tokio::test]
async fn a_gateway_given_half_a_tls_setting_or_a_mismatched_key_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (cert, _) = certificate();
    let (_, other_key) = certificate();
    install(&cert_file, &cert);
    install(&key_file, &other_key);
    let ctx = gatehouse::platform::context(&gatehouse::config::Config::default()).unwrap();
    let mut config = gatehouse::gateway::GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    config.tls.cert_file = cert_file.to_string_lossy().into_owned();
    let e = gatehouse::gateway::start(&ctx, config.clone())
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("both cert_file and key_file"), "{e}");
    config.tls.key_file = key_file.to_string_lossy().into_owned();
    let e = gatehouse::gateway::start(&ctx, config).await.err().unwrap();
    assert!(e.to_string().contains("does not belong to"), "{e}");
}
