//! The wire's readers against inputs they must read one way only: each
//! input is read whole, then again split at every byte and byte by byte,
//! and must come out the same; and a table of malformed and smuggling
//! inputs gives the refusal each must get.

use bytes::{BufMut as _, BytesMut};
use http::header::HeaderMap;

use super::*;

/// What reading a whole response came to.
#[derive(Debug, PartialEq)]
struct Read {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
    trailers: Option<HeaderMap>,
    reusable: bool,
    /// Bytes left after the response, unread.
    left: Vec<u8>,
}

/// Reads a response from `pieces`, given one after another, the connection
/// ending after the last; what it came to, or the first refusal.
fn read_response(pieces: &[&[u8]], head_only: bool) -> Result<Read, Malformed> {
    let mut read = BytesMut::new();
    let mut head = None;
    let mut body = Vec::new();
    let mut trailers = None;
    let mut ended = false;
    for (n, piece) in pieces.iter().enumerate() {
        read.put_slice(piece);
        let closed = n + 1 == pieces.len();
        if head.is_none() {
            head = parse_response(&mut read, head_only)?;
        }
        let Some(ResponseHead { framing, .. }) = head.as_mut() else {
            if closed {
                return Err(Malformed("connection closed within the head"));
            }
            continue;
        };
        while !ended {
            match decode(&mut read, framing, closed)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::Trailers(t) => {
                    trailers = Some(t);
                    ended = true;
                }
                Decoded::End => ended = true,
                Decoded::More => break,
            }
        }
    }
    let head = head.ok_or(Malformed("no head"))?;
    Ok(Read {
        status: head.parts.status.as_u16(),
        headers: head.parts.headers,
        body,
        trailers,
        reusable: head.reusable,
        left: read.to_vec(),
    })
}

/// Reads `input` whole, split at every byte, and byte by byte, and checks
/// that every way gives the same; that outcome.
fn read_every_way(input: &[u8], head_only: bool) -> Result<Read, Malformed> {
    let whole = read_response(&[input], head_only);
    for at in 0..=input.len() {
        let (a, b) = input.split_at(at);
        assert_eq!(
            read_response(&[a, b], head_only),
            whole,
            "split at {at}: {:?}",
            String::from_utf8_lossy(input)
        );
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(read_response(&bytes, head_only), whole, "byte by byte");
    whole
}

fn body_of(input: &str) -> Vec<u8> {
    let read = read_every_way(input.as_bytes(), false)
        .unwrap_or_else(|e| panic!("{input:?} refused: {e}"));
    read.body
}

#[test]
fn responses_read_the_same_however_their_bytes_arrive() {
    assert_eq!(
        body_of("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
        b"hello"
    );
    assert_eq!(
        body_of(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\n\r\n"
        ),
        b"hello!"
    );
    assert_eq!(
        body_of("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        b"ok"
    );
    assert_eq!(
        body_of("HTTP/1.1 200 OK\r\n\r\nup to the close"),
        b"up to the close"
    );
    let read = read_every_way(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 9\r\n\r\n",
        false,
    )
    .unwrap();
    assert_eq!(read.body, b"abc");
    assert_eq!(read.trailers.unwrap()["x-sum"], "9");
    assert!(read.reusable);
}

#[test]
fn what_follows_a_response_is_left_unread_for_the_pool_to_see() {
    let read = read_every_way(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",
        false,
    )
    .unwrap();
    assert_eq!(read.body, b"ok");
    assert_eq!(read.left, b"HTTP/1.1 200 OK\r\n");
    let read = read_every_way(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", true).unwrap();
    assert!(read.body.is_empty(), "a response to HEAD has no body");
    assert_eq!(read.left, b"hello");
    assert_eq!(read.headers["content-length"], "5");
}

/// Responses that frame their body or their connection wrongly, with the
/// refusal each gets, or how it is read when it is read.
#[test]
fn malformed_and_smuggling_responses_get_their_refusal() {
    let refused = [
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            "conflicting Content-Length",
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!",
            "conflicting Content-Length",
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
            "bad Content-Length",
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\nhello",
            "bad Content-Length",
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "bad Content-Length",
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello",
            "not an HTTP/1.1 response head",
        ),
        (
            "HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\n\r\n",
            "not an HTTP/1.1 response head",
        ),
        (
            "HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n\r\n",
            "not an HTTP/1.1 response head",
        ),
        ("HTTP/1.1 2000 OK\r\n\r\n", "not an HTTP/1.1 response head"),
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
            "switching protocols was not asked for",
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n",
            "bad chunk size",
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5x\r\nhello\r\n0\r\n\r\n",
            "bad chunk size",
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
            "bad chunk size",
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
            "bad chunk size",
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
            "chunk not ended by CRLF",
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nBad Name: x\r\n\r\n",
            "bad trailer field",
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            "connection closed within the body",
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            "connection closed within the body",
        ),
    ];
    for (input, refusal) in refused {
        assert_eq!(
            read_every_way(input.as_bytes(), false),
            Err(Malformed(refusal)),
            "{input:?}"
        );
    }
    let too_many: String = (0..=MAX_HEADERS)
        .map(|n| format!("X-F{n}: v\r\n"))
        .collect();
    let input = format!("HTTP/1.1 200 OK\r\n{too_many}\r\n");
    assert_eq!(
        read_response(&[input.as_bytes()], false),
        Err(Malformed("too many header fields"))
    );
    let input = format!("HTTP/1.1 200 OK\r\nX-Long: {}\r\n", "a".repeat(MAX_HEAD));
    assert_eq!(
        read_response(&[input.as_bytes()], false),
        Err(Malformed("head too large"))
    );
    let input = format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;{}",
        "a".repeat(MAX_LINE)
    );
    assert_eq!(
        read_response(&[input.as_bytes()], false),
        Err(Malformed("chunk size line too long"))
    );

    // Read, but the connection is not trusted with another request.
    for (input, body) in [
        // Both framings: the coding rules and the length does not travel on.
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            "ok",
        ),
        // A coding that does not end in chunked runs to the close.
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
            "0\r\n\r\n",
        ),
        (
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            "ok",
        ),
        ("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", "ok"),
        (
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            "ok",
        ),
        // A body announced where none may be could arrive late.
        ("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", ""),
        (
            "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
            "",
        ),
    ] {
        let read = read_every_way(input.as_bytes(), false).unwrap();
        assert_eq!(read.body, body.as_bytes(), "{input:?}");
        assert!(!read.reusable, "{input:?}");
        assert!(
            read.headers.get("content-length").is_none() || !input.contains("chunked\r\n\r\n2")
        );
    }
    // A 304 states the length a GET would get, and keeps its connection.
    let read = read_every_way(
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
        false,
    )
    .unwrap();
    assert!(read.body.is_empty() && read.reusable);
}

/// Requests read in place by the server side: a whole head is read, a
/// partial one waits, and anything this side does not read (bodies,
/// codings, upgrades, odd targets, malformed heads) goes to hyper with its
/// bytes as they came, at whatever byte the head is cut.
#[test]
fn request_heads_read_the_same_however_their_bytes_arrive() {
    let plain = b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n";
    for at in 0..plain.len() {
        let mut read = BytesMut::from(&plain[..at]);
        assert!(matches!(parse_request(&mut read), Ok(None)), "cut at {at}");
        assert_eq!(&read[..], &plain[..at]);
        read.put_slice(&plain[at..]);
        let Ok(Some(request)) = parse_request(&mut read) else {
            panic!("not read after the cut at {at}");
        };
        assert_eq!(request.request.uri(), "/a?b=1");
        assert!(read.is_empty());
    }
    for input in [
        &b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 0\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: x\r\nContent-Length : 0\r\n\r\n",
        b"GET /a HTTP/1.1\r\nX-A: a\r\n folded\r\n\r\n",
        b"GET  /a HTTP/1.1\r\n\r\n",
        b"GET /a HTTP/1.2\r\n\r\n",
    ] {
        let mut read = BytesMut::from(input);
        assert!(
            matches!(parse_request(&mut read), Err(NotRead::HandOff)),
            "{:?}",
            String::from_utf8_lossy(input)
        );
        assert_eq!(&read[..], input, "the bytes go to hyper as they came");
    }
    // A head longer than the limit is refused, whole or not.
    for end in ["", "\r\n\r\n"] {
        let long = format!("GET /a HTTP/1.1\r\nX-Long: {}{end}", "a".repeat(MAX_HEAD));
        let mut read = BytesMut::from(long.as_bytes());
        assert_eq!(parse_request(&mut read).err(), Some(NotRead::HeadTooLarge));
    }
}
