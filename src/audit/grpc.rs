//! Audit's internal gRPC API: `Record`, for a service that must know its
//! change is on the log before it answers. The entries are checked whole
//! before any is appended: one at fault refuses the call, naming it.

use chrono::{DateTime, Utc};
use tonic::{Request, Response, Status};

use super::model::NewEntry;
use super::service::Audit;
use crate::proto::audit::v1 as pb;
use crate::proto::audit::v1::audit_server::{Audit as AuditApi, AuditServer};

/// Most entries one call records.
const MAX_ENTRIES: usize = 100;
/// The longest details, in bytes of JSON.
const MAX_DETAILS: usize = 16 * 1024;

pub struct Grpc {
    audit: Audit,
}

pub fn server(audit: Audit) -> AuditServer<Grpc> {
    AuditServer::new(Grpc { audit })
}

#[tonic::async_trait]
impl AuditApi for Grpc {
    async fn record(
        &self,
        request: Request<pb::RecordRequest>,
    ) -> Result<Response<pb::RecordResponse>, Status> {
        let given = request.into_inner().entries;
        if given.is_empty() || given.len() > MAX_ENTRIES {
            return Err(invalid(format!("entries: 1 to {MAX_ENTRIES}")));
        }
        let now = self.audit.now();
        let entries = given
            .into_iter()
            .enumerate()
            .map(|(n, e)| {
                entry(e, now)
                    .map_err(|(field, why)| invalid(format!("entries[{n}].{field}: {why}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let appended = self
            .audit
            .record_entries(entries.clone())
            .await
            .map_err(|e| e.to_status())?;
        // Appended entries come in the order given, without those passed over.
        let mut appended = appended.iter().peekable();
        let seqs = entries
            .iter()
            .map(|e| match appended.peek() {
                Some(a) if a.fields.event_id == e.event_id => appended.next().map_or(0, |a| a.seq),
                _ => 0,
            })
            .collect();
        Ok(Response::new(pb::RecordResponse { seqs }))
    }
}

/// The entry `e` asks for, or the field at fault and why.
fn entry(e: pb::Entry, now: DateTime<Utc>) -> Result<NewEntry, (&'static str, &'static str)> {
    let plain =
        |text: &str, max: usize| text.chars().count() <= max && !text.chars().any(char::is_control);
    let action_ok = e.action.len() <= 128
        && e.action.starts_with(|c: char| c.is_ascii_lowercase())
        && e.action.contains('.')
        && e.action
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
    if !action_ok {
        return Err(("action", "dotted lower-case words, at most 128 characters"));
    }
    if e.actor.is_empty() || !plain(&e.actor, 256) {
        return Err(("actor", "1 to 256 characters, no control characters"));
    }
    if !plain(&e.subject, 256) {
        return Err(("subject", "at most 256 characters, no control characters"));
    }
    if e.outcome != "success" && e.outcome != "failure" {
        return Err(("outcome", "success or failure"));
    }
    if !e.client_ip.is_empty() && e.client_ip.parse::<std::net::IpAddr>().is_err() {
        return Err(("client_ip", "an IP address, or empty"));
    }
    if !plain(&e.request_id, 128) {
        return Err((
            "request_id",
            "at most 128 characters, no control characters",
        ));
    }
    if !plain(&e.event_id, 128) {
        return Err(("event_id", "at most 128 characters, no control characters"));
    }
    let hex = e.trace_id.len() == 32
        && e.trace_id
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !e.trace_id.is_empty() && !hex {
        return Err(("trace_id", "32 lower-case hex digits, or empty"));
    }
    let details = if e.details_json.is_empty() {
        serde_json::Value::Object(serde_json::Map::new())
    } else {
        match serde_json::from_str::<serde_json::Value>(&e.details_json) {
            Ok(v @ serde_json::Value::Object(_)) if e.details_json.len() <= MAX_DETAILS => v,
            _ => return Err(("details_json", "a JSON object of at most 16 KiB")),
        }
    };
    let at = if e.at_unix_ms == 0 {
        now
    } else {
        DateTime::<Utc>::from_timestamp_millis(e.at_unix_ms)
            .ok_or(("at_unix_ms", "out of range"))?
    };
    Ok(NewEntry {
        event_id: (!e.event_id.is_empty()).then_some(e.event_id),
        at,
        actor: e.actor,
        action: e.action,
        subject: e.subject,
        outcome: e.outcome,
        client_ip: e.client_ip,
        request_id: e.request_id,
        trace_id: e.trace_id,
        details: details.to_string(),
    })
}

/// A refused request, with the stable code HTTP gives it.
fn invalid(message: String) -> Status {
    crate::kernel::error::grpc_status(tonic::Code::InvalidArgument, "validation_failed", message)
}
