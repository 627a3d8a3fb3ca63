//! The client half of the HTTP/1.1 wire: the gateway's exchanges with an
//! upstream instance. The server half is `kernel::http::h1_server`; both
//! follow the framing rules of `kernel::http::wire`.
//!
//! An exchange is driven by the request's own task: the request head goes
//! from the header map straight into the connection's write buffer, the
//! response's head is parsed in place (httparse) and its header values are
//! slices of the bytes read, and the response's body is read from the socket
//! by whoever polls it, which is the client connection's own task. No
//! connection task, channel or hand-off sits between the two sides.
//!
//! The framing rules and limits are `kernel::http::wire`'s, shared with the
//! kernel's server loop: a request body of known length goes with
//! `Content-Length`, any other in chunked coding; a response is read by its
//! chunked coding, by `Content-Length`, or up to the connection's close, and
//! has no body when it answers HEAD or is 204 or 304. A connection is
//! offered for reuse only when the response said it may be and both
//! messages were read and written whole.
//!
//! Rooms: this file sends the request; `answer.rs` reads the response, its
//! head and its body.

mod response;

pub use crate::kernel::http::wire::{Chunk, Framing};
pub use response::poll_body;
use response::{read_head, read_head_from};

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::BytesMut;
use http::Method;
use http_body_util::BodyExt as _;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::headers::ProxyFields;
use crate::kernel::http::deadline::Deadline;
use crate::kernel::http::wire::{
    self, BodyFraming, READ_SPACE, RequestHead, ResponseHead, WRITE_BATCH, make_room,
};

/// An open connection to an instance, with its buffers.
pub struct Conn {
    stream: TcpStream,
    read: BytesMut,
    write: BytesMut,
    /// By when the response's head must be in; one timer for all the
    /// connection's exchanges.
    deadline: Deadline,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No response's head by the exchange's deadline.
    #[error("no response in time")]
    TimedOut,
    /// The connection ended, or was reset, before any byte of a response:
    /// on a connection that had been idle, the instance may have closed it
    /// just before the request went out.
    #[error("connection closed before a response")]
    Closed,
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    /// The instance's address or the request target cannot be written in
    /// a request line.
    #[error("the instance address or request target is not valid")]
    Target,
    /// The client's request body failed (over the limit, or cut off).
    #[error("request body failed")]
    Body(#[source] axum::Error),
}

impl From<wire::Malformed> for Error {
    fn from(m: wire::Malformed) -> Error {
        Error::Malformed(m.0)
    }
}

/// Methods that mean the same when sent twice (RFC 9110, section 9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

impl Conn {
    /// A connection whose first exchange's answer is due by `deadline`.
    pub fn new(stream: TcpStream, deadline: Instant) -> Conn {
        Conn {
            stream,
            read: BytesMut::with_capacity(READ_SPACE),
            write: BytesMut::with_capacity(1024),
            deadline: Deadline::new(deadline),
        }
    }

    /// The next exchange's answer (or the next piece of its body) is due
    /// by `deadline`.
    pub fn response_due_by(&mut self, deadline: Instant) {
        self.deadline.set(deadline);
    }

    /// Whether the deadline set with [`Conn::response_due_by`] has passed; when
    /// not, the task is woken by then.
    pub fn poll_deadline(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.poll_passed(cx)
    }

    /// Whether bytes the instance sent are waiting unread: after a response
    /// read to its end, they belong to no request, and the connection
    /// cannot be trusted to frame the next response.
    pub fn has_unread(&self) -> bool {
        !self.read.is_empty()
    }

    /// Whether the connection can take a request: the instance has not
    /// closed it, and nothing unasked-for is waiting on it.
    pub fn is_open(&self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readiness may be left over from the last response: look.
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads more of what the instance sent; 0 at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        make_room(&mut self.read);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.read)
    }
}

/// Where a request goes on its connection: the instance's `host:port`,
/// and the pieces of the request target, written one after the other.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    host: &'a str,
    path: &'a [&'a str],
}

impl<'a> Target<'a> {
    /// The target, when every piece is plain visible ASCII, as a request
    /// line and a Host field need.
    pub fn new(host: &'a str, path: &'a [&'a str]) -> Result<Target<'a>, Error> {
        let plain = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
        if host.is_empty() || !plain(host) || !path.iter().all(|p| plain(p)) {
            return Err(Error::Target);
        }
        Ok(Target { host, path })
    }
}

/// Sends `request` (its method and header fields) to `target` with `body`
/// over `conn`, and reads the response's head. The response's body is then read
/// with [`poll_body`].
pub async fn exchange(
    conn: &mut Conn,
    target: Target<'_>,
    request: &http::request::Parts,
    fields: Option<&ProxyFields>,
    body: Body,
) -> Result<ResponseHead, Error> {
    let size = if http_body::Body::is_end_stream(&body) {
        Some(0)
    } else {
        http_body::Body::size_hint(&body).exact()
    };
    conn.write.clear();
    encode_head(&mut conn.write, target, request, fields, size);
    let head_only = request.method == Method::HEAD;
    if size == Some(0) {
        if let Err(e) = conn.stream.write_all(&conn.write).await {
            return Err(before_response(e));
        }
        return read_head(conn, head_only).await;
    }
    // Boxed: most requests have no body, and their exchange stays small.
    Box::pin(exchange_with_body(conn, body, size, head_only)).await
}

/// The rest of [`exchange`] for a request with a body, its head waiting in
/// the write buffer. The body is written while the response is awaited: an
/// instance may answer (and stop reading) before the body is all there.
async fn exchange_with_body(
    conn: &mut Conn,
    body: Body,
    size: Option<u64>,
    head_only: bool,
) -> Result<ResponseHead, Error> {
    let Conn {
        stream,
        read,
        write,
        deadline,
    } = conn;
    let (mut reader, mut writer) = stream.split();
    let send = send_body(&mut writer, write, body, size);
    let response = read_head_from(&mut reader, read, deadline, head_only);
    tokio::pin!(send, response);
    let mut sent = false;
    let mut send_failed = None;
    let head = loop {
        tokio::select! {
            outcome = &mut send, if !sent => {
                sent = true;
                match outcome {
                    Ok(()) => {}
                    Err(Error::Body(e)) => return Err(Error::Body(e)),
                    // The instance may have answered and closed: look for it.
                    Err(e) => send_failed = Some(e),
                }
            }
            head = &mut response => break head,
        }
    };
    // An early response that does not refuse the body (a success, the
    // connection kept): the instance reads on, as a streaming handler does,
    // so the rest of the body goes too before the response is handed on.
    if !sent
        && let Ok(early) = &head
        && early.reusable
        && early.parts.status.as_u16() < 400
    {
        sent = true;
        match send.await {
            Ok(()) => {}
            Err(Error::Body(e)) => return Err(Error::Body(e)),
            Err(e) => send_failed = Some(e),
        }
    }
    match (head, send_failed) {
        (Ok(mut head), failed) => {
            // Sent only in part: the connection is in no state to reuse.
            head.reusable &= sent && failed.is_none();
            Ok(head)
        }
        (Err(_), Some(failed)) => Err(failed),
        (Err(e), None) => Err(e),
    }
}

/// A write failure before any response: the connection was closed under it.
fn before_response(e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted => Error::Closed,
        _ => Error::Io(e),
    }
}

/// Writes the request line for `target`, the instance's Host, the
/// request's other header fields and the proxy's `fields` in place of the
/// client's fields of those names, with the framing of a body of `size`
/// bytes (chunked when not known).
fn encode_head(
    out: &mut BytesMut,
    target: Target<'_>,
    request: &http::request::Parts,
    fields: Option<&ProxyFields>,
    size: Option<u64>,
) {
    let head = RequestHead {
        method: &request.method,
        path: target.path,
        host: target.host,
        headers: &request.headers,
    };
    wire::encode_request_head(
        out,
        &head,
        size,
        |name| fields.is_some() && ProxyFields::replaces(name),
        |out| {
            if let Some(fields) = fields {
                fields.write(out);
            }
        },
    );
}

/// Writes the head waiting in `out`, then `body`, in its framing: `size`
/// bytes, or chunked. The head waits for the body's first bytes, so a small
/// body leaves with it in one write.
async fn send_body(
    writer: &mut tokio::net::tcp::WriteHalf<'_>,
    out: &mut BytesMut,
    mut body: Body,
    size: Option<u64>,
) -> Result<(), Error> {
    let mut framing = BodyFraming::new(size);
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                // Trailer fields of a request are not passed on.
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                if framing.push(out, &data).is_err() {
                    return Err(Error::Body(axum::Error::new(
                        "request body longer than declared",
                    )));
                }
                // Written before waiting for more; a body that has ended
                // leaves with its end in one write.
                if out.len() >= WRITE_BATCH || !http_body::Body::is_end_stream(&body) {
                    writer.write_all(out).await.map_err(before_response)?;
                    out.clear();
                }
            }
            Some(Err(e)) => return Err(Error::Body(e)),
            None => {
                if framing.finish(out).is_err() {
                    return Err(Error::Body(axum::Error::new(
                        "request body shorter than declared",
                    )));
                }
                if !out.is_empty() {
                    writer.write_all(out).await.map_err(before_response)?;
                    out.clear();
                }
                return Ok(());
            }
        }
    }
}
