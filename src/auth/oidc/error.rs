//! The provider's errors in OAuth's own form (RFC 6749 §5.2): a JSON
//! object with `error` and `error_description`, not problem+json, since
//! relying-party libraries read these names.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::error::AuthError;

/// An error of the token, introspection, revocation or userinfo endpoint.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("{0}")]
    InvalidRequest(String),
    /// The client is unknown or its authentication failed; `basic` when it
    /// tried `Authorization: Basic`, which is then asked for again.
    #[error("client authentication failed")]
    InvalidClient { basic: bool },
    #[error("{0}")]
    InvalidGrant(String),
    #[error("{0}")]
    UnauthorizedClient(String),
    #[error("the grant type is not supported")]
    UnsupportedGrantType,
    #[error("{0}")]
    InvalidScope(String),
    /// The bearer token of a userinfo request is missing, expired or revoked.
    #[error("the access token is missing, expired or revoked")]
    InvalidToken,
    #[error("the access token was not granted the openid scope")]
    InsufficientScope,
    #[error("{0}")]
    SlowDown(String),
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl OAuthError {
    fn parts(&self) -> (StatusCode, &'static str) {
        use OAuthError::*;
        match self {
            InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            InvalidClient { .. } => (StatusCode::UNAUTHORIZED, "invalid_client"),
            InvalidGrant(_) => (StatusCode::BAD_REQUEST, "invalid_grant"),
            UnauthorizedClient(_) => (StatusCode::BAD_REQUEST, "unauthorized_client"),
            UnsupportedGrantType => (StatusCode::BAD_REQUEST, "unsupported_grant_type"),
            InvalidScope(_) => (StatusCode::BAD_REQUEST, "invalid_scope"),
            InvalidToken => (StatusCode::UNAUTHORIZED, "invalid_token"),
            InsufficientScope => (StatusCode::FORBIDDEN, "insufficient_scope"),
            SlowDown(_) => (StatusCode::TOO_MANY_REQUESTS, "slow_down"),
            Auth(AuthError::Unavailable(_) | AuthError::Overloaded { .. }) => {
                (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
            }
            Auth(AuthError::Token(_)) => (StatusCode::UNAUTHORIZED, "invalid_token"),
            Auth(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let description = match &self {
            OAuthError::Auth(e @ (AuthError::Internal(_) | AuthError::Unavailable(_))) => {
                // Logged here; the client is told no more.
                e.log_if_ours();
                "the provider cannot answer now".to_owned()
            }
            other => other.to_string(),
        };
        let mut response = (
            status,
            [
                (header::CACHE_CONTROL, "no-store"),
                (header::PRAGMA, "no-cache"),
            ],
            axum::Json(json!({ "error": code, "error_description": description })),
        )
            .into_response();
        let challenge = match &self {
            OAuthError::InvalidClient { basic: true } => Some("Basic realm=\"gatehouse\"".into()),
            OAuthError::InvalidToken | OAuthError::Auth(AuthError::Token(_)) => {
                Some("Bearer error=\"invalid_token\"".to_owned())
            }
            OAuthError::InsufficientScope => {
                Some("Bearer error=\"insufficient_scope\", scope=\"openid\"".to_owned())
            }
            _ => None,
        };
        if let Some(value) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        if let OAuthError::Auth(AuthError::Unavailable(_) | AuthError::Overloaded { .. })
        | OAuthError::SlowDown(_) = &self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<crate::kernel::db::DbError> for OAuthError {
    fn from(e: crate::kernel::db::DbError) -> Self {
        OAuthError::Auth(e.into())
    }
}
