//! The HTTP wire: every rule about how a message is written and read, for
//! the server side (the kernel's HTTP/1.1 loop in `http1/`) and the client
//! side (the gateway's connections to upstream instances) alike, so that a
//! framing rule is written once and both sides keep one set of limits.
//!
//! The rules follow RFC 9112 (HTTP/1.1 message syntax) and RFC 9110 (the
//! semantics); each function names the section it follows. What is not
//! read here is hyper's: the kernel's loop hands a connection to hyper for
//! requests with bodies, upgrades and h2c, and [`limit_hyper`] gives hyper
//! the same limits.
//!
//! Rooms:
//! - `rules.rs`: the request fields no route may waive (Host, method case,
//!   request ids, queries), for every version.
//! - `fields.rs`: header maps and the fields that frame a message
//!   (`Content-Length`, `Transfer-Encoding`, `Connection`).
//! - `request.rs`: reading a request head (the server side).
//! - `response.rs`: reading a response head (the client side).
//! - `decode.rs`: reading a body by its framing.
//! - `encode.rs`: writing heads and bodies.
//! - `cases.rs` (tests): malformed and smuggling inputs with the refusal
//!   each gets, and every input read again split at every byte.

#[cfg(test)]
mod cases;
mod decode;
mod encode;
mod fields;
mod request;
mod response;
mod rules;

pub use decode::{Chunk, Decoded, Framing, decode};
pub use encode::{
    BodyFraming, Misframed, RequestHead, encode_request_head, encode_response_head, put_field,
};
pub use fields::{FieldSpan, FieldSpans, has_token, header_map, recycle_headers};
pub use request::{KeepAlive, NotRead, Parsed, Request, parse_request};
pub use response::{ResponseHead, parse_response};
pub use rules::{
    MAX_REQUEST_ID, METHODS, REQUEST_ID, acceptable_request_id, host_fault, method_fault,
    valid_host, valid_query,
};

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;

/// The longest message head (start line and fields) read, on either side.
/// A longer request head is refused with 431; a longer response head is a
/// malformed response.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most fields a message head may have, on either side.
pub const MAX_HEADERS: usize = 100;
/// The longest chunk-size line, and the longest trailer section, read.
pub const MAX_LINE: usize = 8 * 1024;
// A head within the limit holds no request target longer than a `Uri`
// takes (`u16::MAX - 1` bytes), so the limit refuses those too.
const _: () = assert!(MAX_HEAD - "GET  HTTP/1.1\r\n\r\n".len() < u16::MAX as usize - 1);
/// How much a read buffer grows by when it runs out of room.
pub const READ_SPACE: usize = 8 * 1024;
/// The most body bytes gathered before they are written.
pub const WRITE_BATCH: usize = 64 * 1024;

/// A malformed message: what is wrong with it, in a few words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub &'static str);

/// Gives hyper, which serves what the kernel's loop hands over, this
/// module's limits: the same head size, field count and (for HTTP/2) field
/// section size, whichever path serves a connection.
pub fn limit_hyper(builder: &mut auto::Builder<TokioExecutor>) {
    builder
        .http1()
        .max_buf_size(MAX_HEAD)
        .max_headers(MAX_HEADERS);
    builder.http2().max_header_list_size(MAX_HEAD as u32);
}

/// Grows `read` when little room is left for the next read.
pub fn make_room(read: &mut bytes::BytesMut) {
    if read.capacity() - read.len() < READ_SPACE / 4 {
        read.reserve(READ_SPACE);
    }
}
