//! `/v1/authz/roles`: roles, each a name, a description and a set of
//! permissions. The built-in roles cannot be deleted, nor `admin`'s
//! permissions changed; a role still bound is deleted only with
//! `?force=true`, which deletes its bindings with it.

use std::collections::BTreeSet;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ListQuery, READ, WRITE, check_text, require, role_name, time, written};
use crate::authz::error::AuthzError;
use crate::authz::model::{Permission, Role};
use crate::authz::service::Authz;
use crate::authz::store::{self, RoleRow};
use crate::kernel::error::{ApiJson, ApiQuery};
use crate::kernel::paging::{Page, PageRequest};
use crate::middleware::token::Principal;

pub fn routes() -> Router<Authz> {
    Router::new()
        .route("/v1/authz/roles", get(list).post(create))
        .route(
            "/v1/authz/roles/{name}",
            get(show).patch(update).delete(remove),
        )
}

/// The most permissions a role holds.
const MAX_PERMISSIONS: usize = 100;

/// A role as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoleView {
    name: String,
    description: String,
    permissions: Vec<String>,
    /// Made at the first start; never deleted.
    builtin: bool,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
}

impl From<&RoleRow> for RoleView {
    fn from(r: &RoleRow) -> Self {
        Self {
            name: r.name.clone(),
            description: r.description.clone(),
            permissions: r.permissions.iter().map(ToString::to_string).collect(),
            builtin: r.builtin,
            created_at: time(r.created_at),
            updated_at: time(r.updated_at),
        }
    }
}

/// A permission a role holds: `resource_type:action`, `resource_type:*`
/// or `*`.
#[derive(Deserialize)]
pub struct PermissionText(String);

impl utoipa::PartialSchema for PermissionText {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(
                r"^(\*|[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*:(\*|[a-z][a-z0-9_-]*))$",
            ))
            .max_length(Some(crate::authz::model::MAX_NAME))
            .into()
    }
}

impl ToSchema for PermissionText {}

/// A name in a path that no role can have names none there is.
fn known(name: &str) -> Result<(), AuthzError> {
    role_name("name", name).map_err(|_| AuthzError::NotFound(format!("role {name}")))
}

fn permissions(texts: &[PermissionText]) -> Result<BTreeSet<Permission>, AuthzError> {
    if texts.len() > MAX_PERMISSIONS {
        return Err(AuthzError::Field {
            field: "permissions",
            message: format!("at most {MAX_PERMISSIONS}"),
        });
    }
    Ok(texts
        .iter()
        .map(|t| Permission::parse(&t.0))
        .collect::<Result<_, _>>()?)
}

#[utoipa::path(
    get,
    path = "/v1/authz/roles",
    tag = "authz",
    security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page of roles, by name", body = Page<RoleView>),
        (status = 422, description = "A query parameter is not valid", body = crate::kernel::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(authz): State<Authz>,
    Extension(caller): Extension<Principal>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<RoleView>>, AuthzError> {
    require(&authz, &caller, READ).await?;
    let page = PageRequest::new(query.limit, query.cursor.as_deref())?;
    let (after, fetch) = (page.after.clone(), page.fetch());
    let rows = authz
        .read(move |conn| store::list_roles(conn, after.as_deref(), fetch))
        .await?;
    Ok(Json(page.page(
        rows,
        |r| r.name.clone(),
        |r| RoleView::from(r),
    )))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRole {
    #[schema(pattern = r"^[a-z][a-z0-9_-]{0,63}$")]
    name: String,
    #[schema(max_length = 500, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    #[serde(default)]
    description: String,
    /// `resource_type:action`, `resource_type:*` or `*`.
    #[schema(max_items = 100)]
    #[serde(default)]
    permissions: Vec<PermissionText>,
}

#[utoipa::path(
    post,
    path = "/v1/authz/roles",
    tag = "authz",
    security(("bearer" = [])),
    request_body = NewRole,
    responses(
        (status = 201, description = "The new role, at `/v1/authz/roles/{name}`", body = RoleView, headers(
            ("gatehouse-revision" = u64, description = "The revision of the write"),
        )),
        (status = 409, description = "A role of that name exists (`already_exists`)", body = crate::kernel::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(authz): State<Authz>,
    Extension(caller): Extension<Principal>,
    ApiJson(body): ApiJson<NewRole>,
) -> Result<axum::response::Response, AuthzError> {
    require(&authz, &caller, WRITE).await?;
    role_name("name", &body.name)?;
    check_text("description", &body.description, 0, 500)?;
    let role = Role {
        name: body.name.clone(),
        description: body.description,
        permissions: permissions(&body.permissions)?,
        builtin: false,
    };
    let revision = authz
        .create_role(Some(caller.user_id.as_uuid()), role)
        .await?;
    let name = body.name;
    let row = authz.read(move |conn| store::role(conn, &name)).await?;
    Ok(written(
        revision,
        (StatusCode::CREATED, Json(RoleView::from(&row))),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/authz/roles/{name}",
    tag = "authz",
    security(("bearer" = [])),
    params(("name" = String, Path, pattern = r"^[a-z][a-z0-9_-]{0,63}$", description = "The role's name")),
    responses(
        (status = 200, description = "The role", body = RoleView),
        (status = 404, description = "No such role", body = crate::kernel::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn show(
    State(authz): State<Authz>,
    Extension(caller): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<RoleView>, AuthzError> {
    require(&authz, &caller, READ).await?;
    known(&name)?;
    let row = authz.read(move |conn| store::role(conn, &name)).await?;
    Ok(Json(RoleView::from(&row)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleChange {
    #[schema(max_length = 500, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    description: Option<String>,
    /// The role's whole new set of permissions.
    #[schema(max_items = 100)]
    permissions: Option<Vec<PermissionText>>,
}

#[utoipa::path(
    patch,
    path = "/v1/authz/roles/{name}",
    tag = "authz",
    security(("bearer" = [])),
    params(("name" = String, Path, pattern = r"^[a-z][a-z0-9_-]{0,63}$", description = "The role's name")),
    request_body = RoleChange,
    responses(
        (status = 200, description = "The changed role", body = RoleView, headers(
            ("gatehouse-revision" = u64, description = "The revision of the write"),
        )),
        (status = 404, description = "No such role", body = crate::kernel::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`admin`'s permissions stay as they are (`builtin_role`)", body = crate::kernel::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update(
    State(authz): State<Authz>,
    Extension(caller): Extension<Principal>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<RoleChange>,
) -> Result<axum::response::Response, AuthzError> {
    require(&authz, &caller, WRITE).await?;
    known(&name)?;
    if let Some(description) = &body.description {
        check_text("description", description, 0, 500)?;
    }
    let permissions = body.permissions.as_deref().map(permissions).transpose()?;
    let revision = authz
        .update_role(
            Some(caller.user_id.as_uuid()),
            name.clone(),
            body.description,
            permissions,
        )
        .await?;
    let row = authz.read(move |conn| store::role(conn, &name)).await?;
    Ok(written(revision, Json(RoleView::from(&row))))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Delete the role's bindings with it.
    #[serde(default)]
    force: bool,
}

#[utoipa::path(
    delete,
    path = "/v1/authz/roles/{name}",
    tag = "authz",
    security(("bearer" = [])),
    params(("name" = String, Path, pattern = r"^[a-z][a-z0-9_-]{0,63}$", description = "The role's name"), DeleteQuery),
    responses(
        (status = 204, description = "The role is gone, and with `force` its bindings", headers(
            ("gatehouse-revision" = u64, description = "The revision of the write"),
        )),
        (status = 404, description = "No such role", body = crate::kernel::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The role is built in (`builtin_role`), or still bound and `force` was not given (`role_bound`)", body = crate::kernel::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A query parameter is not valid", body = crate::kernel::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn remove(
    State(authz): State<Authz>,
    Extension(caller): Extension<Principal>,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<DeleteQuery>,
) -> Result<axum::response::Response, AuthzError> {
    require(&authz, &caller, WRITE).await?;
    known(&name)?;
    let revision = authz
        .delete_role(Some(caller.user_id.as_uuid()), name, query.force)
        .await?;
    Ok(written(revision, StatusCode::NO_CONTENT))
}
