//! The audit service's one error type.
//!
//! Policy: input problems are the caller's (422, nothing read); a caller
//! without `audit:read` gets 403; a database or an authz that cannot be
//! reached is 503; anything else the store meets is the platform's fault
//! (500, logged). What verification finds is not an error: it is the
//! answer.

use crate::kernel::db::DbError;
use crate::kernel::error::{Kind, Problem};
use crate::kernel::paging::PageError;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Db(#[from] DbError),
    /// The key could not sign (it is not an Ed25519 key).
    #[error(transparent)]
    Signing(#[from] super::keys::KeyError),
    /// The witness (the newest checkpoint outside the database) could not
    /// be read or written.
    #[error("audit witness: {0}")]
    Witness(#[from] super::witness::WitnessError),
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
    /// The error's row in the table: HTTP status, stable code, gRPC code
    /// and title, the same over HTTP and gRPC.
    fn kind(&self) -> Kind {
        match self {
            AuditError::Invalid { .. } => Kind::VALIDATION_FAILED,
            AuditError::Forbidden(_) => Kind::FORBIDDEN,
            AuditError::Db(DbError::Unavailable(_)) | AuditError::AuthzUnavailable(_) => {
                Kind::UNAVAILABLE
            }
            _ => Kind::INTERNAL,
        }
    }

    /// Logs what the caller is not told: a dependency away, or a fault.
    fn log(&self) {
        match self.kind().grpc {
            tonic::Code::Unavailable => {
                tracing::warn!(error = %self, "audit dependency unavailable");
            }
            tonic::Code::Internal => tracing::error!(error = %self, "audit internal error"),
            _ => {}
        }
    }

    pub fn to_problem(&self) -> Problem {
        self.log();
        let problem = self.kind().problem();
        match self {
            AuditError::Invalid { field, message } => problem.field(*field).detail(message),
            AuditError::Forbidden(permission) => Problem::forbidden(permission),
            AuditError::Db(DbError::Unavailable(_)) | AuditError::AuthzUnavailable(_) => {
                problem.retry_after(1)
            }
            _ => problem,
        }
    }

    /// The same error over gRPC, through [`crate::kernel::error::grpc_status`]:
    /// the stable code travels in `gatehouse-code`; a fault says no more
    /// than its title.
    pub fn to_status(&self) -> tonic::Status {
        self.log();
        let kind = self.kind();
        let message = match self {
            AuditError::Invalid { field, message } => format!("{field}: {message}"),
            AuditError::Forbidden(_) => self.to_string(),
            _ => kind.title.to_owned(),
        };
        kind.grpc_status(message)
    }
}

impl axum::response::IntoResponse for AuditError {
    fn into_response(self) -> axum::response::Response {
        self.to_problem().into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_errors_carry_the_same_code_as_http_and_say_no_more_of_faults() {
        let invalid = AuditError::Invalid {
            field: "entries[0].action",
            message: "must not be empty".into(),
        };
        let status = invalid.to_status();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "entries[0].action: must not be empty");
        assert_eq!(
            status.metadata().get("gatehouse-code").unwrap(),
            "validation_failed"
        );
        assert_eq!(invalid.to_problem().status, 422);

        let away = AuditError::AuthzUnavailable("connection refused".into());
        let status = away.to_status();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(
            status.metadata().get("gatehouse-code").unwrap(),
            "unavailable"
        );
        assert!(
            !status.message().contains("refused"),
            "{}",
            status.message()
        );

        let fault = AuditError::Signing(super::super::keys::KeyError::NotEd25519);
        let status = fault.to_status();
        assert_eq!(status.code(), tonic::Code::Internal);
        assert_eq!(status.message(), "Internal error");
    }
}
