//! Writing messages: a request head (the client side), a response head
//! (the server side), and a body in its framing: a length announced
//! beforehand, chunked coding, or up to the connection's close.

use bytes::{BufMut as _, BytesMut};
use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode};

/// A request head to write: where it goes and what it carries.
pub struct RequestHead<'a> {
    pub method: &'a Method,
    /// The request target, in pieces written one after the other.
    pub path: &'a [&'a str],
    /// The `Host` field's value.
    pub host: &'a str,
    /// The other fields; their own `Host` and framing fields are left out.
    pub headers: &'a HeaderMap,
}

/// Methods whose requests carry a body by their meaning; an empty one is
/// announced with `Content-Length: 0` (RFC 9110 section 8.6).
fn expects_body(method: &Method) -> bool {
    [Method::POST, Method::PUT, Method::PATCH].contains(method)
}

/// Writes `head` with the framing of a body of `size` bytes (chunked when
/// not known), leaving out the fields `skip` names and adding what `extra`
/// writes (RFC 9112 sections 3 and 6).
pub fn encode_request_head(
    out: &mut BytesMut,
    head: &RequestHead<'_>,
    size: Option<u64>,
    skip: impl Fn(&HeaderName) -> bool,
    extra: impl FnOnce(&mut BytesMut),
) {
    out.put_slice(head.method.as_str().as_bytes());
    out.put_u8(b' ');
    for piece in head.path {
        out.put_slice(piece.as_bytes());
    }
    out.put_slice(b" HTTP/1.1\r\nhost: ");
    out.put_slice(head.host.as_bytes());
    out.put_slice(b"\r\n");
    for (name, value) in head.headers {
        if name == header::HOST
            || name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || skip(name)
        {
            continue;
        }
        put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    extra(out);
    match size {
        Some(0) if !expects_body(head.method) => {}
        Some(n) => put_field(
            out,
            b"content-length",
            itoa::Buffer::new().format(n).as_bytes(),
        ),
        None => out.put_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.put_slice(b"\r\n");
}

/// Writes the status line, the response's fields (but its framing fields,
/// which `framing` writes; its `Content-Length` stays when `kept_length`),
/// and a `Date` when it has none (RFC 9110 section 6.6.1).
pub fn encode_response_head(
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
        put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !dated {
        out.put_slice(b"date: ");
        date::write(out);
        out.put_slice(b"\r\n");
    }
    framing(out);
    out.put_slice(b"\r\n");
}

/// Writes one field line.
pub fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
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
    pub fn until_close() -> BodyFraming {
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
    #[allow(
        clippy::disallowed_methods,
        reason = "the Date header tells the wall clock's time, whatever a service's clock says"
    )]
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
