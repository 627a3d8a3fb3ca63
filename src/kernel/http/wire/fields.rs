//! Header maps, and the fields that say how a message is framed and
//! whether its connection goes on: `Content-Length`, `Transfer-Encoding`
//! and `Connection`.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;

use super::Malformed;

/// Where a head field's name and value lie in the head's bytes, each as
/// (start, end), so that values can be slices of the head, not copies.
pub type FieldSpan = ((usize, usize), (usize, usize));

/// A head's field positions, held inline: heads seldom have more fields.
pub type FieldSpans = SmallVec<[FieldSpan; 16]>;

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

/// The fields of a head read in place, as slices of `head` (see
/// [`FieldSpan`]), in a map with room for `extra` more.
pub(super) fn fields_of(
    head: &bytes::Bytes,
    spans: FieldSpans,
    extra: usize,
) -> Result<HeaderMap, Malformed> {
    let mut headers = header_map(spans.len() + extra);
    for ((name_start, name_end), (value_start, value_end)) in spans {
        let name = HeaderName::from_bytes(&head[name_start..name_end])
            .map_err(|_| Malformed("bad field name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_start..value_end))
            .map_err(|_| Malformed("bad field value"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// Whether a comma-separated field value holds `token`, in any case.
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|part| part.trim_ascii().eq_ignore_ascii_case(token))
}

/// What a message's fields say about its body and its connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Framed {
    /// `Content-Length`, when given.
    pub(super) length: Option<u64>,
    /// `Transfer-Encoding`, when given: whether chunked is its last coding.
    pub(super) chunked: Option<bool>,
    /// `Connection: close`.
    pub(super) close: bool,
    /// `Connection: keep-alive`.
    pub(super) keep_alive: bool,
}

impl Framed {
    /// Takes note of one field. `Content-Length` is digits only, and a
    /// list of equal values counts as one; differing values are refused
    /// (RFC 9110 section 8.6, RFC 9112 section 6.3 rule 5).
    pub(super) fn note(&mut self, name: &str, value: &[u8]) -> Result<(), Malformed> {
        if name.eq_ignore_ascii_case("content-length") {
            for part in value.split(|b| *b == b',') {
                let n = parse_length(part.trim_ascii()).ok_or(Malformed("bad Content-Length"))?;
                if self.length.is_some_and(|m| m != n) {
                    return Err(Malformed("conflicting Content-Length"));
                }
                self.length = Some(n);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if let Some(last) = value.rsplit(|b| *b == b',').map(<[u8]>::trim_ascii).next() {
                self.chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
            }
        } else if name.eq_ignore_ascii_case("connection") {
            self.close |= has_token(value, b"close");
            self.keep_alive |= has_token(value, b"keep-alive");
        }
        Ok(())
    }

    /// Whether the connection may carry another message after this one:
    /// HTTP/1.1 is persistent unless it says `close`, HTTP/1.0 only when it
    /// says `keep-alive` (RFC 9112 section 9.3).
    pub(super) fn persistent(&self, http11: bool) -> bool {
        if http11 {
            !self.close
        } else {
            self.keep_alive && !self.close
        }
    }
}

/// A `Content-Length` value: digits only, and no more than fit in a u64.
fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
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

    #[test]
    fn lengths_are_digits_and_equal_repeats_count_once() {
        let framed = |fields: &[(&str, &str)]| {
            let mut f = Framed::default();
            for (name, value) in fields {
                f.note(name, value.as_bytes())?;
            }
            Ok::<_, Malformed>(f)
        };
        assert_eq!(
            framed(&[("Content-Length", "12")]).unwrap().length,
            Some(12)
        );
        assert_eq!(
            framed(&[("content-length", "3, 3"), ("Content-Length", "3")])
                .unwrap()
                .length,
            Some(3)
        );
        for bad in ["", "+3", "-1", "0x10", "3 3", "99999999999999999999", "1,2"] {
            assert!(framed(&[("Content-Length", bad)]).is_err(), "{bad:?}");
        }
        assert!(framed(&[("Content-Length", "3"), ("Content-Length", "4")]).is_err());
        let te = framed(&[("Transfer-Encoding", "gzip, Chunked")]).unwrap();
        assert_eq!(te.chunked, Some(true));
        let te = framed(&[("Transfer-Encoding", "chunked, gzip")]).unwrap();
        assert_eq!(te.chunked, Some(false));
    }

    #[test]
    fn persistence_follows_the_version_and_the_connection_field() {
        let mut f = Framed::default();
        assert!(f.persistent(true) && !f.persistent(false));
        f.note("Connection", b"Keep-Alive").unwrap();
        assert!(f.persistent(false));
        f.note("connection", b"upgrade, CLOSE").unwrap();
        assert!(!f.persistent(true) && !f.persistent(false));
    }
}
