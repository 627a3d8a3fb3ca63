//! The HTTP/1.1 wire between the gateway and an upstream instance.
//!
//! An exchange is driven by the request's own task: the request head goes
//! from the header map straight into the connection's write buffer, the
//! answer's head is parsed in place (httparse) and its header values are
//! slices of the bytes read, and the answer's body is read from the socket
//! by whoever polls it, which is the client connection's own task. No
//! connection task, channel or hand-off sits between the two sides.
//!
//! Framing follows RFC 9112: a request body of known length goes with
//! `Content-Length`, any other in chunked coding; an answer is read by its
//! chunked coding, by `Content-Length`, or up to the connection's close, and
//! has no body when it answers HEAD or is 204 or 304. Interim (1xx) answers
//! are passed over. A connection is offered for reuse only when the answer
//! said it may be and both messages were read and written whole.

use std::fmt::Write as _;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::body::Body;
use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt as _;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::headers::ProxyFields;
use crate::kernel::deadline::Deadline;
use crate::kernel::http1::{BodyFraming, FieldSpans};

/// The longest answer head read.
const MAX_HEAD: usize = 64 * 1024;
/// The most header fields an answer head may have.
const MAX_HEADERS: usize = 128;
/// The longest chunk-size line, or trailer section, read.
const MAX_LINE: usize = 8 * 1024;
/// How much the read buffer grows by when it runs out of room.
const READ_SPACE: usize = 8 * 1024;
/// The most request body bytes gathered before they are written.
const WRITE_BATCH: usize = 64 * 1024;

/// An open connection to an instance, with its buffers.
pub struct Conn {
    stream: TcpStream,
    read: BytesMut,
    write: BytesMut,
    /// By when the answer's head must be in; one timer for all the
    /// connection's exchanges.
    deadline: Deadline,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No answer's head by the exchange's deadline.
    #[error("no answer in time")]
    TimedOut,
    /// The connection ended, or was reset, before any byte of an answer:
    /// on a connection that had been idle, the instance may have closed it
    /// just before the request went out.
    #[error("connection closed before an answer")]
    Closed,
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("malformed answer: {0}")]
    Malformed(&'static str),
    /// The instance's address or the request target cannot be written in
    /// a request line.
    #[error("the instance address or request target is not valid")]
    Target,
    /// The client's request body failed (over the limit, or cut off).
    #[error("request body failed")]
    Body(#[source] axum::Error),
}

/// How the rest of an answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// This many bytes are still to come.
    Length(u64),
    /// Chunked coding, at this point of it.
    Chunked(Chunk),
    /// Everything up to the connection's close.
    UntilClose,
    /// Read to its end.
    Done,
}

/// Where a chunked body's reading stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk, with this many bytes of it to come.
    Data(u64),
    /// After a chunk's data, before its line end.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
}

impl Framing {
    /// Whether the whole body has been read.
    pub fn is_done(&self) -> bool {
        matches!(self, Framing::Done | Framing::Length(0))
    }
}

/// An answer's head as read.
pub struct Head {
    pub parts: http::response::Parts,
    pub framing: Framing,
    /// Whether the connection may carry another request once the body has
    /// been read.
    pub reusable: bool,
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
    pub fn answer_by(&mut self, deadline: Instant) {
        self.deadline.set(deadline);
    }

    /// Whether the deadline set with [`Conn::answer_by`] has passed; when
    /// not, the task is woken by then.
    pub fn poll_deadline(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.poll_passed(cx)
    }

    /// Whether bytes the instance sent are waiting unread: after an answer
    /// read to its end, they belong to no request, and the connection
    /// cannot be trusted to frame the next answer.
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
            // Readiness may be left over from the last answer: look.
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

/// Grows `read` when little room is left for the next read.
fn make_room(read: &mut BytesMut) {
    if read.capacity() - read.len() < READ_SPACE / 4 {
        read.reserve(READ_SPACE);
    }
}

/// Sends `request` (its method and header fields) to `target` with `body`
/// over `conn`, and reads the answer's head. The answer's body is then read
/// with [`poll_body`].
pub async fn exchange(
    conn: &mut Conn,
    target: Target<'_>,
    request: &http::request::Parts,
    fields: Option<&ProxyFields>,
    body: Body,
) -> Result<Head, Error> {
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
            return Err(before_answer(e));
        }
        return read_head(conn, head_only).await;
    }
    // Boxed: most requests have no body, and their exchange stays small.
    Box::pin(exchange_with_body(conn, body, size, head_only)).await
}

/// The rest of [`exchange`] for a request with a body, its head waiting in
/// the write buffer. The body is written while the answer is awaited: an
/// instance may answer (and stop reading) before the body is all there.
async fn exchange_with_body(
    conn: &mut Conn,
    body: Body,
    size: Option<u64>,
    head_only: bool,
) -> Result<Head, Error> {
    let Conn {
        stream,
        read,
        write,
        deadline,
    } = conn;
    let (mut reader, mut writer) = stream.split();
    let send = send_body(&mut writer, write, body, size);
    let answer = read_head_from(&mut reader, read, deadline, head_only);
    tokio::pin!(send, answer);
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
            head = &mut answer => break head,
        }
    };
    // An early answer that does not refuse the body (a success, the
    // connection kept): the instance reads on, as a streaming handler does,
    // so the rest of the body goes too before the answer is handed on.
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

/// A write failure before any answer: the connection was closed under it.
fn before_answer(e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted => Error::Closed,
        _ => Error::Io(e),
    }
}

/// Methods whose requests carry a body by their meaning; an empty one is
/// announced with `Content-Length: 0`.
fn expects_body(method: &Method) -> bool {
    [Method::POST, Method::PUT, Method::PATCH].contains(method)
}

/// Writes the request line, the instance's Host, the request's other
/// header fields and the proxy's `fields` in place of the client's fields
/// of those names, with the framing of a body of `size` bytes (chunked when
/// not known).
fn encode_head(
    out: &mut BytesMut,
    target: Target<'_>,
    request: &http::request::Parts,
    fields: Option<&ProxyFields>,
    size: Option<u64>,
) {
    out.put_slice(request.method.as_str().as_bytes());
    out.put_u8(b' ');
    for piece in target.path {
        out.put_slice(piece.as_bytes());
    }
    out.put_slice(b" HTTP/1.1\r\nhost: ");
    out.put_slice(target.host.as_bytes());
    out.put_slice(b"\r\n");
    for (name, value) in &request.headers {
        if name == header::HOST
            || name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || fields.is_some() && ProxyFields::replaces(name)
        {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    if let Some(fields) = fields {
        fields.write(out);
    }
    match size {
        Some(0) if !expects_body(&request.method) => {}
        Some(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        None => out.put_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.put_slice(b"\r\n");
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
                    writer.write_all(out).await.map_err(before_answer)?;
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
                    writer.write_all(out).await.map_err(before_answer)?;
                    out.clear();
                }
                return Ok(());
            }
        }
    }
}

/// Reads the answer's head from `conn`.
async fn read_head(conn: &mut Conn, head_only: bool) -> Result<Head, Error> {
    let Conn {
        stream,
        read,
        deadline,
        ..
    } = conn;
    let (mut reader, _) = stream.split();
    read_head_from(&mut reader, read, deadline, head_only).await
}

async fn read_head_from(
    reader: &mut tokio::net::tcp::ReadHalf<'_>,
    read: &mut BytesMut,
    deadline: &mut Deadline,
    head_only: bool,
) -> Result<Head, Error> {
    let mut received = !read.is_empty();
    loop {
        if !read.is_empty() {
            if let Some(head) = parse_head(read, head_only)? {
                return Ok(head);
            }
            if read.len() > MAX_HEAD {
                return Err(Error::Malformed("head too large"));
            }
        }
        make_room(read);
        let got = std::future::poll_fn(|cx| {
            if let Poll::Ready(got) =
                tokio_util::io::poll_read_buf(Pin::new(&mut *reader), cx, read)
            {
                return Poll::Ready(Some(got));
            }
            if deadline.poll_passed(cx) {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        let Some(got) = got else {
            return Err(Error::TimedOut);
        };
        match got {
            Ok(0) if !received => return Err(Error::Closed),
            Ok(0) => return Err(Error::Malformed("connection closed within the head")),
            Ok(_) => received = true,
            Err(e) if !received => return Err(before_answer(e)),
            Err(e) => return Err(Error::Io(e)),
        }
    }
}

/// The head at the start of `read`, taken off it, once it is all there.
/// Interim answers before it are taken off and passed over.
fn parse_head(read: &mut BytesMut, head_only: bool) -> Result<Option<Head>, Error> {
    loop {
        // Left uninitialised: the parser fills what it uses, and zeroing a
        // table this size for every answer would cost more than the parse.
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut answer = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut answer,
            read,
            &mut fields,
        );
        let length = match parsed {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Error::Malformed("too many header fields"));
            }
            Err(_) => return Err(Error::Malformed("not an HTTP/1.1 answer head")),
        };
        let code = answer.code.unwrap_or_default();
        if (100..200).contains(&code) {
            if code == 101 {
                return Err(Error::Malformed("switching protocols was not asked for"));
            }
            read.advance(length);
            continue;
        }
        let status =
            StatusCode::from_u16(code).map_err(|_| Error::Malformed("status code out of range"))?;
        let http10 = answer.version == Some(0);
        // Where each field's name and value lie in the head, so the values
        // can be slices of it rather than copies.
        let base = read.as_ptr() as usize;
        let at = |part: &[u8]| {
            let start = part.as_ptr() as usize - base;
            (start, start + part.len())
        };
        let count = answer.headers.len();
        let mut spans = FieldSpans::new();
        let mut body = BodyFields::default();
        for field in answer.headers.iter() {
            body.note(field.name, field.value)?;
            spans.push((at(field.name.as_bytes()), at(field.value)));
        }
        let head = read.split_to(length).freeze();
        // Room for the fields the gateway adds on the way back.
        let mut headers = crate::kernel::http1::header_map(count + 6);
        for ((name_start, name_end), (value_start, value_end)) in spans {
            let name = HeaderName::from_bytes(&head[name_start..name_end])
                .map_err(|_| Error::Malformed("bad header name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(value_start..value_end))
                .map_err(|_| Error::Malformed("bad header value"))?;
            headers.append(name, value);
        }
        let mut reusable = if http10 {
            body.keep_alive && !body.close
        } else {
            !body.close
        };
        // HTTP/1.0 has no transfer codings: such framing is faulty, and the
        // connection is not trusted with another request.
        if http10 && body.chunked.is_some() {
            reusable = false;
        }
        let framing = if head_only
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            // A body announced where none may be (a coding on 204 or 304, a
            // length on 204; HEAD and 304 answers state the length of what
            // a GET would get) could still arrive late, in front of the next
            // exchange's answer.
            let no_content = status == StatusCode::NO_CONTENT;
            if !head_only
                && (body.chunked.is_some() || no_content && body.length.is_some_and(|n| n > 0))
            {
                reusable = false;
            }
            Framing::Done
        } else if let Some(chunked) = body.chunked {
            // Both framings given: the coding rules, the length does not
            // travel on, and the connection is not trusted with another request.
            if body.length.is_some() {
                headers.remove(header::CONTENT_LENGTH);
                reusable = false;
            }
            if chunked {
                Framing::Chunked(Chunk::Size)
            } else {
                Framing::UntilClose
            }
        } else if let Some(n) = body.length {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        };
        if framing == Framing::UntilClose {
            reusable = false;
        }
        let mut response = http::Response::new(());
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        let (parts, ()) = response.into_parts();
        return Ok(Some(Head {
            parts,
            framing,
            reusable,
        }));
    }
}

/// What an answer's header fields say about its body and connection.
#[derive(Default)]
struct BodyFields {
    /// `Content-Length`, when given.
    length: Option<u64>,
    /// `Transfer-Encoding`, when given: whether chunked is its last coding.
    chunked: Option<bool>,
    close: bool,
    keep_alive: bool,
}

impl BodyFields {
    fn note(&mut self, name: &str, value: &[u8]) -> Result<(), Error> {
        if name.eq_ignore_ascii_case("content-length") {
            for part in value.split(|b| *b == b',') {
                let n = parse_length(part.trim_ascii())
                    .ok_or(Error::Malformed("bad Content-Length"))?;
                if self.length.is_some_and(|m| m != n) {
                    return Err(Error::Malformed("conflicting Content-Length"));
                }
                self.length = Some(n);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if let Some(last) = value.rsplit(|b| *b == b',').map(<[u8]>::trim_ascii).next() {
                self.chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        Ok(())
    }
}

/// A `Content-Length` value: digits only.
fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The next piece of the answer's body on `conn`, framed by `framing`
/// (which moves on as the body is read).
pub fn poll_body(
    conn: &mut Conn,
    framing: &mut Framing,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
    loop {
        match *framing {
            Framing::Done | Framing::Length(0) => {
                *framing = Framing::Done;
                return Poll::Ready(None);
            }
            Framing::Length(left) => {
                if conn.read.is_empty() && ready!(conn.poll_fill(cx))? == 0 {
                    return Poll::Ready(Some(Err(Error::Malformed(
                        "connection closed within the body",
                    ))));
                }
                let data = take(&mut conn.read, left);
                *framing = Framing::Length(left - data.len() as u64);
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Framing::UntilClose => {
                if conn.read.is_empty() && ready!(conn.poll_fill(cx))? == 0 {
                    *framing = Framing::Done;
                    return Poll::Ready(None);
                }
                let data = conn.read.split().freeze();
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Framing::Chunked(Chunk::Size) => match httparse::parse_chunk_size(&conn.read) {
                // Strictly a hex size first, and no bare line feed before
                // the line's end: framing read more loosely than the
                // instance meant it is how connections fall out of step.
                Ok(httparse::Status::Complete((used, _)))
                    if !conn.read.first().is_some_and(u8::is_ascii_hexdigit)
                        || conn.read[..used.saturating_sub(2)].contains(&b'\n') =>
                {
                    return Poll::Ready(Some(Err(Error::Malformed("bad chunk size"))));
                }
                Ok(httparse::Status::Complete((used, size))) => {
                    conn.read.advance(used);
                    *framing = Framing::Chunked(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                }
                Ok(httparse::Status::Partial) => {
                    if conn.read.len() > MAX_LINE {
                        return Poll::Ready(Some(Err(Error::Malformed(
                            "chunk size line too long",
                        ))));
                    }
                    ready!(fill_within_body(conn, cx))?;
                }
                Err(_) => return Poll::Ready(Some(Err(Error::Malformed("bad chunk size")))),
            },
            Framing::Chunked(Chunk::Data(left)) => {
                if conn.read.is_empty() {
                    ready!(fill_within_body(conn, cx))?;
                    continue;
                }
                let data = take(&mut conn.read, left);
                let left = left - data.len() as u64;
                *framing = Framing::Chunked(if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                });
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Framing::Chunked(Chunk::DataEnd) => {
                if conn.read.len() < 2 {
                    ready!(fill_within_body(conn, cx))?;
                    continue;
                }
                if &conn.read[..2] != b"\r\n" {
                    return Poll::Ready(Some(Err(Error::Malformed("chunk not ended by CRLF"))));
                }
                conn.read.advance(2);
                *framing = Framing::Chunked(Chunk::Size);
            }
            Framing::Chunked(Chunk::Trailers) => {
                if conn.read.starts_with(b"\r\n") {
                    conn.read.advance(2);
                    *framing = Framing::Done;
                    return Poll::Ready(None);
                }
                let mut fields = [httparse::EMPTY_HEADER; 64];
                match httparse::parse_headers(&conn.read, &mut fields) {
                    Ok(httparse::Status::Complete((used, fields))) => {
                        let mut trailers = HeaderMap::with_capacity(fields.len());
                        for field in fields.iter() {
                            let (Ok(name), Ok(value)) = (
                                HeaderName::from_bytes(field.name.as_bytes()),
                                HeaderValue::from_bytes(field.value),
                            ) else {
                                return Poll::Ready(Some(Err(Error::Malformed(
                                    "bad trailer field",
                                ))));
                            };
                            trailers.append(name, value);
                        }
                        conn.read.advance(used);
                        *framing = Framing::Done;
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Ok(httparse::Status::Partial) => {
                        if conn.read.len() > MAX_LINE {
                            return Poll::Ready(Some(Err(Error::Malformed("trailers too long"))));
                        }
                        ready!(fill_within_body(conn, cx))?;
                    }
                    Err(_) => return Poll::Ready(Some(Err(Error::Malformed("bad trailer field")))),
                }
            }
        }
    }
}

/// Reads more within a body, where the connection's end is an error.
fn fill_within_body(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
    match ready!(conn.poll_fill(cx)) {
        Ok(0) => Poll::Ready(Err(Error::Malformed("connection closed within the body"))),
        Ok(_) => Poll::Ready(Ok(())),
        Err(e) => Poll::Ready(Err(Error::Io(e))),
    }
}

/// Up to `left` bytes from the front of `read`.
fn take(read: &mut BytesMut, left: u64) -> Bytes {
    let n = usize::try_from(left).unwrap_or(usize::MAX).min(read.len());
    read.split_to(n).freeze()
}
