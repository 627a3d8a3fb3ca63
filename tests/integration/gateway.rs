//! The gateway as clients meet it: one entry point routing to the services,
//! token checks at the edge per route, path tricks, spoofed identity
//! headers, and upstream faults.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse::gateway::balance::EJECT_AFTER;
use gatehouse::gateway::config::{AuthPolicy, RouteConfig, UpstreamProtocol};
use reqwest::Method;
use serde_json::{Value, json};

use crate::binary::raw_get;
use crate::support::{
    PASSWORD, TestApp, assert_problem, closed_addr, closed_url, grpc_code, register, send, sign_in,
};

/// A stand-in upstream that records the headers it receives and echoes its
/// path and query; `delay` makes it slow.
async fn echo(delay: Duration) -> (String, Arc<Mutex<Vec<http::HeaderMap>>>) {
    let seen: Arc<Mutex<Vec<http::HeaderMap>>> = Arc::default();
    let record = seen.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    serve_echo(listener, delay, record);
    (url, seen)
}

/// Serves the echo upstream on `listener`; the answer also names the HTTP
/// version the request came in.
fn serve_echo(
    listener: tokio::net::TcpListener,
    delay: Duration,
    record: Arc<Mutex<Vec<http::HeaderMap>>>,
) {
    let app = axum::Router::new().fallback(
        move |uri: http::Uri,
              version: http::Version,
              headers: http::HeaderMap,
              _body: axum::body::Bytes| {
            let record = record.clone();
            async move {
                record.lock().unwrap().push(headers);
                tokio::time::sleep(delay).await;
                axum::Json(json!({
                    "path": uri.path(),
                    "query": uri.query(),
                    "version": format!("{version:?}"),
                }))
            }
        },
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
}

/// An upstream on a fresh loopback port serving each connection with
/// `serve`; answers its URL and how many connections it took.
async fn counting_upstream<F, Fut>(serve: F) -> (String, Arc<std::sync::atomic::AtomicUsize>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = taken.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(serve(stream));
        }
    });
    (url, taken)
}

/// An upstream that reads each request, then closes the connection without
/// an answer; answers how many connections it took.
async fn hang_up() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::AsyncReadExt;
    counting_upstream(|mut stream| async move {
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf).await;
    })
    .await
}

/// A gateway configured by `change`, with `url` as `service`'s one instance.
pub async fn with_instance(
    service: &str,
    url: String,
    change: impl FnOnce(&mut gatehouse::gateway::GatewayConfig),
) -> TestApp {
    let app = TestApp::builder().gateway(change).start().await;
    app.register_instance(service, url).await;
    app
}

/// A gateway with one public route, `prefix`, to `service`'s one
/// instance at `url`, with a timeout of 300 ms.
async fn with_short_route(prefix: &str, service: &str, url: String) -> TestApp {
    with_instance(service, url, |g| {
        let mut route = RouteConfig::new(prefix, service, AuthPolicy::Public);
        route.timeout_ms = Some(300);
        g.routes.push(route);
    })
    .await
}

#[tokio::test]
async fn an_answer_whose_body_stalls_is_cut_short_within_the_routes_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Announces ten bytes, sends two, then keeps the connection open.
    let (stalls, _) = counting_upstream(|mut stream| async move {
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        let head = "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nok";
        let _ = stream.write_all(head.as_bytes()).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let app = with_short_route("/stalls", "stalls", stalls).await;
    let body = stalled_body(&app, "/stalls").await;
    assert!(matches!(body, Some(Err(_))), "cut short: {body:?}");
}

/// The body of a GET of `path` through `app`'s gateway, whose instance
/// sends the answer's head in time, then stalls mid-body for longer than
/// the route's timeout: `None` when it was still waiting after 10 s (the
/// bound only keeps a failure from hanging the suite).
async fn stalled_body(app: &TestApp, path: &str) -> Option<reqwest::Result<axum::body::Bytes>> {
    let r = app
        .http
        .get(format!("{}{path}", app.gateway_base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the head came in time");
    tokio::time::timeout(Duration::from_secs(10), r.bytes())
        .await
        .ok()
}

#[tokio::test]
async fn an_h2c_answer_whose_body_stalls_is_cut_short_within_the_routes_timeout() {
    use tokio_stream::StreamExt as _;
    // Answers over HTTP/2 with two bytes of body, then sends nothing more.
    let stalls = axum::Router::new().fallback(|| async {
        let first = tokio_stream::iter([Ok::<_, std::io::Error>(axum::body::Bytes::from_static(
            b"ok",
        ))]);
        axum::body::Body::from_stream(first.chain(tokio_stream::pending()))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, stalls).await });
    let app = with_instance("stalls", url, |g| {
        let mut route = RouteConfig::new("/stalls", "stalls", AuthPolicy::Public);
        route.upstream_protocol = UpstreamProtocol::H2c;
        route.timeout_ms = Some(300);
        g.routes.push(route);
    })
    .await;
    let body = stalled_body(&app, "/stalls").await;
    assert!(matches!(body, Some(Err(_))), "cut short: {body:?}");
}

#[tokio::test]
async fn the_whole_journey_goes_through_one_entry_point() {
    let app = TestApp::start().await;
    let gw = &app.gateway_base;
    register(&app.http, gw, "gw@example.org").await;
    let token = sign_in(&app.http, gw, "gw@example.org", PASSWORD).await;
    let url = format!("{gw}/v1/users/me");
    let me = send(&app.http, Method::GET, url, Some(&token), None).await;
    assert_eq!(me.status(), 200);
    assert!(me.headers().contains_key("x-request-id"));
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["email"], "gw@example.org");
    // Auth's own signed-in routes pass through with the token.
    let url = format!("{gw}/v1/auth/sessions");
    let sessions = send(&app.http, Method::GET, url, Some(&token), None).await;
    assert_eq!(sessions.status(), 200);
}

#[tokio::test]
async fn required_routes_refuse_at_the_edge_and_paths_cannot_dodge_the_policy() {
    let app = TestApp::start().await;
    let gw = &app.gateway_base;
    let get = |path: &str| app.http.get(format!("{gw}{path}")).send();
    let r = get("/v1/users/me").await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_problem(r, 401, "token_missing").await;
    for tricky in [
        "/v1/users/x/../me",
        "//v1//users/me",
        "/v1/users/%2e%2e/users/me",
        "/v1/%75sers/me",
        "/v1/users/./me/",
    ] {
        let (status, body) = raw_get(gw, tricky).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("token_missing")),
            "{tricky}"
        );
    }
    for bad in [
        "/v1/users/..%2f..%2fauth",
        "/../v1/users",
        "/v1/%00",
        "/v1/users/../../../x",
    ] {
        let (status, body) = raw_get(gw, bad).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("invalid_path")),
            "{bad}"
        );
    }
    assert_problem(get("/v1/nothing").await.unwrap(), 404, "not_found").await;
    assert_problem(get("/v1/usersx").await.unwrap(), 404, "not_found").await;
}

#[tokio::test]
async fn upstreams_get_verified_identity_and_proxy_headers_only() {
    let (url, seen) = echo(Duration::ZERO).await;
    let app = with_instance("team", url, |g| {
        let mut r = RouteConfig::new("/team", "team", AuthPolicy::Required);
        r.strip_prefix = true;
        g.routes.push(r);
        g.routes
            .push(RouteConfig::new("/open", "team", AuthPolicy::Optional));
    })
    .await;
    let user = app.register("h@example.org").await;
    let pair = app.login("h@example.org", PASSWORD).await;
    let token = pair["access_token"].as_str().unwrap();

    let r: Value = app
        .http
        .get(format!("{}/team/a%20b/c?x=1", app.gateway_base))
        .bearer_auth(token)
        .header("x-gatehouse-user-id", "someone-else")
        .header("x-gatehouse-role", "admin")
        .header("connection", "x-private")
        .header("x-private", "1")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["path"], "/a%20b/c");
    assert_eq!(r["query"], "x=1");
    let headers = seen.lock().unwrap().pop().unwrap();
    assert_eq!(headers["x-gatehouse-user-id"], user["id"].as_str().unwrap());
    assert!(headers.contains_key("x-gatehouse-session-id"));
    assert!(!headers.contains_key("x-gatehouse-role"));
    assert!(!headers.contains_key("x-private"));
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert!(
        headers["traceparent"]
            .to_str()
            .unwrap()
            .contains("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert!(headers.contains_key("x-request-id"));

    // Optional routes pass anonymous callers, without identity headers.
    let r = app
        .http
        .get(format!("{}/open/x", app.gateway_base))
        .header("x-gatehouse-user-id", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let headers = seen.lock().unwrap().pop().unwrap();
    assert!(!headers.contains_key("x-gatehouse-user-id"));
    // ... but a bad token on an optional route is still refused.
    let r = app
        .http
        .get(format!("{}/open/x", app.gateway_base))
        .bearer_auth("garbage")
        .send()
        .await
        .unwrap();
    assert_problem(r, 401, "token_malformed").await;
}

#[tokio::test]
async fn upstream_faults_are_clear_problems() {
    let (slow, _) = echo(Duration::from_secs(5)).await;
    let app = with_instance("slow", slow, |g| {
        let mut r = RouteConfig::new("/slow", "slow", AuthPolicy::Public);
        r.timeout_ms = Some(300);
        g.routes.push(r);
        g.routes
            .push(RouteConfig::new("/nowhere", "nowhere", AuthPolicy::Public));
        g.routes
            .push(RouteConfig::new("/gone", "gone", AuthPolicy::Public));
        let mut only_get = RouteConfig::new("/ro", "slow", AuthPolicy::Public);
        only_get.methods = vec!["GET".into()];
        g.routes.push(only_get);
    })
    .await;
    // An instance whose port nobody listens on.
    app.register_instance("gone", closed_url()).await;
    let gw = &app.gateway_base;

    let started = std::time::Instant::now();
    let r = app.http.get(format!("{gw}/slow")).send().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_problem(r, 504, "upstream_timeout").await;
    let r = app.http.get(format!("{gw}/nowhere")).send().await.unwrap();
    assert_problem(r, 503, "upstream_unavailable").await;
    let r = app.http.get(format!("{gw}/gone")).send().await.unwrap();
    assert_problem(r, 503, "upstream_unavailable").await;
    let r = app.http.post(format!("{gw}/ro")).send().await.unwrap();
    assert_eq!(r.headers()["allow"], "GET");
    assert_problem(r, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn oversized_bodies_stop_at_the_edge_and_requests_count_per_route() {
    let app = TestApp::builder()
        .gateway(|g| g.body_limit_bytes = 1024)
        .start()
        .await;
    let gw = &app.gateway_base;
    let r = app
        .http
        .post(format!("{gw}/v1/users"))
        .header("content-type", "application/json")
        .body("x".repeat(4096))
        .send()
        .await
        .unwrap();
    assert_problem(r, 413, "payload_too_large").await;
    // Streamed without a length, the body is cut off at the limit.
    let chunks = futures_chunks(4096);
    let r = app
        .http
        .post(format!("{gw}/v1/users"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap(http_body_util::StreamBody::new(chunks)))
        .send()
        .await
        .unwrap();
    assert_problem(r, 413, "payload_too_large").await;

    app.http
        .get(format!("{gw}/v1/users/me"))
        .send()
        .await
        .unwrap();
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("gatehouse_http_requests_total{method=\"GET\",route=\"/v1/users/me\",service=\"gateway\",status=\"401\"} 1"),
        "{metrics}"
    );
}

/// A body of `n` bytes sent in chunks, with no declared length.
fn futures_chunks(
    n: usize,
) -> impl tokio_stream::Stream<Item = Result<http_body::Frame<axum::body::Bytes>, std::io::Error>>
+ Send
+ Sync
+ 'static {
    tokio_stream::iter((0..n / 256).map(|_| {
        Ok(http_body::Frame::data(axum::body::Bytes::from(vec![
            b'x';
            256
        ])))
    }))
}

#[tokio::test]
async fn bursts_get_429_with_retry_and_ratelimit_headers() {
    let app = TestApp::builder()
        .gateway(|g| {
            g.rate_limit.per_ip_per_sec = 1;
            g.rate_limit.per_ip_burst = 2;
            g.rate_limit.per_user_per_sec = 1;
            g.rate_limit.per_user_burst = 2;
        })
        .start()
        .await;
    let gw = &app.gateway_base;
    let reset = || {
        app.http
            .post(format!("{gw}/v1/password-resets"))
            .json(&json!({"email": "x@example.org"}))
            .send()
    };
    let first = reset().await.unwrap();
    assert_eq!(first.status(), 202);
    assert_eq!(first.headers()["ratelimit-limit"], "2");
    assert_eq!(first.headers()["ratelimit-remaining"], "1");
    assert_eq!(reset().await.unwrap().status(), 202);
    let refused = reset().await.unwrap();
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(refused.headers()["ratelimit-remaining"], "0");
    assert_problem(refused, 429, "rate_limited").await;

    // Signed-in users count on their own allowance, not their address's.
    let token = app.signed_in("rl@example.org").await;
    let me = || {
        app.http
            .get(format!("{gw}/v1/users/me"))
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(me().await.unwrap().status(), 200);
    assert_eq!(me().await.unwrap().status(), 200);
    assert_problem(me().await.unwrap(), 429, "rate_limited").await;
}

#[tokio::test]
async fn a_route_without_rate_limits_spends_no_allowance() {
    let (url, _) = echo(Duration::ZERO).await;
    let app = with_instance("team", url, |g| {
        g.rate_limit.per_ip_per_sec = 1;
        g.rate_limit.per_ip_burst = 2;
        g.rate_limit.per_user_per_sec = 1;
        g.rate_limit.per_user_burst = 2;
        let mut open = RouteConfig::new("/unlimited", "team", AuthPolicy::Optional);
        open.rate_limit = false;
        g.routes.push(open);
        g.routes
            .push(RouteConfig::new("/limited", "team", AuthPolicy::Optional));
    })
    .await;
    let gw = &app.gateway_base;
    let token = app.signed_in("free@example.org").await;
    let get = |path: &str, token: Option<&str>| {
        let request = app.http.get(format!("{gw}{path}"));
        match token {
            Some(t) => request.bearer_auth(t),
            None => request,
        }
        .send()
    };
    // Well past both bursts, anonymous and signed in alike.
    for _ in 0..5 {
        for token in [None, Some(token.as_str())] {
            let r = get("/unlimited/x", token).await.unwrap();
            assert_eq!(r.status(), 200);
            assert!(!r.headers().contains_key("ratelimit-remaining"));
        }
    }
    // The allowances are whole: the limited route still has its bursts.
    for token in [None, Some(token.as_str())] {
        for remaining in ["1", "0"] {
            let r = get("/limited/x", token).await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["ratelimit-remaining"], remaining);
        }
        assert_problem(get("/limited/x", token).await.unwrap(), 429, "rate_limited").await;
    }
}

#[tokio::test]
async fn guessed_tokens_spend_the_address_allowance_and_valid_ones_do_not() {
    let app = TestApp::builder()
        .gateway(|g| {
            g.rate_limit.per_ip_per_sec = 1;
            g.rate_limit.per_ip_burst = 2;
        })
        .start()
        .await;
    let gw = &app.gateway_base;
    let token = app.signed_in("guess@example.org").await;
    // Signed by the platform's key, but not what it signed.
    let mut forged = token.clone().into_bytes();
    let i = "v4.public.".len() + 40;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let me = |token: &str| {
        app.http
            .get(format!("{gw}/v1/users/me"))
            .bearer_auth(token)
            .send()
    };
    let first = me(&forged).await.unwrap();
    assert_eq!(first.headers()["ratelimit-remaining"], "1");
    assert_problem(first, 401, "token_bad_signature").await;
    assert_problem(me(&forged).await.unwrap(), 401, "token_bad_signature").await;
    let refused = me(&forged).await.unwrap();
    assert!(refused.headers().contains_key("retry-after"));
    assert_problem(refused, 429, "rate_limited").await;
    // The same address is out of anonymous allowance for public routes too.
    let reset = app
        .http
        .post(format!("{gw}/v1/password-resets"))
        .json(&json!({"email": "guess@example.org"}))
        .send()
        .await
        .unwrap();
    assert_problem(reset, 429, "rate_limited").await;
    // A valid token is its user's own business, first use and later ones.
    for _ in 0..3 {
        assert_eq!(me(&token).await.unwrap().status(), 200);
    }
}

#[tokio::test]
async fn cors_preflight_is_answered_for_allowed_origins_only() {
    let app = TestApp::builder()
        .gateway(|g| g.cors.allowed_origins = vec!["https://app.example.org".into()])
        .start()
        .await;
    let gw = &app.gateway_base;
    let preflight = |origin: &'static str| {
        app.http
            .request(reqwest::Method::OPTIONS, format!("{gw}/v1/users/me"))
            .header("origin", origin)
            .header("access-control-request-method", "PATCH")
            .header("access-control-request-headers", "authorization, if-match")
            .send()
    };
    let ok = preflight("https://app.example.org").await.unwrap();
    assert!(ok.status().is_success(), "{}", ok.status());
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example.org"
    );
    assert!(
        ok.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("PATCH")
    );
    assert_eq!(ok.headers()["access-control-max-age"], "600");
    let refused = preflight("https://evil.example.net").await.unwrap();
    assert!(
        !refused
            .headers()
            .contains_key("access-control-allow-origin")
    );
    // Simple requests from the allowed origin get the header too.
    let r = app
        .http
        .post(format!("{gw}/v1/password-resets"))
        .header("origin", "https://app.example.org")
        .json(&json!({"email": "x@example.org"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.org"
    );
}

#[tokio::test]
async fn an_upstream_that_hangs_up_is_a_502_unless_the_request_can_move() {
    let (flaky, taken) = hang_up().await;
    let (good, _) = echo(Duration::ZERO).await;
    let app = TestApp::builder()
        .gateway(|g| {
            g.routes
                .push(RouteConfig::new("/flaky", "flaky", AuthPolicy::Public));
            g.routes
                .push(RouteConfig::new("/mixed", "mixed", AuthPolicy::Public));
        })
        .start()
        .await;
    for (service, url) in [("flaky", &flaky), ("mixed", &flaky), ("mixed", &good)] {
        app.register_instance(service, url.clone()).await;
    }
    let gw = &app.gateway_base;
    let r = app
        .http
        .post(format!("{gw}/flaky"))
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_problem(r, 502, "upstream_failed").await;
    // A GET means the same when repeated: it moves to the instance that answers.
    let before = taken.load(std::sync::atomic::Ordering::SeqCst);
    for i in 0..20 {
        let r = app
            .http
            .get(format!("{gw}/mixed/{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET {i}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["path"], format!("/mixed/{i}"));
    }
    assert!(taken.load(std::sync::atomic::Ordering::SeqCst) > before);
}

#[tokio::test]
async fn h2c_routes_speak_http2_to_their_instances() {
    let (url, _) = echo(Duration::ZERO).await;
    let app = with_instance("team", url, |g| {
        let mut h2 = RouteConfig::new("/h2", "team", AuthPolicy::Public);
        h2.upstream_protocol = UpstreamProtocol::H2c;
        g.routes.push(h2);
        g.routes
            .push(RouteConfig::new("/h1", "team", AuthPolicy::Public));
    })
    .await;
    for (path, version) in [("/h2/x", "HTTP/2.0"), ("/h1/x", "HTTP/1.1")] {
        let body = app.gateway_json(path).await;
        assert_eq!(body["version"], version, "{path}");
    }
}

#[tokio::test]
async fn an_ejected_instance_is_probed_and_readmitted_when_it_returns() {
    let (up, up_seen) = echo(Duration::ZERO).await;
    // The second instance's port is closed for now.
    let down = closed_addr();
    let down_url = format!("http://{down}");
    let app = TestApp::builder()
        .gateway(|g| {
            g.probe_interval_ms = 100;
            g.rate_limit.per_ip_per_sec = 0;
            g.routes
                .push(RouteConfig::new("/team", "team", AuthPolicy::Public));
        })
        .start()
        .await;
    for url in [&up, &down_url] {
        app.register_instance("team", url.clone()).await;
    }
    let gw = &app.gateway_base;
    for i in 0..40 {
        let r = app.http.get(format!("{gw}/team/{i}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "GET {i}");
    }
    // Connects failed until the instance was ejected, then it was left out.
    app.ctx.metrics.flush();
    let connect_errors = app
        .ctx
        .metrics
        .gateway_upstream_requests_total
        .with_label_values(&["/team", down_url.as_str(), "connect_error"])
        .get();
    assert_eq!(connect_errors, u64::from(EJECT_AFTER));
    assert_eq!(up_seen.lock().unwrap().len(), 40);

    // The instance comes back; the probe finds it and traffic returns.
    let back_seen: Arc<Mutex<Vec<http::HeaderMap>>> = Arc::default();
    serve_echo(
        tokio::net::TcpListener::bind(down).await.unwrap(),
        Duration::ZERO,
        back_seen.clone(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while back_seen.lock().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "never probed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..40 {
        let r = app.http.get(format!("{gw}/team/{i}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "GET {i}");
    }
    let served_after = back_seen.lock().unwrap().len();
    assert!(
        served_after > 5,
        "readmitted instance served {served_after}"
    );
}

/// Sends a chunked POST of `chunks` × 512 bytes over a raw connection (no
/// declared length) and answers the status.
async fn chunked_post(base: &str, path: &str, chunks: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: gateway\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("200\r\n{}\r\n", "x".repeat(512));
    for _ in 0..chunks {
        // The gateway may answer and close before reading everything.
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

#[tokio::test]
async fn http2_clients_and_oversized_streams_do_not_count_against_instances() {
    let (a, a_seen) = echo(Duration::ZERO).await;
    let (b, b_seen) = echo(Duration::ZERO).await;
    let app = with_instance("team", a, |g| {
        g.body_limit_bytes = 1024;
        g.rate_limit.per_ip_per_sec = 0;
        g.routes
            .push(RouteConfig::new("/team", "team", AuthPolicy::Public));
    })
    .await;
    app.register_instance("team", b).await;
    let gw = &app.gateway_base;
    // A client speaking HTTP/2 reaches an HTTP/1.1 upstream.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for i in 0..5 {
        let r = h2.get(format!("{gw}/team/{i}")).send().await.unwrap();
        assert_eq!(r.version(), http::Version::HTTP_2);
        assert_eq!(r.status(), 200, "GET {i} over HTTP/2");
    }
    // Streamed bodies over the limit are the client's fault: 413, and no
    // instance is ejected for them (six failures would eject one).
    for _ in 0..6 {
        assert_eq!(chunked_post(gw, "/team/upload", 8).await, 413);
    }
    let before = (a_seen.lock().unwrap().len(), b_seen.lock().unwrap().len());
    for i in 0..40 {
        let r = app.http.get(format!("{gw}/team/{i}")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let after = (a_seen.lock().unwrap().len(), b_seen.lock().unwrap().len());
    assert!(
        after.0 > before.0 && after.1 > before.1,
        "both instances still take traffic: {before:?} -> {after:?}"
    );
}

#[tokio::test]
async fn requests_in_flight_through_the_gateway_finish_after_the_stop_signal() {
    let (slow, _) = echo(Duration::from_millis(700)).await;
    let mut app = TestApp::builder()
        .gateway(|g| {
            g.routes
                .push(RouteConfig::new("/slow", "slow", AuthPolicy::Public))
        })
        .start()
        .await;
    app.register_instance("slow", slow).await;
    let request = app.http.get(format!("{}/slow/x", app.gateway_base)).send();
    let in_flight = tokio::spawn(request);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    app.stop().await;
    // The stop waited for the answer, which arrived whole.
    assert!(started.elapsed() >= Duration::from_millis(300));
    let r = in_flight.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["path"], "/slow/x");
}

/// An upstream speaking HTTP/1.1 by hand: answers `ok` to each request on a
/// keep-alive connection and closes the connection once it has been idle
/// for `idle`. Answers how many connections it took.
async fn keep_alive_upstream(idle: Duration) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    counting_upstream(move |mut stream| async move {
        let mut pending = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let Ok(Ok(n)) = tokio::time::timeout(idle, stream.read(&mut buf)).await else {
                return;
            };
            if n == 0 {
                return;
            }
            pending.extend_from_slice(&buf[..n]);
            // Requests here have no body: each ends at its blank line.
            while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                pending.drain(..end + 4);
                let answer =
                    "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok";
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await
}

#[tokio::test]
async fn upstream_connections_are_reused_until_the_upstream_closes_them() {
    let idle = Duration::from_millis(150);
    let (url, taken) = keep_alive_upstream(idle).await;
    let app = with_instance("kept", url, |g| {
        g.routes
            .push(RouteConfig::new("/kept", "kept", AuthPolicy::Public));
    })
    .await;
    let gw = &app.gateway_base;
    let get = |i: usize| {
        let request = app.http.get(format!("{gw}/kept/{i}"));
        async move {
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), 200, "GET {i}");
            assert_eq!(r.text().await.unwrap(), "ok");
        }
    };
    // One client connection after the other: one upstream connection.
    for i in 0..10 {
        get(i).await;
    }
    assert_eq!(taken.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Once the upstream has closed it, the next request takes a new one and
    // no request meets the closed one.
    tokio::time::sleep(idle * 4).await;
    for i in 10..15 {
        get(i).await;
    }
    assert_eq!(taken.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_request_body_slower_than_the_route_timeout_gets_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (url, seen) = echo(Duration::ZERO).await;
    let app = with_short_route("/slow", "slow", url).await;
    let addr = app.gateway_base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // Ten bytes declared, three sent, then nothing.
    let head = format!("POST /slow/x HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 10\r\n\r\nabc");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("the gateway answers within the route's timeout")
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(text.contains("body_timeout"), "{text}");
    // Nothing reached the upstream.
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_grpc_client_gets_the_gateways_own_refusals_as_grpc_statuses() {
    use gatehouse::proto::audit::v1::{RecordRequest, audit_client::AuditClient};
    use gatehouse::proto::identity::v1::VerifyCredentialsRequest;
    use gatehouse::proto::identity::v1::identity_client::IdentityClient;
    let h2c = |prefix: &str, service: &str, policy| {
        let mut route = RouteConfig::new(prefix, service, policy);
        route.upstream_protocol = UpstreamProtocol::H2c;
        route
    };
    let app = TestApp::builder()
        .gateway(|g| {
            g.routes.push(h2c(
                "/gatehouse.identity.v1.Identity/VerifyCredentials",
                "direct",
                AuthPolicy::Public,
            ));
            g.routes.push(h2c(
                "/gatehouse.identity.v1.Identity/GetUser",
                "direct",
                AuthPolicy::Required,
            ));
            g.routes.push(h2c(
                "/gatehouse.audit.v1.Audit",
                "nowhere",
                AuthPolicy::Public,
            ));
        })
        .start()
        .await;
    // The platform's own gRPC server, as an instance behind the route.
    app.register_instance("direct", app.base.clone()).await;
    let channel = tonic::transport::Endpoint::from_shared(app.gateway_base.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut identity = IdentityClient::new(channel.clone());

    // Through to the instance: its own refusal (an unsigned internal call)
    // comes back unchanged.
    let upstream = identity
        .verify_credentials(VerifyCredentialsRequest {
            email: "ann@example.org".into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        upstream.code(),
        tonic::Code::Unauthenticated,
        "{upstream:?}"
    );
    assert!(
        upstream.message().contains("no service credential"),
        "{upstream:?}"
    );
    assert_eq!(grpc_code(&upstream), "", "{upstream:?}");

    // No token on a route that needs one: the gateway's 401, in gRPC form.
    let refused = identity
        .get_user(gatehouse::proto::identity::v1::GetUserRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert_eq!(grpc_code(&refused), "token_missing");

    // No instance of the route's service: the gateway's 503, in gRPC form.
    let mut audit = AuditClient::new(channel);
    let away = audit.record(RecordRequest::default()).await.unwrap_err();
    assert_eq!(away.code(), tonic::Code::Unavailable, "{away:?}");
    assert_eq!(grpc_code(&away), "upstream_unavailable");
    assert_eq!(away.message(), "No instance of the service is available");

    // An HTTP client on the same route still gets problem+json.
    let r = app
        .http
        .post(format!(
            "{}/gatehouse.audit.v1.Audit/Record",
            app.gateway_base
        ))
        .send()
        .await
        .unwrap();
    assert_problem(r, 503, "upstream_unavailable").await;
}

/// On a route that keeps public responses, the same `GET` is answered from
/// the gateway's copy for a moment: the upstream hears it once. Another
/// query, a request with credentials, a cookie or an origin, a private
/// answer and a route that keeps nothing reach the upstream every time;
/// after a second the copy is gone.
#[tokio::test]
async fn public_responses_are_kept_a_moment_on_routes_that_ask_for_it() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let heard = Arc::new(AtomicU64::new(0));
    let count = heard.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let upstream = axum::Router::new().fallback(move |uri: http::Uri| {
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let cache = if uri.path().ends_with("/private") {
                "private, max-age=60"
            } else {
                "public, max-age=60"
            };
            (
                [(http::header::CACHE_CONTROL, cache)],
                axum::Json(json!({"n": n})),
            )
        }
    });
    tokio::spawn(async move { axum::serve(listener, upstream).await });
    let app = with_instance("docs", url, |g| {
        let mut keeping = RouteConfig::new("/kept", "docs", AuthPolicy::Public);
        keeping.keep_public = true;
        g.routes.push(keeping);
        g.routes
            .push(RouteConfig::new("/plain", "docs", AuthPolicy::Public));
    })
    .await;
    let get = |path: &str, field: Option<(&'static str, &'static str)>| {
        let mut request = app.http.get(format!("{}{path}", app.gateway_base));
        if let Some((name, value)) = field {
            request = request.header(name, value);
        }
        async move {
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), 200);
            let aged = r.headers().contains_key("age");
            (
                r.json::<Value>().await.unwrap()["n"].as_u64().unwrap(),
                aged,
            )
        }
    };

    let (first, aged) = get("/kept/jwks", None).await;
    assert!(!aged);
    assert_eq!(get("/kept/jwks", None).await, (first, true));
    assert_eq!(heard.load(Ordering::SeqCst), 1);
    assert_ne!(get("/kept/jwks?v=2", None).await.0, first);
    for field in [
        ("authorization", "Bearer anything"),
        ("cookie", "session=1"),
        ("origin", "https://app.example"),
    ] {
        let before = heard.load(Ordering::SeqCst);
        assert_eq!(get("/kept/jwks", Some(field)).await, (before + 1, false));
    }
    for path in [
        "/kept/private",
        "/kept/private",
        "/plain/jwks",
        "/plain/jwks",
    ] {
        let before = heard.load(Ordering::SeqCst);
        assert_eq!(get(path, None).await, (before + 1, false), "{path}");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (after, aged) = get("/kept/jwks", None).await;
    assert!(after > first && !aged);
}
