//! Rules about a request's fields that every server here keeps, whichever
//! path (the kernel's HTTP/1.1 loop or hyper) read the request, and
//! whichever version it came in, each with the RFC section it follows.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Version};

/// The field carrying a request's id, in the request and its response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Whether `value` is a valid `Host` field value (RFC 9110 section 7.2,
/// RFC 3986 section 3.2.2): `uri-host [ ":" port ]`, made only of the
/// characters an authority may hold. An empty value is valid: it is what
/// a client sends for a target without an authority. Quotes, backslashes,
/// spaces and anything outside visible ASCII are not, so a valid value can
/// be written inside a quoted string (`Forwarded: host="..."`) as it is.
pub fn valid_host(value: &[u8]) -> bool {
    value.len() <= 255
        && value.iter().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'%'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                        | b':'
                        | b'['
                        | b']'
                )
        })
}

/// Why a request's `Host` fields are refused, if they are (RFC 9112
/// section 3.2): an HTTP/1.1 request must carry exactly one, any request
/// at most one, and its value must be valid. An HTTP/2 request names its
/// authority in `:authority` and may carry no `Host` at all.
pub fn host_fault(version: Version, headers: &HeaderMap) -> Option<&'static str> {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Some("The request has more than one Host field"),
        (None, None) if version == Version::HTTP_11 => Some("The request has no Host field"),
        (Some(host), None) if !valid_host(host.as_bytes()) => {
            Some("The request's Host field is not a valid host")
        }
        _ => None,
    }
}

/// The methods a request may have (RFC 9110 section 9.1: methods are case
/// sensitive, and the standard ones are upper case), or why not: a
/// standard method spelt in another case (`get`), which a lenient upstream
/// would take for the standard one after a route's method list refused it.
pub fn method_fault(method: &Method) -> Option<&'static str> {
    let text = method.as_str();
    if text.bytes().any(|b| b.is_ascii_lowercase())
        && METHODS
            .iter()
            .any(|(_, standard)| standard.eq_ignore_ascii_case(text))
    {
        return Some("Methods are case-sensitive: standard methods are upper case");
    }
    None
}

/// The methods of RFC 9110 and PATCH, with their names as static text.
pub const METHODS: [(Method, &str); 9] = [
    (Method::GET, "GET"),
    (Method::POST, "POST"),
    (Method::PUT, "PUT"),
    (Method::DELETE, "DELETE"),
    (Method::PATCH, "PATCH"),
    (Method::HEAD, "HEAD"),
    (Method::OPTIONS, "OPTIONS"),
    (Method::CONNECT, "CONNECT"),
    (Method::TRACE, "TRACE"),
];

/// A request id a client may choose: up to [`MAX_REQUEST_ID`] characters
/// of letters, digits and `-_.:@/+=`, enough for UUIDs, ULIDs and the
/// ids of common tracing systems. Anything else is replaced with a new id,
/// so an id echoed in answers and logs cannot carry what a reader would
/// take for something else.
pub fn acceptable_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_REQUEST_ID
        && bytes.iter().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'-' | b'_' | b'.' | b':' | b'@' | b'/' | b'+' | b'=')
        })
}

/// The longest request id a client may choose.
pub const MAX_REQUEST_ID: usize = 128;

/// Whether every byte of a request's query may go in a request line as it
/// is (RFC 3986 section 3.4: visible ASCII; anything else must be
/// percent-encoded by the client).
pub fn valid_query(query: &str) -> bool {
    query.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_values_are_authorities_and_nothing_else() {
        for good in [
            &b"api.example.org"[..],
            b"api.example.org:8443",
            b"127.0.0.1:8080",
            b"[::1]:80",
            b"",
            b"xn--bcher-kva.example",
        ] {
            assert!(valid_host(good), "{}", String::from_utf8_lossy(good));
        }
        for bad in [
            &b"a\", for=6.6.6.6;host=\"b"[..],
            b"a b",
            b"a\\b",
            b"a\"",
            b"caf\xc3\xa9.example",
            b"a/b",
            b"a@b",
        ] {
            assert!(!valid_host(bad), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn an_http11_request_has_exactly_one_valid_host() {
        let map = |hosts: &[&'static str]| {
            let mut m = HeaderMap::new();
            for h in hosts {
                m.append(header::HOST, HeaderValue::from_static(h));
            }
            m
        };
        assert!(host_fault(Version::HTTP_11, &map(&["a.example"])).is_none());
        assert!(host_fault(Version::HTTP_11, &map(&[])).is_some());
        assert!(host_fault(Version::HTTP_11, &map(&["a", "b"])).is_some());
        assert!(host_fault(Version::HTTP_11, &map(&["a\"b"])).is_some());
        assert!(host_fault(Version::HTTP_10, &map(&[])).is_none());
        assert!(host_fault(Version::HTTP_2, &map(&[])).is_none());
        assert!(host_fault(Version::HTTP_2, &map(&["a", "b"])).is_some());
    }

    #[test]
    fn standard_methods_in_another_case_are_refused() {
        let m = |t: &str| Method::from_bytes(t.as_bytes()).unwrap();
        assert!(method_fault(&m("get")).is_some());
        assert!(method_fault(&m("Post")).is_some());
        assert!(method_fault(&m("GET")).is_none());
        assert!(method_fault(&m("PROPFIND")).is_none());
        assert!(method_fault(&m("purge")).is_none());
    }

    #[test]
    fn request_ids_are_bounded_in_length_and_characters() {
        let ok = |t: &str| acceptable_request_id(&HeaderValue::from_str(t).unwrap());
        assert!(ok("4bf92f35-77b3-4da6-a3ce-929d0e0e4736"));
        assert!(ok("01HZX3V8K9Q2R5T7W0Y4B6N8M1"));
        assert!(!ok(""));
        assert!(!ok("a b"));
        assert!(!ok("id\"; drop"));
        assert!(!ok(&"a".repeat(MAX_REQUEST_ID + 1)));
        assert!(ok(&"a".repeat(MAX_REQUEST_ID)));
    }
}
