//! Links sent by email (a password reset, an email verification) go out
//! after the request for them has been answered, from a queue worked by one
//! task.
//!
//! Whether an address has an account must not show in the answer, and its
//! timing is part of the answer: looking the account up, issuing a token
//! and handing the notice over take longer for an address that has one.
//! So the request is answered once its address is found well-formed and
//! queued, which takes the same time for every address; the work is done
//! after. The queue is bounded: when it is full the request is refused with
//! 503, whatever its address, rather than held in memory.

use std::sync::Mutex;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::error::IdentityError;
use super::service::Identity;
use crate::kernel::locks;

/// Link requests waiting at most.
const QUEUE: usize = 1024;

/// A link asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    PasswordReset,
    EmailVerification,
}

/// The queue of link requests: an address (already validated) and what it
/// asked for.
pub struct Links {
    tx: mpsc::Sender<(String, Link)>,
    /// Taken by the worker when it starts.
    rx: Mutex<Option<mpsc::Receiver<(String, Link)>>>,
}

impl Default for Links {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Links {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

impl Links {
    /// Queues `link` for `email`; refused when the queue is full.
    pub fn queue(&self, email: String, link: Link) -> Result<(), IdentityError> {
        self.tx
            .try_send((email, link))
            .map_err(|_| IdentityError::Unavailable("too many link requests are waiting".into()))
    }
}

/// Works the queue of `identity` until `shutdown`, then sends what is
/// still waiting and ends. A second call finds no queue and ends at once.
pub fn spawn(identity: Identity, shutdown: CancellationToken) -> JoinHandle<()> {
    let rx = locks::lock(&identity.links().rx).take();
    tokio::spawn(async move {
        let Some(mut rx) = rx else { return };
        loop {
            let next = tokio::select! {
                next = rx.recv() => next,
                () = shutdown.cancelled() => break,
            };
            let Some((email, link)) = next else { return };
            send(&identity, &email, link).await;
        }
        rx.close();
        while let Some((email, link)) = rx.recv().await {
            send(&identity, &email, link).await;
        }
    })
}

async fn send(identity: &Identity, email: &str, link: Link) {
    if let Err(e) = identity.send_link(email, link).await {
        // The address is not logged: it may have no account.
        tracing::warn!(error = %e, ?link, "a requested link could not be sent");
    }
}
