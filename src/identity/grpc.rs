//! Identity's internal gRPC API (see `proto/gatehouse/identity/v1`). Thin:
//! decode, call the service, encode; errors map through `IdentityError`.

use tonic::{Request, Response, Status};

use super::password::Password;
use super::service::{Identity, User, UserId, UserStatus};
use crate::proto::identity::v1 as pb;
use crate::proto::identity::v1::identity_server::IdentityServer;

pub struct Grpc {
    identity: Identity,
}

pub fn server(identity: Identity) -> IdentityServer<Grpc> {
    IdentityServer::new(Grpc { identity })
}

fn to_pb(u: &User) -> pb::User {
    pb::User {
        id: u.id.to_string(),
        email: u.email.clone(),
        display_name: u.display_name.clone(),
        status: u.status.as_str().to_owned(),
        email_verified: u.email_verified,
        created_at_unix_ms: u.created_at.timestamp_millis(),
        updated_at_unix_ms: u.updated_at.timestamp_millis(),
        version: u.version,
        locked_until_unix_ms: 0,
    }
}

#[tonic::async_trait]
impl pb::identity_server::Identity for Grpc {
    async fn verify_credentials(
        &self,
        request: Request<pb::VerifyCredentialsRequest>,
    ) -> Result<Response<pb::VerifyCredentialsResponse>, Status> {
        let req = request.into_inner();
        let device = Some(req.device_token.as_str()).filter(|t| !t.is_empty());
        let signed_in = self
            .identity
            .verify_credentials(&req.email, &Password::new(req.password), device)
            .await?;
        Ok(Response::new(pb::VerifyCredentialsResponse {
            user: Some(to_pb(&signed_in.user)),
            device_token: signed_in.device_token,
        }))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let id = UserId::parse(&request.into_inner().id)?;
        let user = self.identity.get_user(id).await?;
        Ok(Response::new(to_pb(&user)))
    }

    async fn get_users(
        &self,
        request: Request<pb::GetUsersRequest>,
    ) -> Result<Response<pb::GetUsersResponse>, Status> {
        let ids = request
            .into_inner()
            .ids
            .iter()
            .map(|s| UserId::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        let users = self.identity.get_users(ids).await?;
        Ok(Response::new(pb::GetUsersResponse {
            users: users.iter().map(to_pb).collect(),
        }))
    }

    async fn update_profile(
        &self,
        request: Request<pb::UpdateProfileRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let req = request.into_inner();
        let id = UserId::parse(&req.id)?;
        let user = self
            .identity
            .update_profile(id, req.display_name, req.expected_version)
            .await?;
        Ok(Response::new(to_pb(&user)))
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let req = request.into_inner();
        let id = UserId::parse(&req.id)?;
        let user = self
            .identity
            .change_password(
                id,
                &Password::new(req.current_password),
                &Password::new(req.new_password),
                None,
            )
            .await?;
        Ok(Response::new(to_pb(&user)))
    }

    async fn set_status(
        &self,
        request: Request<pb::SetStatusRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let req = request.into_inner();
        let id = UserId::parse(&req.id)?;
        let status = UserStatus::parse(&req.status)?;
        let user = self.identity.set_status(id, status).await?;
        Ok(Response::new(to_pb(&user)))
    }
}
