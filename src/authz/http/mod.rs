//! Authz's public HTTP API under `/v1/authz`: the admin API for roles
//! (`roles.rs`), groups and their members (`groups.rs`), bindings and
//! resource parents (`bindings.rs`), and the checks mirrored from gRPC
//! (`checks.rs`). Thin handlers: decode, call the service, encode.
//!
//! Every route needs a bearer token. Reads need `authz:read` and writes
//! `authz:write`, both asked of this instance's own policy; a signed-in
//! user may always ask about themself. Every write answers the revision it
//! was written at in the `Gatehouse-Revision` header, for a later check's
//! `at_least_revision`.

mod bindings;
mod checks;
mod groups;
mod roles;

use axum::Router;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa::OpenApi;
use uuid::Uuid;

use super::error::AuthzError;
use super::model::Subject;
use super::service::{Authz, Question};
use crate::kernel::openapi::{BearerScheme, CommonResponses, PermissionResponses};
use crate::middleware::bearer::{self, TokenCheck};
use crate::middleware::token::Principal;

/// The permission every read of the admin API needs.
pub const READ: &str = "authz:read";
/// The permission every write of the admin API needs.
pub const WRITE: &str = "authz:write";
/// The header a write answers its revision in.
pub const REVISION_HEADER: &str = "gatehouse-revision";

/// The description of authz's public HTTP API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "gatehouse authz",
        description = "Roles, groups, bindings and permission checks."
    ),
    paths(
        roles::list,
        roles::create,
        roles::show,
        roles::update,
        roles::remove,
        groups::list,
        groups::create,
        groups::show,
        groups::update,
        groups::remove,
        groups::members,
        groups::add_member,
        groups::remove_member,
        bindings::list,
        bindings::create,
        bindings::show,
        bindings::remove,
        bindings::set_parent,
        bindings::remove_parent,
        checks::check,
        checks::batch_check,
        checks::permissions,
        checks::subjects
    ),
    modifiers(&BearerScheme, &CommonResponses, &PermissionResponses),
    tags((name = "authz", description = "Who may do what"))
)]
pub struct ApiDoc;

/// The public routes, each behind the bearer-token check `check`.
pub fn routes(authz: Authz, check: TokenCheck) -> Router {
    Router::new()
        .merge(roles::routes())
        .merge(groups::routes())
        .merge(bindings::routes())
        .merge(checks::routes())
        .route_layer(axum::middleware::from_fn_with_state(check, bearer::require))
        .with_state(authz)
}

/// Refused with 403 `forbidden` unless the caller holds `permission`.
async fn require(
    authz: &Authz,
    caller: &Principal,
    permission: &'static str,
) -> Result<(), AuthzError> {
    let asked = Question {
        subject: Subject::User(caller.user_id.as_uuid()),
        permission: permission.to_owned(),
        resource: None,
    };
    if authz.check(&asked, 0).await?.0.allowed() {
        Ok(())
    } else {
        Err(AuthzError::Forbidden(permission))
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Rows on a page, 1 to 200 (50 when absent).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the page before.
    #[param(pattern = "^(0[1-9a-fA-F]|[1-9a-fA-F][0-9a-fA-F]){0,512}$")]
    pub cursor: Option<String>,
}

/// `response` with the revision a write answered.
fn written(revision: u64, response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    response
        .headers_mut()
        .insert(REVISION_HEADER, HeaderValue::from(revision));
    response
}

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// An id in a path; one that is not an id names nothing there is.
fn id_in_path(text: &str, what: &str) -> Result<Uuid, AuthzError> {
    Uuid::parse_str(text).map_err(|_| AuthzError::NotFound(format!("{what} {text}")))
}

/// The longest role name.
const MAX_ROLE: usize = 64;

/// A role name: a lower-case letter, then lower-case letters, digits, `_`
/// or `-`.
pub(super) fn role_name(field: &'static str, text: &str) -> Result<(), AuthzError> {
    let mut bytes = text.bytes();
    let valid = text.len() <= MAX_ROLE
        && bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(AuthzError::Field {
            field,
            message: "a lower-case letter, then lower-case letters, digits, _ or - (at most 64)"
                .into(),
        })
    }
}

/// Whether `text` is at most `max` characters with no control characters.
fn check_text(field: &'static str, text: &str, min: usize, max: usize) -> Result<(), AuthzError> {
    let length = text.chars().count();
    if length < min || length > max || text.chars().any(char::is_control) {
        return Err(AuthzError::Field {
            field,
            message: format!("{min} to {max} characters, no control characters"),
        });
    }
    Ok(())
}
