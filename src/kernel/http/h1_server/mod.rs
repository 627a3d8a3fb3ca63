//! The server half of the HTTP/1.1 wire: one connection's requests, served
//! by a loop of its own. The client half is `gateway::h1_client`; both
//! follow the framing rules of `kernel::http::wire`.
//!
//! Most API traffic is small requests without a body: a GET, a DELETE, a
//! HEAD. Such a request is read (its head parsed in place by httparse, its
//! header values slices of the bytes read), handed to the service, and its
//! answer written head and body in one buffer, all in the connection's
//! task. The moment a connection asks for anything else (a request with a
//! body, `Expect`, an upgrade, h2c, a target that is not a path, or a head
//! the parser refuses), it is handed to hyper, with the bytes already read,
//! for the rest of its life: hyper then answers exactly as it would have
//! from the start.
//!
//! The wait for a request head is bounded as hyper bounds it (the header
//! read timeout), by one timer per connection that is moved on only when it
//! fires: a request arriving in time costs no timer work. Once shutdown has
//! begun, a connection with no request in flight is closed, and one with a
//! request in flight is closed once its response has been written.
//!
//! Rooms: this file serves the connection and writes its responses, by the
//! rules and limits of `kernel::http::wire`; `handoff.rs` hands a connection to
//! hyper.

mod handoff;

use handoff::{HandOffLimits, hand_off};

use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::response::{IntoResponse as _, Response};
use bytes::{BufMut as _, BytesMut};
use http::StatusCode;
use http::header::{self, HeaderMap};
use http_body::Body as _;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::connection::{ConnectionService, call_in_place};
use super::deadline::Deadline;
use super::wire::{
    BodyFraming, KeepAlive, NotRead, READ_SPACE, Request, WRITE_BATCH, encode_response_head,
    has_token, make_room, parse_request, recycle_headers,
};
use crate::kernel::error::Problem;

/// What a connection runs over: a TCP stream, or TLS over one.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// What one connection is served with.
pub struct Serving<S> {
    pub service: S,
    /// Takes the connection over when it asks for what this loop does not
    /// serve.
    pub hyper: auto::Builder<TokioExecutor>,
    /// Held while the connection lives, so that shutdown waits for it.
    pub watcher: Watcher,
    pub shutdown: CancellationToken,
    pub header_timeout: Duration,
    /// How long a connection handed to hyper may go without a byte from
    /// its client before it is wound up (see [`hand_off`]).
    pub idle_timeout: Duration,
    /// How long a write to the client may wait for room: a client that
    /// stops reading is cut off after this, as one that stops sending is
    /// after `header_timeout`.
    pub write_timeout: Duration,
}

/// Serves `stream` until it closes, fails, or shutdown has begun and it
/// has no request in flight.
pub async fn serve<IO, S>(stream: IO, serving: Serving<S>)
where
    IO: Stream,
    S: ConnectionService,
    S::Future: Send + 'static,
{
    let Serving {
        mut service,
        hyper,
        watcher,
        shutdown,
        header_timeout,
        idle_timeout,
        write_timeout,
    } = serving;
    let mut conn = Conn {
        stream,
        read: BytesMut::with_capacity(READ_SPACE),
        write: BytesMut::with_capacity(READ_SPACE),
    };
    let mut deadline = HeadDeadline::new(header_timeout, write_timeout);
    let mut stopping = pin!(shutdown.cancelled());
    loop {
        deadline.start();
        let request = loop {
            if !conn.read.is_empty() {
                match parse_request(&mut conn.read) {
                    Ok(Some(request)) => break request,
                    Ok(None) => {}
                    Err(NotRead::HeadTooLarge) => {
                        let _ = conn.write_refusal(&mut deadline).await;
                        return;
                    }
                    Err(NotRead::HandOff) => {
                        let limits = HandOffLimits {
                            watcher,
                            shutdown: shutdown.clone(),
                            idle_timeout,
                            first_request: header_timeout,
                            write_timeout,
                        };
                        return hand_off(conn, service, hyper, limits).await;
                    }
                }
            }
            let idle = conn.read.is_empty();
            let read = std::future::poll_fn(|cx| {
                conn.poll_fill(cx, idle, &mut deadline, stopping.as_mut())
            })
            .await;
            match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let Request {
            request,
            keep_alive,
            head,
        } = request;
        let Ok(response) = call_in_place(&mut service, request).await;
        let keep_alive = KeepAlive {
            keep: keep_alive.keep && !shutdown.is_cancelled(),
            ..keep_alive
        };
        match conn
            .write_response(response, head, keep_alive, &mut deadline)
            .await
        {
            Ok(true) => {}
            Ok(false) | Err(_) => return,
        }
    }
}

/// The connection and its buffers.
struct Conn<IO> {
    stream: IO,
    read: BytesMut,
    write: BytesMut,
}

impl<IO: Stream> Conn<IO> {
    /// Answers a request head longer than the wire's limit with 431 and
    /// `Connection: close`: nothing after it can be read in step.
    async fn write_refusal(&mut self, deadline: &mut HeadDeadline) -> io::Result<bool> {
        let response = Problem::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "head_too_large",
            "The request head is too large",
        )
        .into_response();
        let close = KeepAlive {
            keep: false,
            http11: true,
        };
        self.write_response(response, false, close, deadline).await
    }

    /// Reads more of the client's bytes; 0 at their end. Gives up when the
    /// head takes too long, and, between requests, when shutdown begins.
    fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        idle: bool,
        deadline: &mut HeadDeadline,
        stopping: Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
    ) -> Poll<io::Result<usize>> {
        make_room(&mut self.read);
        if let Poll::Ready(read) =
            tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.read)
        {
            return Poll::Ready(read);
        }
        if idle && stopping.poll(cx).is_ready() {
            return Poll::Ready(Ok(0));
        }
        if deadline.poll_passed(cx) {
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        Poll::Pending
    }

    /// Writes `response`, without its body when it answers HEAD; whether the
    /// connection may carry another request.
    async fn write_response(
        &mut self,
        response: Response,
        head: bool,
        keep_alive: KeepAlive,
        deadline: &mut HeadDeadline,
    ) -> io::Result<bool> {
        let (parts, mut body) = response.into_parts();
        let status = parts.status;
        let bodiless = head
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let length = if body.is_end_stream() {
            Some(0)
        } else {
            body.size_hint().exact()
        };
        // Without a length, a response is chunked; an HTTP/1.0 client knows
        // no chunks, so its response ends with the connection.
        let chunked = !bodiless && length.is_none() && keep_alive.http11;
        let mut keep = keep_alive.keep && (bodiless || length.is_some() || chunked);
        if connection_closes(&parts.headers) {
            keep = false;
        }
        let out = &mut self.write;
        out.clear();
        // HEAD and 304 answers keep the length a GET would have had.
        let kept_length = head || status == StatusCode::NOT_MODIFIED;
        encode_response_head(out, status, &parts.headers, kept_length, |out| {
            let length = match length {
                Some(n) if !bodiless => Some(n),
                Some(n) if head && n > 0 && !parts.headers.contains_key(header::CONTENT_LENGTH) => {
                    Some(n)
                }
                _ => None,
            };
            if let Some(n) = length {
                out.put_slice(b"content-length: ");
                out.put_slice(itoa::Buffer::new().format(n).as_bytes());
                out.put_slice(b"\r\n");
            } else if chunked {
                out.put_slice(b"transfer-encoding: chunked\r\n");
            }
            if !keep {
                out.put_slice(b"connection: close\r\n");
            } else if !keep_alive.http11 {
                out.put_slice(b"connection: keep-alive\r\n");
            }
        });
        recycle_headers(parts.headers);
        if bodiless {
            drop(body);
            write_bounded(&mut self.stream, &self.write, deadline).await?;
            return Ok(keep);
        }
        let mut framing = match length {
            Some(n) => BodyFraming::new(Some(n)),
            None if chunked => BodyFraming::new(None),
            None => BodyFraming::until_close(),
        };
        loop {
            // Bytes gathered go out before waiting on a body that has
            // nothing more yet.
            let frame =
                match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx)))
                    .await
                {
                    Poll::Ready(frame) => frame,
                    Poll::Pending => {
                        if !self.write.is_empty() {
                            write_bounded(&mut self.stream, &self.write, deadline).await?;
                            self.write.clear();
                        }
                        std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
                    }
                };
            match frame {
                Some(Ok(frame)) => {
                    // Trailer fields are not passed on.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    // More than announced: the response cannot be framed.
                    if framing.push(&mut self.write, &data).is_err() {
                        return Ok(false);
                    }
                    if self.write.len() >= WRITE_BATCH {
                        write_bounded(&mut self.stream, &self.write, deadline).await?;
                        self.write.clear();
                    }
                }
                // A body that fails after the head has gone cannot be
                // answered otherwise: the connection is cut short.
                Some(Err(_)) => return Ok(false),
                None => {
                    if framing.finish(&mut self.write).is_err() {
                        return Ok(false);
                    }
                    if !self.write.is_empty() {
                        write_bounded(&mut self.stream, &self.write, deadline).await?;
                        self.write.clear();
                    }
                    return Ok(keep);
                }
            }
        }
    }
}

/// Writes all of `buf` to `stream` and flushes it (TLS holds what is
/// written until then), failing with `TimedOut` when a write finds no room
/// for longer than the connection's write limit. A write
/// that goes through at once, as almost all do, reads no clock and moves no
/// timer: the deadline is set only when the socket first has no room.
async fn write_bounded<IO: Stream>(
    stream: &mut IO,
    buf: &[u8],
    deadline: &mut HeadDeadline,
) -> io::Result<()> {
    let mut written = 0;
    let mut waiting = false;
    std::future::poll_fn(|cx| {
        while written < buf.len() {
            match Pin::new(&mut *stream).poll_write(cx, &buf[written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    written += n;
                    waiting = false;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return no_room(cx, &mut waiting, deadline),
            }
        }
        match Pin::new(&mut *stream).poll_flush(cx) {
            Poll::Ready(flushed) => Poll::Ready(flushed),
            Poll::Pending => no_room(cx, &mut waiting, deadline),
        }
    })
    .await
}

/// A write found no room: the wait is bounded from when it began.
fn no_room(
    cx: &mut Context<'_>,
    waiting: &mut bool,
    deadline: &mut HeadDeadline,
) -> Poll<io::Result<()>> {
    if !*waiting {
        *waiting = true;
        deadline.start_write();
    }
    if deadline.poll_passed(cx) {
        Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
    } else {
        Poll::Pending
    }
}

/// Whether the response's own `Connection` field asks to close.
fn connection_closes(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| has_token(v.as_bytes(), b"close"))
}

/// The time by which the head of the request being waited for must be in:
/// one timer per connection (see [`Deadline`]).
struct HeadDeadline {
    limit: Duration,
    /// How long a write may wait for room; the same timer serves, as a
    /// connection is never waiting for a head and a write at once.
    write_limit: Duration,
    deadline: Deadline,
}

impl HeadDeadline {
    fn new(limit: Duration, write_limit: Duration) -> HeadDeadline {
        HeadDeadline {
            limit,
            write_limit,
            deadline: Deadline::new(Instant::now() + limit),
        }
    }

    /// A wait for a new head begins.
    fn start(&mut self) {
        self.deadline.set(Instant::now() + self.limit);
    }

    /// A wait for room to write begins.
    fn start_write(&mut self) {
        self.deadline.set(Instant::now() + self.write_limit);
    }

    /// Whether the current wait has passed its deadline; when not, the
    /// task is woken by then.
    fn poll_passed(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.poll_passed(cx)
    }
}
