//! Auth's public HTTP API. Thin handlers: decode, call the service, encode.
//! Routes that need a signed-in caller check the bearer token against the
//! session table (auth is the authority on its own sessions).
//! [`ApiDoc`] describes these routes as OpenAPI 3.1, served at
//! `/openapi.json`; the attributes on each handler are that description.

use axum::Json;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::error::AuthError;
use super::service::{Auth, TokenPair};
use crate::kernel::error::{ApiJson, Problem};
use crate::kernel::openapi::{BearerScheme, CommonResponses};
use crate::middleware::bearer;
use crate::middleware::token::{Holder, Principal, SessionId};

/// The description of auth's public HTTP API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "gatehouse auth",
        description = "Sign-in: tokens, refresh, sessions, signing keys."
    ),
    paths(login, refresh, keys, logout, sessions, end_session),
    modifiers(&BearerScheme, &CommonResponses),
    tags((name = "auth", description = "Tokens and sessions"))
)]
pub struct ApiDoc;

pub fn routes(auth: Auth) -> Router {
    let signed_in = Router::new()
        .route("/v1/auth/logout", post(logout))
        .route("/v1/auth/sessions", get(sessions))
        .route("/v1/auth/sessions/{id}", delete(end_session))
        .route_layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            require_session,
        ));
    Router::new()
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/refresh", post(refresh))
        .route("/v1/auth/keys", get(keys))
        .merge(signed_in)
        .with_state(auth)
}

/// Lets the request through with its [`Principal`] when its bearer token
/// verifies and its session is live; a client's own token is refused with
/// 403, as at every other service.
pub(super) async fn require_session(
    State(auth): State<Auth>,
    mut req: Request,
    next: Next,
) -> Response {
    let verdict = match bearer::bearer(&req) {
        Ok(token) => auth.validate(token).await,
        Err(e) => Err(e.into()),
    };
    match verdict {
        Ok(Holder::User(principal)) => {
            crate::kernel::telemetry::set_actor(principal.user_id.as_uuid());
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Ok(Holder::Client { .. }) => bearer::client_refused(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    #[schema(format = Email, max_length = 254)]
    email: String,
    /// At most 4096 bytes: 1024 characters of any kind fit.
    #[schema(min_length = 1, max_length = 1024)]
    password: String,
    /// The `device_token` an earlier sign-in at this account answered: its
    /// sign-ins are throttled apart from anyone else's failed guesses.
    #[schema(max_length = 256)]
    #[serde(default)]
    device_token: Option<String>,
}

#[utoipa::path(
    post,
    path = "/v1/auth/login",
    tag = "auth",
    request_body = LoginBody,
    responses(
        (status = 200, description = "Signed in: a new session", body = TokenPair),
        (status = 401, description = "Wrong email or password", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The account is disabled", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed sign-ins from this client at this account (`too_many_attempts`); see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Too many sign-ins are being checked now (`overloaded`); see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn login(
    State(auth): State<Auth>,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Json<TokenPair>, AuthError> {
    let device = body.device_token.as_deref().filter(|t| t.len() <= 256);
    auth.login(&body.email, &body.password, device)
        .await
        .map(Json)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    refresh_token: String,
}

#[utoipa::path(
    post,
    path = "/v1/auth/refresh",
    tag = "auth",
    request_body = RefreshBody,
    responses(
        (status = 200, description = "A new token pair; the refresh token sent is used up", body = TokenPair),
        (status = 401, description = "The refresh token is unknown, expired or reused (reuse ends the session)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn refresh(
    State(auth): State<Auth>,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<Json<TokenPair>, AuthError> {
    auth.refresh(&body.refresh_token).await.map(Json)
}

#[utoipa::path(
    post,
    path = "/v1/auth/logout",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "The session is ended"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn logout(
    State(auth): State<Auth>,
    axum::Extension(p): axum::Extension<Principal>,
) -> Result<StatusCode, AuthError> {
    auth.revoke_session(p.session_id, "logout").await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
struct SessionView {
    #[schema(format = Uuid)]
    id: String,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    refreshed_at: String,
    #[schema(format = DateTime)]
    expires_at: String,
    /// Whether this is the session of the token that asked.
    current: bool,
}

#[derive(Serialize, ToSchema)]
struct SessionList {
    sessions: Vec<SessionView>,
}

#[utoipa::path(
    get,
    path = "/v1/auth/sessions",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The signed-in user's live sessions", body = SessionList),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn sessions(
    State(auth): State<Auth>,
    axum::Extension(p): axum::Extension<Principal>,
) -> Result<Json<SessionList>, AuthError> {
    let time = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    let sessions = auth
        .sessions(p.user_id)
        .await?
        .into_iter()
        .map(|s| SessionView {
            id: s.id.to_string(),
            created_at: time(s.created_at),
            refreshed_at: time(s.refreshed_at),
            expires_at: time(s.expires_at),
            current: s.id == p.session_id,
        })
        .collect();
    Ok(Json(SessionList { sessions }))
}

#[utoipa::path(
    delete,
    path = "/v1/auth/sessions/{id}",
    tag = "auth",
    security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "The session id")),
    responses(
        (status = 204, description = "The session is ended"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such session of this user", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn end_session(
    State(auth): State<Auth>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, AuthError> {
    let id = SessionId::parse(&id).map_err(|_| AuthError::SessionNotFound)?;
    auth.end_own_session(&p, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
struct KeyView {
    /// PASERK `k4.pid` of the key, as in the token footer.
    kid: String,
    /// PASERK `k4.public`.
    public_key: String,
    #[schema(format = DateTime)]
    signs_from: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    published_until: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct KeyList {
    keys: Vec<KeyView>,
    cache_ttl_secs: u64,
}

#[utoipa::path(
    get,
    path = "/v1/auth/keys",
    tag = "auth",
    responses(
        (status = 200, description = "The public keys that verify access tokens", body = KeyList, headers(
            ("cache-control" = String, description = "How long the list may be cached"),
        )),
    )
)]
async fn keys(State(auth): State<Auth>) -> Result<impl IntoResponse, AuthError> {
    let time = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    let keys = auth
        .keys()
        .published()
        .await?
        .into_iter()
        .map(|k| KeyView {
            public_key: crate::middleware::token::public_key_paserk(&k.public),
            kid: k.kid,
            signs_from: time(k.signs_from),
            published_until: k.published_until.map(time),
        })
        .collect();
    let ttl = auth.key_cache_ttl_secs();
    Ok((
        [(
            axum::http::header::CACHE_CONTROL,
            format!("public, max-age={ttl}"),
        )],
        Json(KeyList {
            keys,
            cache_ttl_secs: ttl,
        }),
    ))
}
