//! Reading a message body by its framing (RFC 9112 sections 6 and 7): a
//! length, chunked coding, or everything up to the connection's close.
//! The decoder holds no I/O: it takes what has been read so far and says
//! what it makes of it, or that it needs more, so the same steps serve
//! every way the bytes arrive, one at a time or all at once.

use bytes::{Buf as _, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::{MAX_LINE, Malformed};

/// How the rest of a body is delimited.
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

/// What [`decode`] made of the bytes read so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// The body's next bytes.
    Data(Bytes),
    /// The trailer section, which ends the body.
    Trailers(HeaderMap),
    /// The body has ended.
    End,
    /// Nothing more until more bytes are read.
    More,
}

/// The next piece of the body at the front of `read`, taken off it, with
/// `framing` moved on; `closed` once the connection has ended and nothing
/// more will be read. A connection that ends within a length or a chunked
/// body is a malformed body; one that ends a body read up to the close is
/// its end.
pub fn decode(
    read: &mut BytesMut,
    framing: &mut Framing,
    closed: bool,
) -> Result<Decoded, Malformed> {
    const CUT_SHORT: Malformed = Malformed("connection closed within the body");
    // More is needed, or, at the connection's end, will never come.
    let more = || {
        if closed {
            Err(CUT_SHORT)
        } else {
            Ok(Decoded::More)
        }
    };
    loop {
        match *framing {
            Framing::Done | Framing::Length(0) => {
                *framing = Framing::Done;
                return Ok(Decoded::End);
            }
            Framing::Length(left) => {
                if read.is_empty() {
                    return more();
                }
                let data = take(read, left);
                *framing = Framing::Length(left - data.len() as u64);
                return Ok(Decoded::Data(data));
            }
            Framing::UntilClose => {
                if read.is_empty() {
                    if closed {
                        *framing = Framing::Done;
                        return Ok(Decoded::End);
                    }
                    return Ok(Decoded::More);
                }
                return Ok(Decoded::Data(read.split().freeze()));
            }
            Framing::Chunked(Chunk::Size) => match httparse::parse_chunk_size(read) {
                // Strictly a hex size first, and no bare line feed before
                // the line's end (RFC 9112 section 7.1): framing read more
                // loosely than the sender meant it is how connections fall
                // out of step.
                Ok(httparse::Status::Complete((used, _)))
                    if !read.first().is_some_and(u8::is_ascii_hexdigit)
                        || read[..used.saturating_sub(2)].contains(&b'\n') =>
                {
                    return Err(Malformed("bad chunk size"));
                }
                Ok(httparse::Status::Complete((used, size))) => {
                    read.advance(used);
                    *framing = Framing::Chunked(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                }
                Ok(httparse::Status::Partial) if read.len() > MAX_LINE => {
                    return Err(Malformed("chunk size line too long"));
                }
                Ok(httparse::Status::Partial) => return more(),
                Err(_) => return Err(Malformed("bad chunk size")),
            },
            Framing::Chunked(Chunk::Data(left)) => {
                if read.is_empty() {
                    return more();
                }
                let data = take(read, left);
                let left = left - data.len() as u64;
                *framing = Framing::Chunked(if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                });
                return Ok(Decoded::Data(data));
            }
            Framing::Chunked(Chunk::DataEnd) => {
                if read.len() < 2 {
                    if read.first().is_some_and(|b| *b != b'\r') {
                        return Err(Malformed("chunk not ended by CRLF"));
                    }
                    return more();
                }
                if &read[..2] != b"\r\n" {
                    return Err(Malformed("chunk not ended by CRLF"));
                }
                read.advance(2);
                *framing = Framing::Chunked(Chunk::Size);
            }
            Framing::Chunked(Chunk::Trailers) => {
                if read.starts_with(b"\r\n") {
                    read.advance(2);
                    *framing = Framing::Done;
                    return Ok(Decoded::End);
                }
                let mut fields = [httparse::EMPTY_HEADER; 64];
                match httparse::parse_headers(read, &mut fields) {
                    Ok(httparse::Status::Complete((used, fields))) => {
                        let mut trailers = HeaderMap::with_capacity(fields.len());
                        for field in fields.iter() {
                            let (Ok(name), Ok(value)) = (
                                HeaderName::from_bytes(field.name.as_bytes()),
                                HeaderValue::from_bytes(field.value),
                            ) else {
                                return Err(Malformed("bad trailer field"));
                            };
                            trailers.append(name, value);
                        }
                        read.advance(used);
                        *framing = Framing::Done;
                        return Ok(Decoded::Trailers(trailers));
                    }
                    Ok(httparse::Status::Partial) if read.len() > MAX_LINE => {
                        return Err(Malformed("trailers too long"));
                    }
                    Ok(httparse::Status::Partial) => return more(),
                    Err(_) => return Err(Malformed("bad trailer field")),
                }
            }
        }
    }
}

/// Up to `left` bytes from the front of `read`.
fn take(read: &mut BytesMut, left: u64) -> Bytes {
    let n = usize::try_from(left).unwrap_or(usize::MAX).min(read.len());
    read.split_to(n).freeze()
}
