//! HTTP/1.1 connections to upstream instances, kept per I/O thread.
//!
//! Each gateway I/O thread (see `kernel::http::io_threads`) keeps its own idle
//! connections per instance address. Taking one needs no lock, and the
//! exchange over it runs in the request's own task (see `h1_client/`); the
//! connection goes back to that thread's idle list the moment the response's
//! body has been read to its end (when it is cut short, the connection is
//! closed instead). Idle connections are closed after [`IDLE_TIMEOUT`], and
//! at most [`MAX_IDLE`] are kept per address.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::time::Instant;

use super::h1_client::{self, Conn, Framing};
use super::headers::ProxyFields;

/// How long a connection may wait idle before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per address on one thread.
pub const MAX_IDLE: usize = 256;
/// How long making a connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Every this many checkouts, idle lists are swept of closed and expired
/// connections (including lists of addresses no longer asked for).
const SWEEP_EVERY: u32 = 1024;

#[derive(Default)]
struct Idle {
    /// Addresses come from the registry, not from clients: a fast hash.
    by_address: HashMap<Arc<str>, Slot, foldhash::fast::RandomState>,
    checkouts: u32,
}

/// The idle connections to one address, and the address shared with the
/// answers that will bring theirs back.
struct Slot {
    address: Arc<str>,
    idle: Vec<(Conn, Instant)>,
}

thread_local! {
    static IDLE: RefCell<Idle> = RefCell::new(Idle::default());
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made: nothing reached the instance.
    #[error("cannot connect: {0}")]
    Connect(#[source] io::Error),
    /// The connection failed during the exchange.
    #[error("exchange failed: {0}")]
    Exchange(#[source] h1_client::Error),
    /// No response's head (or no connection) by the deadline.
    #[error("no response in time")]
    TimedOut,
}

/// Sends `request` with `body` to `address` (`host:port`), for the request
/// target made of `path`'s pieces, over an idle connection of this thread,
/// or a new one. When an idle
/// connection turns out to have been closed by the instance before any
/// answer came, a request without a body whose method may be repeated goes
/// out once more on a new connection.
pub async fn send(
    address: &str,
    path: &[&str],
    parts: &http::request::Parts,
    fields: Option<&ProxyFields>,
    body: Body,
    deadline: Instant,
    pause: Duration,
) -> Result<http::Response<UpstreamBody>, SendError> {
    let target = h1_client::Target::new(address, path).map_err(SendError::Exchange)?;
    let repeatable =
        http_body::Body::is_end_stream(&body) && h1_client::is_idempotent(&parts.method);
    let mut body = Some(body);
    loop {
        let (address, idle) = checkout(address);
        let (mut conn, fresh) = match idle {
            Some(mut conn) => {
                conn.response_due_by(deadline);
                (conn, false)
            }
            // Boxed: the rare path should not enlarge every request's future.
            None => (Box::pin(connect(&address, deadline)).await?, true),
        };
        let this_body = body.take().unwrap_or_else(Body::empty);
        match h1_client::exchange(&mut conn, target, parts, fields, this_body).await {
            Ok(head) => {
                let mut response = UpstreamBody {
                    framing: head.framing,
                    conn: Some(conn),
                    keep: head.reusable.then_some(address),
                    pause,
                    pausing: false,
                };
                response.release_if_done();
                return Ok(http::Response::from_parts(head.parts, response));
            }
            Err(h1_client::Error::Closed) if !fresh && repeatable => continue,
            Err(h1_client::Error::TimedOut) => return Err(SendError::TimedOut),
            Err(e) => return Err(SendError::Exchange(e)),
        }
    }
}

/// The address, shared, and an idle connection to it if this thread has
/// one that is still usable.
fn checkout(address: &str) -> (Arc<str>, Option<Conn>) {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        idle.checkouts = idle.checkouts.wrapping_add(1);
        if idle.checkouts % SWEEP_EVERY == 0 {
            idle.sweep();
        }
        let slot = match idle.by_address.get_mut(address) {
            Some(slot) => slot,
            None => {
                let address: Arc<str> = Arc::from(address);
                idle.by_address.entry(address.clone()).or_insert(Slot {
                    address,
                    idle: Vec::new(),
                })
            }
        };
        while let Some((conn, since)) = slot.idle.pop() {
            if usable(&conn, since) {
                return (slot.address.clone(), Some(conn));
            }
        }
        (slot.address.clone(), None)
    })
}

impl Idle {
    fn sweep(&mut self) {
        self.by_address.retain(|_, slot| {
            slot.idle.retain(|(conn, since)| usable(conn, *since));
            !slot.idle.is_empty()
        });
    }
}

/// Whether an idle connection may still take a request: open, and not
/// idle for longer than [`IDLE_TIMEOUT`].
fn usable(conn: &Conn, since: Instant) -> bool {
    since.elapsed() < IDLE_TIMEOUT && conn.is_open()
}

/// Puts `conn` back on this thread's idle list for `address`.
fn release(address: Arc<str>, conn: Conn) {
    // At thread exit the list is gone; the connection just closes.
    let _ = IDLE.try_with(|idle| {
        let mut idle = idle.borrow_mut();
        let slot = idle.by_address.entry(address.clone()).or_insert(Slot {
            address,
            idle: Vec::new(),
        });
        if slot.idle.len() < MAX_IDLE {
            slot.idle.push((conn, Instant::now()));
        }
    });
}

/// A new connection to `address`, whose first response is due by `deadline`.
/// A connection not made within [`CONNECT_TIMEOUT`] is a connect failure;
/// one not made by `deadline` leaves the exchange out of time.
async fn connect(address: &str, deadline: Instant) -> Result<Conn, SendError> {
    let connecting = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address));
    let stream = tokio::time::timeout_at(deadline, connecting)
        .await
        .map_err(|_| SendError::TimedOut)?
        .map_err(|_| {
            SendError::Connect(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
        })?
        .map_err(SendError::Connect)?;
    stream.set_nodelay(true).map_err(SendError::Connect)?;
    Ok(Conn::new(stream, deadline))
}

/// A response's body, read from its connection as it is polled. When it has
/// been read to its end, a reusable connection goes back to its idle list;
/// when it is dropped before that, the connection closes.
pub struct UpstreamBody {
    framing: Framing,
    conn: Option<Conn>,
    /// Where the connection goes back to; none when it cannot be reused.
    keep: Option<Arc<str>>,
    /// The longest the body may wait for the instance: once a read finds
    /// nothing, more is due within this.
    pause: Duration,
    /// Whether the body is waiting, its deadline set.
    pausing: bool,
}

impl UpstreamBody {
    /// Once the body has been read to its end, puts a reusable connection
    /// back, unless the instance sent more than its response: bytes no
    /// request asked for would be read as the next client's response, so
    /// such a connection is closed (they are looked for again when the
    /// connection is next taken, see [`usable`]).
    fn release_if_done(&mut self) {
        if self.framing.is_done()
            && let (Some(conn), Some(address)) = (self.conn.take(), self.keep.take())
            && !conn.has_unread()
        {
            release(address, conn);
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = h1_client::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h1_client::Error>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = match h1_client::poll_body(conn, &mut this.framing, cx) {
            // A body already in the buffer costs no clock reading: the
            // deadline is set only when a read first finds nothing.
            Poll::Pending => {
                if !this.pausing {
                    this.pausing = true;
                    conn.response_due_by(Instant::now() + this.pause);
                }
                if conn.poll_deadline(cx) {
                    Poll::Ready(Some(Err(h1_client::Error::TimedOut)))
                } else {
                    Poll::Pending
                }
            }
            polled => {
                this.pausing = false;
                polled
            }
        };
        if let Poll::Ready(Some(Err(_))) = &polled {
            // A broken answer leaves the connection in no state to reuse.
            this.conn = None;
        } else {
            this.release_if_done();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.framing.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
