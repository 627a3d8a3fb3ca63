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
use crate::kernel::error::{Kind, Problem};

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
    /// A built-in role cannot be deleted, nor `admin`'s permissions changed.
    #[error("role {0} is built in")]
    Builtin(String),
    /// A role still bound, deleted without `force`.
    #[error(
        "role {role} is still bound {bindings} times; delete with force=true to remove the bindings too"
    )]
    RoleBound { role: String, bindings: i64 },
    /// The caller lacks the permission the request needs.
    #[error("this needs the permission {0}")]
    Forbidden(&'static str),
    /// The change would give a permission its maker does not hold there.
    #[error("this gives {permission} at {scope}, which you do not hold there")]
    Escalation { permission: String, scope: String },
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
    fn kind(&self) -> Kind {
        use AuthzError::*;
        match self {
            Invalid(ModelError::GroupCycle) => Kind::new(
                StatusCode::CONFLICT,
                "group_cycle",
                Code::FailedPrecondition,
                "A group cannot contain itself",
            ),
            Invalid(ModelError::ParentCycle) => Kind::new(
                StatusCode::CONFLICT,
                "parent_cycle",
                Code::FailedPrecondition,
                "A resource cannot be its own parent",
            ),
            Invalid(ModelError::TooDeep(_)) => Kind::new(
                StatusCode::CONFLICT,
                "too_deep",
                Code::FailedPrecondition,
                "The chain of parents would be too long",
            ),
            Invalid(_) | Field { .. } => Kind::VALIDATION_FAILED,
            NotFound(_) => Kind::new(
                StatusCode::NOT_FOUND,
                "not_found",
                Code::NotFound,
                "Not found",
            ),
            Exists(_) => Kind::new(
                StatusCode::CONFLICT,
                "already_exists",
                Code::AlreadyExists,
                "Already exists",
            ),
            Builtin(_) => Kind::new(
                StatusCode::CONFLICT,
                "builtin_role",
                Code::FailedPrecondition,
                "Built-in roles stay as they are",
            ),
            RoleBound { .. } => Kind::new(
                StatusCode::CONFLICT,
                "role_bound",
                Code::FailedPrecondition,
                "The role is still bound",
            ),
            Forbidden(_) | Escalation { .. } => Kind::FORBIDDEN,
            RevisionAhead { .. } => Kind::new(
                StatusCode::CONFLICT,
                "revision_ahead",
                Code::FailedPrecondition,
                "That revision has not been written",
            ),
            Db(DbError::Unavailable(_)) => Kind::UNAVAILABLE,
            Corrupt(_) | Db(_) => Kind::INTERNAL,
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.kind().status
    }

    /// The stable problem code.
    pub fn code(&self) -> &'static str {
        self.kind().code
    }

    pub fn to_status(&self) -> tonic::Status {
        let kind = self.kind();
        let message = match kind.grpc {
            Code::Internal | Code::Unavailable => {
                tracing::error!(error = %self, "authz failed");
                kind.title.to_owned()
            }
            _ => self.to_string(),
        };
        kind.grpc_status(message)
    }
}

impl axum::response::IntoResponse for AuthzError {
    fn into_response(self) -> axum::response::Response {
        if let AuthzError::Forbidden(permission) = &self {
            return Problem::forbidden(permission).into_response();
        }
        if let AuthzError::Escalation { permission, .. } = &self {
            return self
                .kind()
                .problem()
                .detail(self.to_string())
                .permission(permission)
                .into_response();
        }
        let kind = self.kind();
        let status = kind.status;
        let detail = match status {
            StatusCode::INTERNAL_SERVER_ERROR | StatusCode::SERVICE_UNAVAILABLE => {
                tracing::error!(error = %self, "authz failed");
                None
            }
            _ => Some(self.to_string()),
        };
        let mut problem = kind.problem();
        if let Some(detail) = detail {
            problem = problem.detail(detail);
        }
        if let AuthzError::Field { field, .. } = &self {
            problem = problem.field(*field);
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            problem = problem.retry_after(1);
        }
        problem.into_response()
    }
}

impl From<AuthzError> for tonic::Status {
    fn from(e: AuthzError) -> Self {
        e.to_status()
    }
}

impl From<crate::kernel::paging::PageError> for AuthzError {
    fn from(e: crate::kernel::paging::PageError) -> Self {
        AuthzError::Field {
            field: e.field,
            message: e.message.to_owned(),
        }
    }
}

impl From<super::model::Lacking> for AuthzError {
    fn from(lacking: super::model::Lacking) -> Self {
        AuthzError::Escalation {
            permission: lacking.permission.to_string(),
            scope: super::store::scope_text(&lacking.scope),
        }
    }
}

impl From<super::model::NameError> for AuthzError {
    fn from(e: super::model::NameError) -> Self {
        AuthzError::Invalid(ModelError::Name(e))
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
