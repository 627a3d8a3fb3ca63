//! The audit service's one error type.
//!
//! Policy: input problems are the caller's (422, nothing read); a caller
//! without `audit:read` gets 403; a database or an authz that cannot be
//! reached is 503; anything else the store meets is the platform's fault
//! (500, logged). What verification finds is not an error: it is the
//! answer.

use http::StatusCode;

use crate::kernel::db::DbError;
use crate::kernel::error::Problem;
use crate::kernel::paging::PageError;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Db(#[from] DbError),
    /// The key could not sign (it is not an Ed25519 key).
    #[error("cannot sign a checkpoint: {0}")]
    Signing(String),
    /// The witness (the newest checkpoint outside the database) could not
    /// be read or written.
    #[error("audit witness: {0}")]
    Witness(String),
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The caller lacks the permission the request needs.
    #[error("this needs the permission {0}")]
    Forbidden(&'static str),
    /// Authz could not answer whether the caller may.
    #[error("authz is unavailable: {0}")]
    AuthzUnavailable(String),
}

impl From<diesel::result::Error> for AuditError {
    fn from(e: diesel::result::Error) -> Self {
        AuditError::Db(DbError::Query(e))
    }
}

impl From<PageError> for AuditError {
    fn from(e: PageError) -> Self {
        AuditError::Invalid {
            field: e.field,
            message: e.message.to_owned(),
        }
    }
}

impl From<crate::middleware::permit::PermitError> for AuditError {
    fn from(e: crate::middleware::permit::PermitError) -> Self {
        AuditError::AuthzUnavailable(e.to_string())
    }
}

impl AuditError {
    pub fn to_problem(&self) -> Problem {
        match self {
            AuditError::Invalid { field, message } => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                "A field is not valid",
            )
            .field(*field)
            .detail(message),
            AuditError::Forbidden(permission) => Problem::forbidden(permission),
            AuditError::Db(DbError::Unavailable(e)) | AuditError::AuthzUnavailable(e) => {
                tracing::warn!(error = %e, "audit dependency unavailable");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "Service temporarily unavailable",
                )
                .retry_after(1)
            }
            other => {
                tracing::error!(error = %other, "audit internal error");
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal error",
                )
            }
        }
    }
}

impl axum::response::IntoResponse for AuditError {
    fn into_response(self) -> axum::response::Response {
        self.to_problem().into_response()
    }
}
