//! Audit's public HTTP API under `/v1/audit`: the entries, a page at a
//! time or all at once as NDJSON, and the verification of the whole chain.
//! Every route needs a bearer token and `audit:read`, which audit asks
//! authz for over gRPC (through [`Permits`]).

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::error::AuditError;
use super::model::Entry;
use super::service::Audit;
use super::store::Filter;
use crate::kernel::error::ApiQuery;
use crate::kernel::openapi::{BearerScheme, CommonResponses, PermissionResponses};
use crate::kernel::paging::{Page, PageRequest};
use crate::middleware::bearer::{self, TokenCheck};
use crate::middleware::permit::Permits;
use crate::middleware::token::Principal;

/// The permission every route needs.
pub const READ: &str = "audit:read";
/// Entries an export reads at a time.
const EXPORT_PAGE: i64 = 500;
/// The longest filter value.
const MAX_FILTER: usize = 256;

/// The description of audit's public HTTP API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "gatehouse audit",
        description = "The tamper-evident log of what happened on the platform."
    ),
    paths(list, export, verify),
    modifiers(&BearerScheme, &CommonResponses, &PermissionResponses),
    tags((name = "audit", description = "Who did what, when, from where"))
)]
pub struct ApiDoc;

#[derive(Clone)]
struct Api {
    audit: Audit,
    permits: Permits,
}

/// The public routes, behind the bearer-token check `check`.
pub fn routes(audit: Audit, permits: Permits, check: TokenCheck) -> Router {
    Router::new()
        .route("/v1/audit/events", get(list))
        .route("/v1/audit/events/export", get(export))
        .route("/v1/audit/verify", get(verify))
        .route_layer(axum::middleware::from_fn_with_state(check, bearer::require))
        .with_state(Api { audit, permits })
}

impl Api {
    /// Refused with 403 unless the caller may read the log.
    async fn require(&self, caller: &Principal) -> Result<(), AuditError> {
        if self.permits.allowed(caller.user_id, READ, None).await? {
            Ok(())
        } else {
            Err(AuditError::Forbidden(READ))
        }
    }
}

/// One entry of the log.
#[derive(Debug, Serialize, ToSchema)]
pub struct EntryView {
    /// Its place in the chain: 1 for the first entry.
    seq: i64,
    id: String,
    #[schema(format = DateTime)]
    at: String,
    /// `user:<id>`, `anonymous`, or `service:<name>`.
    actor: String,
    /// What happened: the event's type, e.g. `identity.user.registered`.
    action: String,
    /// What it happened to, e.g. `user:<id>` or `session:<id>`.
    subject: String,
    /// `success` or `failure`.
    outcome: String,
    client_ip: String,
    request_id: String,
    trace_id: String,
    /// The event's fields that were set; never secrets.
    #[schema(value_type = std::collections::HashMap<String, serde_json::Value>)]
    details: serde_json::Value,
    /// SHA-256 over `prev_hash` and the entry's canonical form.
    hash: String,
    prev_hash: String,
}

impl From<&Entry> for EntryView {
    fn from(e: &Entry) -> Self {
        let f = &e.fields;
        Self {
            seq: e.seq,
            id: e.id.to_string(),
            at: f.at.to_rfc3339_opts(SecondsFormat::Micros, true),
            actor: f.actor.clone(),
            action: f.action.clone(),
            subject: f.subject.clone(),
            outcome: f.outcome.clone(),
            client_ip: f.client_ip.clone(),
            request_id: f.request_id.clone(),
            trace_id: f.trace_id.clone(),
            details: serde_json::from_str(&f.details).unwrap_or_default(),
            hash: e.hash.clone(),
            prev_hash: e.prev_hash.clone(),
        }
    }
}

/// Which entries to show; every filter given must match.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FilterQuery {
    /// `user:<id>`, `anonymous` or `service:<name>`.
    #[param(max_length = 256, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    actor: Option<String>,
    /// An event type, e.g. `auth.session.created`.
    #[param(max_length = 256, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    action: Option<String>,
    #[param(max_length = 256, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    subject: Option<String>,
    /// Entries made at or after this time.
    #[param(value_type = Option<String>, format = DateTime)]
    from: Option<DateTime<Utc>>,
    /// Entries made before this time.
    #[param(value_type = Option<String>, format = DateTime)]
    until: Option<DateTime<Utc>>,
}

impl FilterQuery {
    fn filter(self) -> Result<Filter, AuditError> {
        for (field, value) in [
            ("actor", &self.actor),
            ("action", &self.action),
            ("subject", &self.subject),
        ] {
            if value
                .as_ref()
                .is_some_and(|v| v.chars().count() > MAX_FILTER || v.chars().any(char::is_control))
            {
                return Err(AuditError::Invalid {
                    field,
                    message: "at most 256 characters, no control characters".into(),
                });
            }
        }
        Ok(Filter {
            actor: self.actor,
            action: self.action,
            subject: self.subject,
            from: self.from,
            until: self.until,
        })
    }
}

/// [`FilterQuery`] and the page asked for: one flat struct, as query
/// strings carry no nesting.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `user:<id>`, `anonymous` or `service:<name>`.
    #[param(max_length = 256, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    actor: Option<String>,
    /// An event type, e.g. `auth.session.created`.
    #[param(max_length = 256, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    action: Option<String>,
    #[param(max_length = 256, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    subject: Option<String>,
    /// Entries made at or after this time.
    #[param(value_type = Option<String>, format = DateTime)]
    from: Option<DateTime<Utc>>,
    /// Entries made before this time.
    #[param(value_type = Option<String>, format = DateTime)]
    until: Option<DateTime<Utc>>,
    /// Entries on a page, 1 to 200 (50 when absent).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// The `next_cursor` of the page before.
    #[param(pattern = "^(0[1-9a-fA-F]|[1-9a-fA-F][0-9a-fA-F]){0,512}$")]
    cursor: Option<String>,
}

/// Where a page starts: after the entry its cursor names.
fn after(page: &PageRequest) -> Result<i64, AuditError> {
    page.after.as_deref().map_or(Ok(0), |seq| {
        seq.parse().map_err(|_| AuditError::Invalid {
            field: "cursor",
            message: "is not a cursor this API gave out".into(),
        })
    })
}

#[utoipa::path(
    get,
    path = "/v1/audit/events",
    tag = "audit",
    security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page of entries, oldest first", body = Page<EntryView>),
        (status = 422, description = "A query parameter is not valid", body = crate::kernel::error::Problem, content_type = "application/problem+json"),
    )
)]
async fn list(
    State(api): State<Api>,
    Extension(caller): Extension<Principal>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<EntryView>>, AuditError> {
    api.require(&caller).await?;
    let page = PageRequest::new(query.limit, query.cursor.as_deref())?;
    let filter = FilterQuery {
        actor: query.actor,
        action: query.action,
        subject: query.subject,
        from: query.from,
        until: query.until,
    }
    .filter()?;
    let entries = api.audit.list(filter, after(&page)?, page.fetch()).await?;
    Ok(Json(page.page(
        entries,
        |e| e.seq.to_string(),
        |e| EntryView::from(e),
    )))
}

#[utoipa::path(
    get,
    path = "/v1/audit/events/export",
    tag = "audit",
    security(("bearer" = [])),
    params(FilterQuery),
    responses(
        (status = 200, description = "Every entry the filters let through, oldest first, one JSON object (an entry as the listing shows it) per line", content_type = "application/x-ndjson", body = String),
        (status = 422, description = "A query parameter is not valid", body = crate::kernel::error::Problem, content_type = "application/problem+json"),
    )
)]
async fn export(
    State(api): State<Api>,
    Extension(caller): Extension<Principal>,
    ApiQuery(query): ApiQuery<FilterQuery>,
) -> Result<Response, AuditError> {
    api.require(&caller).await?;
    let filter = query.filter()?;
    // The first page is read before answering, so a database that is away
    // is a 503 rather than a cut-off body.
    let first = api.audit.list(filter.clone(), 0, EXPORT_PAGE).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let audit = api.audit.clone();
    tokio::spawn(async move {
        let mut page = first;
        loop {
            let Some(last) = page.last().map(|e| e.seq) else {
                return;
            };
            if tx.send(Ok(lines(&page))).await.is_err() {
                return;
            }
            if i64::try_from(page.len()).unwrap_or_default() < EXPORT_PAGE {
                return;
            }
            page = match audit.list(filter.clone(), last, EXPORT_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "audit export cut off");
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            };
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response())
}

/// `entries` as NDJSON lines. JSON lets U+2028 and U+2029 stand raw in a
/// string, but readers that split on every line break would cut a record
/// there: they are written escaped, so each record is one line to any reader.
fn lines(entries: &[Entry]) -> Bytes {
    let mut out = String::new();
    for entry in entries {
        // An entry view always serialises.
        if let Ok(line) = serde_json::to_string(&EntryView::from(entry)) {
            out.push_str(
                &line
                    .replace('\u{2028}', "\\u2028")
                    .replace('\u{2029}', "\\u2029"),
            );
            out.push('\n');
        }
    }
    Bytes::from(out)
}

/// What verifying the chain found.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyView {
    /// Whether every entry is as it was written and none is missing or
    /// added.
    holds: bool,
    /// How many entries were checked, when it holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    entries_verified: Option<u64>,
    /// The first entry that does not hold, when one does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    finding: Option<FindingView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FindingView {
    /// The entry's place in the chain.
    entry: i64,
    /// `altered`, `deleted`, `inserted`, `forged` (an entry whose MAC does not hold) or
    /// `forged_checkpoint`.
    kind: &'static str,
}

#[utoipa::path(
    get,
    path = "/v1/audit/verify",
    tag = "audit",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Whether the chain holds, or the first entry that does not", body = VerifyView),
    )
)]
async fn verify(
    State(api): State<Api>,
    Extension(caller): Extension<Principal>,
) -> Result<Json<VerifyView>, AuditError> {
    api.require(&caller).await?;
    Ok(Json(match api.audit.verify().await? {
        Ok(count) => VerifyView {
            holds: true,
            entries_verified: Some(count),
            finding: None,
        },
        Err(finding) => VerifyView {
            holds: false,
            entries_verified: None,
            finding: Some(FindingView {
                entry: finding.seq(),
                kind: finding.kind(),
            }),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::model::NewEntry;

    #[test]
    fn an_export_line_is_one_line_whatever_its_text_holds() {
        let fields = NewEntry {
            event_id: None,
            at: chrono::Utc::now(),
            actor: "anonymous".into(),
            action: crate::events::authz::ROLE_CREATED.name.into(),
            subject: "role:x".into(),
            outcome: "success".into(),
            client_ip: "127.0.0.1".into(),
            request_id: "r".into(),
            trace_id: "t".into(),
            details: serde_json::json!({"description": "one\u{2028}two\u{2029}three\nfour"})
                .to_string(),
        };
        let entry = Entry::chain(1, uuid::Uuid::now_v7(), fields, "");
        let out = lines(&[entry.clone(), entry]);
        let text = std::str::from_utf8(&out).unwrap();
        for separator in ['\n', '\r', '\u{2028}', '\u{2029}', '\u{85}'] {
            assert_eq!(
                text.matches(separator).count(),
                if separator == '\n' { 2 } else { 0 },
                "{separator:?}"
            );
        }
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(
            first["details"]["description"],
            "one\u{2028}two\u{2029}three\nfour"
        );
    }
}
