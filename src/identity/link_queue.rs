//! What links are made of: the bounded queue of link requests (worked in
//! `links.rs`), the allowance of links each address may be sent, and the
//! single-use tokens a link carries, of which only the hash is stored.
//!
//! The allowance bounds the mail one address gets however often its links
//! are asked for: a request past it is answered as any other and sends
//! nothing. It is kept per address asked for, whether an account has it or
//! not, so it tells nothing of which addresses have one. At most
//! [`MAX_TRACKED`] addresses are tracked; past that (a flood of distinct
//! addresses, each sent one link at most by the queue's bound) requests are
//! not held back, so that no flood can stop the links of everyone else.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::{Quota, RateLimiter};

use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::kernel::origin::EventOrigin;

use super::error::IdentityError;

/// Link requests waiting at most.
const QUEUE: usize = 1024;
/// Addresses whose allowance is tracked at most.
const MAX_TRACKED: usize = 100_000;

type PerAddress = RateLimiter<
    String,
    governor::state::keyed::DefaultKeyedStateStore<String>,
    governor::clock::DefaultClock,
>;

/// A link asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    PasswordReset,
    EmailVerification,
}

/// A link asked for: the address (already validated), what it asked for,
/// and the request that asked (which the link's event names).
pub(super) type Asked = (String, Link, Option<EventOrigin>);

/// The queue of link requests, and each address's allowance.
pub struct Links {
    tx: mpsc::Sender<Asked>,
    /// Taken by the worker when it starts.
    pub(super) rx: Mutex<Option<mpsc::Receiver<Asked>>>,
    /// `None` when links are not limited per address.
    per_address: Option<PerAddress>,
}

impl Links {
    /// A queue whose addresses are each sent at most `burst` links, one
    /// more every `window / burst` after that (no limit when either is 0).
    pub fn new(burst: u32, window: Duration) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let per_address = NonZeroU32::new(burst)
            .zip((!window.is_zero()).then_some(window))
            .and_then(|(burst, window)| {
                Quota::with_period(window / burst.get()).map(|q| q.allow_burst(burst))
            })
            .map(RateLimiter::keyed);
        Links {
            tx,
            rx: Mutex::new(Some(rx)),
            per_address,
        }
    }

    /// Queues `link` for `email` (validated and lower-cased); refused when
    /// the queue is full. Past the address's allowance it is answered alike
    /// and dropped.
    pub fn queue(&self, email: String, link: Link) -> Result<(), IdentityError> {
        if let Some(limit) = &self.per_address {
            if limit.len() >= MAX_TRACKED {
                limit.retain_recent();
            }
            if limit.len() < MAX_TRACKED
                && limit.check_key(&super::model::email_key(&email)).is_err()
            {
                tracing::info!(
                    ?link,
                    "a link request past its address's allowance was dropped"
                );
                return Ok(());
            }
        }
        self.tx
            .try_send((email, link, crate::kernel::telemetry::task_origin()))
            .map_err(|_| IdentityError::Unavailable("too many link requests are waiting".into()))
    }
}

/// The purposes a link token is stored under.
pub(super) const RESET: &str = "password_reset";
pub(super) const VERIFY: &str = "email_verification";

/// A new single-use token (256 random bits, hex) and the hash that is stored.
pub(super) fn new_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    let hash = hash_token(&token);
    (token, hash)
}

pub(super) fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_is_sent_its_allowance_and_no_more() {
        let links = Links::new(3, Duration::from_secs(900));
        let mut rx = links.rx.lock().unwrap().take().unwrap();
        for _ in 0..100 {
            links
                .queue("ann@example.org".into(), Link::PasswordReset)
                .unwrap();
        }
        links
            .queue("bob@example.org".into(), Link::PasswordReset)
            .unwrap();
        let mut queued = Vec::new();
        while let Ok((email, _, _)) = rx.try_recv() {
            queued.push(email);
        }
        assert_eq!(queued.iter().filter(|e| *e == "ann@example.org").count(), 3);
        assert_eq!(queued.iter().filter(|e| *e == "bob@example.org").count(), 1);
        // Without a limit, every request is queued.
        let open = Links::new(0, Duration::from_secs(900));
        let mut rx = open.rx.lock().unwrap().take().unwrap();
        for _ in 0..10 {
            open.queue("ann@example.org".into(), Link::PasswordReset)
                .unwrap();
        }
        assert_eq!(std::iter::from_fn(|| rx.try_recv().ok()).count(), 10);
    }

    #[test]
    fn tokens_are_random_and_only_their_hash_is_kept() {
        let (a, ha) = new_token();
        let (b, _) = new_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(ha, hash_token(&a));
        assert_ne!(ha, a);
    }
}
