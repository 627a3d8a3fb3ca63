//! The gateway's hyper clients, one pair per thread: h2c for routes whose
//! upstreams speak it, and plain HTTP/1.1 for the gateway's own requests
//! (health probes, API documents). Requests to HTTP/1.1 upstreams go over
//! the gateway's own wire instead (`h1_client/`, `pool/`). The clients keep the
//! limits of `kernel::http::wire`.

use std::time::Duration;

use axum::body::Body;
use http::{Method, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::config::UpstreamProtocol;
use crate::kernel::http::wire::{MAX_HEAD, MAX_HEADERS};

/// A pooled client for upstream instances.
pub type Upstream = Client<HttpConnector, Body>;

/// The upstream clients of one thread, HTTP/1.1 and h2c.
struct Clients {
    http1: Upstream,
    h2c: Upstream,
}

thread_local! {
    /// Each thread keeps its own pools, so a pooled upstream connection is
    /// driven by the thread whose requests use it (see `kernel::http::io_threads`).
    static CLIENTS: std::cell::OnceCell<Clients> = const { std::cell::OnceCell::new() };
}

/// This thread's client for `protocol`.
pub fn upstream(protocol: UpstreamProtocol) -> Upstream {
    CLIENTS.with(|cell| {
        let clients = cell.get_or_init(|| {
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(Duration::from_secs(2)));
            connector.set_nodelay(true);
            Clients {
                http1: Client::builder(TokioExecutor::new())
                    .http1_max_buf_size(MAX_HEAD)
                    .http1_max_headers(MAX_HEADERS)
                    .build(connector.clone()),
                h2c: Client::builder(TokioExecutor::new())
                    .http2_only(true)
                    .http2_max_header_list_size(MAX_HEAD as u32)
                    .build(connector),
            }
        });
        match protocol {
            UpstreamProtocol::Http1 => clients.http1.clone(),
            UpstreamProtocol::H2c => clients.h2c.clone(),
        }
    })
}

/// A GET of the gateway's own (a probe, an API document) to `url`, an
/// instance's address and path: the response, or none when there was no
/// answer within `timeout`. The request's version is left at HTTP/1.1, which
/// either client takes: an h2c pool speaks HTTP/2 whatever it says.
pub async fn ask(
    client: &Upstream,
    url: &str,
    timeout: Duration,
) -> Option<http::Response<hyper::body::Incoming>> {
    let uri = url.parse::<Uri>().ok()?;
    let request = http::Request::builder()
        .method(Method::GET)
        .uri(uri)
        .body(Body::empty())
        .ok()?;
    tokio::time::timeout(timeout, client.request(request))
        .await
        .ok()?
        .ok()
}
