//! The identity service's one error type, and the one table that maps each
//! variant to an HTTP status, a stable problem code and a gRPC code, so REST
//! and gRPC callers always agree on what went wrong.
//!
//! Policy: input problems are the caller's (4xx, nothing changed); a database
//! that cannot be reached is 503; anything else is logged and answered as a
//! generic 500 without internals.

use http::StatusCode;
use tonic::Code;

use crate::kernel::db::DbError;
use crate::kernel::error::{Kind, Problem};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("an account with this email already exists")]
    EmailTaken,
    #[error("registration is closed")]
    RegistrationClosed,
    #[error("no such user")]
    NotFound,
    #[error("email or password is wrong")]
    InvalidCredentials,
    #[error("too many failed sign-ins; try again after the wait")]
    TooManyAttempts { retry_after_secs: u64 },
    #[error("the account is disabled")]
    Disabled,
    #[error("the token is unknown, expired or already used")]
    InvalidToken,
    #[error("the user changed since version {expected}")]
    VersionMismatch { expected: i64 },
    #[error("service unavailable")]
    Unavailable(String),
    /// Too many passwords are being hashed now; try again shortly.
    #[error("too many requests are being served; try again shortly")]
    Overloaded { retry_after_secs: u64 },
    #[error("internal error")]
    Internal(String),
    /// The caller lacks the permission the request needs.
    #[error("this needs the permission {0}")]
    Forbidden(&'static str),
    /// The account acted on holds a permission the caller does not.
    #[error("the account holds {lacking} at {scope}, which you do not hold there")]
    Outranked { lacking: String, scope: String },
}

impl IdentityError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }

    /// The table: (HTTP status, problem code, gRPC code, title).
    fn kind(&self) -> Kind {
        use IdentityError::*;
        match self {
            Invalid { .. } => Kind::VALIDATION_FAILED,
            EmailTaken => Kind::new(
                StatusCode::CONFLICT,
                "email_taken",
                Code::AlreadyExists,
                "Email already registered",
            ),
            RegistrationClosed => Kind::new(
                StatusCode::FORBIDDEN,
                "registration_closed",
                Code::PermissionDenied,
                "Registration is closed",
            ),
            NotFound => Kind::new(
                StatusCode::NOT_FOUND,
                "user_not_found",
                Code::NotFound,
                "No such user",
            ),
            InvalidCredentials => Kind::INVALID_CREDENTIALS,
            TooManyAttempts { .. } => Kind::TOO_MANY_ATTEMPTS,
            Disabled => Kind::ACCOUNT_DISABLED,
            InvalidToken => Kind::new(
                StatusCode::BAD_REQUEST,
                "invalid_token",
                Code::InvalidArgument,
                "Token unknown, expired or already used",
            ),
            VersionMismatch { .. } => Kind::new(
                StatusCode::PRECONDITION_FAILED,
                "version_mismatch",
                Code::FailedPrecondition,
                "The resource changed meanwhile",
            ),
            Forbidden(_) | Outranked { .. } => Kind::FORBIDDEN,
            Unavailable(_) => Kind::UNAVAILABLE,
            Overloaded { .. } => Kind::OVERLOADED,
            Internal(_) => Kind::INTERNAL,
        }
    }

    fn log_if_ours(&self) {
        match self {
            IdentityError::Internal(e) => tracing::error!(error = %e, "identity internal error"),
            IdentityError::Unavailable(e) => {
                tracing::warn!(error = %e, "identity dependency unavailable")
            }
            _ => {}
        }
    }

    pub fn to_problem(&self) -> Problem {
        self.log_if_ours();
        let problem = self.kind().problem();
        match self {
            IdentityError::Invalid { field, message } => problem.field(*field).detail(message),
            IdentityError::TooManyAttempts { retry_after_secs }
            | IdentityError::Overloaded { retry_after_secs } => problem
                .detail(self.to_string())
                .retry_after(*retry_after_secs),
            IdentityError::Unavailable(_) => problem.retry_after(1),
            IdentityError::Internal(_) => problem,
            IdentityError::Forbidden(permission) => Problem::forbidden(permission),
            IdentityError::Outranked { lacking, .. } => {
                problem.detail(self.to_string()).permission(lacking)
            }
            other => problem.detail(other.to_string()),
        }
    }

    pub fn to_status(&self) -> tonic::Status {
        self.log_if_ours();
        let kind = self.kind();
        let message = match self {
            IdentityError::Internal(_) | IdentityError::Unavailable(_) => kind.title.to_owned(),
            other => other.to_string(),
        };
        let mut status = kind.grpc_status(message);
        if let IdentityError::TooManyAttempts { retry_after_secs }
        | IdentityError::Overloaded { retry_after_secs } = self
            && let Ok(v) = retry_after_secs.to_string().parse()
        {
            status.metadata_mut().insert("retry-after", v);
        }
        status
    }
}

impl axum::response::IntoResponse for IdentityError {
    fn into_response(self) -> axum::response::Response {
        self.to_problem().into_response()
    }
}

impl From<IdentityError> for tonic::Status {
    fn from(e: IdentityError) -> Self {
        e.to_status()
    }
}

impl From<crate::kernel::paging::PageError> for IdentityError {
    fn from(e: crate::kernel::paging::PageError) -> Self {
        IdentityError::invalid(e.field, e.message)
    }
}

impl From<crate::middleware::permit::PermitError> for IdentityError {
    fn from(e: crate::middleware::permit::PermitError) -> Self {
        IdentityError::Unavailable(e.to_string())
    }
}

impl From<DbError> for IdentityError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable(m) => IdentityError::Unavailable(m),
            DbError::Query(q) => q.into(),
            other => IdentityError::Internal(other.to_string()),
        }
    }
}

impl From<diesel::result::Error> for IdentityError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match e {
            Error::NotFound => IdentityError::NotFound,
            Error::DatabaseError(DatabaseErrorKind::ClosedConnection, info) => {
                IdentityError::Unavailable(info.message().to_owned())
            }
            other => IdentityError::Internal(other.to_string()),
        }
    }
}
