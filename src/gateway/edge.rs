//! What answers one client connection: the gateway's own paths (health,
//! the API document and docs) go to its router, everything else
//! straight to the proxy under the same shared layers, with no routing
//! table in between (the proxy has its own, see `routes.rs`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;

use super::openapi;
use crate::kernel::http::server;

/// The service for one connection: `local` for the paths the gateway serves itself,
/// `forwarded` for the rest, but `own_cors` (forwarded without the
/// gateway's CORS layer) for the OpenID Connect provider's paths, whose
/// CORS follows the origins registered on its clients.
#[derive(Clone)]
pub struct Edge<O, P, Q> {
    pub local: O,
    pub forwarded: P,
    pub own_cors: Q,
}

/// Whether `path` is the OpenID Connect provider's, which answers CORS itself.
pub fn answers_own_cors(path: &str) -> bool {
    path.starts_with("/oauth2/") || path == "/.well-known/openid-configuration"
}

/// Whether the gateway answers `path` itself.
pub fn is_local(path: &str) -> bool {
    server::is_kernel_path(path) || openapi::is_local(path)
}

impl<O, P, Q, B, C> tower::Service<http::Request<Body>> for Edge<O, P, Q>
where
    O: tower::Service<http::Request<Body>, Response = Response, Error = Infallible>,
    P: tower::Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>,
    Q: tower::Service<http::Request<Body>, Response = http::Response<C>, Error = Infallible>,
    B: http_body::Body<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
    C: http_body::Body<Data = axum::body::Bytes> + Send + 'static,
    C::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EdgeFuture<O::Future, P::Future, Q::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Every side is always ready; ask each, as the contract wants.
        let local = self.local.poll_ready(cx)?;
        let forwarded = self.forwarded.poll_ready(cx)?;
        let own_cors = self.own_cors.poll_ready(cx)?;
        if local.is_ready() && forwarded.is_ready() && own_cors.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let path = req.uri().path();
        if is_local(path) {
            EdgeFuture::Local {
                future: self.local.call(req),
            }
        } else if answers_own_cors(path) {
            EdgeFuture::OwnCors {
                future: self.own_cors.call(req),
            }
        } else {
            EdgeFuture::Forwarded {
                future: self.forwarded.call(req),
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The response of an [`Edge`].
    #[project = EdgeProjection]
    pub enum EdgeFuture<O, P, Q> {
        Local { #[pin] future: O },
        Forwarded { #[pin] future: P },
        OwnCors { #[pin] future: Q },
    }
}

impl<O, P, Q, B, C> Future for EdgeFuture<O, P, Q>
where
    O: Future<Output = Result<Response, Infallible>>,
    P: Future<Output = Result<http::Response<B>, Infallible>>,
    Q: Future<Output = Result<http::Response<C>, Infallible>>,
    B: http_body::Body<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
    C: http_body::Body<Data = axum::body::Bytes> + Send + 'static,
    C::Error: Into<axum::BoxError>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            EdgeProjection::Local { future } => future.poll(cx),
            EdgeProjection::Forwarded { future } => future
                .poll(cx)
                .map(|result| result.map(|response| response.map(Body::new))),
            EdgeProjection::OwnCors { future } => future
                .poll(cx)
                .map(|result| result.map(|response| response.map(Body::new))),
        }
    }
}
