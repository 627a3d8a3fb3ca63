//! The layer every request passes through first, in every service and in
//! the gateway: one service doing, in this order,
//!
//! - the request id: the `x-request-id` the caller sent when it is short
//!   and plain (see `wire::acceptable_request_id`), or a new one, set on
//!   the request and carried back on the response;
//! - the request's trace span, continuing the caller's `traceparent`;
//! - the request id's scope, so calls made while serving it carry it on
//!   (see `telemetry::inject_current`);
//! - the request metrics, counted when the response's head is ready, under
//!   the matched route template (never the raw path, which would explode
//!   the label set with ids), and a method outside the standard ones as
//!   `OTHER`: no label takes a value a client chose freely.
//!
//! One layer rather than a stack of four, so that a request looks up its
//! id once and costs one future, not four nested ones.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::MatchedPath;
use axum::response::Response;
use bytes::BytesMut;
use http::HeaderValue;
use tokio::task::futures::TaskLocalFuture;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::wire::METHODS;
use super::wire::REQUEST_ID;
use crate::kernel::credentials::{self, Callee};
use crate::kernel::metrics::Tracked;
use crate::kernel::origin::{self, Cidr};
use crate::kernel::telemetry;

/// The layer, for the service named in `tracked`.
#[derive(Clone)]
pub struct ObserveLayer {
    tracked: Arc<Tracked>,
    trusted: Option<Arc<Vouching>>,
}

/// Who may say which client a request is from: peers in `proxies`, and
/// requests carrying a credential `callee` accepts (the gateway's forwards,
/// other services' calls).
pub struct Vouching {
    pub proxies: Vec<Cidr>,
    pub callee: Arc<Callee>,
}

impl ObserveLayer {
    pub fn new(tracked: Tracked) -> ObserveLayer {
        ObserveLayer {
            tracked: Arc::new(tracked),
            trusted: None,
        }
    }

    /// Also keeps where each request came from in its scope, for the
    /// events it causes: the client a vouched-for request forwards, or the
    /// peer (see [`origin::client`]).
    pub fn with_origin(mut self, vouching: Vouching) -> ObserveLayer {
        self.trusted = Some(Arc::new(vouching));
        self
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            tracked: self.tracked.clone(),
            trusted: self.trusted.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    tracked: Arc<Tracked>,
    trusted: Option<Arc<Vouching>>,
}

/// Where `req` came from, when it came over a connection.
fn origin_of<B>(req: &http::Request<B>, trusted: &Vouching) -> Option<telemetry::Origin> {
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()?
        .0
        .ip();
    let headers = req.headers();
    // Only what a request's `Forwarded` says needs vouching for.
    let vouched = headers.contains_key(http::header::FORWARDED)
        && (trusted.proxies.iter().any(|c| c.contains(peer))
            || trusted
                .callee
                .check(headers.get(credentials::HEADER).map(|v| v.as_bytes()))
                .is_ok());
    Some(telemetry::Origin {
        client: origin::client(peer, headers, vouched),
        traceparent: req.headers().get("traceparent").cloned(),
    })
}

/// How many bytes of request ids a thread writes into one buffer.
const ID_ROOM: usize = 4096;

thread_local! {
    /// Where this thread writes its next request ids. Each id is cut from
    /// the same buffer: it costs no allocation of its own, and its copies
    /// (on the request, in its scope, on the response) share its bytes.
    static IDS: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// A new random (version 4) UUID, as a header value.
pub fn new_request_id() -> HeaderValue {
    let mut text = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
    let bytes = IDS.with_borrow_mut(|room| {
        if room.capacity() - room.len() < id.len() {
            *room = BytesMut::with_capacity(ID_ROOM);
        }
        room.extend_from_slice(id.as_bytes());
        room.split().freeze()
    });
    HeaderValue::from_maybe_shared(bytes).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The span of one request, named after its method, path and request id,
/// continuing the caller's trace when it sent a `traceparent`.
fn request_span<B>(req: &http::Request<B>, id: &HeaderValue) -> tracing::Span {
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        request_id = %id.to_str().unwrap_or(""),
    );
    // Nothing to continue when this span is not recorded at all.
    if !span.is_disabled() {
        let _ = span.set_parent(telemetry::parent_from(req.headers()));
    }
    span
}

impl<S, B> tower::Service<http::Request<B>> for Observe<S>
where
    S: tower::Service<http::Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let id = match req.headers().get(&REQUEST_ID) {
            Some(id) if super::wire::acceptable_request_id(id) => id.clone(),
            _ => {
                let id = new_request_id();
                req.headers_mut().insert(REQUEST_ID, id.clone());
                id
            }
        };
        let span = request_span(&req, &id);
        // Cheap copies (shared strings), taken before the request moves on.
        let matched = req.extensions().get::<MatchedPath>().cloned();
        let grpc_path = match &matched {
            None if is_grpc(&req) => Some(req.uri().path().to_owned()),
            _ => None,
        };
        let method = req.method().clone();
        let origin = self.trusted.as_ref().and_then(|t| origin_of(&req, t));
        let inner = {
            let _entered = span.enter();
            tracing::debug!("started processing request");
            telemetry::scoped(Some(id.clone()), origin, self.inner.call(req))
        };
        ObserveFuture {
            inner,
            span,
            id: Some(id),
            start: Instant::now(),
            method,
            matched,
            grpc_path,
            tracked: self.tracked.clone(),
        }
    }
}

/// The label of every method outside [`METHODS`].
const OTHER_METHOD: &str = "OTHER";

/// Whether a gRPC response comes from a method its service has: neither the
/// router's 404 nor gRPC status 12 (`Unimplemented`) in its head.
fn grpc_method_found(response: &Response) -> bool {
    response.status() == http::StatusCode::OK
        && response
            .headers()
            .get("grpc-status")
            .is_none_or(|s| s.as_bytes() != b"12")
}

/// `method` as static text, when it is a standard one.
fn static_method(method: &http::Method) -> Option<&'static str> {
    METHODS
        .iter()
        .find(|(m, _)| m == method)
        .map(|(_, text)| *text)
}

/// Every status code's three digits, 100 to 999, in order.
static STATUS_DIGITS: [[u8; 3]; 900] = {
    let mut digits = [[0; 3]; 900];
    let mut i = 0;
    while i < 900 {
        let code = i + 100;
        digits[i] = [
            b'0' + (code / 100) as u8,
            b'0' + (code / 10 % 10) as u8,
            b'0' + (code % 10) as u8,
        ];
        i += 1;
    }
    digits
};

/// `status` as static text.
fn static_status(status: http::StatusCode) -> Option<&'static str> {
    let digits = STATUS_DIGITS.get(usize::from(status.as_u16()).checked_sub(100)?)?;
    std::str::from_utf8(digits).ok()
}

/// Whether `req` is a gRPC call: HTTP/2 (the only version gRPC speaks)
/// with a gRPC content type.
fn is_grpc<B>(req: &http::Request<B>) -> bool {
    req.version() == http::Version::HTTP_2
        && req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

pin_project_lite::pin_project! {
    /// The response of an [`Observe`]d request.
    pub struct ObserveFuture<F: Future> {
        #[pin]
        inner: TaskLocalFuture<telemetry::RequestScope, F>,
        span: tracing::Span,
        id: Option<HeaderValue>,
        start: Instant,
        method: http::Method,
        matched: Option<MatchedPath>,
        grpc_path: Option<String>,
        tracked: Arc<Tracked>,
    }
}

impl<F, E> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.enter();
        let mut outcome = ready!(this.inner.as_mut().poll(cx));
        let elapsed = this.start.elapsed();
        if let Ok(response) = &mut outcome {
            let status = response.status();
            // A handler that routes by itself (the gateway) names the route
            // it chose in the request's scope.
            let named = this
                .inner
                .take_value()
                .and_then(telemetry::RequestScope::into_route);
            let t = &this.tracked;
            // A method of a client's own choosing is one label value.
            let method = static_method(this.method).unwrap_or(OTHER_METHOD);
            match (named, method, static_status(status)) {
                // All static text (a route named by the handler, a standard
                // method and status): found without hashing any of it.
                (Some(route), method, Some(code)) => t
                    .metrics
                    .request_completed_static([t.service, method, route, code], elapsed),
                _ => {
                    let route = match (named, &*this.matched, &*this.grpc_path) {
                        (Some(label), _, _) => label,
                        (None, Some(p), _) => p.as_str(),
                        // A gRPC method's own path, once it is known to
                        // exist: an unknown one is answered 404 by the
                        // router or `Unimplemented` by its service.
                        (None, None, Some(path)) if grpc_method_found(response) => path.as_str(),
                        _ => "unmatched",
                    };
                    t.metrics
                        .request_completed(t.service, method, route, status.as_str(), elapsed);
                }
            }
            let latency_ms = elapsed.as_millis() as u64;
            if status.is_server_error() {
                tracing::error!(status = status.as_u16(), latency_ms, "response failed");
            } else {
                tracing::debug!(
                    status = status.as_u16(),
                    latency_ms,
                    "finished processing request"
                );
            }
            if let Some(id) = this.id.take() {
                response.headers_mut().entry(REQUEST_ID).or_insert(id);
            }
        }
        Poll::Ready(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_distinct_random_uuids_past_their_buffer() {
        // More ids than one buffer holds, so some are cut from a new one.
        let ids: Vec<HeaderValue> = (0..3 * ID_ROOM / 36).map(|_| new_request_id()).collect();
        let mut seen = std::collections::HashSet::new();
        for id in &ids {
            let id = uuid::Uuid::parse_str(id.to_str().unwrap()).unwrap();
            assert_eq!(id.get_version_num(), 4);
            assert!(seen.insert(id), "{id} came twice");
        }
        // Each id keeps its own text while later ones are written.
        let first = ids[0].clone();
        drop(ids);
        assert_eq!(first.len(), 36);
        assert!(uuid::Uuid::parse_str(first.to_str().unwrap()).is_ok());
    }

    #[test]
    fn static_labels_say_what_the_method_and_status_do() {
        for code in 100..=999u16 {
            let status = http::StatusCode::from_u16(code).unwrap();
            assert_eq!(static_status(status), Some(status.as_str()));
        }
        for (method, _) in &METHODS {
            assert_eq!(static_method(method), Some(method.as_str()));
        }
        let own = http::Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(static_method(&own), None);
    }
}
