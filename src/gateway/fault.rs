//! Every answer the gateway makes of its own when it does not forward a
//! request, in one table: HTTP status, stable problem code, title, and
//! whether the client's connection closes after it.
//!
//! Policy: what the client got wrong is a 4xx and never counts against an
//! upstream instance; what an instance got wrong is a 502, 503 or 504 and
//! counts toward ejecting it (see `balance.rs`). A connection closes after
//! an answer when what is left of the request on it cannot be trusted to
//! frame the next one (a body cut short or not read).

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{CONNECTION, HeaderValue};

use crate::kernel::error::Problem;

/// One of the gateway's own answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The path cannot be normalised (encoded separators, bad encoding,
    /// dot segments above the root or with parameters).
    InvalidPath,
    /// The query holds bytes a request line may not carry unencoded.
    InvalidQuery,
    /// The route does not take the method (or the gateway takes it on no
    /// route: CONNECT, TRACE).
    MethodNotAllowed,
    /// More than one `Authorization` field.
    SeveralCredentials,
    /// The request body did not arrive within the route's timeout.
    BodyTimeout,
    /// The request body ended before it was complete.
    BodyIncomplete,
    /// No instance of the route's service is registered and healthy, or
    /// none of those tried could be reached.
    NoInstance,
    /// The instance did not answer within the route's timeout.
    UpstreamTimeout,
    /// The instance failed to answer (closed, reset, malformed answer).
    UpstreamFailed,
    /// The instance's registered address cannot be used.
    BadUpstream,
    /// Authz could not answer a route's permission check.
    AuthzUnavailable,
}

impl Fault {
    /// Status, problem code, title, and whether the connection closes.
    fn parts(self) -> (StatusCode, &'static str, &'static str, bool) {
        use Fault::*;
        match self {
            InvalidPath => (
                StatusCode::BAD_REQUEST,
                "invalid_path",
                "The request path is not valid",
                false,
            ),
            InvalidQuery => (
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "The request query holds characters that must be percent-encoded",
                false,
            ),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed on this route",
                false,
            ),
            SeveralCredentials => (
                StatusCode::BAD_REQUEST,
                "several_credentials",
                "The request carries more than one Authorization field",
                false,
            ),
            BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "The request body did not arrive in time",
                true,
            ),
            BodyIncomplete => (
                StatusCode::BAD_REQUEST,
                "body_incomplete",
                "The request body ended before it was complete",
                true,
            ),
            NoInstance => (
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_unavailable",
                "No instance of the service is available",
                false,
            ),
            UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "The service did not answer in time",
                false,
            ),
            UpstreamFailed => (
                StatusCode::BAD_GATEWAY,
                "upstream_failed",
                "The service failed to answer",
                false,
            ),
            BadUpstream => (
                StatusCode::BAD_GATEWAY,
                "bad_upstream",
                "The upstream address is not valid",
                false,
            ),
            AuthzUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "authz_unavailable",
                "The permission check could not be made; try again",
                false,
            ),
        }
    }

    /// The HTTP status of the answer.
    pub fn status(self) -> StatusCode {
        self.parts().0
    }

    /// The stable problem code.
    pub fn code(self) -> &'static str {
        self.parts().1
    }

    /// Whether the client's connection closes after the answer.
    pub fn closes(self) -> bool {
        self.parts().3
    }

    /// Every fault, for the API document and the table's tests.
    pub const ALL: [Fault; 11] = [
        Fault::InvalidPath,
        Fault::InvalidQuery,
        Fault::MethodNotAllowed,
        Fault::SeveralCredentials,
        Fault::BodyTimeout,
        Fault::BodyIncomplete,
        Fault::NoInstance,
        Fault::UpstreamTimeout,
        Fault::UpstreamFailed,
        Fault::BadUpstream,
        Fault::AuthzUnavailable,
    ];
}

impl IntoResponse for Fault {
    fn into_response(self) -> Response {
        let (status, code, title, closes) = self.parts();
        let mut response = Problem::new(status, code, title).into_response();
        if closes {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// The answer to a caller without a route's permission: 403 `forbidden`,
/// naming it.
pub fn forbidden(permission: &str) -> Response {
    Problem::forbidden(permission).into_response()
}

/// 403 for a request on a route with rules that none of them covers, by
/// path or by method.
pub fn uncovered() -> Response {
    Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden")
        .detail("no rule of this route lets this method reach this path")
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_fault_has_its_own_code_and_the_clients_are_4xx() {
        let mut codes = std::collections::HashSet::new();
        for fault in Fault::ALL {
            assert!(codes.insert(fault.code()), "{fault:?} shares its code");
            let client = matches!(
                fault,
                Fault::InvalidPath
                    | Fault::InvalidQuery
                    | Fault::MethodNotAllowed
                    | Fault::SeveralCredentials
                    | Fault::BodyTimeout
                    | Fault::BodyIncomplete
            );
            assert_eq!(fault.status().is_client_error(), client, "{fault:?}");
        }
        let answer = Fault::BodyTimeout.into_response();
        assert_eq!(answer.headers()[CONNECTION], "close");
        assert!(
            Fault::NoInstance
                .into_response()
                .headers()
                .get(CONNECTION)
                .is_none()
        );
    }
}
