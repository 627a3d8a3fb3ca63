//! Every response the gateway makes of its own when it does not forward a
//! request, in one table: HTTP status, stable problem code, gRPC code,
//! title, and whether the client's connection closes after it. A gRPC
//! client gets each of the gateway's own responses in gRPC form
//! ([`in_grpc_form`]).
//!
//! Policy: what the client got wrong is a 4xx and never counts against an
//! upstream instance; what an instance got wrong is a 502, 503 or 504 and
//! counts toward ejecting it (see `balance.rs`). A connection closes after
//! a response when what is left of the request on it cannot be trusted to
//! frame the next one (a body cut short or not read).

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{CONNECTION, HeaderValue};

use tonic::Code;

use crate::kernel::error::{GrpcForm, Kind, Problem};

/// One of the gateway's own responses.
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
    /// The instance failed to answer (closed, reset, malformed response).
    UpstreamFailed,
    /// The instance's registered address cannot be used.
    BadUpstream,
    /// Authz could not answer a route's permission check.
    AuthzUnavailable,
}

impl Fault {
    /// The fault's row (status, problem code, gRPC code, title), and
    /// whether the connection closes.
    fn parts(self) -> (Kind, bool) {
        use Fault::*;
        match self {
            InvalidPath => (
                Kind::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_path",
                    Code::InvalidArgument,
                    "The request path is not valid",
                ),
                false,
            ),
            InvalidQuery => (
                Kind::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    Code::InvalidArgument,
                    "The request query holds characters that must be percent-encoded",
                ),
                false,
            ),
            MethodNotAllowed => (
                Kind::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    Code::Unimplemented,
                    "Method not allowed on this route",
                ),
                false,
            ),
            SeveralCredentials => (
                Kind::new(
                    StatusCode::BAD_REQUEST,
                    "several_credentials",
                    Code::InvalidArgument,
                    "The request carries more than one Authorization field",
                ),
                false,
            ),
            BodyTimeout => (
                Kind::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    Code::DeadlineExceeded,
                    "The request body did not arrive in time",
                ),
                true,
            ),
            BodyIncomplete => (
                Kind::new(
                    StatusCode::BAD_REQUEST,
                    "body_incomplete",
                    Code::InvalidArgument,
                    "The request body ended before it was complete",
                ),
                true,
            ),
            NoInstance => (
                Kind::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream_unavailable",
                    Code::Unavailable,
                    "No instance of the service is available",
                ),
                false,
            ),
            UpstreamTimeout => (
                Kind::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    Code::DeadlineExceeded,
                    "The service did not answer in time",
                ),
                false,
            ),
            UpstreamFailed => (
                Kind::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_failed",
                    Code::Unavailable,
                    "The service failed to answer",
                ),
                false,
            ),
            BadUpstream => (
                Kind::new(
                    StatusCode::BAD_GATEWAY,
                    "bad_upstream",
                    Code::Internal,
                    "The upstream address is not valid",
                ),
                false,
            ),
            AuthzUnavailable => (
                Kind::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "authz_unavailable",
                    Code::Unavailable,
                    "The permission check could not be made; try again",
                ),
                false,
            ),
        }
    }

    /// The HTTP status of the response.
    pub fn status(self) -> StatusCode {
        self.parts().0.status
    }

    /// The stable problem code.
    pub fn code(self) -> &'static str {
        self.parts().0.code
    }

    /// Whether the client's connection closes after the response.
    pub fn closes(self) -> bool {
        self.parts().1
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
        let (kind, closes) = self.parts();
        let mut response = kind.problem().into_response();
        if closes {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Whether the request is a gRPC call, by its content type.
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// `response` as a gRPC client reads it, when it is one of the gateway's
/// own problem responses: a trailers-only gRPC response (HTTP 200, the code
/// in `grpc-status`, the stable problem code in `gatehouse-code`), keeping
/// its `Retry-After` and rate limit fields. Any other response, one from
/// an instance above all, passes unchanged.
pub fn in_grpc_form(response: Response) -> Response {
    let Some(form) = response.extensions().get::<GrpcForm>() else {
        return response;
    };
    let grpc = form.status().into_http::<axum::body::Body>();
    let (mut parts, _) = response.into_parts();
    parts.status = StatusCode::OK;
    // `Connection: close` stays: HTTP/2 drops it, and on HTTP/1.1 the
    // rest of the request still cannot frame a next one.
    parts.headers.remove(http::header::CONTENT_LENGTH);
    parts.headers.extend(grpc.headers().clone());
    Response::from_parts(parts, axum::body::Body::empty())
}

/// The response to a caller without a route's permission: 403 `forbidden`,
/// naming it.
pub fn forbidden(permission: &str) -> Response {
    Problem::forbidden(permission).into_response()
}

/// 403 for a request on a route with rules that none of them covers, by
/// path or by method.
pub fn uncovered() -> Response {
    Kind::FORBIDDEN
        .problem()
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
        let response = Fault::BodyTimeout.into_response();
        assert_eq!(response.headers()[CONNECTION], "close");
        assert!(
            Fault::NoInstance
                .into_response()
                .headers()
                .get(CONNECTION)
                .is_none()
        );
    }
}
