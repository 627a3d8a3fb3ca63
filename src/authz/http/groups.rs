//! `/v1/authz/groups`: groups of users, which may hold groups (never in a
//! circle), and their members, each `user:<id>` or `group:<id>`.

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{ListQuery, READ, WRITE, check_text, id_in_path, require, time, written};
use crate::authz::error::AuthzError;
use crate::authz::model::Subject;
use crate::authz::service::Authz;
use crate::authz::store::{self, GroupRow, subject_text};
use crate::kernel::error::{ApiJson, ApiQuery, Problem};
use crate::kernel::paging::{Page, PageRequest};
use crate::middleware::token::Principal;

pub fn routes() -> Router<Authz> {
    Router::new()
        .route("/v1/authz/groups", get(list).post(create))
        .route(
            "/v1/authz/groups/{id}",
            get(show).patch(update).delete(remove),
        )
        .route(
            "/v1/authz/groups/{id}/members",
            get(members).post(add_member),
        )
        .route(
            "/v1/authz/groups/{id}/members/{member}",
            delete(remove_member),
        )
}

/// A group as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupView {
    #[schema(format = Uuid)]
    id: String,
    name: String,
    description: String,
    #[schema(format = DateTime)]
    created_at: String,
}

impl From<&GroupRow> for GroupView {
    fn from(g: &GroupRow) -> Self {
        Self {
            id: g.id.to_string(),
            name: g.name.clone(),
            description: g.description.clone(),
            created_at: time(g.created_at),
        }
    }
}

/// A member of a group.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    /// `user:<id>` or `group:<id>`.
    member: String,
    #[schema(format = DateTime)]
    added_at: String,
}

/// `user:<id>`, `group:<id>` or `client:<id>`, as a body or a path gives it.
pub(super) fn subject(field: &'static str, text: &str) -> Result<Subject, AuthzError> {
    let bad = || AuthzError::Field {
        field,
        message: "`user:<id>`, `group:<id>` or `client:<id>`".into(),
    };
    let (kind, id) = text.split_once(':').ok_or_else(bad)?;
    // The hyphenated form only, as the API document says.
    let id = Some(id)
        .filter(|id| id.len() == 36)
        .and_then(|id| Uuid::parse_str(id).ok())
        .ok_or_else(bad)?;
    match kind {
        "user" => Ok(Subject::User(id)),
        "group" => Ok(Subject::Group(id)),
        "client" => Ok(Subject::Client(id)),
        _ => Err(bad()),
    }
}

#[utoipa::path(
    get,
    path = "/v1/authz/groups",
    tag = "authz",
    security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page of groups, by name", body = Page<GroupView>),
        (status = 422, description = "A query parameter is not valid", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(authz): State<Authz>,
    Extension(caller): Extension<Principal>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<GroupView>>, AuthzError> {
    require(&authz, &caller, READ).await?;
    let page = PageRequest::new(query.limit, query.cursor.as_deref())?;
    let (after, fetch) = (page.after.clone(), page.fetch());
    let rows = authz
        .read(move |conn| store::list_groups(conn, after.as_deref(), fetch))
        .await?;
    Ok(Json(page.page(
        rows,
        |g| g.name.clone(),
        |g| GroupView::from(g),
    )))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGroup {
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    name: String,
    #[schema(max_length = 500, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    #[serde(default)]
    description: String,
}

#[utoipa::path(
    post,
    path = "/v1/authz/groups",
    tag = "authz",
    security(("bearer" = [])),
    request_body = NewGroup,
    responses(
        (status = 201, description = "The new group", body = GroupView, headers(
            ("gatehouse-revision" = u64, description = "The revision of the write"),
            ("location" = String, description = "Where the group lives"),
        )),
        (status = 409, description = "A group of that name exists (`already_exists`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(authz): State<Authz>,
    Extension(caller): Extension<Principal>,
    ApiJson(body): ApiJson<NewGroup>,
) -> Result<axum::response::Response, AuthzError> {
    require(&authz, &caller, WRITE).await?;
    check_text("name", &body.name, 1, 100)?;
    check_text("description", &body.description, 0, 500)?;
    let id = Uuid::now_v7();
    let revision = authz
        .create_group(
            Some(caller.user_id.as_uuid()),
            id,
            body.name,
            body.description,
        )
        .await?;
    let row = authz.read(move |conn| store::group(conn, id)).await?;
    Ok(written(
        revision,
        (
            StatusCode::CREATED,
            [(header::LOCATION, format!("/v1/authz/groups/{id}"))],
            Json(GroupView::from(&row)),
        ),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/authz/groups/{id}",
    tag = "authz",
    security(("bearer" = [])),
    params(("id" = String, Path, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The group's id")),
    responses(
        (status = 200, description = "The group", body = GroupView),
        (status = 404, description = "No such group", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn show(
    State(authz): State<Authz>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<GroupView>, AuthzError> {
    require(&authz, &caller, READ).await?;
    let id = id_in_path(&id, "group")?;
    let row = authz.read(move |conn| store::group(conn, id)).await?;
    Ok(Json(GroupView::from(&row)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupChange {
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    name: Option<String>,
    #[schema(max_length = 500, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    description: Option<String>,
}

#[utoipa::path(
    patch,
    path = "/v1/authz/groups/{id}",
    tag = "authz",
    security(("bearer" = [])),
    params(("id" = String, Path, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The group's id")),
    request_body = GroupChange,
    responses(
        (status = 200, description = "The changed group", body = GroupView, headers(
            ("gatehouse-revision" = u64, description = "The revision of the write"),
        )),
        (status = 404, description = "No such group", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another group has that name (`already_exists`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update(
    State(authz): State<Authz>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<GroupChange>,
) -> Result<axum::response::Response, AuthzError> {
    require(&authz, &caller, WRITE).await?;
    let id = id_in_path(&id, "group")?;
    if let Some(name) = &body.name {
        check_text("name", name, 1, 100)?;
    }
    if let Some(description) = &body.description {
        check_text("description", description, 0, 500)?;
    }
    let revision = authz
        .update_group(
            Some(caller.user_id.as_uuid()),
            id,
            body.name,
            body.description,
        )
        .await?;
    let row = authz.read(move |conn| store::group(conn, id)).await?;
    Ok(written(revision, Json(GroupView::from(&row))))
}

#[utoipa::path(
    delete,
    path = "/v1/authz/groups/{id}",
    tag = "authz",
    security(("bearer" = [])),
    params(("id" = String, Path, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The group's id")),
    responses(
        (status = 204, description = "The group is gone, with its memberships and bindings", headers(
            ("gatehouse-revision" = u64, description = "The revision of the write"),
        )),
        (status = 404, description = "No such group", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn remove(
    State(authz): State<Authz>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<axum::response::Response, AuthzError> {
    require(&authz, &caller, WRITE).await?;
    let id = id_in_path(&id, "group")?;
    let revision = authz
        .delete_group(Some(caller.user_id.as_uuid()), id)
        .await?;
    Ok(written(revision, StatusCode::NO_CONTENT))
}

#[utoipa::path(
    get,
    path = "/v1/authz/groups/{id}/members",
    tag = "authz",
    security(("bearer" = [])),
    params(("id" = String, Path, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The group's id"), ListQuery),
    responses(
        (status = 200, description = "A page of the group's direct members: users, then groups", body = Page<MemberView>),
        (status = 404, description = "No such group", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A query parameter is not valid", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn members(
    State(authz): State<Authz>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<MemberView>>, AuthzError> {
    require(&authz, &caller, READ).await?;
    let group = id_in_path(&id, "group")?;
    let page = PageRequest::new(query.limit, query.cursor.as_deref())?;
    // `kind:id` of the last member shown.
    let after = page.after.as_deref().map(|key| {
        let (kind, id) = key.split_once(':').unwrap_or((key, ""));
        (kind.to_owned(), id.to_owned())
    });
    let fetch = page.fetch();
    let rows = authz
        .read(move |conn| store::list_members(conn, group, after, fetch))
        .await?;
    Ok(Json(page.page(
        rows,
        |(member, _)| subject_text(*member),
        |(member, at)| MemberView {
            member: subject_text(*member),
            added_at: time(*at),
        },
    )))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    /// `user:<id>` or `group:<id>`.
    #[schema(
        pattern = r"^(user|group):[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    member: String,
}

#[utoipa::path(
    post,
    path = "/v1/authz/groups/{id}/members",
    tag = "authz",
    security(("bearer" = [])),
    params(("id" = String, Path, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The group's id")),
    request_body = NewMember,
    responses(
        (status = 204, description = "The member is in the group (adding one already there changes nothing)", headers(
            ("gatehouse-revision" = u64, description = "The revision of the write"),
        )),
        (status = 404, description = "No such group, or no such member group", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The group would come to contain itself (`group_cycle`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn add_member(
    State(authz): State<Authz>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<NewMember>,
) -> Result<axum::response::Response, AuthzError> {
    require(&authz, &caller, WRITE).await?;
    let group = id_in_path(&id, "group")?;
    let member = subject("member", &body.member)?;
    let revision = authz
        .add_member(Some(caller.user_id.as_uuid()), group, member)
        .await?;
    Ok(written(revision, StatusCode::NO_CONTENT))
}

#[utoipa::path(
    delete,
    path = "/v1/authz/groups/{id}/members/{member}",
    tag = "authz",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The group's id"),
        ("member" = String, Path, pattern = r"^(user|group):[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "`user:<id>` or `group:<id>`"),
    ),
    responses(
        (status = 204, description = "The member is out of the group", headers(
            ("gatehouse-revision" = u64, description = "The revision of the write"),
        )),
        (status = 404, description = "No such group, or no such member in it", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn remove_member(
    State(authz): State<Authz>,
    Extension(caller): Extension<Principal>,
    Path((id, member)): Path<(String, String)>,
) -> Result<axum::response::Response, AuthzError> {
    require(&authz, &caller, WRITE).await?;
    let group = id_in_path(&id, "group")?;
    let member =
        subject("member", &member).map_err(|_| AuthzError::NotFound(format!("member {member}")))?;
    let revision = authz
        .remove_member(Some(caller.user_id.as_uuid()), group, member)
        .await?;
    Ok(written(revision, StatusCode::NO_CONTENT))
}
