//! The provider's HTTP routes, public through the gateway: discovery and
//! the JWKS, the authorization endpoint and the hosted pages' forms, and
//! the token and userinfo endpoints. Thin handlers: decode, call the
//! provider, encode.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, options, post};
use serde_json::{Value, json};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::authorize::AuthorizeParams;
use super::clients::{Grant, SCOPES};
use super::error::OAuthError;
use super::flow::{Answer, ConsentForm, SignInForm};
use super::grants::TokenForm;
use super::jws::Alg;
use super::logout::{LogoutForm, LogoutParams};
use super::pages;
use super::service::Provider;
use super::tokens::TokenQuery;

/// Where the discovery document is, below the issuer.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

pub fn routes(provider: Provider) -> Router {
    // What scripts of the clients' registered web origins may call.
    // A preflight is answered by the CORS layer; one from an origin it
    // does not allow reaches this, and gets no CORS headers.
    let preflight = || options(|| async { StatusCode::NO_CONTENT });
    let scripted = Router::new()
        .route(DISCOVERY_PATH, get(discovery).merge(preflight()))
        .route("/oauth2/jwks", get(jwks).merge(preflight()))
        .route("/oauth2/token", post(token).merge(preflight()))
        .route(
            "/oauth2/userinfo",
            get(userinfo).post(userinfo).merge(preflight()),
        )
        .route("/oauth2/revoke", post(revoke).merge(preflight()))
        .layer(cors(provider.clone()));
    Router::new()
        .route("/oauth2/authorize", get(authorize_get).post(authorize_post))
        .route("/oauth2/signin", post(sign_in))
        .route("/oauth2/consent", post(consent))
        .route("/oauth2/logout", get(logout_page).post(logout))
        .route("/oauth2/introspect", post(introspect))
        .route("/oauth2/style.css", get(style))
        .merge(scripted)
        .with_state(provider)
}

/// CORS for the origins registered on clients: a browser app's scripts
/// discover the provider, exchange codes, refresh, read userinfo and
/// revoke. No cookies are involved, so none are allowed.
fn cors(provider: Provider) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::async_predicate(
            move |origin: HeaderValue, _: &http::request::Parts| {
                let provider = provider.clone();
                async move {
                    let Ok(origin) = origin.to_str() else {
                        return false;
                    };
                    provider
                        .clients()
                        .allows_origin(origin)
                        .await
                        .unwrap_or_else(|e| {
                            tracing::warn!(error = %e, "cannot read the clients' origins");
                            false
                        })
                }
            },
        ))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(std::time::Duration::from_secs(600))
}

/// The discovery document (OpenID Connect Discovery 1.0 §3).
pub fn discovery_document(issuer: &str) -> Value {
    let at = |path: &str| format!("{issuer}/oauth2/{path}");
    json!({
        "issuer": issuer,
        "authorization_endpoint": at("authorize"),
        "token_endpoint": at("token"),
        "userinfo_endpoint": at("userinfo"),
        "jwks_uri": at("jwks"),
        "end_session_endpoint": at("logout"),
        "introspection_endpoint": at("introspect"),
        "revocation_endpoint": at("revoke"),
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "scopes_supported": SCOPES,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": Grant::ALL.map(Grant::name),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": Alg::ALL.map(Alg::name),
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "code_challenge_methods_supported": ["S256"],
        "prompt_values_supported": ["none", "login", "consent", "select_account"],
        "claims_supported": [
            "iss", "sub", "aud", "azp", "exp", "iat", "auth_time", "nonce", "at_hash", "sid",
            "amr", "email", "email_verified", "name", "roles"
        ],
        "claims_parameter_supported": false,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        "authorization_response_iss_parameter_supported": true,
    })
}

async fn discovery(State(provider): State<Provider>) -> Response {
    let ttl = provider.auth.key_cache_ttl_secs();
    (
        [
            (header::CACHE_CONTROL, format!("public, max-age={ttl}")),
            (header::CONTENT_TYPE, "application/json".into()),
        ],
        provider.discovery.to_string(),
    )
        .into_response()
}

/// How long the JWKS is answered as read, before the keys are read again.
const JWKS_KEPT: std::time::Duration = std::time::Duration::from_secs(1);

/// The ID-token keys. The RS256 key, which every relying party can use,
/// is made before the first answer, so that it is published before it
/// signs; the cache lifetime is the verifiers' key-cache TTL, within
/// which every new key is published before it signs.
async fn jwks(State(provider): State<Provider>) -> Result<Response, OAuthError> {
    let kept = crate::kernel::locks::lock(&provider.jwks)
        .as_ref()
        .filter(|(at, _)| at.elapsed() < JWKS_KEPT)
        .map(|(_, jwks)| jwks.clone());
    let jwks = match kept {
        Some(jwks) => jwks,
        None => {
            let keys = provider.auth.keys();
            keys.ensure_id_token_key(Alg::Rs256).await?;
            let read: Arc<str> = keys.jwks().await?.to_string().into();
            *crate::kernel::locks::lock(&provider.jwks) =
                Some((std::time::Instant::now(), read.clone()));
            read
        }
    };
    // A key published while the answer was kept, here or at the gateway,
    // is in the next one: the cache lifetime leaves those seconds out, so
    // that no verifier meets a key before it has had the whole key-cache
    // lifetime to fetch it.
    let kept = JWKS_KEPT + crate::kernel::http::KEPT_AT_THE_EDGE;
    let ttl = provider
        .auth
        .key_cache_ttl_secs()
        .saturating_sub(kept.as_secs());
    Ok((
        [
            (header::CACHE_CONTROL, format!("public, max-age={ttl}")),
            (header::CONTENT_TYPE, "application/jwk-set+json".into()),
        ],
        jwks.to_string(),
    )
        .into_response())
}

async fn authorize_get(
    State(provider): State<Provider>,
    headers: HeaderMap,
    params: Result<Query<AuthorizeParams>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    match params {
        Ok(Query(params)) => provider.authorize(params, &headers).await,
        Err(_) => Answer::error(
            StatusCode::BAD_REQUEST,
            "The authorization request is malformed.",
        ),
    }
}

async fn authorize_post(
    State(provider): State<Provider>,
    headers: HeaderMap,
    params: Result<Form<AuthorizeParams>, axum::extract::rejection::FormRejection>,
) -> Answer {
    match params {
        Ok(Form(params)) => provider.authorize(params, &headers).await,
        Err(_) => Answer::error(
            StatusCode::BAD_REQUEST,
            "The authorization request is malformed.",
        ),
    }
}

async fn sign_in(
    State(provider): State<Provider>,
    headers: HeaderMap,
    form: Result<Form<SignInForm>, axum::extract::rejection::FormRejection>,
) -> Answer {
    match form {
        Ok(Form(form)) => provider.sign_in(form, &headers).await,
        Err(_) => Answer::error(StatusCode::BAD_REQUEST, "The sign-in form is malformed."),
    }
}

async fn consent(
    State(provider): State<Provider>,
    headers: HeaderMap,
    form: Result<Form<ConsentForm>, axum::extract::rejection::FormRejection>,
) -> Answer {
    match form {
        Ok(Form(form)) => provider.consent(form, &headers).await,
        Err(_) => Answer::error(StatusCode::BAD_REQUEST, "The consent form is malformed."),
    }
}

async fn token(
    State(provider): State<Provider>,
    headers: HeaderMap,
    form: Result<Form<TokenForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, OAuthError> {
    let answer = provider.token(&headers, self::form(form)?).await?;
    Ok((
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        axum::Json(answer),
    )
        .into_response())
}

/// The claims of the access token's user that its scopes allow (GET, or
/// POST with the token in the header).
async fn userinfo(
    State(provider): State<Provider>,
    headers: HeaderMap,
) -> Result<Response, OAuthError> {
    let token = crate::middleware::bearer::bearer_token(&headers)
        .ok()
        .and_then(|t| std::str::from_utf8(t).ok())
        .ok_or(OAuthError::InvalidToken)?;
    let claims = provider.userinfo(token).await?;
    Ok(([(header::CACHE_CONTROL, "no-store")], axum::Json(claims)).into_response())
}

async fn logout_page(
    State(provider): State<Provider>,
    headers: HeaderMap,
    params: Result<Query<LogoutParams>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    match params {
        Ok(Query(params)) => provider.logout_page(params, &headers).await,
        Err(_) => Answer::error(
            StatusCode::BAD_REQUEST,
            "The sign-out request is malformed.",
        ),
    }
}

async fn logout(
    State(provider): State<Provider>,
    headers: HeaderMap,
    form: Result<Form<LogoutForm>, axum::extract::rejection::FormRejection>,
) -> Answer {
    match form {
        Ok(Form(form)) => provider.logout(form, &headers).await,
        Err(_) => Answer::error(StatusCode::BAD_REQUEST, "The sign-out form is malformed."),
    }
}

/// A form of the token, introspection or revocation endpoint, or
/// `invalid_request`.
fn form<T>(
    form: Result<Form<T>, axum::extract::rejection::FormRejection>,
) -> Result<T, OAuthError> {
    form.map(|Form(f)| f).map_err(|_| {
        OAuthError::InvalidRequest(
            "the body must be an application/x-www-form-urlencoded form".into(),
        )
    })
}

async fn introspect(
    State(provider): State<Provider>,
    headers: HeaderMap,
    query: Result<Form<TokenQuery>, axum::extract::rejection::FormRejection>,
) -> Result<Response, OAuthError> {
    let query = form(query)?;
    let client = provider
        .authenticate_client(
            &headers,
            query.client_id.as_deref(),
            query.client_secret.as_deref(),
        )
        .await?;
    let answer = provider.introspect(&client, query).await?;
    Ok(([(header::CACHE_CONTROL, "no-store")], axum::Json(answer)).into_response())
}

async fn revoke(
    State(provider): State<Provider>,
    headers: HeaderMap,
    query: Result<Form<TokenQuery>, axum::extract::rejection::FormRejection>,
) -> Result<Response, OAuthError> {
    let query = form(query)?;
    let client = provider
        .authenticate_client(
            &headers,
            query.client_id.as_deref(),
            query.client_secret.as_deref(),
        )
        .await?;
    provider.revoke(&client, query).await?;
    Ok(StatusCode::OK.into_response())
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        pages::STYLE,
    )
        .into_response()
}
