//! One attempt at one instance: over this thread's HTTP/1.1 connections
//! (see `pool.rs`) or its h2c client, the response's head due by a deadline
//! and its body cut short when it pauses too long; and whose fault a
//! failed attempt was.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;

use crate::gateway::client::upstream;
use crate::gateway::config::UpstreamProtocol;
use crate::gateway::headers::{ProxyFields, strip_hop_by_hop};
use crate::kernel::http::deadline::Deadline;

/// One request to one instance, ready to go.
pub(super) enum Attempt<'a> {
    /// Over this thread's HTTP/1.1 connections to `address`, for the
    /// instance's base path followed by the request's target.
    Http1 {
        address: &'a str,
        path: [&'a str; 2],
        request: &'a http::request::Parts,
        fields: &'a ProxyFields,
    },
    /// Over this thread's h2c client; boxed, so HTTP/1.1 attempts do not
    /// carry the size of a request head.
    H2c { request: Box<http::request::Parts> },
}

/// Why an attempt failed.
pub(super) struct AttemptError {
    /// No connection could be made: nothing reached the instance.
    pub(super) connect: bool,
    /// No response by the deadline.
    pub(super) timed_out: bool,
    pub(super) error: Box<dyn std::error::Error + Send + Sync>,
}

/// The `host:port` and the base path (without its trailing slash) of an
/// instance's `http://` URL; none when the URL is not one.
pub(super) fn split_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("http://")?;
    let slash = rest.bytes().position(|b| b == b'/').unwrap_or(rest.len());
    let (address, base) = rest.split_at(slash);
    Some((address, base.trim_end_matches('/')))
}

impl Attempt<'_> {
    /// Sends the attempt with `body`: the response, its body streamed back
    /// without hop-by-hop headers, if its head comes by `deadline`. The
    /// response's body fails when it pauses longer than `pause`.
    pub(super) async fn send(
        self,
        body: Body,
        deadline: tokio::time::Instant,
        pause: Duration,
    ) -> Result<Response, AttemptError> {
        let response = match self {
            // The deadline is kept by the connection's own timer (see `pool`).
            Attempt::Http1 {
                address,
                path,
                request,
                fields,
            } => match crate::gateway::pool::send(
                address,
                &path,
                request,
                Some(fields),
                body,
                deadline,
                pause,
            )
            .await
            {
                Ok(r) => r.map(Body::new),
                Err(e) => {
                    return Err(AttemptError {
                        connect: matches!(e, crate::gateway::pool::SendError::Connect(_)),
                        timed_out: matches!(e, crate::gateway::pool::SendError::TimedOut),
                        error: Box::new(e),
                    });
                }
            },
            Attempt::H2c { request } => {
                let request = Request::from_parts(*request, body);
                // Boxed, so HTTP/1.1 attempts do not carry its size.
                let response = Box::pin(tokio::time::timeout_at(
                    deadline,
                    upstream(UpstreamProtocol::H2c).request(request),
                ));
                match response.await {
                    Ok(Ok(r)) => r.map(|body| Body::new(Paced::new(body, pause))),
                    Ok(Err(e)) => {
                        return Err(AttemptError {
                            connect: e.is_connect(),
                            timed_out: false,
                            error: Box::new(e),
                        });
                    }
                    Err(elapsed) => {
                        return Err(AttemptError {
                            connect: false,
                            timed_out: true,
                            error: Box::new(elapsed),
                        });
                    }
                }
            }
        };
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, body))
    }
}

/// A response's body over h2c, failing when it pauses longer than `pause`
/// between frames, as a response over HTTP/1.1 does (see `pool`): an
/// instance that stalls mid-answer does not hold the client for ever. Each
/// frame moves the [`Deadline`] on, not a timer of its own.
struct Paced {
    body: hyper::body::Incoming,
    pause: Duration,
    deadline: Deadline,
    failed: bool,
}

impl Paced {
    fn new(body: hyper::body::Incoming, pause: Duration) -> Paced {
        Paced {
            body,
            pause,
            deadline: Deadline::new(tokio::time::Instant::now() + pause),
            failed: false,
        }
    }
}

impl http_body::Body for Paced {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.deadline.set(tokio::time::Instant::now() + this.pause);
                Poll::Ready(frame.map(|f| f.map_err(axum::Error::new)))
            }
            Poll::Pending if this.deadline.poll_passed(cx) => {
                this.failed = true;
                Poll::Ready(Some(Err(axum::Error::new(
                    "the instance's answer paused too long",
                ))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Attempts at most for a request that reached an instance and failed.
pub(super) const MAX_ATTEMPTS: usize = 3;

/// Whose fault a failed exchange was.
pub(super) enum Blame {
    /// The client's streamed body went over the limit.
    TooLarge,
    /// The client's body broke off (the client went away mid-upload).
    ClientBody,
    /// The instance's: counts toward ejecting it.
    Upstream,
}

pub(super) fn blame(e: &(dyn std::error::Error + 'static)) -> Blame {
    let chain = || std::iter::successors(e.source(), |err| err.source());
    if chain().any(|err| err.is::<http_body_util::LengthLimitError>()) {
        Blame::TooLarge
    } else if chain().any(|err| err.is::<axum::Error>()) {
        // Only the request body (the client's stream) fails as axum's error.
        Blame::ClientBody
    } else {
        Blame::Upstream
    }
}
