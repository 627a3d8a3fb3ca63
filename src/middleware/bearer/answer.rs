//! What a request meets: its bearer token found in its headers, the
//! answers for a refused one (401, or 503 when tokens cannot be checked;
//! 403 for a client's own token where only users are served), and the
//! middleware that puts the check in front of a service's routes.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{AUTHORIZATION, HeaderMap, HeaderValue, WWW_AUTHENTICATE};

use super::TokenCheck;
use crate::kernel::error::Problem;
use crate::middleware::token::{Holder, TokenError};

/// The 401 (or 503) answer for a refused token.
pub fn refusal(error: TokenError) -> Response {
    let status = if error == TokenError::Unavailable {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::UNAUTHORIZED
    };
    let mut response = Problem::new(status, error.code(), "Authentication required")
        .detail(error.to_string())
        .into_response();
    let challenge = if error == TokenError::Missing {
        "Bearer".to_owned()
    } else {
        format!(
            "Bearer error=\"invalid_token\", error_description=\"{}\"",
            error.code()
        )
    };
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(WWW_AUTHENTICATE, v);
    }
    response
}

/// The bearer token of a request, if it carries one.
pub fn bearer(req: &Request) -> Result<&str, TokenError> {
    std::str::from_utf8(bearer_token(req.headers())?)
        .ok()
        .filter(|t| t.is_ascii())
        .ok_or(TokenError::Malformed)
}

/// The bearer token in `headers`, as the bytes sent, spaces around it
/// trimmed. Not checked to be text: only tokens that verified are ever
/// found in memory, and verifying checks that.
pub fn bearer_token(headers: &HeaderMap) -> Result<&[u8], TokenError> {
    let value = headers
        .get(AUTHORIZATION)
        .ok_or(TokenError::Missing)?
        .as_bytes();
    let space = value
        .iter()
        .position(|b| *b == b' ')
        .ok_or(TokenError::Malformed)?;
    let (scheme, token) = value.split_at(space);
    let token = token.trim_ascii();
    if !scheme.eq_ignore_ascii_case(b"bearer") || token.is_empty() {
        return Err(TokenError::Malformed);
    }
    Ok(token)
}

/// Axum middleware: lets a user's request through with its
/// [`token::Principal`] in its extensions, or answers 401. The platform's
/// APIs serve users: a client's own token (the client credentials grant)
/// is refused with 403 `client_token_refused`.
pub async fn require(State(check): State<TokenCheck>, mut req: Request, next: Next) -> Response {
    let verdict = match bearer_token(req.headers()) {
        Ok(token) => check.check(token).await,
        Err(e) => Err(e),
    };
    match verdict {
        Ok(Holder::User(principal)) => {
            crate::kernel::telemetry::set_actor(principal.user_id.as_uuid());
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Ok(Holder::Client { .. }) => client_refused(),
        Err(e) => refusal(e),
    }
}

/// The 403 answer for a client's own token where only users are served.
pub fn client_refused() -> Response {
    Problem::new(
        StatusCode::FORBIDDEN,
        "client_token_refused",
        "This API serves users",
    )
    .detail("a client's own token (client credentials) cannot call the platform's APIs")
    .into_response()
}
