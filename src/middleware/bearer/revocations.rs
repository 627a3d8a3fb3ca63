//! Sessions ended in auth, learnt by the token check: those ended lately,
//! asked of auth before the first token is let through, then each one as
//! its `auth.session.revoked` event arrives.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::middleware::ids::SessionId;
use tokio_util::sync::CancellationToken;

use super::TokenCheck;
use crate::kernel::bus::{self, BusError, EventBus, Unhandled};

impl TokenCheck {
    /// Learns the sessions revoked while tokens of theirs may still be
    /// live, asking auth until it answers (a request that comes meanwhile
    /// asks too), then lets tokens through.
    pub(super) async fn catch_up(&self) {
        let mut pause = Duration::from_millis(50);
        while !self.try_catch_up().await {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// Asks auth once for the sessions revoked lately, unless that is known
    /// already; whether it is known now.
    pub(super) async fn try_catch_up(&self) -> bool {
        let _asking = self.inner.catching_up.lock().await;
        if self.inner.caught_up.load(Ordering::Acquire) {
            return true;
        }
        let since = self.inner.clock.now()
            - chrono::Duration::from_std(self.inner.remember_revocations).unwrap_or_default();
        match self.inner.source.revoked_since(since).await {
            Ok(sessions) => {
                for session in sessions {
                    self.revoke(session);
                }
                self.inner.caught_up.store(true, Ordering::Release);
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot list revoked sessions yet; tokens wait");
                false
            }
        }
    }

    /// Learns revoked sessions from the bus until `shutdown`.
    pub async fn listen_for_revocations(
        &self,
        consumer: &str,
        bus: &Arc<dyn EventBus>,
        shutdown: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, BusError> {
        let check = self.clone();
        let follow = bus::follow(bus, consumer, &["auth"], shutdown, move |event| {
            let check = check.clone();
            async move {
                let Some(session) = crate::events::auth::SESSION_REVOKED.read(&event) else {
                    return Ok(());
                };
                let session =
                    session.map_err(|e| Unhandled::Unreadable(format!("revocation: {e}")))?;
                let id = SessionId::parse(&session.session_id).map_err(|_| {
                    Unhandled::Unreadable("revocation with a bad session id".into())
                })?;
                check.revoke(id);
                Ok(())
            }
        });
        follow.await
    }
}
