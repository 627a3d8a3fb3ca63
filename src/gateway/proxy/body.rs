//! A request body as the attempts see it: held when it is small enough to
//! send again, streamed otherwise, and watched for a client that stalls.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderMap};
use http_body_util::BodyExt as _;

/// The body length a request declares in `Content-Length`, if it does.
pub(super) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Bodies up to this size with a declared length are read before sending,
/// so a request can go to another instance when a connection fails.
const REPLAYABLE_BODY: u64 = 64 * 1024;

/// A request body as the attempts see it.
pub(super) enum Outgoing {
    /// Held in memory: every attempt gets a copy.
    Held(axum::body::Bytes),
    /// Streamed: only the first attempt gets it; `stalled` tells whether
    /// the attempt last found the client's body with nothing ready.
    Streamed(Option<Body>, Arc<AtomicBool>),
}

impl Outgoing {
    /// The body for this attempt, and whether another attempt could follow.
    pub(super) fn attempt(&mut self) -> (Body, bool) {
        match self {
            // An empty body costs no allocation.
            Outgoing::Held(bytes) if bytes.is_empty() => (Body::empty(), true),
            Outgoing::Held(bytes) => (Body::from(bytes.clone()), true),
            Outgoing::Streamed(body, stalled) => {
                let body = body.take().map_or_else(Body::empty, |body| {
                    Body::new(Watched {
                        body,
                        stalled: stalled.clone(),
                    })
                });
                (body, false)
            }
        }
    }

    /// Whether the exchange was waiting on the client's body, not on the
    /// instance, when it stopped.
    pub(super) fn client_stalled(&self) -> bool {
        matches!(self, Outgoing::Streamed(_, stalled) if stalled.load(Ordering::Relaxed))
    }
}

/// A streamed request body that notes whether its last read found the
/// client with nothing to give: when the exchange then runs out of time, it
/// was the client that kept it waiting (a slow upload), which is answered
/// 408 and does not count against the instance.
struct Watched {
    body: Body,
    stalled: Arc<AtomicBool>,
}

impl http_body::Body for Watched {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        self.stalled.store(polled.is_pending(), Ordering::Relaxed);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A non-empty request body as the attempts will see it: held when its
/// declared length is small enough to replay, streamed otherwise.
pub(super) async fn prepare_body(
    body: Body,
    headers: &HeaderMap,
    limit: u64,
) -> Result<Outgoing, Response> {
    let declared = declared_length(headers);
    let limited = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    if declared.is_some_and(|n| n <= REPLAYABLE_BODY) {
        return match limited.collect().await {
            Ok(collected) => Ok(Outgoing::Held(collected.to_bytes())),
            Err(_) => Err(crate::kernel::error::payload_too_large().into_response()),
        };
    }
    Ok(Outgoing::Streamed(
        Some(Body::new(limited)),
        Arc::new(AtomicBool::new(false)),
    ))
}
