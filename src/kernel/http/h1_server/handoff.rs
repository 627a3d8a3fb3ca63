//! A connection handed to hyper for the rest of its life: HTTP/2, bodies,
//! upgrades, and whatever else the kernel's own loop does not serve, with
//! the bytes already read given back first.

use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf as _, Bytes};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Conn;
use crate::kernel::http::connection::{ConnectionService, InPlace};
use crate::kernel::http::deadline::Deadline;

/// What ends a connection handed to hyper.
pub(super) struct HandOffLimits {
    /// Held while the connection lives, so that shutdown waits for it.
    pub(super) watcher: Watcher,
    pub(super) shutdown: CancellationToken,
    pub(super) idle_timeout: Duration,
    /// By when the connection must have made its first request.
    pub(super) first_request: Duration,
    /// How long a write may wait for room (see [`write_bounded`]).
    pub(super) write_timeout: Duration,
}

/// Hands the connection to hyper, with the bytes read and not yet served.
///
/// The connection is wound up (HTTP/2: a GOAWAY, its streams in flight
/// finishing) when shutdown begins, or when no byte has gone either way for
/// `idle_timeout` (between one and two of them, as it is checked); and
/// closed when no byte has gone either way for another `idle_timeout` after
/// that, whether or not its client answered the GOAWAY. An HTTP/2 client
/// that opens a connection and leaves it idle does not hold it for ever,
/// while a stream that sends now and then keeps it. A connection that has
/// made no request within `first_request` of being handed over (an HTTP/2
/// preface, then only pings and settings) is closed then. A write that
/// finds no room for `write_timeout` fails, and ends the connection.
pub(super) async fn hand_off<IO, S>(
    conn: Conn<IO>,
    service: S,
    hyper: auto::Builder<TokioExecutor>,
    limits: HandOffLimits,
) where
    IO: super::Stream,
    S: ConnectionService,
    S::Future: Send + 'static,
{
    let Conn { stream, read, .. } = conn;
    let moved = Arc::new(AtomicUsize::new(0));
    let HandOffLimits {
        watcher,
        shutdown,
        idle_timeout,
        first_request,
        write_timeout,
    } = limits;
    let io = Rewind {
        read: read.freeze(),
        stream,
        moved: moved.clone(),
        write_limit: write_timeout,
        write_deadline: None,
    };
    let service = InPlace::new(service);
    let calls = service.calls();
    let connection = hyper.serve_connection_with_upgrades(TokioIo::new(io), service);
    let mut connection = pin!(connection);
    let mut stopping = pin!(shutdown.cancelled());
    let mut check = pin!(tokio::time::sleep(idle_timeout));
    let mut first = pin!(tokio::time::sleep(first_request));
    let mut asked = false;
    let mut seen = 0;
    let mut wound_up = false;
    let ended = loop {
        tokio::select! {
            ended = connection.as_mut() => break Some(ended),
            () = stopping.as_mut(), if !wound_up => {
                wound_up = true;
                connection.as_mut().graceful_shutdown();
            }
            () = first.as_mut(), if !asked => {
                asked = true;
                // Nothing in flight to finish: closed as it is.
                if calls.load(Ordering::Relaxed) == 0 {
                    break None;
                }
            }
            () = check.as_mut() => {
                let now = moved.load(Ordering::Relaxed);
                if now == seen && wound_up {
                    break None;
                }
                if now == seen {
                    wound_up = true;
                    connection.as_mut().graceful_shutdown();
                }
                seen = now;
                check.as_mut().reset(Instant::now() + idle_timeout);
            }
        }
    };
    drop(watcher);
    match ended {
        Some(Err(e)) => tracing::debug!(error = %e, "connection ended with an error"),
        Some(Ok(())) => {}
        None => tracing::debug!("idle connection closed"),
    }
}

/// A stream whose first bytes were already read: they are read again first.
struct Rewind<IO> {
    read: Bytes,
    stream: IO,
    /// Reads and writes that moved bytes.
    moved: Arc<AtomicUsize>,
    /// How long a write may find no room before it fails.
    write_limit: Duration,
    /// Set while a write waits for room.
    write_deadline: Option<Deadline>,
}

impl<IO: super::Stream> Rewind<IO> {
    /// `written`, a write's outcome, failed with `TimedOut` when it has
    /// waited for room past the write limit.
    fn bound_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if written.is_ready() {
            self.write_deadline = None;
            return written;
        }
        let limit = self.write_limit;
        let deadline = self
            .write_deadline
            .get_or_insert_with(|| Deadline::new(Instant::now() + limit));
        if deadline.poll_passed(cx) {
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        Poll::Pending
    }
}

impl<IO: super::Stream> Rewind<IO> {
    /// Counts `outcome`, a read or write, when it moved bytes.
    fn count<T>(&self, outcome: &Poll<io::Result<T>>, moved: bool) {
        if moved && matches!(outcome, Poll::Ready(Ok(_))) {
            self.moved.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<IO: super::Stream> AsyncRead for Rewind<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        self.count(&read, buf.filled().len() > before);
        read
    }
}

impl<IO: super::Stream> AsyncWrite for Rewind<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.count(&written, !buf.is_empty());
        self.bound_write(cx, written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.count(&written, bufs.iter().any(|b| !b.is_empty()));
        self.bound_write(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
