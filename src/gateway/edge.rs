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
/// `forwarded` for the rest.
#[derive(Clone)]
pub struct Edge<O, P> {
    pub local: O,
    pub forwarded: P,
}

/// Whether the gateway answers `path` itself.
pub fn is_local(path: &str) -> bool {
    server::is_kernel_path(path) || openapi::is_local(path)
}

impl<O, P, B> tower::Service<http::Request<Body>> for Edge<O, P>
where
    O: tower::Service<http::Request<Body>, Response = Response, Error = Infallible>,
    P: tower::Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>,
    B: http_body::Body<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EdgeFuture<O::Future, P::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both sides are always ready; ask both, as the contract wants.
        let local = self.local.poll_ready(cx)?;
        let forwarded = self.forwarded.poll_ready(cx)?;
        if local.is_ready() && forwarded.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if is_local(req.uri().path()) {
            EdgeFuture::Local {
                future: self.local.call(req),
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
    pub enum EdgeFuture<O, P> {
        Local { #[pin] future: O },
        Forwarded { #[pin] future: P },
    }
}

impl<O, P, B> Future for EdgeFuture<O, P>
where
    O: Future<Output = Result<Response, Infallible>>,
    P: Future<Output = Result<http::Response<B>, Infallible>>,
    B: http_body::Body<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            EdgeProjection::Local { future } => future.poll(cx),
            EdgeProjection::Forwarded { future } => future
                .poll(cx)
                .map(|result| result.map(|response| response.map(Body::new))),
        }
    }
}
