//! What links are made of: the bounded queue of link requests (worked in
//! `links.rs`) and the single-use tokens a link carries, of which only the
//! hash is stored.

use std::sync::Mutex;

use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::kernel::origin::EventOrigin;

use super::error::IdentityError;

/// Link requests waiting at most.
const QUEUE: usize = 1024;

/// A link asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    PasswordReset,
    EmailVerification,
}

/// A link asked for: the address (already validated), what it asked for,
/// and the request that asked (which the link's event names).
pub(super) type Asked = (String, Link, Option<EventOrigin>);

/// The queue of link requests.
pub struct Links {
    tx: mpsc::Sender<Asked>,
    /// Taken by the worker when it starts.
    pub(super) rx: Mutex<Option<mpsc::Receiver<Asked>>>,
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
    fn tokens_are_random_and_only_their_hash_is_kept() {
        let (a, ha) = new_token();
        let (b, _) = new_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(ha, hash_token(&a));
        assert_ne!(ha, a);
    }
}
