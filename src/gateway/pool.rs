//! HTTP/1.1 connections to upstream instances, kept per I/O thread.
//!
//! Each gateway I/O thread (see `kernel::io_threads`) keeps its own idle
//! connections per instance address. Taking one needs no lock and no
//! hand-off to another task: the connection's task runs on the thread whose
//! requests use it, and the connection goes back to that thread's idle list
//! the moment the answer's body has been read to its end (when it is cut
//! short, the connection is closed instead). Idle connections are closed
//! after [`IDLE_TIMEOUT`], and at most [`MAX_IDLE`] are kept per address.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

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
    by_address: HashMap<Arc<str>, Slot>,
    checkouts: u32,
}

/// The idle connections to one address, and the address shared with the
/// answers that will bring theirs back.
struct Slot {
    address: Arc<str>,
    idle: Vec<(SendRequest<Body>, Instant)>,
}

thread_local! {
    static IDLE: RefCell<Idle> = RefCell::new(Idle::default());
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made: nothing reached the instance.
    Connect(io::Error),
    /// The connection failed during the exchange.
    Exchange(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "cannot connect: {e}"),
            SendError::Exchange(e) => write!(f, "exchange failed: {e}"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Connect(e) => Some(e),
            SendError::Exchange(e) => Some(e),
        }
    }
}

/// Sends `request` (origin-form URI, `Host` set) to `address` (`host:port`)
/// over an idle connection of this thread, or a new one. A request that an
/// idle connection closed under before it was sent goes out once more on a
/// new connection.
pub async fn send(
    address: &str,
    request: http::Request<Body>,
) -> Result<http::Response<Pooled>, SendError> {
    let mut request = request;
    loop {
        let (address, idle) = checkout(address).await;
        let (mut sender, fresh) = match idle {
            Some(sender) => (sender, false),
            // Boxed: the rare path should not enlarge every request's future.
            None => (Box::pin(connect(&address)).await?, true),
        };
        match sender.try_send_request(request).await {
            Ok(response) => {
                return Ok(response.map(|body| Pooled {
                    body,
                    keep: Some((address, sender)),
                }));
            }
            Err(mut e) => match e.take_message() {
                Some(back) if !fresh => request = back,
                _ => return Err(SendError::Exchange(e.into_error())),
            },
        }
    }
}

/// The address, shared, and an idle connection to it ready for a request
/// if this thread has one.
async fn checkout(address: &str) -> (Arc<str>, Option<SendRequest<Body>>) {
    loop {
        let (shared, sender) = IDLE.with(|idle| {
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
            while let Some((sender, since)) = slot.idle.pop() {
                if usable(&sender, since) {
                    return (slot.address.clone(), Some(sender));
                }
            }
            (slot.address.clone(), None)
        });
        let Some(mut sender) = sender else {
            return (shared, None);
        };
        // A connection goes back as soon as its answer is read; its task may
        // not have seen the end yet. Wait for it rather than open another.
        if std::future::poll_fn(|cx| sender.poll_ready(cx))
            .await
            .is_ok()
        {
            return (shared, Some(sender));
        }
    }
}

impl Idle {
    fn sweep(&mut self) {
        self.by_address.retain(|_, slot| {
            slot.idle.retain(|(sender, since)| usable(sender, *since));
            !slot.idle.is_empty()
        });
    }
}

/// Whether an idle connection may still take a request: open, and not
/// idle for longer than [`IDLE_TIMEOUT`].
fn usable(sender: &SendRequest<Body>, since: Instant) -> bool {
    !sender.is_closed() && since.elapsed() < IDLE_TIMEOUT
}

/// Puts `sender` back on this thread's idle list for `address`.
fn release(address: Arc<str>, sender: SendRequest<Body>) {
    if sender.is_closed() {
        return;
    }
    // At thread exit the list is gone; the connection just closes.
    let _ = IDLE.try_with(|idle| {
        let mut idle = idle.borrow_mut();
        let slot = idle.by_address.entry(address.clone()).or_insert(Slot {
            address,
            idle: Vec::new(),
        });
        if slot.idle.len() < MAX_IDLE {
            slot.idle.push((sender, Instant::now()));
        }
    });
}

async fn connect(address: &str) -> Result<SendRequest<Body>, SendError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| {
            SendError::Connect(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
        })?
        .map_err(SendError::Connect)?;
    stream.set_nodelay(true).map_err(SendError::Connect)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(SendError::Exchange)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

pin_project_lite::pin_project! {
    /// An answer's body from a pooled connection. When it has been read to
    /// its end, the connection goes back to its idle list.
    pub struct Pooled {
        #[pin]
        body: Incoming,
        keep: Option<(Arc<str>, SendRequest<Body>)>,
    }

    impl PinnedDrop for Pooled {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if this.body.is_end_stream() && let Some((address, sender)) = this.keep.take() {
                release(address, sender);
            }
        }
    }
}

impl http_body::Body for Pooled {
    type Data = hyper::body::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some((address, sender)) = this.keep.take() {
                    release(address, sender);
                }
            }
            // A broken answer leaves the connection in no state to reuse.
            Poll::Ready(Some(Err(_))) => *this.keep = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
