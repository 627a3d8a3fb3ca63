//! What every server offers whatever its service: health, readiness,
//! metrics, request ids, problem answers for unknown routes, gRPC health,
//! graceful shutdown.

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use gatehouse::kernel::bus::EventBus as _;

use gatehouse::kernel::clock::SystemClock;

use crate::support::{TestApp, assert_problem, grpc_code};

#[tokio::test]
async fn health_readiness_and_metrics_are_served() {
    let app = TestApp::start().await;
    let r = app.get("/healthz").await;
    assert_eq!(r.status(), 200);
    let r = app.get("/readyz").await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["checks"]["database"], "ok");

    app.register("m@example.org").await;
    let metrics = app.metrics().await;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("gatehouse_http_requests_total")
                && l.contains("route=\"/v1/users\"")
                && l.contains("status=\"201\"")
        })
        .unwrap_or_else(|| panic!("no request counter in\n{metrics}"));
    assert!(line.ends_with(" 1"), "{line}");
    assert!(metrics.contains("gatehouse_http_request_duration_seconds_bucket{method=\"POST\",route=\"/v1/users\",service=\"identity\""));
    // Metrics name internal addresses and timings: never on a public port.
    for base in [&app.base, &app.gateway_base, &app.auth_base] {
        let r = app
            .http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{base}");
    }
}

#[tokio::test]
async fn request_ids_are_kept_or_made() {
    let app = TestApp::start().await;
    let r = app
        .http
        .get(format!("{}/healthz", app.base))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let r = app.get("/healthz").await;
    let made = r.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(made).is_ok(), "{made}");
}

#[tokio::test]
async fn unknown_routes_are_problem_404s() {
    let app = TestApp::start().await;
    assert_problem(app.get("/v1/nothing-here").await, 404, "not_found").await;
}

#[tokio::test]
async fn grpc_health_reports_serving() {
    let app = TestApp::start().await;
    let channel = app.ctx.clients.channel("identity").await.unwrap();
    let mut health = HealthClient::new(channel);
    let r = health
        .check(HealthCheckRequest {
            service: "gatehouse.identity.v1.Identity".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn internal_calls_need_a_credential_of_the_deployment() {
    use gatehouse::kernel::credentials::{Keyring, SERVICES};
    use gatehouse::kernel::rpc::signed;
    use gatehouse::proto::identity::v1 as pb;
    use gatehouse::proto::identity::v1::identity_client::IdentityClient;

    let app = TestApp::start().await;
    let token = app.signed_in("user@example.org").await;
    let ask = || pb::VerifyCredentialsRequest {
        device_token: String::new(),
        email: "user@example.org".into(),
        password: "not the password 123".into(),
    };
    let refused = |status: tonic::Status, says: &str| {
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        assert!(status.message().contains(says), "{says}: {status:?}");
        assert_eq!(grpc_code(&status), "", "the method never ran: {status:?}");
    };
    let channel = tonic::transport::Channel::from_shared(app.base.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = |caller, callee| IdentityClient::new(signed(channel.clone(), caller, callee));

    refused(
        client(None, "identity")
            .verify_credentials(ask())
            .await
            .unwrap_err(),
        "no service credential",
    );
    let elsewhere = Keyring::ephemeral(&SERVICES, std::sync::Arc::new(SystemClock)).unwrap();
    refused(
        client(elsewhere.caller("auth"), "identity")
            .verify_credentials(ask())
            .await
            .unwrap_err(),
        "does not trust",
    );
    refused(
        client(app.ctx.keyring.caller("auth"), "authz")
            .verify_credentials(ask())
            .await
            .unwrap_err(),
        "for another service",
    );
    // A user's access token is no credential of a service.
    let mut request = tonic::Request::new(ask());
    request.metadata_mut().insert(
        gatehouse::kernel::credentials::HEADER,
        token.parse().unwrap(),
    );
    refused(
        client(None, "identity")
            .verify_credentials(request)
            .await
            .unwrap_err(),
        "does not trust",
    );

    // Signed by a service of the deployment, the method answers.
    let answer = client(app.ctx.keyring.caller("auth"), "identity")
        .verify_credentials(ask())
        .await
        .unwrap_err();
    assert_eq!(grpc_code(&answer), "invalid_credentials", "{answer:?}");

    // And no internal method is reached through the gateway.
    let r = app
        .http
        .post(format!(
            "{}/gatehouse.identity.v1.Identity/VerifyCredentials",
            app.gateway_base
        ))
        .header("content-type", "application/grpc")
        .body(vec![0u8; 5])
        .send()
        .await
        .unwrap();
    // The gateway's 404, told in gRPC's terms to a gRPC request.
    assert_eq!(r.headers()["grpc-status"], "5", "{r:?}");
    assert_eq!(r.headers()["gatehouse-code"], "not_found", "{r:?}");
}

#[tokio::test]
async fn shutdown_deregisters_and_stops_serving() {
    let mut app = TestApp::start().await;
    let base = app.base.clone();
    let registry = app.ctx.registry.clone();
    assert_eq!(registry.resolve("identity").await.unwrap().len(), 1);
    app.stop().await;
    assert!(registry.resolve("identity").await.unwrap().is_empty());
    assert!(reqwest::get(format!("{base}/healthz")).await.is_err());
}

#[tokio::test]
async fn config_layers_defaults_file_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gatehouse.toml");
    std::fs::write(&file, "data_dir = \"/srv/gh\"\n[identity]\nregistration_enabled = false\n[identity.throttle]\nfree_failures = 9\n").unwrap();
    let config = gatehouse::config::Config::load(Some(&file)).unwrap();
    assert_eq!(config.data_dir, std::path::PathBuf::from("/srv/gh"));
    assert!(!config.identity.registration_enabled);
    assert_eq!(config.identity.throttle.free_failures, 9);
    // The lockout it replaced is still read (and not used: identity warns).
    std::fs::write(
        &file,
        "[identity.lockout]\nmax_failures = 5\nduration_secs = 900\n",
    )
    .unwrap();
    let upgraded = gatehouse::config::Config::load(Some(&file)).unwrap();
    assert!(upgraded.identity.lockout.is_some());
    assert_eq!(config.identity.password.min_length, 12);

    std::fs::write(&file, "[identity]\nregistraton_enabled = false\n").unwrap();
    let err = gatehouse::config::Config::load(Some(&file))
        .unwrap_err()
        .to_string();
    assert!(err.contains("registraton_enabled"), "{err}");
    std::fs::write(&file, "[database]\npool_size = \"many\"\n").unwrap();
    let err = gatehouse::config::Config::load(Some(&file))
        .unwrap_err()
        .to_string();
    assert!(err.contains("pool_size"), "{err}");
    // A key that moved is refused, naming where it went.
    for section in ["gateway", "identity", "audit"] {
        std::fs::write(&file, format!("[{section}]\npermission_cache_ms = 100\n")).unwrap();
        let err = gatehouse::config::Config::load(Some(&file))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "{section}.permission_cache_ms moved to rpc.permission_cache_ms"
            )),
            "{err}"
        );
    }
    std::fs::write(&file, "[rpc]\npermission_cache_ms = 100\n").unwrap();
    let moved = gatehouse::config::Config::load(Some(&file)).unwrap();
    assert_eq!(moved.rpc.permission_cache_ms, 100);
    let err = gatehouse::config::Config::load(Some(&dir.path().join("missing.toml")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.toml"), "{err}");
}

#[test]
fn the_example_config_is_valid_and_shows_the_defaults() {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("gatehouse.example.toml");
    let loaded = gatehouse::config::Config::load(Some(&file)).unwrap();
    let defaults = gatehouse::config::Config::default();
    assert_eq!(format!("{loaded:?}"), format!("{defaults:?}"));
}

/// Tables whose keys are the user's own (services, mail kinds).
const SECTIONS_OF_ONES_OWN: [&str; 2] = ["registry.instances", "identity.mail.templates"];

/// Every key of the configuration, dotted (`identity.mail.smtp.host`):
/// the leaves of the defaults, where a list, a map or an unset option is
/// a leaf.
fn config_keys() -> Vec<String> {
    fn walk(prefix: &str, value: &serde_json::Value, keys: &mut Vec<String>) {
        match value {
            // Maps of the user's own keys are leaves.
            serde_json::Value::Object(map)
                if !map.is_empty() && !SECTIONS_OF_ONES_OWN.contains(&prefix) =>
            {
                for (key, inner) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&path, inner, keys);
                }
            }
            _ => keys.push(prefix.to_owned()),
        }
    }
    let defaults = serde_json::to_value(gatehouse::config::Config::default()).unwrap();
    let mut keys = Vec::new();
    walk("", &defaults, &mut keys);
    keys
}

/// The text under the heading or table header naming `section` (up to
/// the next one), found by `is_header`.
fn section(
    text: &str,
    is_header: impl Fn(&str) -> Option<String>,
    section: &str,
) -> Option<String> {
    let mut found: Option<String> = None;
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(name) = is_header(line) {
            if name == section {
                found.get_or_insert_with(String::new);
            }
            current = Some(name);
            continue;
        }
        if current.as_deref() == Some(section) || (section.is_empty() && current.is_none()) {
            found.get_or_insert_with(String::new).push_str(line);
            found.as_mut().unwrap().push('\n');
        }
    }
    found
}

#[test]
fn every_config_key_is_in_the_example_and_the_docs() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("gatehouse.example.toml")).unwrap();
    let docs = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let toml_header = |line: &str| {
        let line = line.trim_start_matches('#').trim();
        let name = line
            .strip_prefix("[[")
            .and_then(|l| l.split("]]").next())
            .or_else(|| line.strip_prefix('[').and_then(|l| l.split(']').next()))?;
        (!name.contains(' ') && !name.is_empty()).then(|| name.to_owned())
    };
    let doc_header = |line: &str| {
        let rest = line
            .strip_prefix("## ")
            .or_else(|| line.strip_prefix("### "))?;
        if rest == "Top level" {
            return Some(String::new());
        }
        let name = rest
            .trim_matches('`')
            .trim_start_matches("[[")
            .trim_start_matches('[');
        Some(name.trim_end_matches("]]").trim_end_matches(']').to_owned())
    };
    let mut missing = Vec::new();
    for key in config_keys() {
        let (table, leaf) = key.rsplit_once('.').unwrap_or(("", key.as_str()));
        // A table of its own (`[registry.instances]`, `[[gateway.routes]]`)
        // or a key in its table.
        let in_example = section(&example, toml_header, &key).is_some()
            || section(&example, toml_header, table).is_some_and(|text| {
                text.lines().any(|l| {
                    let l = l.trim_start_matches('#').trim_start();
                    l.strip_prefix(leaf)
                        .is_some_and(|rest| rest.trim_start().starts_with('='))
                })
            });
        if !in_example {
            missing.push(format!("gatehouse.example.toml: {key}"));
        }
        let in_docs = section(&docs, doc_header, &key).is_some()
            || section(&docs, doc_header, table)
                .is_some_and(|text| text.contains(&format!("`{leaf}`")));
        if !in_docs {
            missing.push(format!("docs/configuration.md: {key}"));
        }
    }
    assert!(
        missing.is_empty(),
        "keys not described:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_deployment_configs_wire_three_machines_together() {
    use gatehouse::kernel::config::{BusBackend, DatabaseBackend, RegistryBackend};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/config");
    let load = |service: &str| {
        gatehouse::config::Config::load(Some(&dir.join(format!("{service}.toml"))))
            .unwrap_or_else(|e| panic!("{service}.toml: {e}"))
    };
    let configs: Vec<(&str, gatehouse::config::Config)> = gatehouse::kernel::credentials::SERVICES
        .iter()
        .map(|service| (*service, load(service)))
        .collect();
    // Where each service listens, as the others list it.
    let listens: std::collections::BTreeMap<&str, String> = configs
        .iter()
        .map(|(service, c)| {
            let addr = match *service {
                "gateway" => c.gateway.listen,
                "auth" => c.auth.listen,
                "identity" => c.identity.listen,
                "authz" => c.authz.listen,
                _ => c.audit.listen,
            };
            (*service, format!("http://{addr}"))
        })
        .collect();
    let mut ops = std::collections::BTreeSet::new();
    let members = &configs[0].1.registry.etcd.endpoints;
    assert_eq!(members.len(), 3, "an etcd member on each machine");
    for (service, config) in &configs {
        assert_eq!(config.registry.backend, RegistryBackend::Etcd, "{service}");
        assert_eq!(&config.registry.etcd.endpoints, members, "{service}");
        assert_eq!(config.bus.backend, BusBackend::Outbox, "{service}");
        if *service != "gateway" {
            assert_eq!(
                config.database.backend,
                DatabaseBackend::Postgres,
                "{service}"
            );
        }
        // Registered where it listens: an address the other machines reach,
        // on a machine that runs an etcd member.
        let host = listens[service].split(':').nth(1).unwrap().to_owned();
        assert!(!host.contains("0.0.0.0"), "{service} listens on a wildcard");
        assert!(
            members.iter().any(|m| m.contains(&format!("{host}:"))),
            "{service}: no etcd member on {host}"
        );
        assert!(
            ops.insert((host, config.server.ops_listen)),
            "{service}: ops_listen taken"
        );
    }
    // Listening beyond loopback, identity sends its mail by SMTP.
    let identity = &configs[2].1.identity;
    assert_eq!(configs[2].0, "identity");
    assert_eq!(
        identity.mail.transport,
        gatehouse::identity::mail::config::Transport::Smtp
    );
    identity.mail.check().unwrap();
    assert!(identity.link_base_url.starts_with("https://"));
}

/// A bus that refuses to publish while `down` is set.
#[derive(Default)]
struct FlakyBus {
    down: std::sync::atomic::AtomicBool,
    inner: gatehouse::kernel::bus::InProcessBus,
}

#[async_trait::async_trait]
impl gatehouse::kernel::bus::EventBus for FlakyBus {
    async fn publish(
        &self,
        event: gatehouse::kernel::bus::Envelope,
    ) -> Result<(), gatehouse::kernel::bus::BusError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(gatehouse::kernel::bus::BusError::Unavailable(
                "down for the test".into(),
            ));
        }
        self.inner.publish(event).await
    }

    async fn subscribe(
        &self,
        consumer: &str,
        sources: &[&str],
        start: gatehouse::kernel::bus::Start,
    ) -> Result<
        tokio::sync::mpsc::Receiver<gatehouse::kernel::bus::Delivery>,
        gatehouse::kernel::bus::BusError,
    > {
        self.inner.subscribe(consumer, sources, start).await
    }

    fn crosses_processes(&self) -> bool {
        false
    }
}

#[tokio::test]
async fn events_written_while_the_bus_is_down_arrive_later_in_order_once() {
    let bus = std::sync::Arc::new(FlakyBus::default());
    bus.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let app = TestApp::builder().bus(bus.clone()).start().await;
    let mut events = bus
        .subscribe("test", &["identity"], gatehouse::kernel::bus::Start::Latest)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let user = app.register(&format!("u{i}@example.org")).await;
        ids.push(user["id"].as_str().unwrap().to_owned());
    }
    // The relay has tried and failed: nothing went out.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !app
        .metrics()
        .await
        .contains("gatehouse_outbox_publish_failures_total{service=\"identity\"}")
    {
        assert!(std::time::Instant::now() < deadline, "no failed publish");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        events.try_recv().is_err(),
        "nothing can be delivered while the bus is down"
    );

    bus.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let mut got = Vec::new();
    while got.len() < 3 {
        let e = tokio::time::timeout(std::time::Duration::from_secs(5), events.recv())
            .await
            .expect("delivered after the bus is back")
            .unwrap();
        got.push(e.event);
    }
    let subjects: Vec<String> = got.iter().map(|e| e.subject.clone()).collect();
    assert_eq!(subjects, ids);
    assert!(got.iter().all(|e| e.r#type == "identity.user.registered"));
    // Nothing is delivered twice: the next event written is the next one
    // delivered, with no repeat of the three before it.
    let last = app.register("u3@example.org").await;
    let next = tokio::time::timeout(std::time::Duration::from_secs(5), events.recv())
        .await
        .expect("the next event is delivered")
        .unwrap()
        .event;
    assert_eq!(next.subject, last["id"].as_str().unwrap());
}

#[tokio::test]
async fn clients_that_send_headers_too_slowly_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::builder()
        .server(|s| s.header_read_timeout_ms = 300)
        .start()
        .await;
    for base in [&app.base, &app.gateway_base] {
        let mut stream = raw_connection(base).await;
        // Half a request, then nothing.
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            stream.read_to_end(&mut buf),
        )
        .await;
        assert!(
            read.is_ok(),
            "{base}: the stalled connection was still open after 3 s"
        );
        // Whole requests on fresh connections are still served.
        assert_eq!(
            reqwest::get(format!("{base}/healthz"))
                .await
                .unwrap()
                .status(),
            200
        );
    }
}

#[tokio::test]
async fn idle_http2_connections_are_closed_and_busy_ones_kept() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const GOAWAY: u8 = 7;
    let app = TestApp::builder()
        .server(|s| s.http2_idle_timeout_ms = 300)
        .start()
        .await;
    for base in [&app.base, &app.gateway_base] {
        let mut stream = raw_connection(base).await;
        stream.write_all(PREFACE).await.unwrap();
        stream.write_all(&SETTINGS).await.unwrap();
        // A client that keeps sending (pings, here) for well over the
        // timeout keeps its connection.
        let mut got = Vec::new();
        for _ in 0..12 {
            stream.write_all(&PING).await.unwrap();
            let mut buf = [0u8; 4096];
            if let Ok(read) =
                tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await
            {
                let n = read.unwrap();
                assert!(n > 0, "{base}: closed while its client was sending");
                got.extend_from_slice(&buf[..n]);
            }
        }
        assert!(
            !frame_types(&got).contains(&GOAWAY),
            "{base}: wound up while busy"
        );
        // Then nothing, not even an answer to the GOAWAY: the connection is
        // wound up, then closed.
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got)).await;
        assert!(
            read.is_ok(),
            "{base}: the idle connection was still open after 5 s"
        );
        assert!(
            frame_types(&got).contains(&GOAWAY),
            "{base}: closed with a GOAWAY"
        );
    }
}

/// What a raw HTTP/2 client sends: the connection preface, an empty
/// SETTINGS frame, and a PING.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
const PING: [u8; 17] = [0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];

/// The types of the HTTP/2 frames in `bytes`, in order.
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let length = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        types.push(bytes[3]);
        bytes = &bytes[(9 + length).min(bytes.len())..];
    }
    types
}

/// A plain TCP connection to the server at `base` (`http://host:port`).
async fn raw_connection(base: &str) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// One answer read off `stream` (after what `buf` already holds): status,
/// header fields, body (by `Content-Length`; none when it answers HEAD).
async fn read_answer(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    head: bool,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    loop {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut answer = httparse::Response::new(&mut fields);
        if let httparse::Status::Complete(n) = answer.parse(buf).unwrap() {
            let status = answer.code.unwrap();
            let fields: Vec<(String, String)> = answer
                .headers
                .iter()
                .map(|f| {
                    (
                        f.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(f.value).into_owned(),
                    )
                })
                .collect();
            let length = if head {
                0
            } else {
                fields
                    .iter()
                    .find(|(name, _)| name == "content-length")
                    .map(|(_, v)| v.parse::<usize>().unwrap())
                    .unwrap_or_else(|| panic!("no content-length in {fields:?}"))
            };
            while buf.len() < n + length {
                let mut more = [0u8; 4096];
                let read = stream.read(&mut more).await.unwrap();
                assert!(read > 0, "connection closed within a body");
                buf.extend_from_slice(&more[..read]);
            }
            let body = buf[n..n + length].to_vec();
            buf.drain(..n + length);
            return (status, fields, body);
        }
        let mut more = [0u8; 4096];
        let read = stream.read(&mut more).await.unwrap();
        assert!(read > 0, "connection closed before an answer");
        buf.extend_from_slice(&more[..read]);
    }
}

#[tokio::test]
async fn one_connection_carries_pipelined_requests_then_requests_with_bodies() {
    use tokio::io::AsyncWriteExt;
    let app = TestApp::start().await;
    for base in [&app.base, &app.gateway_base] {
        let mut stream = raw_connection(base).await;
        let mut buf = Vec::new();
        // Two requests in one write: both answered, in order.
        stream
            .write_all(
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: one\r\n\r\n\
                  HEAD /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: two\r\n\r\n",
            )
            .await
            .unwrap();
        let (status, fields, body) = read_answer(&mut stream, &mut buf, false).await;
        assert_eq!(status, 200, "{base}");
        assert!(fields.contains(&("x-request-id".into(), "one".into())));
        assert!(fields.iter().any(|(name, _)| name == "date"), "{fields:?}");
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["status"], "ok");
        let (status, fields, _) = read_answer(&mut stream, &mut buf, true).await;
        assert_eq!(status, 200);
        assert!(fields.contains(&("x-request-id".into(), "two".into())));
        // A request with a body on the same connection, then a plain one.
        stream
            .write_all(
                b"POST /v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                  Content-Length: 2\r\n\r\n{}",
            )
            .await
            .unwrap();
        let (status, fields, _) = read_answer(&mut stream, &mut buf, false).await;
        assert_eq!(status, 422, "{base}: {fields:?}");
        assert!(fields.contains(&("content-type".into(), "application/problem+json".into())));
        stream
            .write_all(b"GET /v1/nothing-here HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (status, _, body) = read_answer(&mut stream, &mut buf, false).await;
        assert_eq!(status, 404);
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], "not_found", "{body}");
    }
}

#[tokio::test]
async fn an_http10_client_gets_its_answer_and_then_the_connection_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::start().await;
    for base in [&app.base, &app.gateway_base] {
        let mut stream = raw_connection(base).await;
        stream
            .write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let mut all = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(3),
            stream.read_to_end(&mut all),
        )
        .await
        .unwrap_or_else(|_| panic!("{base}: the connection stayed open"))
        .unwrap();
        let text = String::from_utf8_lossy(&all);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.ends_with(r#"{"status":"ok"}"#), "{text}");
    }
}

#[tokio::test]
async fn an_http2_connection_that_asks_nothing_is_closed() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::builder()
        .server(|s| s.header_read_timeout_ms = 300)
        .start()
        .await;
    for base in [&app.base, &app.gateway_base] {
        let mut stream = raw_connection(base).await;
        stream.write_all(PREFACE).await.unwrap();
        stream.write_all(&SETTINGS).await.unwrap();
        // Pings and nothing else: bytes move, but no request ever comes.
        let started = Instant::now();
        let mut closed = false;
        while started.elapsed() < Duration::from_secs(5) {
            if stream.write_all(&PING).await.is_err() {
                closed = true;
                break;
            }
            let mut buf = [0u8; 4096];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await
            {
                closed = true;
                break;
            }
        }
        assert!(closed, "{base}: open after 5 s of pings without a request");
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::builder()
        .server(|s| {
            s.write_timeout_ms = 300;
            s.header_read_timeout_ms = 30_000;
        })
        .start()
        .await;
    let addr: std::net::SocketAddr = app
        .gateway_base
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    // The first request is served by the kernel's loop; one with a body
    // hands the connection to hyper for the rest.
    for first in [
        "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n",
        "POST /v1/users HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    ] {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(addr).await.unwrap();
        let mut requests = first.to_owned();
        for _ in 0..1000 {
            requests.push_str("GET /openapi.json HTTP/1.1\r\nHost: a\r\n\r\n");
        }
        stream.write_all(requests.as_bytes()).await.unwrap();
        // Reads nothing for a while: the answers pile up unread.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut got = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got)).await;
        assert!(read.is_ok(), "{first:?}: the connection was still open");
        let answers = String::from_utf8_lossy(&got)
            .matches("HTTP/1.1 200")
            .count();
        assert!(
            answers < 1000,
            "{first:?}: all {answers} answers were written"
        );
    }
}

/// A listener that takes connections and never answers on them.
async fn silent_listener() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    (url, held)
}

#[tokio::test]
async fn calls_to_a_service_whose_instances_all_hang_fail_at_once_after_a_few() {
    use gatehouse::proto::authz::v1 as pb;
    use gatehouse::proto::authz::v1::authz_client::AuthzClient;
    let (first, _a) = silent_listener().await;
    let (second, _b) = silent_listener().await;
    let mut instances = std::collections::BTreeMap::new();
    instances.insert("authz".to_owned(), vec![first, second]);
    let registry =
        std::sync::Arc::new(gatehouse::kernel::registry::StaticRegistry::new(&instances));
    let config = gatehouse::kernel::config::RpcConfig {
        connect_timeout_ms: 200,
        request_timeout_ms: 200,
        ..Default::default()
    };
    let clients = gatehouse::kernel::rpc::Clients::new(registry, &config, None);
    let check = || async {
        let mut client = AuthzClient::new(clients.channel("authz").await.unwrap());
        client
            .check(pb::CheckRequest {
                question: Some(pb::Question {
                    user_id: uuid::Uuid::now_v7().to_string(),
                    permission: "users:read".into(),
                    resource: String::new(),
                    ..Default::default()
                }),
                at_least_revision: 0,
            })
            .await
            .unwrap_err()
    };
    // Each call waits out its timeout on an instance, and is tried on the
    // other (a check is safe to repeat), until both have failed enough
    // times in a row to be ejected.
    for _ in 0..gatehouse::kernel::rpc::resilient::EJECT_AFTER {
        let status = check().await;
        assert!(
            !status.message().contains("no instance"),
            "still tried: {status:?}"
        );
    }
    // Then calls fail at once without trying either, but for the odd
    // trial of an instance (one each per TRIAL_EVERY).
    let mut at_once = 0;
    for _ in 0..20 {
        let status = check().await;
        if status.message() == "no instance of authz is available" {
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            at_once += 1;
        }
    }
    assert!(at_once >= 16, "{at_once} of 20 calls failed at once");
}
