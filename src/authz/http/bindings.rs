//! `/v1/authz/bindings`: a subject holding a role at a scope (`*`, a
//! resource type, or one resource `type:id`), possibly until a time; and
//! `/v1/authz/parents`: a resource registered under another, whose
//! bindings then cover it.

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::groups::subject;
use super::{READ, WRITE, id_in_path, require, role_name, time, written};
use crate::authz::error::AuthzError;
use crate::authz::model::{Binding, Resource, Scope};
use crate::authz::service::Authz;
use crate::authz::store::{self, BindingFilter, scope_text, subject_text};
use crate::kernel::error::{ApiJson, ApiQuery, Problem};
use crate::kernel::paging::{Page, PageRequest};
use crate::middleware::names::is_resource_type;
use crate::middleware::token::Principal;

pub fn routes() -> Router<Authz> {
    Router::new()
        .route("/v1/authz/bindings", get(list).post(create))
        .route("/v1/authz/bindings/{id}", get(show).delete(remove))
        .route("/v1/authz/parents", post(set_parent).delete(remove_parent))
}

/// A binding as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct BindingView {
    #[schema(format = Uuid)]
    id: String,
    /// `user:<id>`, `group:<id>` or `client:<id>`.
    subject: String,
    role: String,
    /// `*` (everywhere), a resource type, or one resource `type:id`.
    scope: String,
    #[schema(format = DateTime)]
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
}

fn view((binding, created_at): &(Binding, DateTime<Utc>)) -> BindingView {
    BindingView {
        id: binding.id.to_string(),
        subject: subject_text(binding.subject),
        role: binding.role.clone(),
        scope: scope_text(&binding.scope),
        expires_at: binding.expires_at.map(time),
        created_at: time(*created_at),
    }
}

/// `*`, a resource type, or `type:id`.
fn scope(text: &str) -> Result<Scope, AuthzError> {
    if text == "*" {
        return Ok(Scope::Everywhere);
    }
    if text.contains(':') {
        return Ok(Scope::Resource(Resource::parse(text)?));
    }
    if is_resource_type(text) {
        return Ok(Scope::Type(text.to_owned()));
    }
    Err(AuthzError::Field {
        field: "scope",
        message: "`*`, a resource type, or `type:id`".into(),
    })
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only the bindings of this subject: `user:<id>`, `group:<id>` or
    /// `client:<id>`.
    #[param(
        pattern = r"^(user|group|client):[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    subject: Option<String>,
    /// Only the bindings of this role.
    #[param(pattern = r"^[a-z][a-z0-9_-]{0,63}$")]
    role: Option<String>,
    /// Rows on a page, 1 to 200 (50 when absent).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// The `next_cursor` of the page before.
    #[param(pattern = "^(0[1-9a-fA-F]|[1-9a-fA-F][0-9a-fA-F]){0,512}$")]
    cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/authz/bindings",
    tag = "authz",
    security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page of bindings, oldest first", body = Page<BindingView>),
        (status = 422, description = "A query parameter is not valid", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(authz): State<Authz>,
    Extension(caller): Extension<Principal>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<BindingView>>, AuthzError> {
    require(&authz, &caller, READ).await?;
    let page = PageRequest::new(query.limit, query.cursor.as_deref())?;
    let after = page.after.clone();
    let filter = BindingFilter {
        subject: query
            .subject
            .as_deref()
            .map(|s| subject("subject", s))
            .transpose()?,
        role: query
            .role
            .map(|r| role_name("role", &r).map(|()| r))
            .transpose()?,
    };
    let fetch = page.fetch();
    let rows = authz
        .read(move |conn| store::list_bindings(conn, &filter, after, fetch))
        .await?;
    Ok(Json(page.page(rows, |(b, _)| b.id.to_string(), view)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBinding {
    /// `user:<id>`, `group:<id>` or `client:<id>` (a client acting for
    /// itself, with its own token from the client credentials grant).
    #[schema(
        pattern = r"^(user|group|client):[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    subject: String,
    #[schema(pattern = r"^[a-z][a-z0-9_-]{0,63}$")]
    role: String,
    /// `*` (everywhere, the default), a resource type, or `type:id`.
    #[schema(
        pattern = r"^(\*|[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*|[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*:[!-~]+)$",
        max_length = 128
    )]
    #[serde(default = "everywhere")]
    scope: String,
    /// When the binding ends; it holds for good without one.
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<DateTime<Utc>>,
}

fn everywhere() -> String {
    "*".into()
}

#[utoipa::path(
    post,
    path = "/v1/authz/bindings",
    tag = "authz",
    security(("bearer" = [])),
    request_body = NewBinding,
    responses(
        (status = 201, description = "The new binding", body = BindingView, headers(
            ("gatehouse-revision" = u64, description = "The revision of the write"),
            ("location" = String, description = "Where the binding lives"),
        )),
        (status = 404, description = "No such role, or no such group", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(authz): State<Authz>,
    Extension(caller): Extension<Principal>,
    ApiJson(body): ApiJson<NewBinding>,
) -> Result<axum::response::Response, AuthzError> {
    require(&authz, &caller, WRITE).await?;
    role_name("role", &body.role)?;
    let binding = Binding {
        id: Uuid::now_v7(),
        subject: subject("subject", &body.subject)?,
        role: body.role,
        scope: scope(&body.scope)?,
        expires_at: body.expires_at,
    };
    let id = binding.id;
    let revision = authz.bind(Some(caller.user_id.as_uuid()), binding).await?;
    let row = authz.read(move |conn| store::binding(conn, id)).await?;
    Ok(written(
        revision,
        (
            StatusCode::CREATED,
            [(header::LOCATION, format!("/v1/authz/bindings/{id}"))],
            Json(view(&row)),
        ),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/authz/bindings/{id}",
    tag = "authz",
    security(("bearer" = [])),
    params(("id" = String, Path, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The binding's id")),
    responses(
        (status = 200, description = "The binding", body = BindingView),
        (status = 404, description = "No such binding", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn show(
    State(authz): State<Authz>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<BindingView>, AuthzError> {
    require(&authz, &caller, READ).await?;
    let id = id_in_path(&id, "binding")?;
    let row = authz.read(move |conn| store::binding(conn, id)).await?;
    Ok(Json(view(&row)))
}

#[utoipa::path(
    delete,
    path = "/v1/authz/bindings/{id}",
    tag = "authz",
    security(("bearer" = [])),
    params(("id" = String, Path, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The binding's id")),
    responses(
        (status = 204, description = "The binding is gone", headers(
            ("gatehouse-revision" = u64, description = "The revision of the write"),
        )),
        (status = 404, description = "No such binding", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn remove(
    State(authz): State<Authz>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<axum::response::Response, AuthzError> {
    require(&authz, &caller, WRITE).await?;
    let id = id_in_path(&id, "binding")?;
    let revision = authz.unbind(Some(caller.user_id.as_uuid()), id).await?;
    Ok(written(revision, StatusCode::NO_CONTENT))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewParent {
    /// The resource, `type:id`.
    #[schema(
        pattern = r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*:[!-~]+$",
        max_length = 128
    )]
    child: String,
    /// The resource it lies under, `type:id`.
    #[schema(
        pattern = r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*:[!-~]+$",
        max_length = 128
    )]
    parent: String,
}

#[utoipa::path(
    post,
    path = "/v1/authz/parents",
    tag = "authz",
    security(("bearer" = [])),
    request_body = NewParent,
    responses(
        (status = 204, description = "The child lies under the parent, in place of any parent it had", headers(
            ("gatehouse-revision" = u64, description = "The revision of the write"),
        )),
        (status = 409, description = "The chain of parents would run in a circle (`parent_cycle`) or be too long (`too_deep`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn set_parent(
    State(authz): State<Authz>,
    Extension(caller): Extension<Principal>,
    ApiJson(body): ApiJson<NewParent>,
) -> Result<axum::response::Response, AuthzError> {
    require(&authz, &caller, WRITE).await?;
    let revision = authz
        .set_parent(Some(caller.user_id.as_uuid()), &body.child, &body.parent)
        .await?;
    Ok(written(revision, StatusCode::NO_CONTENT))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ParentQuery {
    /// The resource to take from under its parent, `type:id`.
    #[param(
        pattern = r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*:[!-~]+$",
        max_length = 128
    )]
    child: String,
}

#[utoipa::path(
    delete,
    path = "/v1/authz/parents",
    tag = "authz",
    security(("bearer" = [])),
    params(ParentQuery),
    responses(
        (status = 204, description = "The resource lies under no parent", headers(
            ("gatehouse-revision" = u64, description = "The revision of the write"),
        )),
        (status = 404, description = "The resource had no parent", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The resource is not `type:id`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn remove_parent(
    State(authz): State<Authz>,
    Extension(caller): Extension<Principal>,
    ApiQuery(query): ApiQuery<ParentQuery>,
) -> Result<axum::response::Response, AuthzError> {
    require(&authz, &caller, WRITE).await?;
    let revision = authz
        .remove_parent(Some(caller.user_id.as_uuid()), &query.child)
        .await?;
    Ok(written(revision, StatusCode::NO_CONTENT))
}
