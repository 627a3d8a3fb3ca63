//! The checks of the gRPC API, over HTTP: for admins, and for a signed-in
//! user asking about themself (no permission needed for that). Asking
//! about anyone else needs `authz:read`.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{READ, require, time};
use crate::authz::error::AuthzError;
use crate::authz::grpc::MAX_BATCH;
use crate::authz::model::{Decision, Denial, Subject};
use crate::authz::service::{Authz, Question};
use crate::authz::store::scope_text;
use crate::kernel::error::{ApiJson, ApiQuery, Problem};
use crate::middleware::token::Principal;

pub fn routes() -> Router<Authz> {
    Router::new()
        .route("/v1/authz/check", post(check))
        .route("/v1/authz/batch-check", post(batch_check))
        .route("/v1/authz/permissions", get(permissions))
        .route("/v1/authz/subjects", get(subjects))
}

/// The user asked about: the caller unless another is named, which needs
/// `authz:read`.
async fn about(authz: &Authz, caller: &Principal, user: Option<Uuid>) -> Result<Uuid, AuthzError> {
    match user {
        Some(other) if other != caller.user_id.as_uuid() => {
            require(authz, caller, READ).await?;
            Ok(other)
        }
        _ => Ok(caller.user_id.as_uuid()),
    }
}

/// A revision: a whole number, which JSON may also write as `7.0`.
fn whole<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let number = serde_json::Number::deserialize(d)?;
    number
        .as_u64()
        .or_else(|| {
            number
                .as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < u64::MAX as f64)
                .map(|f| f as u64)
        })
        .ok_or_else(|| serde::de::Error::custom("a revision is a whole number, 0 or more"))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckBody {
    /// The user asked about; the caller when absent.
    user_id: Option<Uuid>,
    /// One action on one type: `resource_type:action`.
    #[schema(
        pattern = r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*:[a-z][a-z0-9_-]*$",
        max_length = 128
    )]
    permission: String,
    /// `type:id`; without one, the check asks at the permission's type.
    #[schema(
        pattern = r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*:[!-~]+$",
        max_length = 128
    )]
    resource: Option<String>,
    /// Answer from this revision or a newer one.
    #[serde(default, deserialize_with = "whole")]
    at_least_revision: u64,
}

/// Why a check was allowed.
#[derive(Debug, Serialize, ToSchema)]
pub struct GrantView {
    #[schema(format = Uuid)]
    binding_id: String,
    role: String,
    /// The role's permission that covered the one asked about.
    permission: String,
    /// The groups from the user to the binding's subject, nearest first.
    group_ids: Vec<String>,
    /// The binding's scope: `*`, a type, or `type:id`.
    scope: String,
    /// The parents from the resource up to the scope, nearest first.
    parents: Vec<String>,
    /// When the answer lapses by time alone: the latest expiry among the
    /// bindings that allow it; absent when one of them never expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    holds_until: Option<String>,
}

/// A check's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct AnswerView {
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    grant: Option<GrantView>,
    /// `not_granted`, or `expired` when only expired bindings would have
    /// allowed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    denial: Option<&'static str>,
    #[schema(format = DateTime)]
    #[serde(skip_serializing_if = "Option::is_none")]
    expired_at: Option<String>,
}

fn answer(decision: Decision) -> AnswerView {
    let denied = |denial, expired_at| AnswerView {
        allowed: false,
        grant: None,
        denial: Some(denial),
        expired_at,
    };
    match decision {
        Decision::Allowed(grant) => AnswerView {
            allowed: true,
            grant: Some(GrantView {
                binding_id: grant.binding.to_string(),
                role: grant.role,
                permission: grant.permission.to_string(),
                group_ids: grant.groups.iter().map(Uuid::to_string).collect(),
                scope: scope_text(&grant.scope),
                parents: grant.parents.iter().map(ToString::to_string).collect(),
                holds_until: grant.holds_until.map(time),
            }),
            denial: None,
            expired_at: None,
        },
        Decision::Denied(Denial::NotGranted) => denied("not_granted", None),
        Decision::Denied(Denial::Expired(at)) => denied("expired", Some(time(at))),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckView {
    #[serde(flatten)]
    answer: AnswerView,
    /// The revision the answer was made at.
    revision: u64,
}

#[utoipa::path(
    post,
    path = "/v1/authz/check",
    tag = "authz",
    security(("bearer" = [])),
    request_body = CheckBody,
    responses(
        (status = 200, description = "Allowed or denied, and why", body = CheckView),
        (status = 409, description = "`at_least_revision` has not been written (`revision_ahead`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn check(
    State(authz): State<Authz>,
    Extension(caller): Extension<Principal>,
    ApiJson(body): ApiJson<CheckBody>,
) -> Result<Json<CheckView>, AuthzError> {
    let user = about(&authz, &caller, body.user_id).await?;
    let asked = Question {
        subject: Subject::User(user),
        permission: body.permission,
        resource: body.resource,
    };
    let (decision, revision) = authz.check(&asked, body.at_least_revision).await?;
    Ok(Json(CheckView {
        answer: answer(decision),
        revision,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchQuestion {
    /// The user asked about; the caller when absent.
    user_id: Option<Uuid>,
    #[schema(
        pattern = r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*:[a-z][a-z0-9_-]*$",
        max_length = 128
    )]
    permission: String,
    #[schema(
        pattern = r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*:[!-~]+$",
        max_length = 128
    )]
    resource: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    #[schema(max_items = 100)]
    questions: Vec<BatchQuestion>,
    #[serde(default, deserialize_with = "whole")]
    at_least_revision: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchView {
    /// One answer a question, in order.
    answers: Vec<AnswerView>,
    revision: u64,
}

#[utoipa::path(
    post,
    path = "/v1/authz/batch-check",
    tag = "authz",
    security(("bearer" = [])),
    request_body = BatchBody,
    responses(
        (status = 200, description = "One answer a question, all from one revision", body = BatchView),
        (status = 409, description = "`at_least_revision` has not been written (`revision_ahead`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn batch_check(
    State(authz): State<Authz>,
    Extension(caller): Extension<Principal>,
    ApiJson(body): ApiJson<BatchBody>,
) -> Result<Json<BatchView>, AuthzError> {
    if body.questions.len() > MAX_BATCH {
        return Err(AuthzError::Field {
            field: "questions",
            message: format!("at most {MAX_BATCH} in one call"),
        });
    }
    // Asking about anyone else needs `authz:read`, asked once for the batch.
    if body
        .questions
        .iter()
        .any(|q| q.user_id.is_some_and(|u| u != caller.user_id.as_uuid()))
    {
        require(&authz, &caller, READ).await?;
    }
    let questions: Vec<Question> = body
        .questions
        .into_iter()
        .map(|q| Question {
            subject: Subject::User(q.user_id.unwrap_or(caller.user_id.as_uuid())),
            permission: q.permission,
            resource: q.resource,
        })
        .collect();
    let (decisions, revision) = authz
        .batch_check(&questions, body.at_least_revision)
        .await?;
    Ok(Json(BatchView {
        answers: decisions.into_iter().map(answer).collect(),
        revision,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PermissionsQuery {
    /// The user asked about; the caller when absent.
    user_id: Option<Uuid>,
    /// `type:id`; without one, the permissions held everywhere.
    #[param(
        pattern = r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*:[!-~]+$",
        max_length = 128
    )]
    resource: Option<String>,
    at_least_revision: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PermissionsView {
    permissions: Vec<String>,
    revision: u64,
}

#[utoipa::path(
    get,
    path = "/v1/authz/permissions",
    tag = "authz",
    security(("bearer" = [])),
    params(PermissionsQuery),
    responses(
        (status = 200, description = "Every permission the user holds there, as the roles state them", body = PermissionsView),
        (status = 409, description = "`at_least_revision` has not been written (`revision_ahead`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A query parameter is not valid", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn permissions(
    State(authz): State<Authz>,
    Extension(caller): Extension<Principal>,
    ApiQuery(query): ApiQuery<PermissionsQuery>,
) -> Result<Json<PermissionsView>, AuthzError> {
    let user = about(&authz, &caller, query.user_id).await?;
    let (held, revision) = authz
        .permissions(
            user,
            query.resource.as_deref(),
            query.at_least_revision.unwrap_or_default(),
        )
        .await?;
    Ok(Json(PermissionsView {
        permissions: held.iter().map(ToString::to_string).collect(),
        revision,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SubjectsQuery {
    /// `resource_type:action`.
    #[param(
        pattern = r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*:[a-z][a-z0-9_-]*$",
        max_length = 128
    )]
    permission: String,
    /// `type:id`; without one, at the permission's type.
    #[param(
        pattern = r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*:[!-~]+$",
        max_length = 128
    )]
    resource: Option<String>,
    at_least_revision: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubjectsView {
    user_ids: Vec<String>,
    revision: u64,
}

#[utoipa::path(
    get,
    path = "/v1/authz/subjects",
    tag = "authz",
    security(("bearer" = [])),
    params(SubjectsQuery),
    responses(
        (status = 200, description = "The users who may do it there, groups expanded", body = SubjectsView),
        (status = 409, description = "`at_least_revision` has not been written (`revision_ahead`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A query parameter is not valid", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn subjects(
    State(authz): State<Authz>,
    Extension(caller): Extension<Principal>,
    ApiQuery(query): ApiQuery<SubjectsQuery>,
) -> Result<Json<SubjectsView>, AuthzError> {
    require(&authz, &caller, READ).await?;
    let (users, revision) = authz
        .subjects(
            &query.permission,
            query.resource.as_deref(),
            query.at_least_revision.unwrap_or_default(),
        )
        .await?;
    Ok(Json(SubjectsView {
        user_ids: users.iter().map(Uuid::to_string).collect(),
        revision,
    }))
}
