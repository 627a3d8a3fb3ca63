//! The gateway as an attacker meets it: raw requests written byte by byte
//! to the gateway, in front of a raw upstream that records every byte it
//! receives. Each test names what a client must not be able to do.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse::gateway::balance::EJECT_AFTER;
use gatehouse::gateway::config::{AuthPolicy, RouteConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::gateway::with_instance;
use crate::support::{PASSWORD, TestApp};

/// What an upstream received: each request's raw bytes, head and body.
type Received = Arc<Mutex<Vec<String>>>;

/// Reads one request (head, and a body framed by Content-Length or chunked
/// coding) off `stream`; none at the connection's end.
async fn read_request(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|n| n.trim().parse::<usize>().ok());
            let chunked = head.contains("transfer-encoding: chunked");
            let start = end + 4;
            let complete = match (length, chunked) {
                (_, true) => pending[start..]
                    .windows(5)
                    .position(|w| w == b"0\r\n\r\n")
                    .map(|at| start + at + 5),
                (Some(n), false) => (pending.len() >= start + n).then_some(start + n),
                (None, false) => Some(start),
            };
            if let Some(total) = complete {
                return Some(pending.drain(..total).collect());
            }
        }
        let mut buf = [0u8; 4096];
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

/// An upstream that records each request and answers it with what
/// `answer` writes for it (given the request's raw bytes), keeping the
/// connection for the next.
async fn upstream<F, Fut>(answer: F) -> (String, Received)
where
    F: Fn(Vec<u8>, Arc<Mutex<TcpStream>>) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = Received::default();
    let keep = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (keep, answer) = (keep.clone(), answer.clone());
            tokio::spawn(async move {
                let stream = Arc::new(Mutex::new(stream));
                let mut pending = Vec::new();
                loop {
                    // Only this task uses the stream: the lock is never contended.
                    let mut own = clone_stream(&stream);
                    let Some(request) = read_request(&mut own, &mut pending).await else {
                        return;
                    };
                    keep.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&request).into_owned());
                    answer(request, Arc::new(Mutex::new(own))).await;
                }
            });
        }
    });
    (url, received)
}

/// The same socket under a second handle, so that the answer can be
/// written from the answering closure while this task reads on.
fn clone_stream(stream: &Arc<Mutex<TcpStream>>) -> TcpStream {
    let std = {
        let guard = stream.lock().unwrap();
        let fd = std::os::fd::AsFd::as_fd(&*guard)
            .try_clone_to_owned()
            .unwrap();
        std::net::TcpStream::from(fd)
    };
    std.set_nonblocking(true).unwrap();
    TcpStream::from_std(std).unwrap()
}

/// Writes `bytes` to `stream` from an answering closure.
async fn write(stream: &Arc<Mutex<TcpStream>>, bytes: &[u8]) {
    let mut own = clone_stream(stream);
    let _ = own.write_all(bytes).await;
}

/// An upstream answering every request `200 ok`.
async fn recorder() -> (String, Received) {
    upstream(|_, stream| async move {
        write(&stream, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    })
    .await
}

/// The gateway's `host:port`.
fn address(app: &TestApp) -> String {
    app.gateway_base.trim_start_matches("http://").to_owned()
}

/// Sends `request` as it is, then reads until the gateway closes (or 10 s
/// pass); answers the status and the whole answer's text.
async fn raw(addr: &str, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// A request with `Connection: close`, its other fields in `fields`.
fn request(line: &str, fields: &str) -> Vec<u8> {
    format!("{line}\r\n{fields}Connection: close\r\n\r\n").into_bytes()
}

fn seen(received: &Received) -> Vec<String> {
    received.lock().unwrap().clone()
}

#[tokio::test]
async fn fields_named_with_underscores_or_overriding_the_method_never_reach_the_upstream() {
    let (url, received) = recorder().await;
    let app = with_instance("team", url, |g| {
        g.routes
            .push(RouteConfig::new("/team", "team", AuthPolicy::Optional));
    })
    .await;
    let user = app.register("u@example.org").await;
    let token = app.login("u@example.org", PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let gw = address(&app);
    let fields = format!(
        "Host: {gw}\r\nx_gatehouse_user_id: someone-else\r\nAuthorization: Bearer {token}\r\n\
         X_Custom: 1\r\nX-HTTP-Method-Override: DELETE\r\nX-Method-Override: DELETE\r\n"
    );
    let (status, _) = raw(&gw, &request("GET /team/x HTTP/1.1", &fields)).await;
    assert_eq!(status, 200);
    let got = seen(&received).pop().unwrap().to_ascii_lowercase();
    assert!(!got.contains("x_gatehouse"), "{got}");
    assert!(!got.contains("x_custom"), "{got}");
    assert!(!got.contains("method-override"), "{got}");
    // The one identity the upstream sees is the verified one.
    assert_eq!(got.matches("x-gatehouse-user-id").count(), 1, "{got}");
    let id = user["id"].as_str().unwrap();
    assert!(got.contains(&format!("x-gatehouse-user-id: {id}")), "{got}");
}

#[tokio::test]
async fn host_is_one_valid_field_and_cannot_forge_a_forwarded_element() {
    let (url, received) = recorder().await;
    let app = with_instance("team", url, |g| {
        g.routes
            .push(RouteConfig::new("/team", "team", AuthPolicy::Public));
    })
    .await;
    let gw = address(&app);
    for (what, hosts) in [
        ("a quote", "Host: a\", for=6.6.6.6;host=\"b\r\n"),
        ("none", ""),
        ("two", "Host: a.example\r\nHost: b.example\r\n"),
    ] {
        // A request without a body is read by the kernel's own loop; one
        // with a body by hyper: both keep the rule.
        for body in ["", "Content-Length: 2\r\n"] {
            let mut bytes = request("POST /team/x HTTP/1.1", &format!("{hosts}{body}"));
            if !body.is_empty() {
                bytes.extend_from_slice(b"hi");
            }
            let (status, text) = raw(&gw, &bytes).await;
            assert_eq!(status, 400, "{what} {body:?}: {text}");
            assert!(text.contains("invalid_host"), "{text}");
        }
    }
    assert!(seen(&received).is_empty(), "{:?}", seen(&received));
    let (status, _) = raw(
        &gw,
        &request("GET /team/x HTTP/1.1", "Host: api.example.org\r\n"),
    )
    .await;
    assert_eq!(status, 200);
    let got = seen(&received).pop().unwrap();
    assert!(
        got.contains("forwarded: for=127.0.0.1;proto=http;host=\"api.example.org\"\r\n"),
        "{got}"
    );
    // HTTP/1.0 knows no Host: its absence is no fault.
    let (status, _) = raw(&gw, b"GET /team/x HTTP/1.0\r\n\r\n").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn methods_of_a_clients_own_share_one_label_and_refusals_spend_the_allowance() {
    let app = TestApp::builder()
        .gateway(|g| {
            g.rate_limit.per_ip_per_sec = 1;
            g.rate_limit.per_ip_burst = 3;
        })
        .start()
        .await;
    let gw = address(&app);
    let mut statuses = Vec::new();
    for i in 0..6 {
        let line = format!("XMETHOD{i} /nope HTTP/1.1");
        let (status, _) = raw(&gw, &request(&line, &format!("Host: {gw}\r\n"))).await;
        statuses.push(status);
    }
    // 404s and 400s spend the address's allowance like any request.
    assert_eq!(&statuses[..3], &[404, 404, 404], "{statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    let (status, _) = raw(
        &gw,
        &request("GET /v1/%2f HTTP/1.1", &format!("Host: {gw}\r\n")),
    )
    .await;
    assert_eq!(status, 429);
    // A service's own port labels them alike.
    let identity = app.base.trim_start_matches("http://");
    for i in 0..3 {
        let line = format!("YMETHOD{i} /v1/users HTTP/1.1");
        raw(identity, &request(&line, "Host: a\r\n")).await;
    }
    app.ctx.metrics.flush();
    let metrics = app.metrics().await;
    assert!(!metrics.contains("METHOD0"), "{metrics}");
    assert!(
        metrics.contains(r#"gatehouse_http_requests_total{method="OTHER",route="unrouted",service="gateway",status="404"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"method="OTHER",route="/v1/users",service="identity""#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_clients_fault_is_its_own_4xx_and_never_ejects_the_instance() {
    let (url, received) = recorder().await;
    let app = with_instance("echo", url, |g| {
        let mut route = RouteConfig::new("/echo", "echo", AuthPolicy::Public);
        route.timeout_ms = Some(300);
        route.rate_limit = false;
        g.routes.push(route);
    })
    .await;
    let gw = address(&app);
    let host = format!("Host: {gw}\r\n");
    for _ in 0..=EJECT_AFTER {
        // Raw UTF-8 in the query: a request line cannot carry it.
        let (status, text) = raw(&gw, &request("GET /echo/x?q=é HTTP/1.1", &host)).await;
        assert_eq!(status, 400, "{text}");
        assert!(text.contains("invalid_query"), "{text}");
    }
    for _ in 0..=EJECT_AFTER {
        // A chunked body that stops after its first chunk.
        let mut stream = TcpStream::connect(&gw).await.unwrap();
        let head = format!(
            "POST /echo/x HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&answer[..n]).into_owned();
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("body_timeout"), "{text}");
    }
    // The instance is still in: none of that was its fault.
    let (status, text) = raw(&gw, &request("GET /echo/x?q=%C3%A9 HTTP/1.1", &host)).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        seen(&received)
            .last()
            .unwrap()
            .starts_with("GET /echo/x?q=%C3%A9 ")
    );
}

#[tokio::test]
async fn bytes_an_upstream_sends_after_a_bodiless_answer_reach_no_other_client() {
    // HEAD and a 204 get an answer head, then stray bytes that look like
    // an answer: at once in one case, a little later in the other.
    let late = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent_late = late.clone();
    let (url, _) = upstream(move |request, stream| {
        let sent_late = sent_late.clone();
        async move {
            let stray = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nEVIL";
            // The route keeps its prefix: the instance sees /team/late.
            if request.starts_with(b"HEAD /team/late") {
                sent_late.store(true, std::sync::atomic::Ordering::SeqCst);
                write(&stream, b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n").await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                write(&stream, stray).await;
            } else if request.starts_with(b"HEAD") {
                let mut answer = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n".to_vec();
                answer.extend_from_slice(stray);
                write(&stream, &answer).await;
            } else if request.starts_with(b"DELETE") {
                let mut answer = b"HTTP/1.1 204 No Content\r\n\r\n".to_vec();
                answer.extend_from_slice(stray);
                write(&stream, &answer).await;
            } else {
                write(&stream, b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ngood").await;
            }
        }
    })
    .await;
    let app = with_instance("team", url, |g| {
        let mut route = RouteConfig::new("/team", "team", AuthPolicy::Public);
        route.rate_limit = false;
        g.routes.push(route);
    })
    .await;
    let gw = &app.gateway_base;
    for first in [http::Method::HEAD, http::Method::DELETE] {
        for path in ["/team/now", "/team/late"] {
            let r = app
                .http
                .request(first.clone(), format!("{gw}{path}"))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
            tokio::time::sleep(Duration::from_millis(150)).await;
            for _ in 0..3 {
                let body = app
                    .http
                    .get(format!("{gw}/team/next"))
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                assert_eq!(body, "good", "after {first} {path}");
            }
        }
    }
    // The late stray bytes were sent.
    assert!(late.load(std::sync::atomic::Ordering::SeqCst));
}

#[tokio::test]
async fn methods_are_case_sensitive_and_paths_cannot_climb_with_parameters() {
    let (url, received) = recorder().await;
    let app = with_instance("team", url, |g| {
        let mut only_get = RouteConfig::new("/ro", "team", AuthPolicy::Public);
        only_get.methods = vec!["GET".into()];
        g.routes.push(only_get);
        g.routes
            .push(RouteConfig::new("/any", "team", AuthPolicy::Public));
    })
    .await;
    let gw = address(&app);
    let host = format!("Host: {gw}\r\n");
    for (line, status, code) in [
        ("get /ro/x HTTP/1.1", 400, "invalid_method"),
        ("Get /any/x HTTP/1.1", 400, "invalid_method"),
        ("DELETE /ro/x HTTP/1.1", 405, "method_not_allowed"),
        ("CONNECT /any/x HTTP/1.1", 405, "method_not_allowed"),
        ("TRACE /any/x HTTP/1.1", 405, "method_not_allowed"),
        ("GET /any/a/..;/b HTTP/1.1", 400, "invalid_path"),
        ("GET /any/a/..;x=1/b HTTP/1.1", 400, "invalid_path"),
        ("GET /any/a/%2e%2e;/b HTTP/1.1", 400, "invalid_path"),
        ("GET /ro/a/.;/b HTTP/1.1", 400, "invalid_path"),
    ] {
        let (got, text) = raw(&gw, &request(line, &host)).await;
        assert_eq!(got, status, "{line}: {text}");
        assert!(text.contains(code), "{line}: {text}");
    }
    // A tunnel asked for in authority form goes nowhere either.
    let (got, text) = raw(
        &gw,
        &request(
            "CONNECT example.org:443 HTTP/1.1",
            "Host: example.org:443\r\n",
        ),
    )
    .await;
    assert!((400..500).contains(&got), "{text}");
    assert!(seen(&received).is_empty(), "{:?}", seen(&received));
}

#[tokio::test]
async fn a_request_carries_one_credential_and_a_plain_request_id_of_its_own() {
    let (url, received) = recorder().await;
    let app = with_instance("team", url, |g| {
        g.routes
            .push(RouteConfig::new("/any", "team", AuthPolicy::Optional));
    })
    .await;
    let gw = address(&app);
    let (status, text) = raw(
        &gw,
        &request(
            "GET /any/x HTTP/1.1",
            &format!("Host: {gw}\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n"),
        ),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("several_credentials"), "{text}");
    assert!(seen(&received).is_empty());

    for (sent, kept) in [
        ("abc-123", true),
        ("4bf92f35-77b3-4da6-a3ce-929d0e0e4736", true),
        (&*"a".repeat(500), false),
        ("bad id\" x=1", false),
    ] {
        let r = app
            .http
            .get(format!("{}/any/x", app.gateway_base))
            .header("x-request-id", sent)
            .send()
            .await
            .unwrap();
        let answered = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        let upstream = seen(&received).pop().unwrap();
        assert!(
            upstream.contains(&format!("x-request-id: {answered}\r\n")),
            "{upstream}"
        );
        if kept {
            assert_eq!(answered, sent);
        } else {
            assert!(uuid::Uuid::parse_str(&answered).is_ok(), "{answered}");
        }
    }
}

#[tokio::test]
async fn one_http2_client_connection_opens_only_so_many_upstream_connections() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // Each connection answers its requests slowly, so that concurrent
    // requests need connections of their own.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut pending = Vec::new();
                while read_request(&mut stream, &mut pending).await.is_some() {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let app = with_instance("slow", url, |g| {
        let mut route = RouteConfig::new("/slow", "slow", AuthPolicy::Public);
        route.rate_limit = false;
        g.routes.push(route);
    })
    .await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let asks = (0..100).map(|i| {
        let (client, url) = (client.clone(), format!("{}/slow/{i}", app.gateway_base));
        tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
    });
    for ask in asks.collect::<Vec<_>>() {
        assert_eq!(ask.await.unwrap(), 200);
    }
    let limit = gatehouse::kernel::config::ServerConfig::default().http2_max_concurrent_streams;
    let opened = connections.load(Ordering::SeqCst);
    assert!(
        opened <= limit as usize,
        "{opened} upstream connections for one client"
    );
}

/// Requests framed two ways at once, or framed wrongly, as used to smuggle
/// one request inside another past a proxy: each is refused whole, with
/// its connection closed, and nothing of it reaches the upstream; the one
/// framing RFC 9112 lets a server read is read one way only.
#[tokio::test]
async fn requests_framed_ambiguously_are_refused_and_never_reach_the_upstream() {
    let (url, received) = recorder().await;
    let app = with_instance("team", url, |g| {
        g.routes
            .push(RouteConfig::new("/any", "team", AuthPolicy::Public));
    })
    .await;
    let gw = address(&app);
    let host = format!("Host: {gw}\r\n");
    let many_fields: String = (0..120).map(|n| format!("X-F{n}: v\r\n")).collect();
    let long_field = format!("X-Long: {}\r\n", "a".repeat(70 * 1024));
    let post = "POST /any/x HTTP/1.1";
    let mut wrong: Vec<String> = Vec::new();
    for (what, line, fields, body, status) in [
        (
            "two lengths",
            post,
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            "hello!",
            400,
        ),
        (
            "a list of lengths",
            post,
            "Content-Length: 5, 6\r\n",
            "hello!",
            400,
        ),
        (
            "a signed length",
            post,
            "Content-Length: +5\r\n",
            "hello",
            400,
        ),
        (
            "a coding that does not end in chunked",
            post,
            "Transfer-Encoding: chunked, identity\r\n",
            "0\r\n\r\n",
            400,
        ),
        (
            "an unknown coding",
            post,
            "Transfer-Encoding: xchunked\r\n",
            "0\r\n\r\n",
            400,
        ),
        (
            "a space before the colon",
            post,
            "Transfer-Encoding : chunked\r\n",
            "0\r\n\r\n",
            400,
        ),
        (
            "a folded field",
            post,
            "X-A: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
            "",
            400,
        ),
        (
            "a coding in HTTP/1.0",
            "POST /any/x HTTP/1.0",
            "Transfer-Encoding: chunked\r\n",
            "0\r\n\r\n",
            400,
        ),
        (
            "a bad chunk size",
            post,
            "Transfer-Encoding: chunked\r\n",
            "5x\r\nhello\r\n0\r\n\r\n",
            400,
        ),
        (
            "two spaces in the request line",
            "GET  /any/x HTTP/1.1",
            "",
            "",
            400,
        ),
        (
            "a control byte in a field",
            "GET /any/x HTTP/1.1",
            "X-A: a\x00b\r\n",
            "",
            400,
        ),
        (
            "too many fields",
            "GET /any/x HTTP/1.1",
            &many_fields,
            "",
            431,
        ),
        (
            "a head too long",
            "GET /any/x HTTP/1.1",
            &long_field,
            "",
            431,
        ),
    ] {
        let mut bytes = format!("{line}\r\n{host}{fields}\r\n").into_bytes();
        bytes.extend_from_slice(body.as_bytes());
        let (got, text) = raw(&gw, &bytes).await;
        if got != status || !seen(&received).is_empty() {
            wrong.push(format!("{what}: {text} / {:?}", seen(&received)));
            received.lock().unwrap().clear();
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    // A length and a coding: read by the coding alone, the length dropped,
    // and the connection closed after the answer (RFC 9112 section 6.1), so
    // what the length would have hidden is never read as a request.
    let smuggling = format!(
        "{post}\r\n{host}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
         GET /any/smuggled HTTP/1.1\r\n{host}\r\n"
    );
    let (got, text) = raw(&gw, smuggling.as_bytes()).await;
    assert_eq!(got, 200, "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "one answer: {text}");
    assert!(text.contains("connection: close"), "{text}");
    let got = seen(&received);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        !got[0].to_ascii_lowercase().contains("content-length"),
        "{got:?}"
    );
    assert!(
        got[0].ends_with("transfer-encoding: chunked\r\n\r\n0\r\n\r\n"),
        "{got:?}"
    );
}
