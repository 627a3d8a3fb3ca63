//! Identity's public HTTP API. Thin handlers: decode, call the service,
//! encode. Bodies reject unknown fields so a typo is an error, not a no-op.
//! [`ApiDoc`] describes these routes as OpenAPI 3.1; the attributes on each
//! handler are that description. [`api_doc`] adds the configured password
//! rule to it, and is what is served at `/openapi.json`.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::error::IdentityError;
use super::password::Password;
use super::service::{Identity, Registration, User, UserId};
use crate::kernel::error::{ApiJson, Problem};
use crate::kernel::openapi::{BearerScheme, CommonResponses};
use crate::middleware::bearer::{self, TokenCheck};
use crate::middleware::token::Principal;

/// The description of identity's public HTTP API, with the password rule
/// of `policy` stated on every password a body carries.
pub fn api_doc(policy: &super::config::PasswordPolicy) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    // JSON Schema counts characters; a password within the byte limit at
    // four bytes a character passes whatever it is made of.
    let max = policy.max_length.min(policy.max_bytes / 4);
    crate::kernel::openapi::constrain_strings(
        &mut doc,
        &[
            ("RegisterBody", "password"),
            ("PasswordBody", "new_password"),
            ("ConfirmResetBody", "new_password"),
        ],
        policy.min_length,
        max,
    );
    doc
}

/// The description of identity's public HTTP API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "gatehouse identity",
        description = "Users: registration, profile, passwords, email verification."
    ),
    paths(
        register,
        request_reset,
        confirm_reset,
        request_verification,
        confirm_verification,
        me,
        update_me,
        delete_me,
        change_my_password
    ),
    modifiers(&BearerScheme, &CommonResponses),
    tags((name = "identity", description = "Users and their credentials"))
)]
pub struct ApiDoc;

/// The public routes; the `/v1/users/me` ones need a bearer token that
/// `check` accepts.
pub fn routes(identity: Identity, check: TokenCheck) -> Router {
    let signed_in = signed_in_routes()
        .route_layer(axum::middleware::from_fn_with_state(check, bearer::require));
    Router::new()
        .route("/v1/users", post(register))
        .route("/v1/password-resets", post(request_reset))
        .route("/v1/password-resets/confirm", post(confirm_reset))
        .route("/v1/email-verifications", post(request_verification))
        .route(
            "/v1/email-verifications/confirm",
            post(confirm_verification),
        )
        .merge(signed_in)
        .with_state(identity)
}

/// The routes that act for the signed-in user, without the layer that puts
/// the [`Principal`] into the request: whoever serves them adds it.
pub fn signed_in_routes() -> Router<Identity> {
    Router::new()
        .route("/v1/users/me", get(me).patch(update_me).delete(delete_me))
        .route("/v1/users/me/password", post(change_my_password))
}

/// A user as the public API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    #[schema(format = Uuid)]
    pub id: String,
    #[schema(format = Email)]
    pub email: String,
    pub display_name: String,
    /// `active` or `disabled`.
    pub status: &'static str,
    pub email_verified: bool,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// Grows with every change; sent back in `If-Match`.
    pub version: i64,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        Self {
            id: u.id.to_string(),
            email: u.email.clone(),
            display_name: u.display_name.clone(),
            status: u.status.as_str(),
            email_verified: u.email_verified,
            created_at: u.created_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            updated_at: u.updated_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            version: u.version,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    #[schema(format = Email, max_length = 254)]
    email: String,
    password: String,
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]*[^\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb\s][^\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]*$"
    )]
    display_name: String,
}

#[utoipa::path(
    post,
    path = "/v1/users",
    tag = "identity",
    request_body = RegisterBody,
    responses(
        (status = 201, description = "The new user", body = UserView, headers(
            ("etag" = String, description = "The user's version"),
            ("location" = String, description = "Where the user lives"),
        )),
        (status = 400, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 202, description = "With `identity.conceal_existing_accounts`: taken, with an empty body, whether or not the address had an account; a new address gets its account and verification link, an existing account's owner a notice"),
        (status = 403, description = "Registration is closed", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The email address is taken (not with `identity.conceal_existing_accounts`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing or invalid", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn register(
    State(identity): State<Identity>,
    ApiJson(body): ApiJson<RegisterBody>,
) -> Result<Response, IdentityError> {
    let registration = Registration {
        email: body.email,
        password: Password::new(body.password),
        display_name: body.display_name,
    };
    if identity.conceals_accounts() {
        identity.register_concealed(registration).await?;
        return Ok(StatusCode::ACCEPTED.into_response());
    }
    let user = identity.register(registration).await?;
    let location = format!("/v1/users/{}", user.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location), (header::ETAG, etag(&user))],
        axum::Json(UserView::from(&user)),
    )
        .into_response())
}

/// The `ETag` of a user: its version, quoted.
pub fn etag(user: &User) -> String {
    format!("\"{}\"", user.version)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct EmailBody {
    #[schema(format = Email, max_length = 254)]
    email: String,
}

#[utoipa::path(
    post,
    path = "/v1/password-resets",
    tag = "identity",
    request_body = EmailBody,
    responses(
        (status = 202, description = "A reset link is on its way if the address has an account"),
        (status = 422, description = "The address is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Too many link requests are waiting; try again later", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn request_reset(
    State(identity): State<Identity>,
    ApiJson(body): ApiJson<EmailBody>,
) -> Result<StatusCode, IdentityError> {
    identity.request_password_reset(&body.email).await?;
    Ok(StatusCode::ACCEPTED)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ConfirmResetBody {
    token: String,
    new_password: String,
}

#[utoipa::path(
    post,
    path = "/v1/password-resets/confirm",
    tag = "identity",
    request_body = ConfirmResetBody,
    responses(
        (status = 204, description = "The password is changed and every session ended"),
        (status = 400, description = "The token is unknown, used or expired", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The new password is not acceptable", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn confirm_reset(
    State(identity): State<Identity>,
    ApiJson(body): ApiJson<ConfirmResetBody>,
) -> Result<StatusCode, IdentityError> {
    identity
        .reset_password(&body.token, &Password::new(body.new_password))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/v1/email-verifications",
    tag = "identity",
    request_body = EmailBody,
    responses(
        (status = 202, description = "A verification link is on its way if the address has an account"),
        (status = 422, description = "The address is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Too many link requests are waiting; try again later", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn request_verification(
    State(identity): State<Identity>,
    ApiJson(body): ApiJson<EmailBody>,
) -> Result<StatusCode, IdentityError> {
    identity.request_verification(&body.email).await?;
    Ok(StatusCode::ACCEPTED)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    token: String,
}

#[utoipa::path(
    post,
    path = "/v1/email-verifications/confirm",
    tag = "identity",
    request_body = TokenBody,
    responses(
        (status = 200, description = "The user, its address verified", body = UserView),
        (status = 400, description = "The token is unknown, used or expired", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn confirm_verification(
    State(identity): State<Identity>,
    ApiJson(body): ApiJson<TokenBody>,
) -> Result<impl IntoResponse, IdentityError> {
    let user = identity.verify_email(&body.token).await?;
    Ok(axum::Json(UserView::from(&user)))
}

/// The user with its `ETag`.
pub(super) fn with_etag(user: &User) -> axum::response::Response {
    ([(header::ETAG, etag(user))], Json(UserView::from(user))).into_response()
}

#[utoipa::path(
    get,
    path = "/v1/users/me",
    tag = "identity",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The signed-in user", body = UserView, headers(
            ("etag" = String, description = "The user's version"),
        )),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The user is gone (its token is refused once the session's end has reached this service)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn me(
    State(identity): State<Identity>,
    Extension(p): Extension<Principal>,
) -> Result<impl IntoResponse, IdentityError> {
    Ok(with_etag(
        &identity.get_user(UserId(p.user_id.as_uuid())).await?,
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ProfileBody {
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]*[^\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb\s][^\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]*$"
    )]
    display_name: Option<String>,
}

/// `If-Match: "N"` (or `W/"N"`) as a version; `*` matches any. Anything
/// else is refused, as the API document's pattern for the field says.
pub(super) fn if_match(headers: &axum::http::HeaderMap) -> Result<Option<i64>, IdentityError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let refused = || IdentityError::invalid("If-Match", "must be an ETag this API gave out");
    let text = value.as_bytes();
    // An empty field names no version: as if there were none.
    if text == b"*" || text.trim_ascii().is_empty() {
        return Ok(None);
    }
    let quoted = text.strip_prefix(b"W/").unwrap_or(text);
    let digits = quoted
        .strip_prefix(b"\"")
        .and_then(|rest| rest.strip_suffix(b"\""))
        .filter(|d| (1..=MAX_VERSION_DIGITS).contains(&d.len()) && d.iter().all(u8::is_ascii_digit))
        .ok_or_else(refused)?;
    std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .map(Some)
        .ok_or_else(refused)
}

/// The most digits of a version an `If-Match` may carry.
const MAX_VERSION_DIGITS: usize = 18;

#[utoipa::path(
    patch,
    path = "/v1/users/me",
    tag = "identity",
    security(("bearer" = [])),
    params(("if-match" = Option<String>, Header, pattern = r#"^(|\*|(W/)?"[0-9]{1,18}")$"#, description = "The ETag last seen (`\"N\"`), or `*`; the change is refused if the user changed since")),
    request_body = ProfileBody,
    responses(
        (status = 200, description = "The changed user", body = UserView, headers(
            ("etag" = String, description = "The user's new version"),
        )),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The user changed since that ETag", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is invalid", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn update_me(
    State(identity): State<Identity>,
    Extension(p): Extension<Principal>,
    headers: axum::http::HeaderMap,
    ApiJson(body): ApiJson<ProfileBody>,
) -> Result<impl IntoResponse, IdentityError> {
    let expected = if_match(&headers)?;
    let user = identity
        .update_profile(UserId(p.user_id.as_uuid()), body.display_name, expected)
        .await?;
    Ok(with_etag(&user))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PasswordBody {
    current_password: String,
    new_password: String,
}

#[utoipa::path(
    post,
    path = "/v1/users/me/password",
    tag = "identity",
    security(("bearer" = [])),
    request_body = PasswordBody,
    responses(
        (status = 204, description = "Changed; every other session ended"),
        (status = 401, description = "No valid bearer token, or the current password is wrong", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The new password is not acceptable", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn change_my_password(
    State(identity): State<Identity>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<PasswordBody>,
) -> Result<StatusCode, IdentityError> {
    identity
        .change_password(
            UserId(p.user_id.as_uuid()),
            &Password::new(body.current_password),
            &Password::new(body.new_password),
            Some(p.session_id.as_uuid()),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    delete,
    path = "/v1/users/me",
    tag = "identity",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "The user and its sessions are gone"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The user is gone already (its token is refused once the session's end has reached this service)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_me(
    State(identity): State<Identity>,
    Extension(p): Extension<Principal>,
) -> Result<StatusCode, IdentityError> {
    identity.delete_user(UserId(p.user_id.as_uuid())).await?;
    Ok(StatusCode::NO_CONTENT)
}
