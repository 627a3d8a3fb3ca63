//! Identity's admin API: other users' accounts, each route guarded by a
//! permission that identity asks authz for over gRPC (through
//! [`Permits`]): `users:read` to list and read, `users:write` to change,
//! disable, enable and send a password reset, `users:delete` to delete.
//! The questions about one account name it as the resource `users:<id>`,
//! so a binding on one account is enough for that account. A caller without
//! the permission gets 403 `forbidden`, naming it. An act on an account
//! (a change, disabling or enabling it, deleting it, sending a reset) also
//! needs every permission the account holds, wherever it holds it: a
//! helpdesk cannot disable or rename root.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::error::IdentityError;
use super::http::{UserView, if_match, with_etag};
use super::model::UserStatus;
use super::service::{Identity, UserId};
use super::store::UserFilter;
use crate::kernel::error::{ApiJson, ApiQuery, Problem};
use crate::kernel::openapi::{BearerScheme, CommonResponses, PermissionResponses};
use crate::kernel::paging::{Page, PageRequest};
use crate::middleware::bearer::{self, TokenCheck};
use crate::middleware::permit::Permits;
use crate::middleware::token::Principal;

pub const READ: &str = "users:read";
pub const WRITE: &str = "users:write";
pub const DELETE: &str = "users:delete";

/// The description of the admin API, merged into identity's document.
#[derive(OpenApi)]
#[openapi(
    paths(list, show, update, remove, disable, enable, password_reset),
    modifiers(&BearerScheme, &CommonResponses, &PermissionResponses)
)]
pub struct AdminDoc;

#[derive(Clone)]
pub struct Admin {
    identity: Identity,
    permits: Permits,
}

/// The admin routes, behind the bearer-token check `check`.
pub fn routes(identity: Identity, permits: Permits, check: TokenCheck) -> Router {
    Router::new()
        .route("/v1/users", get(list))
        .route("/v1/users/{id}", get(show).patch(update).delete(remove))
        .route("/v1/users/{id}/disable", post(disable))
        .route("/v1/users/{id}/enable", post(enable))
        .route("/v1/users/{id}/password-reset", post(password_reset))
        .route_layer(axum::middleware::from_fn_with_state(check, bearer::require))
        .with_state(Admin { identity, permits })
}

impl Admin {
    /// Refused with 403 unless the caller may do `permission` on `user`
    /// (or on users at large without one).
    async fn require(
        &self,
        caller: &Principal,
        permission: &'static str,
        user: Option<UserId>,
    ) -> Result<(), IdentityError> {
        let resource = user.map(|u| format!("users:{u}"));
        if !self
            .permits
            .allowed(caller.user_id, permission, resource.as_deref())
            .await?
        {
            return Err(IdentityError::Forbidden(permission));
        }
        Ok(())
    }

    /// As [`Admin::require`] for an act on `user`'s account (a change, a
    /// status, a deletion, a reset): the caller must also hold every
    /// permission `user` holds, so that no one takes over an account
    /// stronger than their own.
    async fn require_over(
        &self,
        caller: &Principal,
        permission: &'static str,
        user: UserId,
    ) -> Result<(), IdentityError> {
        self.require(caller, permission, Some(user)).await?;
        match self.permits.covers(caller.user_id, user.0).await? {
            None => Ok(()),
            Some((lacking, scope)) => Err(IdentityError::Outranked { lacking, scope }),
        }
    }
}

/// An id in a path; one that is not an id names no user.
fn user_in_path(text: &str) -> Result<UserId, IdentityError> {
    uuid::Uuid::parse_str(text)
        .map(UserId)
        .map_err(|_| IdentityError::NotFound)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only addresses that start with this (case does not matter).
    #[param(max_length = 254, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    email_prefix: Option<String>,
    /// Only users of this status: `active` or `disabled`.
    #[param(pattern = "^(active|disabled)$")]
    status: Option<String>,
    /// Users on a page, 1 to 200 (50 when absent).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// The `next_cursor` of the page before.
    #[param(pattern = "^(0[1-9a-fA-F]|[1-9a-fA-F][0-9a-fA-F]){0,512}$")]
    cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/users",
    tag = "identity",
    security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page of users, in the order they registered", body = Page<UserView>),
        (status = 422, description = "A query parameter is not valid", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list(
    State(admin): State<Admin>,
    Extension(caller): Extension<Principal>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<UserView>>, IdentityError> {
    admin.require(&caller, READ, None).await?;
    let page = PageRequest::new(query.limit, query.cursor.as_deref())?;
    let status = query
        .status
        .as_deref()
        .map(UserStatus::parse)
        .transpose()?
        .map(UserStatus::as_str);
    if query
        .email_prefix
        .as_ref()
        .is_some_and(|p| p.len() > 254 || p.chars().any(char::is_control))
    {
        return Err(IdentityError::invalid(
            "email_prefix",
            "at most 254 bytes, no control characters",
        ));
    }
    let filter = UserFilter {
        email_prefix: query.email_prefix.map(|p| super::model::email_key(&p)),
        status,
    };
    let users = admin
        .identity
        .list_users(filter, page.after.clone(), page.fetch())
        .await?;
    Ok(Json(page.page(
        users,
        |u| u.id.to_string(),
        |u| UserView::from(u),
    )))
}

#[utoipa::path(
    get,
    path = "/v1/users/{id}",
    tag = "identity",
    security(("bearer" = [])),
    params(("id" = String, Path, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The user's id")),
    responses(
        (status = 200, description = "The user", body = UserView, headers(
            ("etag" = String, description = "The user's version"),
        )),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn show(
    State(admin): State<Admin>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, IdentityError> {
    let id = user_in_path(&id)?;
    admin.require(&caller, READ, Some(id)).await?;
    Ok(with_etag(&admin.identity.get_user(id).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AdminProfileBody {
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x1f\x7f-\x9f\s][^\x00-\x1f\x7f-\x9f]*$"
    )]
    display_name: Option<String>,
}

#[utoipa::path(
    patch,
    path = "/v1/users/{id}",
    tag = "identity",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The user's id"),
        ("if-match" = Option<String>, Header, pattern = r#"^(|\*|(W/)?"[0-9]{1,18}")$"#, description = "The ETag last seen (`\"N\"`), or `*`; the change is refused if the user changed since"),
    ),
    request_body = AdminProfileBody,
    responses(
        (status = 200, description = "The changed user", body = UserView, headers(
            ("etag" = String, description = "The user's new version"),
        )),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The user changed since that ETag", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn update(
    State(admin): State<Admin>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    ApiJson(body): ApiJson<AdminProfileBody>,
) -> Result<impl IntoResponse, IdentityError> {
    let id = user_in_path(&id)?;
    admin.require_over(&caller, WRITE, id).await?;
    let expected = if_match(&headers)?;
    let user = admin
        .identity
        .update_profile(id, body.display_name, expected)
        .await?;
    Ok(with_etag(&user))
}

#[utoipa::path(
    delete,
    path = "/v1/users/{id}",
    tag = "identity",
    security(("bearer" = [])),
    params(("id" = String, Path, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The user's id")),
    responses(
        (status = 204, description = "The user and its sessions are gone"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn remove(
    State(admin): State<Admin>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, IdentityError> {
    let id = user_in_path(&id)?;
    admin.require_over(&caller, DELETE, id).await?;
    admin.identity.delete_user(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_status(
    admin: &Admin,
    caller: &Principal,
    id: &str,
    status: UserStatus,
) -> Result<axum::response::Response, IdentityError> {
    let id = user_in_path(id)?;
    admin.require_over(caller, WRITE, id).await?;
    Ok(with_etag(&admin.identity.set_status(id, status).await?))
}

#[utoipa::path(
    post,
    path = "/v1/users/{id}/disable",
    tag = "identity",
    security(("bearer" = [])),
    params(("id" = String, Path, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The user's id")),
    responses(
        (status = 200, description = "The user, disabled: it cannot sign in, and its sessions end", body = UserView),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn disable(
    State(admin): State<Admin>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<axum::response::Response, IdentityError> {
    set_status(&admin, &caller, &id, UserStatus::Disabled).await
}

#[utoipa::path(
    post,
    path = "/v1/users/{id}/enable",
    tag = "identity",
    security(("bearer" = [])),
    params(("id" = String, Path, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The user's id")),
    responses(
        (status = 200, description = "The user, active again", body = UserView),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn enable(
    State(admin): State<Admin>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<axum::response::Response, IdentityError> {
    set_status(&admin, &caller, &id, UserStatus::Active).await
}

#[utoipa::path(
    post,
    path = "/v1/users/{id}/password-reset",
    tag = "identity",
    security(("bearer" = [])),
    params(("id" = String, Path, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The user's id")),
    responses(
        (status = 202, description = "A reset link is on its way to the user's address, if the account is active"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Too many link requests are waiting; try again later", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn password_reset(
    State(admin): State<Admin>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, IdentityError> {
    let id = user_in_path(&id)?;
    admin.require_over(&caller, WRITE, id).await?;
    let user = admin.identity.get_user(id).await?;
    admin.identity.request_password_reset(&user.email).await?;
    Ok(StatusCode::ACCEPTED)
}
