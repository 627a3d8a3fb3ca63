//! Reading a request head: parsed in place, its fields slices of the
//! bytes read, into a header map this thread has finished with when it
//! has one; what is not read here goes to hyper whole.

use std::mem::MaybeUninit;

use axum::body::Body;
use bytes::{BufMut as _, Bytes, BytesMut};
use http::{Method, Version};

use super::fields::{FieldSpans, fields_of, has_token};
use super::{MAX_HEAD, MAX_HEADERS};

/// How the connection goes on after a response.
#[derive(Clone, Copy)]
pub struct KeepAlive {
    /// The client may send another request.
    pub keep: bool,
    /// The client speaks HTTP/1.1 (chunked coding, persistent by default).
    pub http11: bool,
}

/// A request read whole, ready for the service.
pub struct Request {
    pub request: http::Request<Body>,
    pub keep_alive: KeepAlive,
    /// It asks for the head only.
    pub head: bool,
}

/// What [`parse`] found: a request (`Ok(Some)`), a head not all there yet
/// (`Ok(None)`), or what is not read here (`Err`).
pub type Parsed = Result<Option<Request>, NotRead>;

/// Why a request is not read here.
#[derive(Debug, PartialEq, Eq)]
pub enum NotRead {
    /// Hyper takes the connection, with the bytes as they came.
    HandOff,
    /// The head is longer than [`MAX_HEAD`]: answered 431, whichever path
    /// would have read it, and the connection closed.
    HeadTooLarge,
}

/// The request head at the start of `read`, taken off it, once it is all
/// there (RFC 9112 sections 2 to 5). Only requests without a body are read
/// here: a `Content-Length` other than zero, any `Transfer-Encoding`,
/// `Expect` or `Upgrade`, a target that is not a path (RFC 9112 section
/// 3.2), or a head the parser refuses, hand the connection to hyper with
/// the bytes as they came; a head longer than [`MAX_HEAD`] is refused.
pub fn parse_request(read: &mut BytesMut) -> Parsed {
    // Left uninitialised: the parser fills what it uses.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let length = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        read,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => return Err(NotRead::HeadTooLarge),
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if read.len() <= MAX_HEAD => return Ok(None),
        Ok(httparse::Status::Partial) => return Err(NotRead::HeadTooLarge),
        // Too many fields among them: hyper refuses those, by the same limit.
        Err(_) => return Err(NotRead::HandOff),
    };
    let (Some(method), Some(target), Some(minor)) = (request.method, request.path, request.version)
    else {
        return Err(NotRead::HandOff);
    };
    if !target.starts_with('/') {
        return Err(NotRead::HandOff);
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Err(NotRead::HandOff);
    };
    let http11 = minor == 1;
    let base = read.as_ptr() as usize;
    let at = |part: &[u8]| {
        let start = part.as_ptr() as usize - base;
        (start, start + part.len())
    };
    let target = at(target.as_bytes());
    let mut spans = FieldSpans::new();
    let (mut close, mut keep_alive) = (false, false);
    for field in request.headers.iter() {
        let name = field.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            // An empty body is no body; any other goes to hyper.
            if field.value.is_empty() || field.value.iter().any(|b| *b != b'0') {
                return Err(NotRead::HandOff);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return Err(NotRead::HandOff);
        } else if name.eq_ignore_ascii_case(b"connection") {
            close |= has_token(field.value, b"close");
            keep_alive |= has_token(field.value, b"keep-alive");
        }
        spans.push((at(name), at(field.value)));
    }
    let head = read.split_to(length).freeze();
    // The target is a path (checked above): parsed as one, with no look for
    // a scheme or an authority. A head within the limit holds no target
    // longer than a `Uri` takes (see `MAX_HEAD`).
    let path = http::uri::PathAndQuery::from_maybe_shared(head.slice(target.0..target.1));
    let Ok(path) = path else {
        // Put back for hyper, which answers a bad target itself.
        return unparse(read, head);
    };
    // Room for what the layers add (a request id, say) without growing.
    let Ok(headers) = fields_of(&head, spans, 4) else {
        return unparse(read, head);
    };
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
    Err(NotRead::HandOff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(bytes: &[u8]) -> (Parsed, BytesMut) {
        let mut read = BytesMut::from(bytes);
        (parse_request(&mut read), read)
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
                matches!(p, Err(NotRead::HandOff)),
                "{}",
                String::from_utf8_lossy(bytes)
            );
            assert_eq!(&rest[..], bytes, "the bytes go to hyper as they came");
        }
    }

    #[test]
    fn an_empty_body_is_no_body_and_a_partial_head_waits() {
        assert!(matches!(
            parsed(b"DELETE /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n").0,
            Ok(Some(_))
        ));
        assert!(matches!(parsed(b"GET / HTTP/1.1\r\nHost:").0, Ok(None)));
    }
}
