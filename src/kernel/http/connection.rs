//! What answers one connection: the service a connection's requests go
//! to, behind the wire's rules no route may waive, and called in place
//! rather than copied per request. Both paths a connection may be served by
//! (the kernel's own loop in `http1/` and hyper) call it through here.

use axum::Router;
use axum::response::IntoResponse;
use http::StatusCode;
use std::net::SocketAddr;
use tower::ServiceExt as _;

use crate::kernel::error::Problem;

/// The service answering one connection's requests.
pub trait ConnectionService:
    tower::Service<
        http::Request<axum::body::Body>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
    > + Clone
    + Send
    + 'static
{
}

impl<S> ConnectionService for S where
    S: tower::Service<
            http::Request<axum::body::Body>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static
{
}

/// A connection's service behind the wire's rules that no route may waive
/// (see `wire.rs`): a request with a missing, repeated or invalid `Host`,
/// or a standard method in another case, is answered 400 here, on either
/// path a connection is read by, before anything else sees it.
#[derive(Clone)]
pub struct Checked<S>(pub S);

impl<S> tower::Service<http::Request<axum::body::Body>> for Checked<S>
where
    S: tower::Service<
            http::Request<axum::body::Body>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        >,
{
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = CheckedFuture<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<axum::body::Body>) -> Self::Future {
        let fault = super::wire::host_fault(req.version(), req.headers())
            .map(|title| ("invalid_host", title))
            .or_else(|| super::wire::method_fault(req.method()).map(|t| ("invalid_method", t)));
        match fault {
            None => CheckedFuture::Called {
                future: self.0.call(req),
            },
            Some((code, title)) => {
                let mut response =
                    Problem::new(StatusCode::BAD_REQUEST, code, title).into_response();
                // The request cannot be trusted to frame another after it.
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
                CheckedFuture::Refused {
                    response: Some(response),
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The response of a [`Checked`] service.
    #[project = CheckedProjection]
    pub enum CheckedFuture<F> {
        Called { #[pin] future: F },
        Refused { response: Option<axum::response::Response> },
    }
}

impl<F> std::future::Future for CheckedFuture<F>
where
    F: std::future::Future<Output = Result<axum::response::Response, std::convert::Infallible>>,
{
    type Output = Result<axum::response::Response, std::convert::Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            CheckedProjection::Called { future } => future.poll(cx),
            CheckedProjection::Refused { response } => match response.take() {
                Some(response) => std::task::Poll::Ready(Ok(response)),
                None => std::task::Poll::Pending,
            },
        }
    }
}

/// `router` for a connection from `peer`: its requests carry
/// [`axum::extract::ConnectInfo`].
pub fn with_peer(router: Router, peer: SocketAddr) -> impl ConnectionService<Future: Send> {
    router.map_request(move |mut req: http::Request<axum::body::Body>| {
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        req
    })
}

/// A connection's tower service as hyper calls it: in place while it is
/// ready, which the services here always are, rather than a copy of it per
/// request. A service that is not ready is copied and driven to readiness
/// with the request, as the tower contract asks.
pub(crate) struct InPlace<S> {
    service: std::cell::RefCell<S>,
    /// Requests it was called with.
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl<S> InPlace<S> {
    pub(crate) fn new(service: S) -> Self {
        InPlace {
            service: std::cell::RefCell::new(service),
            calls: std::sync::Arc::default(),
        }
    }

    /// The count of requests it was called with, shared.
    pub(crate) fn calls(&self) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
        self.calls.clone()
    }
}

impl<S, B> hyper::service::Service<http::Request<B>> for InPlace<S>
where
    S: tower::Service<http::Request<axum::body::Body>> + Clone,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        InPlaceFuture<S::Future, tower::util::Oneshot<S, http::Request<axum::body::Body>>>;

    fn call(&self, req: http::Request<B>) -> Self::Future {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        call_in_place(
            &mut self.service.borrow_mut(),
            req.map(axum::body::Body::new),
        )
    }
}

/// Calls `service` with `req` in place when it is ready, or else a copy of
/// it once that copy is.
pub(crate) fn call_in_place<S, R>(
    service: &mut S,
    req: R,
) -> InPlaceFuture<S::Future, tower::util::Oneshot<S, R>>
where
    S: tower::Service<R> + Clone,
{
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match service.poll_ready(&mut cx) {
        // An error comes back from the copy's readiness, as it would
        // have from the service's own.
        std::task::Poll::Ready(Ok(())) => InPlaceFuture::Called {
            future: service.call(req),
        },
        _ => InPlaceFuture::Waiting {
            future: service.clone().oneshot(req),
        },
    }
}

pin_project_lite::pin_project! {
    /// The response of an [`InPlace`] service.
    #[project = InPlaceProjection]
    pub(crate) enum InPlaceFuture<C, W> {
        Called { #[pin] future: C },
        Waiting { #[pin] future: W },
    }
}

impl<C, W, T> std::future::Future for InPlaceFuture<C, W>
where
    C: std::future::Future<Output = T>,
    W: std::future::Future<Output = T>,
{
    type Output = T;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<T> {
        match self.project() {
            InPlaceProjection::Called { future } => future.poll(cx),
            InPlaceProjection::Waiting { future } => future.poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    use hyper::service::Service as _;

    use super::InPlace;

    /// Ready only from its second readiness check on; counts its copies.
    struct SlowToStart {
        checks: Arc<AtomicUsize>,
        copies: Arc<AtomicUsize>,
    }

    impl Clone for SlowToStart {
        fn clone(&self) -> Self {
            self.copies.fetch_add(1, Ordering::SeqCst);
            SlowToStart {
                checks: self.checks.clone(),
                copies: self.copies.clone(),
            }
        }
    }

    impl tower::Service<http::Request<axum::body::Body>> for SlowToStart {
        type Response = String;
        type Error = std::convert::Infallible;
        type Future = std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<String, Self::Error>> + Send>,
        >;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            if self.checks.fetch_add(1, Ordering::SeqCst) == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<axum::body::Body>) -> Self::Future {
            Box::pin(async move {
                use http_body_util::BodyExt as _;
                let body = req.into_body().collect().await.unwrap().to_bytes();
                Ok(format!("answered {}", String::from_utf8_lossy(&body)))
            })
        }
    }

    #[tokio::test]
    async fn a_service_not_ready_yet_still_responds_and_a_ready_one_is_not_copied() {
        let service = SlowToStart {
            checks: Arc::default(),
            copies: Arc::default(),
        };
        let copies = service.copies.clone();
        let in_place = InPlace::new(service);
        let first = in_place.call(http::Request::new("one".to_owned())).await;
        assert_eq!(first.unwrap(), "answered one");
        // Not ready at first: a copy was driven to readiness with the request.
        assert_eq!(copies.load(Ordering::SeqCst), 1);
        let second = in_place.call(http::Request::new("two".to_owned())).await;
        assert_eq!(second.unwrap(), "answered two");
        // Ready now: called in place, no further copy.
        assert_eq!(copies.load(Ordering::SeqCst), 1);
    }
}
