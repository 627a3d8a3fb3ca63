//! Authz's events: each write to the policy is an event of the catalogue
//! ([`crate::events::authz`]) with a `PolicyEvent` payload, written with
//! the change by `store/`; and what authz does on identity's events: a registered user
//! gets the built-in `user` role, a deleted user's bindings and
//! memberships go.

use prost::Message as _;
use uuid::Uuid;

use super::error::AuthzError;
use super::model::{Binding, Subject};
use super::service::{Authz, USER_ROLE};
use super::store;
use crate::events::identity;
use crate::proto::events::v1::UserEvent;

impl Authz {
    /// Follows identity's events: a registered user gets the built-in
    /// `user` role everywhere, and a deleted user's bindings and
    /// memberships go. Handling an event twice changes nothing more.
    pub async fn on_identity_event(
        &self,
        delivery: crate::kernel::bus::Delivery,
    ) -> Result<(), AuthzError> {
        let event = &delivery.event;
        let payload = UserEvent::decode(&event.payload[..])
            .map_err(|e| AuthzError::Corrupt(format!("event {}: {e}", event.id)))?;
        let Ok(user) = Uuid::parse_str(&payload.user_id) else {
            return Err(AuthzError::Corrupt(format!("event {}: user id", event.id)));
        };
        let by = self.by(None);
        let registered = identity::USER_REGISTERED.is(event);
        let deleted = identity::USER_DELETED.is(event);
        let deliveries = [delivery];
        // The effect and the position it came at, kept together.
        let written = self
            .db
            .run(move |conn| {
                crate::kernel::offsets::with_effect(conn, super::NAME, &deliveries, |c| {
                    if registered {
                        let binding = Binding {
                            id: Uuid::now_v7(),
                            subject: Subject::User(user),
                            role: USER_ROLE.into(),
                            scope: super::model::Scope::Everywhere,
                            expires_at: None,
                        };
                        store::bind_once(c, &by, &binding)
                    } else if deleted {
                        store::forget_user(c, &by, user)
                    } else {
                        Ok(None)
                    }
                })
            })
            .await?;
        if let Some(revision) = written {
            self.written(revision).await?;
        }
        Ok(())
    }
}
