//! One connection's HTTP/1.1 requests, served by a loop of its own.
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
//! request in flight is closed once its answer has been written.

use std::io;
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use http_body::Body as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::deadline::Deadline;
use super::server::{ConnectionService, InPlace, call_in_place};

/// The longest request head read here; a longer one goes to hyper, whose
/// own limit then applies.
const MAX_HEAD: usize = 64 * 1024;

/// Where a head field's name and value lie in the head's bytes, each as
/// (start, end), so that values can be slices of the head, not copies.
pub type FieldSpan = ((usize, usize), (usize, usize));

/// A head's field positions, held inline: heads seldom have more fields.
pub type FieldSpans = SmallVec<[FieldSpan; 16]>;

/// The longest request target a `Uri` takes.
const MAX_TARGET: usize = u16::MAX as usize - 1;

/// The most header fields a request read here may have.
const MAX_HEADERS: usize = 100;
/// How much the read buffer grows by when it runs out of room.
const READ_SPACE: usize = 8 * 1024;
/// The most answer body bytes gathered before they are written.
const WRITE_BATCH: usize = 64 * 1024;

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
pub async fn serve<S>(stream: TcpStream, serving: Serving<S>)
where
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
                match parse(&mut conn.read) {
                    Ok(Some(request)) => break request,
                    Ok(None) => {}
                    Err(HandOff) => {
                        let over = Over {
                            watcher,
                            shutdown: shutdown.clone(),
                            idle_timeout,
                            first_request: header_timeout,
                            write_timeout,
                        };
                        return hand_off(conn, service, hyper, over).await;
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
        let Ok(answer) = call_in_place(&mut service, request).await;
        let keep_alive = KeepAlive {
            keep: keep_alive.keep && !shutdown.is_cancelled(),
            ..keep_alive
        };
        match conn
            .write_answer(answer, head, keep_alive, &mut deadline)
            .await
        {
            Ok(true) => {}
            Ok(false) | Err(_) => return,
        }
    }
}

/// Spare header maps a thread keeps at most.
const SPARE_MAPS: usize = 64;
/// The most fields a spare header map may have room for; a larger one is
/// let go rather than kept.
const SPARE_MAP_ROOM: usize = 128;

thread_local! {
    /// Header maps this thread has finished with, emptied, for the next
    /// heads it reads: such a head's map costs no allocation.
    static SPARES: std::cell::RefCell<Vec<HeaderMap>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An empty header map with room for `capacity` fields: one this thread
/// has finished with when it has one.
pub fn header_map(capacity: usize) -> HeaderMap {
    match SPARES.try_with(|spares| spares.borrow_mut().pop()) {
        // A spare map has room for as many fields as it ever held; a head
        // with more makes it grow as a new one would.
        Ok(Some(mut map)) => {
            if map.try_reserve(capacity).is_err() {
                return HeaderMap::with_capacity(capacity);
            }
            map
        }
        _ => HeaderMap::with_capacity(capacity),
    }
}

/// Empties `map` and keeps it for [`header_map`], when this thread keeps
/// few enough and the map is not large.
pub fn recycle_headers(mut map: HeaderMap) {
    if map.capacity() > SPARE_MAP_ROOM {
        return;
    }
    map.clear();
    let _ = SPARES.try_with(|spares| {
        let mut spares = spares.borrow_mut();
        if spares.len() < SPARE_MAPS {
            spares.push(map);
        }
    });
}

/// The connection and its buffers.
struct Conn {
    stream: TcpStream,
    read: BytesMut,
    write: BytesMut,
}

impl Conn {
    /// Reads more of the client's bytes; 0 at their end. Gives up when the
    /// head takes too long, and, between requests, when shutdown begins.
    fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        idle: bool,
        deadline: &mut HeadDeadline,
        stopping: Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
    ) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_SPACE / 4 {
            self.read.reserve(READ_SPACE);
        }
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

    /// Writes `answer`, without its body when it answers HEAD; whether the
    /// connection may carry another request.
    async fn write_answer(
        &mut self,
        answer: Response,
        head: bool,
        keep_alive: KeepAlive,
        deadline: &mut HeadDeadline,
    ) -> io::Result<bool> {
        let (parts, mut body) = answer.into_parts();
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
        // Without a length, an answer is chunked; an HTTP/1.0 client knows
        // no chunks, so its answer ends with the connection.
        let chunked = !bodiless && length.is_none() && keep_alive.http11;
        let mut keep = keep_alive.keep && (bodiless || length.is_some() || chunked);
        if connection_closes(&parts.headers) {
            keep = false;
        }
        let out = &mut self.write;
        out.clear();
        // HEAD and 304 answers keep the length a GET would have had.
        let kept_length = head || status == StatusCode::NOT_MODIFIED;
        encode_head(out, status, &parts.headers, kept_length, |out| {
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
                    // More than announced: the answer cannot be framed.
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

/// Writes all of `buf` to `stream`, failing with `TimedOut` when a write
/// finds no room for longer than the connection's write limit. A write
/// that goes through at once, as almost all do, reads no clock and moves no
/// timer: the deadline is set only when the socket first has no room.
async fn write_bounded(
    stream: &mut TcpStream,
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
                Poll::Pending => {
                    if !waiting {
                        waiting = true;
                        deadline.start_write();
                    }
                    if deadline.poll_passed(cx) {
                        return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
                    }
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    })
    .await
}

/// A message body written into a buffer in its framing: a length
/// announced beforehand, chunked coding, or (for an HTTP/1.0 client) up to
/// the connection's close.
pub struct BodyFraming {
    mode: Mode,
    sent: u64,
}

#[derive(Clone, Copy)]
enum Mode {
    Length(u64),
    Chunked,
    UntilClose,
}

/// A body longer or shorter than its announced length.
#[derive(Debug, PartialEq, Eq)]
pub struct Misframed;

impl BodyFraming {
    /// By `length` when there is one, else chunked.
    pub fn new(length: Option<u64>) -> BodyFraming {
        let mode = length.map_or(Mode::Chunked, Mode::Length);
        BodyFraming { mode, sent: 0 }
    }

    /// Up to the connection's close: the bytes as they are.
    fn until_close() -> BodyFraming {
        BodyFraming {
            mode: Mode::UntilClose,
            sent: 0,
        }
    }

    /// Writes `data` to `out`, framed; refused once the body would be
    /// longer than announced.
    pub fn push(&mut self, out: &mut BytesMut, data: &[u8]) -> Result<(), Misframed> {
        if data.is_empty() {
            return Ok(());
        }
        self.sent += data.len() as u64;
        match self.mode {
            Mode::Length(n) if self.sent > n => return Err(Misframed),
            Mode::Length(_) | Mode::UntilClose => out.put_slice(data),
            Mode::Chunked => {
                let mut size = [0u8; 16];
                out.put_slice(hex(data.len(), &mut size));
                out.put_slice(b"\r\n");
                out.put_slice(data);
                out.put_slice(b"\r\n");
            }
        }
        Ok(())
    }

    /// Writes the body's end to `out`; refused when the body was shorter
    /// than announced.
    pub fn finish(&mut self, out: &mut BytesMut) -> Result<(), Misframed> {
        match self.mode {
            Mode::Length(n) if self.sent != n => Err(Misframed),
            Mode::Length(_) | Mode::UntilClose => Ok(()),
            Mode::Chunked => {
                out.put_slice(b"0\r\n\r\n");
                Ok(())
            }
        }
    }
}

/// `n` in hexadecimal digits, at the end of `buf`.
fn hex(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = DIGITS[n & 0xf];
        n >>= 4;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// Whether the answer's own `Connection` field asks to close.
fn connection_closes(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| has_token(v.as_bytes(), b"close"))
}

/// Writes the status line, the answer's fields (but its framing fields,
/// which `framing` writes; its `Content-Length` stays when `kept_length`),
/// and a `Date` when it has none.
fn encode_head(
    out: &mut BytesMut,
    status: StatusCode,
    headers: &HeaderMap,
    kept_length: bool,
    framing: impl FnOnce(&mut BytesMut),
) {
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
    let mut dated = false;
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH && !kept_length
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
        {
            continue;
        }
        dated |= name == header::DATE;
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    if !dated {
        out.put_slice(b"date: ");
        date::write(out);
        out.put_slice(b"\r\n");
    }
    framing(out);
    out.put_slice(b"\r\n");
}

/// How the connection goes on after an answer.
#[derive(Clone, Copy)]
struct KeepAlive {
    /// The client may send another request.
    keep: bool,
    /// The client speaks HTTP/1.1 (chunked coding, persistent by default).
    http11: bool,
}

/// A request read whole, ready for the service.
struct Request {
    request: http::Request<Body>,
    keep_alive: KeepAlive,
    /// It asks for the head only.
    head: bool,
}

/// What [`parse`] found: a request (`Ok(Some)`), a head not all there yet
/// (`Ok(None)`), or what is not served here (`Err(HandOff)`).
type Parsed = Result<Option<Request>, HandOff>;

/// Not a request served here: hyper takes the connection.
#[derive(Debug)]
struct HandOff;

/// The request head at the start of `read`, taken off it, once it is all
/// there.
fn parse(read: &mut BytesMut) -> Parsed {
    // Left uninitialised: the parser fills what it uses.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let length = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        read,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if read.len() <= MAX_HEAD => return Ok(None),
        _ => return Err(HandOff),
    };
    let (Some(method), Some(target), Some(minor)) = (request.method, request.path, request.version)
    else {
        return Err(HandOff);
    };
    if !target.starts_with('/') {
        return Err(HandOff);
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Err(HandOff);
    };
    let http11 = minor == 1;
    let base = read.as_ptr() as usize;
    let at = |part: &[u8]| {
        let start = part.as_ptr() as usize - base;
        (start, start + part.len())
    };
    let target = at(target.as_bytes());
    let count = request.headers.len();
    let mut spans = FieldSpans::new();
    let (mut close, mut keep_alive) = (false, false);
    for field in request.headers.iter() {
        let name = field.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            // An empty body is no body; any other goes to hyper.
            if field.value.is_empty() || field.value.iter().any(|b| *b != b'0') {
                return Err(HandOff);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return Err(HandOff);
        } else if name.eq_ignore_ascii_case(b"connection") {
            close |= has_token(field.value, b"close");
            keep_alive |= has_token(field.value, b"keep-alive");
        }
        spans.push((at(name), at(field.value)));
    }
    let head = read.split_to(length).freeze();
    // The target is a path (checked above): parsed as one, with no look for
    // a scheme or an authority; one longer than a URI may be is hyper's to refuse.
    let path = http::uri::PathAndQuery::from_maybe_shared(head.slice(target.0..target.1));
    let (Ok(path), true) = (path, target.1 - target.0 <= MAX_TARGET) else {
        // Put back for hyper, which answers a bad target itself.
        return unparse(read, head);
    };
    // Room for what the layers add (a request id, say) without growing.
    let mut headers = header_map(count + 4);
    for ((name_start, name_end), (value_start, value_end)) in spans {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&head[name_start..name_end]),
            HeaderValue::from_maybe_shared(head.slice(value_start..value_end)),
        ) else {
            return unparse(read, head);
        };
        headers.append(name, value);
    }
    let head_only = method == Method::HEAD;
    let mut request = http::Request::new(Body::empty());
    *request.method_mut() = method;
    *request.uri_mut() = http::Uri::from(path);
    *request.version_mut() = if http11 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    *request.headers_mut() = headers;
    Ok(Some(Request {
        request,
        keep_alive: KeepAlive {
            keep: if http11 { !close } else { keep_alive && !close },
            http11,
        },
        head: head_only,
    }))
}

/// Puts a head taken off `read` back in front of it, for hyper.
fn unparse(read: &mut BytesMut, head: Bytes) -> Parsed {
    let mut whole = BytesMut::with_capacity(head.len() + read.len());
    whole.put_slice(&head);
    whole.put_slice(read);
    *read = whole;
    Err(HandOff)
}

/// Whether a comma-separated field value holds `token`, in any case.
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|part| part.trim_ascii().eq_ignore_ascii_case(token))
}

/// What ends a connection handed to hyper.
struct Over {
    /// Held while the connection lives, so that shutdown waits for it.
    watcher: Watcher,
    shutdown: CancellationToken,
    idle_timeout: Duration,
    /// By when the connection must have made its first request.
    first_request: Duration,
    /// How long a write may wait for room (see [`write_bounded`]).
    write_timeout: Duration,
}

/// Hands the connection to hyper, with the bytes read and not yet served.
///
/// The connection is wound up (HTTP/2: a GOAWAY, its streams in flight
/// finishing) when shutdown begins, or when no byte has gone either way for
/// `idle_timeout` (between one and two of them, as it is checked); and
/// closed when no byte has gone either way for another `idle_timeout` after
/// that, whether or not its client answered the GOAWAY. An HTTP/2 client
/// that opens a connection and leaves it idle does not hold it for ever,
/// while a stream that sends now and then keeps it. A connection that has
/// made no request within `first_request` of being handed over (an HTTP/2
/// preface, then only pings and settings) is closed then. A write that
/// finds no room for `write_timeout` fails, and ends the connection.
async fn hand_off<S>(conn: Conn, service: S, hyper: auto::Builder<TokioExecutor>, over: Over)
where
    S: ConnectionService,
    S::Future: Send + 'static,
{
    let Conn { stream, read, .. } = conn;
    let moved = Arc::new(AtomicUsize::new(0));
    let Over {
        watcher,
        shutdown,
        idle_timeout,
        first_request,
        write_timeout,
    } = over;
    let io = Rewind {
        read: read.freeze(),
        stream,
        moved: moved.clone(),
        write_limit: write_timeout,
        write_deadline: None,
    };
    let service = InPlace::new(service);
    let calls = service.calls();
    let connection = hyper.serve_connection_with_upgrades(TokioIo::new(io), service);
    let mut connection = pin!(connection);
    let mut stopping = pin!(shutdown.cancelled());
    let mut check = pin!(tokio::time::sleep(idle_timeout));
    let mut first = pin!(tokio::time::sleep(first_request));
    let mut asked = false;
    let mut seen = 0;
    let mut wound_up = false;
    let ended = loop {
        tokio::select! {
            ended = connection.as_mut() => break Some(ended),
            () = stopping.as_mut(), if !wound_up => {
                wound_up = true;
                connection.as_mut().graceful_shutdown();
            }
            () = first.as_mut(), if !asked => {
                asked = true;
                // Nothing in flight to finish: closed as it is.
                if calls.load(Ordering::Relaxed) == 0 {
                    break None;
                }
            }
            () = check.as_mut() => {
                let now = moved.load(Ordering::Relaxed);
                if now == seen && wound_up {
                    break None;
                }
                if now == seen {
                    wound_up = true;
                    connection.as_mut().graceful_shutdown();
                }
                seen = now;
                check.as_mut().reset(Instant::now() + idle_timeout);
            }
        }
    };
    drop(watcher);
    match ended {
        Some(Err(e)) => tracing::debug!(error = %e, "connection ended with an error"),
        Some(Ok(())) => {}
        None => tracing::debug!("idle connection closed"),
    }
}

/// A stream whose first bytes were already read: they are read again first.
struct Rewind {
    read: Bytes,
    stream: TcpStream,
    /// Reads and writes that moved bytes.
    moved: Arc<AtomicUsize>,
    /// How long a write may find no room before it fails.
    write_limit: Duration,
    /// Set while a write waits for room.
    write_deadline: Option<Deadline>,
}

impl Rewind {
    /// `written`, a write's outcome, failed with `TimedOut` when it has
    /// waited for room past the write limit.
    fn bound_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if written.is_ready() {
            self.write_deadline = None;
            return written;
        }
        let limit = self.write_limit;
        let deadline = self
            .write_deadline
            .get_or_insert_with(|| Deadline::new(Instant::now() + limit));
        if deadline.poll_passed(cx) {
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        Poll::Pending
    }
}

impl Rewind {
    /// Counts `outcome`, a read or write, when it moved bytes.
    fn count<T>(&self, outcome: &Poll<io::Result<T>>, moved: bool) {
        if moved && matches!(outcome, Poll::Ready(Ok(_))) {
            self.moved.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        self.count(&read, buf.filled().len() > before);
        read
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.count(&written, !buf.is_empty());
        self.bound_write(cx, written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.count(&written, bufs.iter().any(|b| !b.is_empty()));
        self.bound_write(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
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

/// The `Date` field's value, made once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    use bytes::{BufMut as _, BytesMut};

    struct Cached {
        second: u64,
        text: String,
    }

    thread_local! {
        static DATE: RefCell<Cached> = const {
            RefCell::new(Cached { second: u64::MAX, text: String::new() })
        };
    }

    /// Writes the current date (IMF-fixdate) to `out`.
    pub fn write(out: &mut BytesMut) {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        DATE.with(|cached| {
            let mut cached = cached.borrow_mut();
            if cached.second != second {
                cached.second = second;
                cached.text = httpdate::fmt_http_date(now);
            }
            out.put_slice(cached.text.as_bytes());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_header_map_comes_back_empty_and_a_large_one_is_let_go() {
        // Maps of this thread's own, away from other tests' threads.
        std::thread::spawn(|| {
            let mut map = header_map(4);
            map.insert(header::HOST, HeaderValue::from_static("a"));
            map.append("x-two", HeaderValue::from_static("b"));
            map.append("x-two", HeaderValue::from_static("c"));
            let room = map.capacity();
            recycle_headers(map);
            let again = header_map(2);
            assert!(again.is_empty());
            assert!(again.get(header::HOST).is_none());
            assert!(again.capacity() >= room);

            let mut large = HeaderMap::with_capacity(SPARE_MAP_ROOM * 2);
            large.insert(header::HOST, HeaderValue::from_static("a"));
            recycle_headers(large);
            assert!(header_map(1).capacity() < SPARE_MAP_ROOM);
        })
        .join()
        .unwrap();
    }

    fn parsed(bytes: &[u8]) -> (Parsed, BytesMut) {
        let mut read = BytesMut::from(bytes);
        (parse(&mut read), read)
    }

    #[test]
    fn a_plain_request_is_read_here_and_the_rest_of_the_buffer_kept() {
        let (p, rest) = parsed(
            b"GET /v1/users/me?x=1 HTTP/1.1\r\nHost: a\r\nX-Two: b\r\nX-Two: c\r\n\r\nGET /next",
        );
        let Ok(Some(r)) = p else {
            panic!("not read here")
        };
        assert_eq!(r.request.method(), Method::GET);
        assert_eq!(r.request.uri(), "/v1/users/me?x=1");
        assert_eq!(r.request.headers()["host"], "a");
        let twos: Vec<_> = r.request.headers().get_all("x-two").iter().collect();
        assert_eq!(twos, ["b", "c"]);
        assert!(r.keep_alive.keep && r.keep_alive.http11 && !r.head);
        assert_eq!(&rest[..], b"GET /next");
    }

    #[test]
    fn keep_alive_follows_the_version_and_the_connection_field() {
        let keep = |bytes: &[u8]| match parsed(bytes).0 {
            Ok(Some(r)) => r.keep_alive.keep,
            _ => panic!("not read here"),
        };
        assert!(!keep(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"));
        assert!(!keep(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(keep(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn requests_this_loop_does_not_serve_go_to_hyper_whole() {
        for bytes in [
            &b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
        ] {
            let (p, rest) = parsed(bytes);
            assert!(
                matches!(p, Err(HandOff)),
                "{}",
                String::from_utf8_lossy(bytes)
            );
            assert_eq!(&rest[..], bytes, "the bytes go to hyper as they came");
        }
        // A target longer than a URI may be is hyper's to refuse.
        let head = |n: usize| format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(n - 1)).into_bytes();
        assert!(matches!(parsed(&head(MAX_TARGET)).0, Ok(Some(_))));
        let (p, rest) = parsed(&head(MAX_TARGET + 1));
        assert!(matches!(p, Err(HandOff)));
        assert_eq!(rest[..], head(MAX_TARGET + 1));
    }

    #[test]
    fn an_empty_body_is_no_body_and_a_partial_head_waits() {
        assert!(matches!(
            parsed(b"DELETE /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n").0,
            Ok(Some(_))
        ));
        assert!(matches!(parsed(b"GET / HTTP/1.1\r\nHost:").0, Ok(None)));
    }

    #[test]
    fn bodies_are_framed_by_length_or_in_chunks() {
        let mut out = BytesMut::new();
        let mut chunked = BodyFraming::new(None);
        chunked.push(&mut out, b"hello").unwrap();
        chunked.push(&mut out, b"").unwrap();
        chunked.push(&mut out, &[b'x'; 26]).unwrap();
        chunked.finish(&mut out).unwrap();
        let mut expected = b"5\r\nhello\r\n1a\r\n".to_vec();
        expected.extend_from_slice(&[b'x'; 26]);
        expected.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(&out[..], &expected[..]);

        let mut out = BytesMut::new();
        let mut sized = BodyFraming::new(Some(4));
        sized.push(&mut out, b"ab").unwrap();
        assert_eq!(
            sized.finish(&mut out),
            Err(Misframed),
            "shorter than announced"
        );
        sized.push(&mut out, b"cd").unwrap();
        sized.finish(&mut out).unwrap();
        assert_eq!(&out[..], b"abcd");
        assert_eq!(
            sized.push(&mut out, b"e"),
            Err(Misframed),
            "longer than announced"
        );
    }

    #[test]
    fn chunk_sizes_are_lower_case_hexadecimal() {
        let mut buf = [0u8; 16];
        assert_eq!(hex(0, &mut buf), b"0");
        assert_eq!(hex(255, &mut buf), b"ff");
        assert_eq!(hex(0x10000, &mut buf), b"10000");
    }
}
