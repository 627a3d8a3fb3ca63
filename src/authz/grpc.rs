//! Authz's internal gRPC API (see `proto/gatehouse/authz/v1`). Thin: decode,
//! call the service, encode; errors map through `AuthzError`.

use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::error::AuthzError;
use super::model::{Decision, Denial, Subject};
use super::service::{Authz, Question};
use super::store::scope_text;
use crate::proto::authz::v1 as pb;
use crate::proto::authz::v1::authz_server::AuthzServer;

/// The most checks one `BatchCheck` may carry.
pub const MAX_BATCH: usize = 100;

pub struct Grpc {
    authz: Authz,
}

pub fn server(authz: Authz) -> AuthzServer<Grpc> {
    AuthzServer::new(Grpc { authz })
}

fn user(text: &str) -> Result<Uuid, AuthzError> {
    id("user_id", text)
}

fn id(field: &'static str, text: &str) -> Result<Uuid, AuthzError> {
    Uuid::parse_str(text).map_err(|_| AuthzError::Field {
        field,
        message: "not a valid id".into(),
    })
}

/// An empty text is no resource.
fn resource(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

fn question(q: Option<pb::Question>) -> Result<Question, AuthzError> {
    let q = q.ok_or(AuthzError::Field {
        field: "question",
        message: "missing".into(),
    })?;
    let subject = match (q.user_id.is_empty(), q.client_id.is_empty()) {
        (false, true) => Subject::User(user(&q.user_id)?),
        (true, false) => Subject::Client(id("client_id", &q.client_id)?),
        _ => {
            return Err(AuthzError::Field {
                field: "user_id",
                message: "one of user_id and client_id".into(),
            });
        }
    };
    Ok(Question {
        subject,
        permission: q.permission,
        resource: resource(&q.resource).map(str::to_owned),
    })
}

fn answer(decision: Decision) -> pb::Answer {
    match decision {
        Decision::Allowed(grant) => pb::Answer {
            allowed: true,
            grant: Some(pb::Grant {
                binding_id: grant.binding.to_string(),
                role: grant.role,
                permission: grant.permission.to_string(),
                group_ids: grant.groups.iter().map(Uuid::to_string).collect(),
                scope: scope_text(&grant.scope),
                parents: grant.parents.iter().map(ToString::to_string).collect(),
                holds_until_unix_ms: grant.holds_until.map_or(0, |t| t.timestamp_millis()),
            }),
            ..pb::Answer::default()
        },
        Decision::Denied(Denial::NotGranted) => pb::Answer {
            denial: "not_granted".into(),
            ..pb::Answer::default()
        },
        Decision::Denied(Denial::Expired(at)) => pb::Answer {
            denial: "expired".into(),
            expired_at_unix_ms: at.timestamp_millis(),
            ..pb::Answer::default()
        },
    }
}

#[tonic::async_trait]
impl pb::authz_server::Authz for Grpc {
    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let req = request.into_inner();
        let asked = question(req.question)?;
        let (decision, revision) = self.authz.check(&asked, req.at_least_revision).await?;
        Ok(Response::new(pb::CheckResponse {
            answer: Some(answer(decision)),
            revision,
        }))
    }

    async fn batch_check(
        &self,
        request: Request<pb::BatchCheckRequest>,
    ) -> Result<Response<pb::BatchCheckResponse>, Status> {
        let req = request.into_inner();
        if req.questions.len() > MAX_BATCH {
            return Err(AuthzError::Field {
                field: "questions",
                message: format!("at most {MAX_BATCH} in one call"),
            }
            .into());
        }
        let questions = req
            .questions
            .into_iter()
            .map(|q| question(Some(q)))
            .collect::<Result<Vec<_>, _>>()?;
        let (decisions, revision) = self
            .authz
            .batch_check(&questions, req.at_least_revision)
            .await?;
        Ok(Response::new(pb::BatchCheckResponse {
            answers: decisions.into_iter().map(answer).collect(),
            revision,
        }))
    }

    async fn list_permissions(
        &self,
        request: Request<pb::ListPermissionsRequest>,
    ) -> Result<Response<pb::ListPermissionsResponse>, Status> {
        let req = request.into_inner();
        let (held, revision) = self
            .authz
            .permissions(
                user(&req.user_id)?,
                resource(&req.resource),
                req.at_least_revision,
            )
            .await?;
        Ok(Response::new(pb::ListPermissionsResponse {
            permissions: held.iter().map(ToString::to_string).collect(),
            revision,
        }))
    }

    async fn list_roles(
        &self,
        request: Request<pb::ListRolesRequest>,
    ) -> Result<Response<pb::ListRolesResponse>, Status> {
        let req = request.into_inner();
        let (roles, revision) = self
            .authz
            .roles(user(&req.user_id)?, req.at_least_revision)
            .await?;
        Ok(Response::new(pb::ListRolesResponse {
            roles: roles.into_iter().collect(),
            revision,
        }))
    }

    async fn list_subjects(
        &self,
        request: Request<pb::ListSubjectsRequest>,
    ) -> Result<Response<pb::ListSubjectsResponse>, Status> {
        let req = request.into_inner();
        let (users, revision) = self
            .authz
            .subjects(
                &req.permission,
                resource(&req.resource),
                req.at_least_revision,
            )
            .await?;
        Ok(Response::new(pb::ListSubjectsResponse {
            user_ids: users.iter().map(Uuid::to_string).collect(),
            revision,
        }))
    }

    async fn covers(
        &self,
        request: Request<pb::CoversRequest>,
    ) -> Result<Response<pb::CoversResponse>, Status> {
        let req = request.into_inner();
        let (actor, of) = (user(&req.actor_id)?, user(&req.user_id)?);
        let (lacking, revision) = self.authz.covers(actor, of, req.at_least_revision).await?;
        Ok(Response::new(match lacking {
            None => pb::CoversResponse {
                covered: true,
                revision,
                ..pb::CoversResponse::default()
            },
            Some(lacking) => pb::CoversResponse {
                covered: false,
                lacking_permission: lacking.permission.to_string(),
                lacking_scope: super::store::scope_text(&lacking.scope),
                revision,
            },
        }))
    }
}
