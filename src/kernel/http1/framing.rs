//! Writing a message body in its framing: a length announced beforehand,
//! chunked coding, or up to the connection's close.

use bytes::{BufMut as _, BytesMut};

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
    pub(super) fn until_close() -> BodyFraming {
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
