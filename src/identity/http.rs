//! Identity's public HTTP API. Thin handlers: decode, call the service,
//! encode. Bodies reject unknown fields so a typo is an error, not a no-op.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};

use super::error::IdentityError;
use super::password::Password;
use super::service::{Identity, Registration, User};
use crate::kernel::error::ApiJson;

pub fn routes(identity: Identity) -> Router {
    Router::new()
        .route("/v1/users", post(register))
        .route("/v1/password-resets", post(request_reset))
        .route("/v1/password-resets/confirm", post(confirm_reset))
        .route("/v1/email-verifications", post(request_verification))
        .route(
            "/v1/email-verifications/confirm",
            post(confirm_verification),
        )
        .with_state(identity)
}

/// A user as the public API shows it.
#[derive(Debug, Serialize)]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub display_name: String,
    pub status: &'static str,
    pub email_verified: bool,
    pub created_at: String,
    pub updated_at: String,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    email: String,
    password: String,
    display_name: String,
}

async fn register(
    State(identity): State<Identity>,
    ApiJson(body): ApiJson<RegisterBody>,
) -> Result<impl IntoResponse, IdentityError> {
    let user = identity
        .register(Registration {
            email: body.email,
            password: Password::new(body.password),
            display_name: body.display_name,
        })
        .await?;
    let location = format!("/v1/users/{}", user.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location), (header::ETAG, etag(&user))],
        axum::Json(UserView::from(&user)),
    ))
}

/// The `ETag` of a user: its version, quoted.
pub fn etag(user: &User) -> String {
    format!("\"{}\"", user.version)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailBody {
    email: String,
}

async fn request_reset(
    State(identity): State<Identity>,
    ApiJson(body): ApiJson<EmailBody>,
) -> Result<StatusCode, IdentityError> {
    identity.request_password_reset(&body.email).await?;
    Ok(StatusCode::ACCEPTED)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfirmResetBody {
    token: String,
    new_password: String,
}

async fn confirm_reset(
    State(identity): State<Identity>,
    ApiJson(body): ApiJson<ConfirmResetBody>,
) -> Result<StatusCode, IdentityError> {
    identity
        .reset_password(&body.token, &Password::new(body.new_password))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn request_verification(
    State(identity): State<Identity>,
    ApiJson(body): ApiJson<EmailBody>,
) -> Result<StatusCode, IdentityError> {
    identity.request_verification(&body.email).await?;
    Ok(StatusCode::ACCEPTED)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    token: String,
}

async fn confirm_verification(
    State(identity): State<Identity>,
    ApiJson(body): ApiJson<TokenBody>,
) -> Result<impl IntoResponse, IdentityError> {
    let user = identity.verify_email(&body.token).await?;
    Ok(axum::Json(UserView::from(&user)))
}
