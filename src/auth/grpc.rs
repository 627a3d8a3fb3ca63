//! Auth's internal gRPC API (see `proto/gatehouse/auth/v1`). Thin: decode,
//! call the service, encode; errors map through `AuthError`.

use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::error::AuthError;
use super::service::Auth;
use crate::middleware::token::{Subject, public_key_paserk};
use crate::proto::auth::v1 as pb;
use crate::proto::auth::v1::auth_server::AuthServer;

pub struct Grpc {
    auth: Auth,
}

pub fn server(auth: Auth) -> AuthServer<Grpc> {
    AuthServer::new(Grpc { auth })
}

/// The id in `text`, of the type `T` it is wanted as.
fn uuid<T: From<Uuid>>(field: &'static str, text: &str) -> Result<T, AuthError> {
    Uuid::parse_str(text)
        .map(T::from)
        .map_err(|_| AuthError::Invalid {
            field,
            message: "not a valid id".into(),
        })
}

#[tonic::async_trait]
impl pb::auth_server::Auth for Grpc {
    async fn get_public_keys(
        &self,
        _request: Request<pb::GetPublicKeysRequest>,
    ) -> Result<Response<pb::GetPublicKeysResponse>, Status> {
        let keys = self.auth.keys().published().await?;
        Ok(Response::new(pb::GetPublicKeysResponse {
            keys: keys
                .iter()
                .map(|k| pb::PublicKey {
                    kid: k.kid.clone(),
                    paserk: public_key_paserk(&k.public),
                    signs_from_unix_ms: k.signs_from.timestamp_millis(),
                    published_until_unix_ms: k.published_until.map_or(0, |t| t.timestamp_millis()),
                })
                .collect(),
            cache_ttl_secs: i64::try_from(self.auth.key_cache_ttl_secs()).unwrap_or(i64::MAX),
        }))
    }

    async fn validate_token(
        &self,
        request: Request<pb::ValidateTokenRequest>,
    ) -> Result<Response<pb::ValidateTokenResponse>, Status> {
        let caller = self.auth.validate(&request.into_inner().token).await?;
        let (user_id, client_id) = match caller.subject() {
            Subject::User(id) => (id.to_string(), String::new()),
            Subject::Client(id) => (String::new(), id.to_string()),
        };
        Ok(Response::new(pb::ValidateTokenResponse {
            user_id,
            session_id: caller.session_id().to_string(),
            expires_at_unix_ms: caller.expires_at().timestamp_millis(),
            client_id,
        }))
    }

    async fn revoke_session(
        &self,
        request: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::RevokeSessionResponse>, Status> {
        let req = request.into_inner();
        let reason = if req.reason.is_empty() {
            "revoked"
        } else {
            req.reason.as_str()
        };
        let revoked = self
            .auth
            .revoke_session(uuid("session_id", &req.session_id)?, reason)
            .await?;
        Ok(Response::new(pb::RevokeSessionResponse { revoked }))
    }

    async fn list_revoked_sessions(
        &self,
        request: Request<pb::ListRevokedSessionsRequest>,
    ) -> Result<Response<pb::ListRevokedSessionsResponse>, Status> {
        let since = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(
            request.into_inner().since_unix_ms,
        )
        .ok_or_else(|| Status::invalid_argument("since_unix_ms is out of range"))?;
        let session_ids = self.auth.revoked_since(since).await?;
        Ok(Response::new(pb::ListRevokedSessionsResponse {
            session_ids,
        }))
    }

    async fn revoke_user_sessions(
        &self,
        request: Request<pb::RevokeUserSessionsRequest>,
    ) -> Result<Response<pb::RevokeUserSessionsResponse>, Status> {
        let req = request.into_inner();
        let except = if req.except_session_id.is_empty() {
            None
        } else {
            Some(uuid("except_session_id", &req.except_session_id)?)
        };
        let reason = if req.reason.is_empty() {
            "revoked"
        } else {
            req.reason.as_str()
        };
        let count = self
            .auth
            .revoke_user_sessions(uuid("user_id", &req.user_id)?, except, reason)
            .await?;
        Ok(Response::new(pb::RevokeUserSessionsResponse {
            revoked: i64::try_from(count).unwrap_or(i64::MAX),
        }))
    }
}
