//! RFC 9457 problem details: the one error body every HTTP API answers with.
//! Each service maps its own error enum onto a [`Problem`] through one table
//! (see the service's `error.rs`), so a code means the same thing everywhere.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{CONTENT_TYPE, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A problem+json body. `code` is stable and machine-readable; `type` is the
/// same code as a URN so clients may use either.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Which input field was at fault, when one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The permission the caller lacks, on a 403 `forbidden`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permission: Option<String>,
    #[serde(skip)]
    pub retry_after_secs: Option<u64>,
    /// The gRPC code of the same refusal, when its kind names one; else
    /// the one its status maps to (see [`grpc_code_for`]).
    #[serde(skip)]
    pub grpc: Option<tonic::Code>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, title: impl Into<String>) -> Self {
        Self {
            kind: format!("urn:gatehouse:problem:{code}"),
            title: title.into(),
            status: status.as_u16(),
            code,
            detail: None,
            field: None,
            permission: None,
            retry_after_secs: None,
            grpc: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn permission(mut self, permission: impl Into<String>) -> Self {
        self.permission = Some(permission.into());
        self
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// 403 `forbidden` for a caller without `permission`, which it names:
    /// the one response the gateway and every service give for it.
    pub fn forbidden(permission: &str) -> Self {
        Kind::FORBIDDEN
            .problem()
            .detail(format!("this needs the permission {permission}"))
            .permission(permission)
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "No such resource")
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = self.retry_after_secs;
        let grpc = GrpcForm {
            grpc: self.grpc.unwrap_or_else(|| grpc_code_for(status)),
            code: self.code,
            message: self.detail.clone().unwrap_or_else(|| self.title.clone()),
        };
        let mut response = (status, Json(self)).into_response();
        response.extensions_mut().insert(grpc);
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = retry_after {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// A JSON body extractor whose rejections are problem+json: malformed JSON is
/// 400, a body that is not a JSON object or has a wrong or missing field
/// 422, a missing content type 415, and a body over the limit 413.
///
/// Only an object passes: serde would otherwise fill a struct from an array
/// of its fields in order (`["ann@example.org", "secret"]` for a login),
/// a shape no client is told of and no check looks for.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let value = match Json::<serde_json::Value>::from_request(req, state).await {
            Ok(Json(value)) => value,
            Err(rejection) => return Err(json_problem(&rejection)),
        };
        if !value.is_object() {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                "The request body must be a JSON object",
            ));
        }
        serde_json::from_value(value).map(ApiJson).map_err(|e| {
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                "The request body does not have the expected fields",
            )
            .detail(e.to_string())
        })
    }
}

/// A query-string extractor whose rejection is problem+json: a parameter
/// that is missing, unknown or of the wrong shape is 422 `invalid_query`.
pub struct ApiQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded::from_str(query)
            .map(ApiQuery)
            .map_err(|e| {
                Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_query",
                    "A query parameter is missing, unknown or not valid",
                )
                .detail(e.to_string())
            })
    }
}

fn json_problem(rejection: &JsonRejection) -> Problem {
    match rejection {
        JsonRejection::JsonDataError(e) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "The request body does not have the expected fields",
        )
        .detail(source_message(e)),
        JsonRejection::JsonSyntaxError(_) => Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "The request body is not valid JSON",
        ),
        JsonRejection::MissingJsonContentType(_) => Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Send the body as application/json",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => payload_too_large(),
        other => Problem::new(
            other.status(),
            "bad_request",
            "The request body could not be read",
        ),
    }
}

/// serde's message names the field and what was wrong, without echoing values.
fn source_message(e: &dyn std::error::Error) -> String {
    let mut last = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    last
}

/// One row of a service's error table: what an error kind answers over
/// HTTP and over gRPC. Each service maps its error enum onto rows; the rows
/// more than one service answers with are defined here, once, so that a
/// code means the same status everywhere (auth passes identity's sign-in
/// refusals on by their code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub status: StatusCode,
    /// The stable problem code, also sent over gRPC as `gatehouse-code`.
    pub code: &'static str,
    pub grpc: tonic::Code,
    pub title: &'static str,
}

impl Kind {
    pub const fn new(
        status: StatusCode,
        code: &'static str,
        grpc: tonic::Code,
        title: &'static str,
    ) -> Self {
        Self {
            status,
            code,
            grpc,
            title,
        }
    }

    /// A problem body of this kind, without detail.
    pub fn problem(&self) -> Problem {
        let mut problem = Problem::new(self.status, self.code, self.title);
        problem.grpc = Some(self.grpc);
        problem
    }

    /// A gRPC status of this kind saying `message`.
    pub fn grpc_status(&self, message: String) -> tonic::Status {
        grpc_status(self.grpc, self.code, message)
    }

    pub const VALIDATION_FAILED: Kind = Kind::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        tonic::Code::InvalidArgument,
        "A field is not valid",
    );
    pub const FORBIDDEN: Kind = Kind::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        tonic::Code::PermissionDenied,
        "Forbidden",
    );
    /// A dependency (database, another service) cannot be reached.
    pub const UNAVAILABLE: Kind = Kind::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        tonic::Code::Unavailable,
        "Service temporarily unavailable",
    );
    /// The service is at its capacity; try again shortly.
    pub const OVERLOADED: Kind = Kind::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        tonic::Code::ResourceExhausted,
        "Overloaded",
    );
    pub const INTERNAL: Kind = Kind::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        tonic::Code::Internal,
        "Internal error",
    );
    /// An unknown email and a wrong password alike.
    pub const INVALID_CREDENTIALS: Kind = Kind::new(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        tonic::Code::Unauthenticated,
        "Email or password is wrong",
    );
    pub const TOO_MANY_ATTEMPTS: Kind = Kind::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_attempts",
        tonic::Code::ResourceExhausted,
        "Too many failed sign-ins",
    );
    pub const ACCOUNT_DISABLED: Kind = Kind::new(
        StatusCode::FORBIDDEN,
        "account_disabled",
        tonic::Code::PermissionDenied,
        "Account disabled",
    );
}

/// A gRPC status carrying the same stable code as the HTTP problem, in the
/// `gatehouse-code` metadata.
pub fn grpc_status(grpc: tonic::Code, code: &'static str, message: String) -> tonic::Status {
    let mut status = tonic::Status::new(grpc, message);
    status.metadata_mut().insert(
        "gatehouse-code",
        tonic::metadata::MetadataValue::from_static(code),
    );
    status
}

/// A problem response in the terms of gRPC, carried in the response's
/// extensions: what a server that answers both HTTP and gRPC clients on one
/// route (the gateway) tells a gRPC client instead of a JSON body.
#[derive(Debug, Clone)]
pub struct GrpcForm {
    pub grpc: tonic::Code,
    pub code: &'static str,
    pub message: String,
}

impl GrpcForm {
    /// The gRPC status it says.
    pub fn status(&self) -> tonic::Status {
        grpc_status(self.grpc, self.code, self.message.clone())
    }
}

/// The gRPC code for an HTTP status, for a problem whose kind names none.
pub fn grpc_code_for(status: StatusCode) -> tonic::Code {
    use tonic::Code;
    match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => Code::InvalidArgument,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED => Code::Unimplemented,
        StatusCode::CONFLICT => Code::AlreadyExists,
        StatusCode::PRECONDITION_FAILED => Code::FailedPrecondition,
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::TOO_MANY_REQUESTS => Code::ResourceExhausted,
        StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => Code::DeadlineExceeded,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        s if s.is_client_error() => Code::InvalidArgument,
        _ => Code::Internal,
    }
}

pub fn payload_too_large() -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "The request body is larger than this server accepts",
    )
}
