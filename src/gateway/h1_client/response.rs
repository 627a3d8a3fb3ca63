//! Reading an upstream's response on a connection: its head, and its body
//! piece by piece, by the rules of `kernel::http::wire` with the reading done
//! here.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::Frame;

use super::{Conn, Error, before_response};
use crate::kernel::http::deadline::Deadline;
use crate::kernel::http::wire::{self, Decoded, Framing, ResponseHead};

/// Reads the response's head from `conn`.
pub(super) async fn read_head(conn: &mut Conn, head_only: bool) -> Result<ResponseHead, Error> {
    let Conn {
        stream,
        read,
        deadline,
        ..
    } = conn;
    let (mut reader, _) = stream.split();
    read_head_from(&mut reader, read, deadline, head_only).await
}

pub(super) async fn read_head_from(
    reader: &mut tokio::net::tcp::ReadHalf<'_>,
    read: &mut BytesMut,
    deadline: &mut Deadline,
    head_only: bool,
) -> Result<ResponseHead, Error> {
    let mut received = !read.is_empty();
    loop {
        if !read.is_empty()
            && let Some(head) = wire::parse_response(read, head_only)?
        {
            return Ok(head);
        }
        wire::make_room(read);
        let got = std::future::poll_fn(|cx| {
            if let Poll::Ready(got) =
                tokio_util::io::poll_read_buf(Pin::new(&mut *reader), cx, read)
            {
                return Poll::Ready(Some(got));
            }
            if deadline.poll_passed(cx) {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        let Some(got) = got else {
            return Err(Error::TimedOut);
        };
        match got {
            Ok(0) if !received => return Err(Error::Closed),
            Ok(0) => return Err(Error::Malformed("connection closed within the head")),
            Ok(_) => received = true,
            Err(e) if !received => return Err(before_response(e)),
            Err(e) => return Err(Error::Io(e)),
        }
    }
}

/// The next piece of the response's body on `conn`, framed by `framing`
/// (which moves on as the body is read).
pub fn poll_body(
    conn: &mut Conn,
    framing: &mut Framing,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
    let mut closed = false;
    loop {
        match wire::decode(&mut conn.read, framing, closed)? {
            Decoded::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
            Decoded::Trailers(trailers) => return Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Decoded::End => return Poll::Ready(None),
            Decoded::More => match ready!(conn.poll_fill(cx)) {
                Ok(0) => closed = true,
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(Error::Io(e)))),
            },
        }
    }
}
