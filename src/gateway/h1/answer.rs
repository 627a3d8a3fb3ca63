//! Reading an upstream's answer: its head, parsed in place with interim
//! answers passed over, and its body by chunked coding, by length or up to
//! the connection's close (RFC 9112 section 6.3).

use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf as _, Bytes, BytesMut};
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;

use super::{Conn, Error, MAX_HEAD, MAX_HEADERS, MAX_LINE, before_answer, make_room};
use crate::kernel::deadline::Deadline;
use crate::kernel::http1::FieldSpans;

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

/// Reads the answer's head from `conn`.
pub(super) async fn read_head(conn: &mut Conn, head_only: bool) -> Result<Head, Error> {
    let Conn {
        stream,
        read,
        deadline,
        ..
    } = conn;
    let (mut reader, _) = stream.split();
    read_head_from(&mut reader, read, deadline, head_only).await
}

pub(super) async fn read_head_from(
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
