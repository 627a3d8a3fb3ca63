//! The catalogue of events: every event the services publish, each defined
//! once with its name, its payload type, the service that produces it and
//! those that consume it. Producers build their outbox rows from these
//! definitions and consumers read with them, so a name is written in one
//! place and a payload cannot be read as another type.
//!
//! `docs/events.md` lists the same events; a test keeps the two equal.
//! Every event also reaches audit, which records all of them (its
//! `audit.sources`); the consumers listed are the ones that act on it.

use std::marker::PhantomData;

use prost::Message;

use crate::kernel::outbox::NewEvent;
use crate::proto::events::v1::{
    Envelope, KeyEvent, OidcEvent, PolicyEvent, SessionEvent, UserEvent,
};

/// One event: its name on the bus and the type of its payload.
pub struct Event<P> {
    pub name: &'static str,
    payload: PhantomData<fn() -> P>,
}

impl<P: Message + Default> Event<P> {
    const fn new(name: &'static str) -> Self {
        Event {
            name,
            payload: PhantomData,
        }
    }

    /// The outbox row of this event about `subject`, the key its events
    /// are ordered by.
    pub fn row(&self, subject: impl Into<String>, payload: &P) -> NewEvent {
        NewEvent {
            event_type: self.name,
            subject: subject.into(),
            payload: payload.encode_to_vec(),
        }
    }

    /// Whether `event` is this one.
    pub fn is(&self, event: &Envelope) -> bool {
        event.r#type == self.name
    }

    /// `event`'s payload, when `event` is this one.
    pub fn read(&self, event: &Envelope) -> Option<Result<P, prost::DecodeError>> {
        self.is(event).then(|| P::decode(&event.payload[..]))
    }
}

/// A catalogue entry, for the documentation and its test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Described {
    pub name: &'static str,
    pub payload: &'static str,
    pub producer: &'static str,
    /// The services that act on it, besides audit, which records every event.
    pub consumers: &'static [&'static str],
    pub meaning: &'static str,
}

/// Declares each producer's events as constants in a module of its own
/// and lists them all in [`CATALOGUE`].
macro_rules! catalogue {
    ($(
        $producer:ident {
            $( $constant:ident: $payload:ident = $name:literal, [$($consumer:literal),*], $meaning:literal; )+
        }
    )+) => {
        $(
            #[doc = concat!("The events `", stringify!($producer), "` produces.")]
            pub mod $producer {
                #[allow(unused_imports, reason = "each producer uses the payloads of its own events")]
                use super::{Event, KeyEvent, OidcEvent, PolicyEvent, SessionEvent, UserEvent};
                $(
                    #[doc = $meaning]
                    pub const $constant: Event<$payload> = Event::new($name);
                )+
            }
        )+

        /// Every event, in the order `docs/events.md` lists them.
        pub const CATALOGUE: &[Described] = &[$($(
            Described {
                name: $name,
                payload: stringify!($payload),
                producer: stringify!($producer),
                consumers: &[$($consumer),*],
                meaning: $meaning,
            },
        )+)+];
    };
}

// Those that act on a session's end: every service that checks tokens.
// Those that act on authz's changes: every service that keeps authz's
// answers (permits).
catalogue! {
    identity {
        USER_REGISTERED: UserEvent = "identity.user.registered", ["authz"],
            "An account was made; authz binds the built-in `user` role to it.";
        USER_UPDATED: UserEvent = "identity.user.updated", [],
            "A profile changed (the display name).";
        USER_STATUS_CHANGED: UserEvent = "identity.user.status_changed", ["auth"],
            "An account was disabled or enabled; auth ends a disabled account's sessions.";
        USER_DELETED: UserEvent = "identity.user.deleted", ["auth", "authz"],
            "An account was deleted; auth ends its sessions, authz forgets its bindings and memberships.";
        PASSWORD_CHANGED: UserEvent = "identity.password.changed", ["auth"],
            "A password was changed by its owner; auth ends the account's other sessions.";
        PASSWORD_RESET_REQUESTED: UserEvent = "identity.password.reset_requested", [],
            "A reset link was issued and queued for mail.";
        PASSWORD_RESET: UserEvent = "identity.password.reset", ["auth"],
            "A password was set with a reset link; auth ends every session of the account.";
        EMAIL_VERIFICATION_REQUESTED: UserEvent = "identity.email.verification_requested", [],
            "A verification link was issued and queued for mail.";
        EMAIL_VERIFIED: UserEvent = "identity.email.verified", [],
            "An address was confirmed with its link.";
        LOGIN_FAILED: UserEvent = "identity.login.failed", [],
            "A sign-in gave a wrong password for an account.";
    }
    auth {
        SESSION_CREATED: SessionEvent = "auth.session.created", [],
            "A sign-in opened a session, or a client one of its own (client credentials).";
        SESSION_REVOKED: SessionEvent = "auth.session.revoked", ["gateway", "identity", "authz", "audit"],
            "A session ended; every token check refuses its access tokens from then on.";
        SESSION_REUSE_DETECTED: SessionEvent = "auth.session.reuse_detected", [],
            "A refresh token was used twice; its session was ended.";
        KEY_ROTATED: KeyEvent = "auth.key.rotated", [],
            "A new signing key was published.";
        OIDC_AUTHORIZED: OidcEvent = "auth.oidc.authorized", [],
            "A user's browser was sent back to a client with an authorization code.";
        OIDC_CONSENT_GIVEN: OidcEvent = "auth.oidc.consent_given", [],
            "A user let a client have the scopes it asked for.";
        OIDC_CONSENT_REVOKED: OidcEvent = "auth.oidc.consent_revoked", [],
            "A user took back what a client was let have.";
        OIDC_TOKEN_ISSUED: OidcEvent = "auth.oidc.token_issued", [],
            "A client exchanged a grant for tokens.";
        OIDC_TOKEN_REFRESHED: OidcEvent = "auth.oidc.token_refreshed", [],
            "A client rotated a refresh token.";
        OIDC_TOKEN_REVOKED: OidcEvent = "auth.oidc.token_revoked", [],
            "A client revoked a token of its own; its session ended.";
        OIDC_CLIENT_CREATED: OidcEvent = "auth.oidc.client_created", [],
            "A client was registered.";
        OIDC_CLIENT_UPDATED: OidcEvent = "auth.oidc.client_updated", [],
            "A client's registration changed.";
        OIDC_CLIENT_SECRET_ROTATED: OidcEvent = "auth.oidc.client_secret_rotated", [],
            "A client was given a new secret; the old one stopped working.";
        OIDC_CLIENT_DELETED: OidcEvent = "auth.oidc.client_deleted", [],
            "A client was deleted, with its codes and consents.";
    }
    authz {
        ROLE_CREATED: PolicyEvent = "authz.role.created", ["gateway", "identity", "auth", "audit"],
            "A role was made.";
        ROLE_UPDATED: PolicyEvent = "authz.role.updated", ["gateway", "identity", "auth", "audit"],
            "A role's permissions changed.";
        ROLE_DELETED: PolicyEvent = "authz.role.deleted", ["gateway", "identity", "auth", "audit"],
            "A role was deleted, with its bindings.";
        GROUP_CREATED: PolicyEvent = "authz.group.created", ["gateway", "identity", "auth", "audit"],
            "A group was made.";
        GROUP_UPDATED: PolicyEvent = "authz.group.updated", ["gateway", "identity", "auth", "audit"],
            "A group's name or description changed.";
        GROUP_DELETED: PolicyEvent = "authz.group.deleted", ["gateway", "identity", "auth", "audit"],
            "A group was deleted, with its bindings and memberships.";
        MEMBER_ADDED: PolicyEvent = "authz.member.added", ["gateway", "identity", "auth", "audit"],
            "A user or group joined a group.";
        MEMBER_REMOVED: PolicyEvent = "authz.member.removed", ["gateway", "identity", "auth", "audit"],
            "A user or group left a group.";
        BINDING_CREATED: PolicyEvent = "authz.binding.created", ["gateway", "identity", "auth", "audit"],
            "A role was bound to a subject over a scope.";
        BINDING_DELETED: PolicyEvent = "authz.binding.deleted", ["gateway", "identity", "auth", "audit"],
            "A binding was deleted.";
        PARENT_SET: PolicyEvent = "authz.parent.set", ["gateway", "identity", "auth", "audit"],
            "A resource was given a parent it inherits bindings from.";
        PARENT_REMOVED: PolicyEvent = "authz.parent.removed", ["gateway", "identity", "auth", "audit"],
            "A resource's parent was removed.";
        SUBJECT_FORGOTTEN: PolicyEvent = "authz.subject.forgotten", ["gateway", "identity", "auth", "audit"],
            "A deleted user's bindings and memberships were removed.";
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows of the table in `docs/events.md`: name, payload, producer,
    /// consumers.
    fn documented() -> Vec<(String, String, String, Vec<String>)> {
        let doc = include_str!("../docs/events.md");
        doc.lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
                let code = |c: &str| c.trim_matches('`').to_owned();
                let consumers = cells[3]
                    .split(',')
                    .map(|c| code(c.trim()))
                    .filter(|c| !c.is_empty() && c != "none")
                    .collect();
                (code(cells[0]), code(cells[1]), code(cells[2]), consumers)
            })
            .collect()
    }

    #[test]
    fn the_documented_events_are_the_catalogue() {
        let catalogue: Vec<(String, String, String, Vec<String>)> = CATALOGUE
            .iter()
            .map(|e| {
                (
                    e.name.to_owned(),
                    e.payload.to_owned(),
                    e.producer.to_owned(),
                    e.consumers.iter().map(|c| (*c).to_owned()).collect(),
                )
            })
            .collect();
        assert_eq!(documented(), catalogue);
    }

    #[test]
    fn each_name_is_its_producers_and_given_once() {
        let mut names: Vec<&str> = CATALOGUE.iter().map(|e| e.name).collect();
        for e in CATALOGUE {
            assert!(
                e.name.starts_with(&format!("{}.", e.producer)),
                "{}",
                e.name
            );
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CATALOGUE.len());
    }

    #[test]
    fn an_event_reads_its_own_payload_only() {
        let row = auth::SESSION_REVOKED.row(
            "u1",
            &SessionEvent {
                session_id: "s1".into(),
                ..Default::default()
            },
        );
        let envelope = Envelope {
            r#type: row.event_type.into(),
            payload: row.payload,
            ..Default::default()
        };
        let read = auth::SESSION_REVOKED.read(&envelope).unwrap().unwrap();
        assert_eq!(read.session_id, "s1");
        assert!(auth::SESSION_CREATED.read(&envelope).is_none());
    }
}
