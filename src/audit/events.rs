//! From the bus to the log: what an entry says about an event.
//!
//! - `action` is the event's type (`identity.user.registered`).
//! - `actor` is the signed-in user whose request caused it (`user:<id>`),
//!   `anonymous` for a request nobody was signed in for, or
//!   `service:<name>` for a service's own work (a session ended because
//!   the password changed, say).
//! - `subject` names what it happened to, by kind: `user:<id>`,
//!   `session:<id>`, `role:<name>`, `group:<id>`, `binding:<id>`, or a
//!   resource (`type:id`).
//! - `outcome` is `failure` for an attempt that was refused (a login with
//!   a wrong password, a refresh token used twice), else `success`.
//! - `details` holds the payload's fields that are set, as JSON. Payloads
//!   never carry secrets, so neither do entries.

use chrono::{DateTime, Utc};
use prost::Message as _;
use serde_json::{Map, Value, json};

use super::model::NewEntry;
use crate::kernel::bus::Envelope;
use crate::proto::events::v1::{KeyEvent, OidcEvent, PolicyEvent, SessionEvent, UserEvent};

/// The entry recording `event`.
pub fn entry(event: &Envelope) -> NewEntry {
    let at = DateTime::<Utc>::from_timestamp_millis(event.occurred_at_unix_ms).unwrap_or_default();
    let actor = if !event.actor.is_empty() {
        event.actor.clone()
    } else if !event.request_id.is_empty() {
        "anonymous".to_owned()
    } else {
        format!("service:{}", event.source)
    };
    NewEntry {
        event_id: Some(event.id.clone()),
        at,
        actor,
        action: event.r#type.clone(),
        subject: subject(event),
        outcome: outcome(&event.r#type).to_owned(),
        client_ip: event.client_ip.clone(),
        request_id: event.request_id.clone(),
        trace_id: event.trace_id.clone(),
        details: details(event).to_string(),
    }
}

/// What the event happened to, by kind.
fn subject(event: &Envelope) -> String {
    let mut parts = event.r#type.split('.');
    let kind = match (parts.next(), parts.next()) {
        (Some("identity"), _) => "user",
        // Auth orders a user's sessions' events by the user: the session
        // is in the payload.
        (Some("auth"), Some("session")) => {
            let session = SessionEvent::decode(&event.payload[..]).unwrap_or_default();
            return format!("session:{}", session.session_id);
        }
        (Some("auth"), Some("key")) => "key",
        (Some("auth"), Some("oidc")) => "client",
        (Some("authz"), Some("member")) => "group",
        (Some("authz"), Some("subject")) => "user",
        // A resource's parent: the subject names its type already.
        (Some("authz"), Some("parent")) => return event.subject.clone(),
        (_, Some(kind)) => kind,
        _ => "entity",
    };
    format!("{kind}:{}", event.subject)
}

fn outcome(action: &str) -> &'static str {
    if action.ends_with(".failed") || action.ends_with(".reuse_detected") {
        "failure"
    } else {
        "success"
    }
}

/// The payload's fields that are set.
fn details(event: &Envelope) -> Value {
    let payload = &event.payload[..];
    let decoded = match event.r#type.split('.').take(2).collect::<Vec<_>>()[..] {
        ["identity", _] => UserEvent::decode(payload).map(|p| {
            fields([
                ("user_id", json!(p.user_id)),
                ("email", json!(p.email)),
                ("display_name", json!(p.display_name)),
                ("status", json!(p.status)),
                ("locked_until", millis(p.locked_until_unix_ms)),
                ("session_id", json!(p.session_id)),
            ])
        }),
        ["auth", "session"] => SessionEvent::decode(payload).map(|p| {
            fields([
                ("session_id", json!(p.session_id)),
                ("user_id", json!(p.user_id)),
                ("client_id", json!(p.client_id)),
                ("reason", json!(p.reason)),
                ("tokens_expire_by", millis(p.tokens_expire_by_unix_ms)),
            ])
        }),
        ["auth", "key"] => KeyEvent::decode(payload).map(|p| {
            fields([
                ("key_id", json!(p.key_id)),
                ("signs_from", millis(p.signs_from_unix_ms)),
            ])
        }),
        ["auth", "oidc"] => OidcEvent::decode(payload).map(|p| {
            fields([
                ("client_id", json!(p.client_id)),
                ("user_id", json!(p.user_id)),
                ("session_id", json!(p.session_id)),
                ("scope", json!(p.scope)),
                ("grant", json!(p.grant)),
            ])
        }),
        ["authz", _] => PolicyEvent::decode(payload).map(|p| {
            fields([
                ("revision", json!(p.revision)),
                ("target", json!(p.target)),
                ("subject", json!(p.subject)),
                ("role", json!(p.role)),
                ("scope", json!(p.scope)),
                ("user_ids", json!(p.user_ids)),
            ])
        }),
        _ => return json!({ "payload_bytes": payload.len() }),
    };
    decoded.unwrap_or_else(|_| json!({ "unreadable_payload_bytes": payload.len() }))
}

/// A JSON time, or nothing for zero.
fn millis(at: i64) -> Value {
    match DateTime::<Utc>::from_timestamp_millis(at) {
        Some(at) if at.timestamp_millis() != 0 => {
            json!(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        }
        _ => Value::Null,
    }
}

/// An object of the fields that hold something.
fn fields<const N: usize>(all: [(&str, Value); N]) -> Value {
    let set = all.into_iter().filter(|(_, v)| match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Number(n) => n.as_u64() != Some(0),
        _ => true,
    });
    Value::Object(set.map(|(k, v)| (k.to_owned(), v)).collect::<Map<_, _>>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{auth, authz, identity};

    fn event(kind: &str, subject: &str, payload: Vec<u8>) -> Envelope {
        Envelope {
            id: "e1".into(),
            r#type: kind.into(),
            source: kind.split('.').next().unwrap_or_default().into(),
            subject: subject.into(),
            occurred_at_unix_ms: 1_700_000_000_123,
            payload,
            ..Envelope::default()
        }
    }

    #[test]
    fn an_entry_names_actor_subject_outcome_and_the_set_fields() {
        let mut registered = event(
            identity::USER_REGISTERED.name,
            "u1",
            UserEvent {
                user_id: "u1".into(),
                email: "ann@example.org".into(),
                ..UserEvent::default()
            }
            .encode_to_vec(),
        );
        registered.request_id = "r1".into();
        registered.client_ip = "203.0.113.9".into();
        let entry = entry(&registered);
        assert_eq!(entry.event_id.as_deref(), Some("e1"));
        assert_eq!(entry.actor, "anonymous");
        assert_eq!(entry.subject, "user:u1");
        assert_eq!(entry.outcome, "success");
        assert_eq!(entry.client_ip, "203.0.113.9");
        assert_eq!(entry.at.timestamp_millis(), 1_700_000_000_123);
        assert_eq!(
            serde_json::from_str::<Value>(&entry.details).unwrap(),
            json!({"user_id": "u1", "email": "ann@example.org"})
        );

        let mut failed = event(identity::LOGIN_FAILED.name, "u1", vec![]);
        failed.actor = "user:u1".into();
        let failed = super::entry(&failed);
        assert_eq!(
            (failed.actor.as_str(), failed.outcome.as_str()),
            ("user:u1", "failure")
        );

        let session = SessionEvent {
            session_id: "s1".into(),
            user_id: "u1".into(),
            ..SessionEvent::default()
        };
        let revoked = super::entry(&event(
            auth::SESSION_REVOKED.name,
            "u1",
            session.encode_to_vec(),
        ));
        assert_eq!(
            revoked.actor, "service:auth",
            "no request: the service's own work"
        );
        assert_eq!(revoked.subject, "session:s1");

        let parent = super::entry(&event(authz::PARENT_SET.name, "docs:1", vec![]));
        assert_eq!(parent.subject, "docs:1");
    }

    #[test]
    fn a_payload_that_does_not_decode_is_recorded_as_such() {
        let broken = super::entry(&event(authz::ROLE_CREATED.name, "r", vec![0xff, 0xff]));
        assert_eq!(
            serde_json::from_str::<Value>(&broken.details).unwrap(),
            json!({"unreadable_payload_bytes": 2})
        );
    }
}
