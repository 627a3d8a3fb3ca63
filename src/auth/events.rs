//! Auth's events: the outbox rows of sessions opened and ended (events of
//! the catalogue, [`crate::events::auth`]), and what auth does on
//! identity's events: a new password, a reset, a disabled or deleted
//! account end sessions.

use chrono::{DateTime, Utc};
use diesel::Connection;
use prost::Message as _;

use super::error::AuthError;
use super::service::Auth;
use super::sessions::end_user_sessions;
use super::store::{self, SessionRow};
pub(super) use crate::events::auth::*;
use crate::events::{Event, identity};
use crate::kernel::outbox::NewEvent;
use crate::proto::events::v1::{OidcEvent, SessionEvent, UserEvent};

/// `event` about the session `s`, whose access tokens are all expired by `by`.
pub(super) fn session_event(
    event: &Event<SessionEvent>,
    s: &SessionRow,
    reason: &str,
    by: DateTime<Utc>,
) -> NewEvent {
    // A user's sessions' events are ordered by the user, a client's own
    // by the client.
    let (user_id, client_id) = if s.is_clients_own() {
        (String::new(), s.user_id.clone())
    } else {
        (s.user_id.clone(), String::new())
    };
    let payload = SessionEvent {
        session_id: s.id.clone(),
        user_id,
        reason: reason.to_owned(),
        tokens_expire_by_unix_ms: by.timestamp_millis(),
        client_id,
    };
    event.row(s.user_id.clone(), &payload)
}

/// `event` of the OpenID Connect provider about client `client_id`; the
/// other fields are left empty, for the caller to set those that apply.
pub(super) fn oidc_event(
    event: &Event<OidcEvent>,
    client_id: &str,
    fill: impl FnOnce(&mut OidcEvent),
) -> NewEvent {
    let mut payload = OidcEvent {
        client_id: client_id.to_owned(),
        ..Default::default()
    };
    fill(&mut payload);
    // A client's events are ordered by the client.
    event.row(client_id, &payload)
}

impl Auth {
    /// Reacts to identity's events: a new password, a reset, a disabled or
    /// deleted account end sessions. Each event is handled once, and the
    /// position it came at is stored with its effects.
    pub async fn on_identity_event(
        &self,
        delivery: crate::kernel::bus::Delivery,
    ) -> Result<(), AuthError> {
        let event = &delivery.event;
        let payload = UserEvent::decode(&event.payload[..])
            .map_err(|e| AuthError::Internal(format!("event {}: {e}", event.id)))?;
        let action = if identity::PASSWORD_CHANGED.is(event) {
            let keep = Some(payload.session_id.clone()).filter(|s| !s.is_empty());
            Some(("password_changed", keep))
        } else if identity::PASSWORD_RESET.is(event) {
            Some(("password_reset", None))
        } else if identity::USER_DELETED.is(event) {
            Some(("user_deleted", None))
        } else if identity::USER_STATUS_CHANGED.is(event) && payload.status == "disabled" {
            Some(("user_disabled", None))
        } else {
            None
        };
        let now = self.clock.now();
        let by = self.tokens_expire_by(now);
        let event_id = event.id.clone();
        let occurred =
            DateTime::<Utc>::from_timestamp_millis(event.occurred_at_unix_ms).unwrap_or(now);
        let reason = action.as_ref().map(|(reason, _)| *reason);
        let deliveries = [delivery];
        let count = self
            .db
            .run(move |c| {
                crate::kernel::offsets::with_effect(c, super::NAME, &deliveries, |c| {
                    let Some((reason, keep)) = action else {
                        return Ok::<_, AuthError>(0);
                    };
                    c.transaction(|c| {
                        if !store::first_time(c, &event_id, now.naive_utc())? {
                            return Ok(0);
                        }
                        // Ordered with logins under way (see `store::lock_user`).
                        store::lock_user(c, &payload.user_id)?;
                        let ended = end_user_sessions(
                            c,
                            &payload.user_id,
                            keep.as_deref(),
                            reason,
                            now,
                            by,
                        )?;
                        store::raise_watermark(c, &payload.user_id, occurred.naive_utc())?;
                        // The hosted pages ask for the password again.
                        super::oidc::store::end_browser_sessions_of(
                            c,
                            &payload.user_id,
                            now.naive_utc(),
                        )?;
                        Ok(ended)
                    })
                })
            })
            .await?;
        if count > 0 {
            self.relay.wake();
            tracing::info!(
                reason = reason.unwrap_or_default(),
                sessions = count,
                "sessions ended after an identity event"
            );
        }
        Ok(())
    }
}
