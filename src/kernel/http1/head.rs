//! Reading a request head: parsed in place, its fields slices of the
//! bytes read, into a header map this thread has finished with when it
//! has one; what this loop does not serve goes to hyper whole.

use std::mem::MaybeUninit;

use axum::body::Body;
use bytes::{BufMut as _, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Version};
use smallvec::SmallVec;

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

/// How the connection goes on after an answer.
#[derive(Clone, Copy)]
pub(super) struct KeepAlive {
    /// The client may send another request.
    pub(super) keep: bool,
    /// The client speaks HTTP/1.1 (chunked coding, persistent by default).
    pub(super) http11: bool,
}

/// A request read whole, ready for the service.
pub(super) struct Request {
    pub(super) request: http::Request<Body>,
    pub(super) keep_alive: KeepAlive,
    /// It asks for the head only.
    pub(super) head: bool,
}

/// What [`parse`] found: a request (`Ok(Some)`), a head not all there yet
/// (`Ok(None)`), or what is not served here (`Err(HandOff)`).
pub(super) type Parsed = Result<Option<Request>, HandOff>;

/// Not a request served here: hyper takes the connection.
#[derive(Debug)]
pub(super) struct HandOff;

/// The request head at the start of `read`, taken off it, once it is all
/// there.
pub(super) fn parse(read: &mut BytesMut) -> Parsed {
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
pub(super) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|part| part.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_header_map_comes_back_empty_and_a_large_one_is_let_go() {
        // Maps of this thread's own, away from other tests' threads.
        std::thread::spawn(|| {
            let mut map = header_map(4);
            map.insert(http::header::HOST, HeaderValue::from_static("a"));
            map.append("x-two", HeaderValue::from_static("b"));
            map.append("x-two", HeaderValue::from_static("c"));
            let room = map.capacity();
            recycle_headers(map);
            let again = header_map(2);
            assert!(again.is_empty());
            assert!(again.get(http::header::HOST).is_none());
            assert!(again.capacity() >= room);

            let mut large = HeaderMap::with_capacity(SPARE_MAP_ROOM * 2);
            large.insert(http::header::HOST, HeaderValue::from_static("a"));
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
}
