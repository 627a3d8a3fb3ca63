//! Reading a response head (the client side): parsed in place, interim
//! responses passed over, and what its fields say about the body's framing
//! and whether the connection can carry another request.

use std::mem::MaybeUninit;

use bytes::{Buf as _, BytesMut};
use http::StatusCode;
use http::header;

use super::decode::{Chunk, Framing};
use super::fields::{FieldSpans, Framed, fields_of};
use super::{MAX_HEAD, MAX_HEADERS, Malformed};

/// A response head as read.
#[derive(Debug)]
pub struct ResponseHead {
    pub parts: http::response::Parts,
    pub framing: Framing,
    /// Whether the connection may carry another request once the body has
    /// been read.
    pub reusable: bool,
}

/// The response head at the start of `read`, taken off it, once it is all
/// there; `head_only` when it answers HEAD. Interim (1xx) responses before
/// it are taken off and passed over; 101 was not asked for and is refused.
pub fn parse_response(
    read: &mut BytesMut,
    head_only: bool,
) -> Result<Option<ResponseHead>, Malformed> {
    loop {
        // Left uninitialised: the parser fills what it uses, and zeroing a
        // table this size for every response would cost more than the parse.
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            read,
            &mut fields,
        );
        let length = match parsed {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if read.len() > MAX_HEAD => {
                return Err(Malformed("head too large"));
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Malformed("too many header fields"));
            }
            Err(_) => return Err(Malformed("not an HTTP/1.1 response head")),
        };
        let code = response.code.unwrap_or_default();
        if (100..200).contains(&code) {
            if code == 101 {
                return Err(Malformed("switching protocols was not asked for"));
            }
            read.advance(length);
            continue;
        }
        let status =
            StatusCode::from_u16(code).map_err(|_| Malformed("status code out of range"))?;
        let http11 = response.version != Some(0);
        let base = read.as_ptr() as usize;
        let at = |part: &[u8]| {
            let start = part.as_ptr() as usize - base;
            (start, start + part.len())
        };
        let mut spans = FieldSpans::new();
        let mut framed = Framed::default();
        for field in response.headers.iter() {
            framed.note(field.name, field.value)?;
            spans.push((at(field.name.as_bytes()), at(field.value)));
        }
        let head = read.split_to(length).freeze();
        // Room for the fields the gateway adds on the way back.
        let mut headers = fields_of(&head, spans, 6)?;
        let (framing, reusable) = framing(&framed, status, head_only, http11);
        if framed.chunked.is_some() && framed.length.is_some() && framing != Framing::Done {
            // Both given for a body: the coding rules, and the length does
            // not travel on.
            headers.remove(header::CONTENT_LENGTH);
        }
        let mut response = http::Response::new(());
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        let (parts, ()) = response.into_parts();
        return Ok(Some(ResponseHead {
            parts,
            framing,
            reusable,
        }));
    }
}

/// How a response's body is delimited (RFC 9112 section 6.3), and whether
/// its connection can be trusted with another request afterwards.
fn framing(framed: &Framed, status: StatusCode, head_only: bool, http11: bool) -> (Framing, bool) {
    let mut reusable = framed.persistent(http11);
    // HTTP/1.0 has no transfer codings: such framing is faulty, and the
    // connection is not trusted with another request.
    if !http11 && framed.chunked.is_some() {
        reusable = false;
    }
    let framing =
        if head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            // Rule 1: no body. One announced where none may be (a coding on
            // 204 or 304, a length on 204; HEAD and 304 responses state the
            // length of what a GET would get) could still arrive late, in front
            // of the next exchange's response.
            let no_content = status == StatusCode::NO_CONTENT;
            if !head_only
                && (framed.chunked.is_some() || no_content && framed.length.is_some_and(|n| n > 0))
            {
                reusable = false;
            }
            Framing::Done
        } else if let Some(chunked) = framed.chunked {
            // Rules 3 and 4: both framings given, the coding rules, and the
            // connection is not trusted with another request. A coding that
            // does not end in chunked runs to the connection's close.
            if framed.length.is_some() {
                reusable = false;
            }
            if chunked {
                Framing::Chunked(Chunk::Size)
            } else {
                Framing::UntilClose
            }
        } else if let Some(n) = framed.length {
            // Rule 6.
            Framing::Length(n)
        } else {
            // Rule 8.
            Framing::UntilClose
        };
    if framing == Framing::UntilClose {
        reusable = false;
    }
    (framing, reusable)
}
