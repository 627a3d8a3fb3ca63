//! The auth service's one error type and its table: HTTP status, stable
//! problem code and gRPC code per variant.
//!
//! Policy: the same response for an unknown email and a wrong password; token
//! problems carry the token check's reason code; a dependency that cannot
//! be reached (database, identity) is 503.

use http::StatusCode;
use tonic::Code;

use crate::kernel::db::DbError;
use crate::kernel::error::Kind;
use crate::middleware::bearer;
use crate::middleware::token::TokenError;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("email or password is wrong")]
    InvalidCredentials,
    #[error("too many failed sign-ins; try again after the wait")]
    TooManyAttempts { retry_after_secs: u64 },
    #[error("the account is disabled")]
    Disabled,
    #[error("the refresh token is unknown, expired or its session has ended")]
    InvalidRefreshToken,
    #[error("the refresh token was already used; the session has been ended")]
    RefreshReused,
    #[error("{0}")]
    Token(TokenError),
    #[error("no such session")]
    SessionNotFound,
    #[error("no such client")]
    ClientNotFound,
    #[error("no consent was given to this client")]
    ConsentNotFound,
    /// The caller lacks this permission.
    #[error("you may not do this")]
    Forbidden(&'static str),
    #[error("service unavailable")]
    Unavailable(String),
    /// A service this request needs is at its capacity; try again shortly.
    #[error("too many requests are being served; try again shortly")]
    Overloaded { retry_after_secs: u64 },
    #[error("internal error")]
    Internal(String),
}

impl AuthError {
    fn kind(&self) -> Kind {
        use AuthError::*;
        match self {
            Invalid { .. } => Kind::VALIDATION_FAILED,
            InvalidCredentials => Kind::INVALID_CREDENTIALS,
            TooManyAttempts { .. } => Kind::TOO_MANY_ATTEMPTS,
            Disabled => Kind::ACCOUNT_DISABLED,
            InvalidRefreshToken => Kind::new(
                StatusCode::UNAUTHORIZED,
                "invalid_refresh_token",
                Code::Unauthenticated,
                "Refresh token not accepted",
            ),
            RefreshReused => Kind::new(
                StatusCode::UNAUTHORIZED,
                "refresh_token_reused",
                Code::Unauthenticated,
                "Refresh token reused",
            ),
            Token(e) => Kind::new(
                StatusCode::UNAUTHORIZED,
                e.code(),
                Code::Unauthenticated,
                "Authentication required",
            ),
            SessionNotFound => Kind::new(
                StatusCode::NOT_FOUND,
                "session_not_found",
                Code::NotFound,
                "No such session",
            ),
            ClientNotFound => Kind::new(
                StatusCode::NOT_FOUND,
                "client_not_found",
                Code::NotFound,
                "No such client",
            ),
            ConsentNotFound => Kind::new(
                StatusCode::NOT_FOUND,
                "consent_not_found",
                Code::NotFound,
                "No such consent",
            ),
            Forbidden(_) => Kind::FORBIDDEN,
            Unavailable(_) => Kind::UNAVAILABLE,
            Overloaded { .. } => Kind::OVERLOADED,
            Internal(_) => Kind::INTERNAL,
        }
    }

    pub(super) fn log_if_ours(&self) {
        match self {
            AuthError::Internal(e) => tracing::error!(error = %e, "auth internal error"),
            AuthError::Unavailable(e) => tracing::warn!(error = %e, "auth dependency unavailable"),
            _ => {}
        }
    }

    pub fn to_status(&self) -> tonic::Status {
        self.log_if_ours();
        let kind = self.kind();
        let message = match self {
            AuthError::Internal(_) | AuthError::Unavailable(_) => kind.title.to_owned(),
            other => other.to_string(),
        };
        kind.grpc_status(message)
    }
}

impl axum::response::IntoResponse for AuthError {
    fn into_response(self) -> axum::response::Response {
        self.log_if_ours();
        if let AuthError::Token(e) = self {
            return bearer::refusal(e);
        }
        let problem = self.kind().problem();
        let problem = match &self {
            AuthError::Invalid { field, message } => problem.field(*field).detail(message),
            AuthError::TooManyAttempts { retry_after_secs }
            | AuthError::Overloaded { retry_after_secs } => problem
                .detail(self.to_string())
                .retry_after(*retry_after_secs),
            AuthError::Unavailable(_) => problem.retry_after(1),
            AuthError::Internal(_) => problem,
            AuthError::Forbidden(permission) => {
                crate::kernel::error::Problem::forbidden(permission)
            }
            other => problem.detail(other.to_string()),
        };
        problem.into_response()
    }
}

impl From<AuthError> for tonic::Status {
    fn from(e: AuthError) -> Self {
        e.to_status()
    }
}

/// Faults of the platform's own making: a key that cannot be used, a
/// token that cannot be signed. Logged, never told.
macro_rules! internal_from {
    ($($error:ty),*) => {$(
        impl From<$error> for AuthError {
            fn from(e: $error) -> Self {
                AuthError::Internal(e.to_string())
            }
        }
    )*};
}
internal_from!(
    super::oidc::jws::JwsError,
    crate::kernel::seal::SealError,
    crate::middleware::token::SignError,
    pasetors::errors::Error
);

impl From<TokenError> for AuthError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Unavailable => AuthError::Unavailable("token keys".into()),
            other => AuthError::Token(other),
        }
    }
}

impl From<crate::middleware::permit::PermitError> for AuthError {
    fn from(e: crate::middleware::permit::PermitError) -> Self {
        AuthError::Unavailable(e.to_string())
    }
}

impl From<DbError> for AuthError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable(m) => AuthError::Unavailable(m),
            DbError::Query(q) => q.into(),
            other => AuthError::Internal(other.to_string()),
        }
    }
}

impl From<diesel::result::Error> for AuthError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match e {
            Error::DatabaseError(DatabaseErrorKind::ClosedConnection, info) => {
                AuthError::Unavailable(info.message().to_owned())
            }
            other => AuthError::Internal(other.to_string()),
        }
    }
}
