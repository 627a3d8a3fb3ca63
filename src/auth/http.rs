//! Auth's public HTTP API. Thin handlers: decode, call the service, encode.
//! Routes that need a signed-in caller check the bearer token against the
//! session table (auth is the authority on its own sessions).

use axum::Json;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::AuthError;
use super::service::{Auth, TokenPair};
use crate::kernel::error::ApiJson;
use crate::middleware::bearer;
use crate::middleware::token::Principal;

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
/// verifies and its session is live.
async fn require_session(State(auth): State<Auth>, mut req: Request, next: Next) -> Response {
    let verdict = match bearer::bearer(&req) {
        Ok(token) => auth.validate(token).await,
        Err(e) => Err(e.into()),
    };
    match verdict {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    email: String,
    password: String,
}

async fn login(
    State(auth): State<Auth>,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Json<TokenPair>, AuthError> {
    auth.login(&body.email, &body.password).await.map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    refresh_token: String,
}

async fn refresh(
    State(auth): State<Auth>,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<Json<TokenPair>, AuthError> {
    auth.refresh(&body.refresh_token).await.map(Json)
}

async fn logout(
    State(auth): State<Auth>,
    axum::Extension(p): axum::Extension<Principal>,
) -> Result<StatusCode, AuthError> {
    auth.revoke_session(p.session_id, "logout").await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
struct SessionView {
    id: String,
    created_at: String,
    refreshed_at: String,
    expires_at: String,
    current: bool,
}

#[derive(Serialize)]
struct SessionList {
    sessions: Vec<SessionView>,
}

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

async fn end_session(
    State(auth): State<Auth>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, AuthError> {
    let id = Uuid::parse_str(&id).map_err(|_| AuthError::SessionNotFound)?;
    auth.end_own_session(&p, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
struct KeyView {
    kid: String,
    public_key: String,
    signs_from: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    published_until: Option<String>,
}

#[derive(Serialize)]
struct KeyList {
    keys: Vec<KeyView>,
    cache_ttl_secs: u64,
}

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
