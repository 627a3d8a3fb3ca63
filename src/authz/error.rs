//! The authz service's one error type and its table: HTTP status, stable
//! problem code and gRPC code per variant.
//!
//! Policy: what the model refuses is the caller's fault (422, or 409 when
//! it is the state a change would leave: a circle, a chain too deep); a
//! database that cannot be reached is 503.

use http::StatusCode;
use tonic::Code;

use super::model::ModelError;
use crate::kernel::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    /// A permission, resource or change the model refuses.
    #[error(transparent)]
    Invalid(#[from] ModelError),
    /// A field of a request that is not valid.
    #[error("{field}: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
    /// The named role, group or binding does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A role or group of that name exists already.
    #[error("{0} exists already")]
    Exists(String),
    /// A check asked for a revision newer than any written.
    #[error("revision {asked} has not been written; the latest is {stored}")]
    RevisionAhead { asked: u64, stored: u64 },
    /// The stored policy cannot be read back: a row the model refuses.
    #[error("stored policy unreadable: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl AuthzError {
    fn parts(&self) -> (StatusCode, &'static str, Code, &'static str) {
        use AuthzError::*;
        match self {
            Invalid(ModelError::GroupCycle) => (
                StatusCode::CONFLICT,
                "group_cycle",
                Code::FailedPrecondition,
                "A group cannot contain itself",
            ),
            Invalid(ModelError::ParentCycle) => (
                StatusCode::CONFLICT,
                "parent_cycle",
                Code::FailedPrecondition,
                "A resource cannot be its own parent",
            ),
            Invalid(ModelError::TooDeep(_)) => (
                StatusCode::CONFLICT,
                "too_deep",
                Code::FailedPrecondition,
                "The chain of parents would be too long",
            ),
            Invalid(_) | Field { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Code::InvalidArgument,
                "A field is not valid",
            ),
            NotFound(_) => (
                StatusCode::NOT_FOUND,
                "not_found",
                Code::NotFound,
                "Not found",
            ),
            Exists(_) => (
                StatusCode::CONFLICT,
                "already_exists",
                Code::AlreadyExists,
                "Already exists",
            ),
            RevisionAhead { .. } => (
                StatusCode::CONFLICT,
                "revision_ahead",
                Code::FailedPrecondition,
                "That revision has not been written",
            ),
            Db(DbError::Unavailable(_)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                Code::Unavailable,
                "Service temporarily unavailable",
            ),
            Corrupt(_) | Db(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                Code::Internal,
                "Internal error",
            ),
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// The stable problem code.
    pub fn code(&self) -> &'static str {
        self.parts().1
    }

    pub fn to_status(&self) -> tonic::Status {
        let (_, code, grpc, title) = self.parts();
        let message = match grpc {
            Code::Internal | Code::Unavailable => {
                tracing::error!(error = %self, "authz failed");
                title.to_owned()
            }
            _ => self.to_string(),
        };
        crate::kernel::error::grpc_status(grpc, code, message)
    }
}

impl From<AuthzError> for tonic::Status {
    fn from(e: AuthzError) -> Self {
        e.to_status()
    }
}

impl From<diesel::result::Error> for AuthzError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match e {
            // A write that lost a race with another for the same name, or
            // with the deletion of what it refers to.
            Error::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => {
                AuthzError::Exists("a row of that name".into())
            }
            Error::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _) => {
                AuthzError::NotFound("what it refers to".into())
            }
            other => AuthzError::Db(DbError::Query(other)),
        }
    }
}
