//! The provider's JSON API: the clients, for those authz lets manage them
//! (`clients:read`, `clients:write`), and a user's own consents. Thin
//! handlers; the registry and the provider do the work.

use std::collections::BTreeSet;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::SecondsFormat;
use diesel::Connection as _;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::clients::{Client, ClientSpec};
use super::registry::Issued;
use super::service::Provider;
use super::store;
use crate::auth::error::AuthError;
use crate::auth::events::{self, oidc_event};
use crate::auth::sessions::end_session;
use crate::kernel::error::{ApiJson, Problem};
use crate::kernel::openapi::{BearerScheme, CommonResponses};
use crate::kernel::outbox;
use crate::middleware::permit::Permits;
use crate::middleware::token::Principal;

/// The description of the provider's JSON API.
#[derive(OpenApi)]
#[openapi(
    paths(
        create_client,
        list_clients,
        read_client,
        update_client,
        rotate_secret,
        delete_client,
        list_consents,
        revoke_consent
    ),
    modifiers(&BearerScheme, &CommonResponses),
    tags((name = "oidc", description = "OpenID Connect clients and consents"))
)]
pub struct AdminDoc;

#[derive(Clone)]
struct Admin {
    provider: Provider,
    permits: Permits,
}

pub fn routes(provider: Provider, permits: Permits) -> Router {
    let auth = provider.auth.clone();
    Router::new()
        .route("/v1/oidc/clients", post(create_client).get(list_clients))
        .route(
            "/v1/oidc/clients/{id}",
            get(read_client).put(update_client).delete(delete_client),
        )
        .route("/v1/oidc/clients/{id}/secret", post(rotate_secret))
        .route("/v1/oidc/consents", get(list_consents))
        .route(
            "/v1/oidc/consents/{client_id}",
            axum::routing::delete(revoke_consent),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            auth,
            crate::auth::http::require_session,
        ))
        .with_state(Admin { provider, permits })
}

impl Admin {
    /// Refused with 403 unless the caller holds `permission` on clients.
    async fn require(&self, caller: &Principal, permission: &'static str) -> Result<(), AuthError> {
        if self
            .permits
            .allowed(caller.user_id, permission, None)
            .await?
        {
            Ok(())
        } else {
            Err(AuthError::Forbidden(permission))
        }
    }
}

/// A client's registration, as an admin writes it.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ClientBody {
    /// Shown on the consent page: printable, not blank.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    name: String,
    /// Matched exactly, except for the port of a loopback `http` URI.
    #[serde(default)]
    redirect_uris: Vec<String>,
    #[serde(default)]
    post_logout_redirect_uris: Vec<String>,
    #[serde(default)]
    web_origins: Vec<String>,
    /// Default: every grant a client of its kind may use.
    #[schema(min_items = 1)]
    grant_types: Option<Vec<String>>,
    /// Default: every scope the provider knows.
    scopes: Option<Vec<String>>,
    /// `RS256` (default), `ES256` or `EdDSA`.
    id_token_signed_response_alg: Option<String>,
    #[serde(default)]
    first_party: bool,
    /// A browser or native app, which holds no secret.
    #[serde(default)]
    public: bool,
    /// Default: true; always true for a public client.
    require_pkce: Option<bool>,
}

impl From<ClientBody> for ClientSpec {
    fn from(b: ClientBody) -> Self {
        ClientSpec {
            name: b.name,
            redirect_uris: b.redirect_uris,
            post_logout_redirect_uris: b.post_logout_redirect_uris,
            web_origins: b.web_origins,
            grant_types: b.grant_types,
            scopes: b.scopes,
            id_token_signed_response_alg: b.id_token_signed_response_alg,
            first_party: b.first_party,
            public: b.public,
            require_pkce: b.require_pkce,
        }
    }
}

/// A client as the API shows it; never its secret.
#[derive(Serialize, ToSchema)]
struct ClientView {
    client_id: String,
    name: String,
    public: bool,
    redirect_uris: Vec<String>,
    post_logout_redirect_uris: Vec<String>,
    web_origins: Vec<String>,
    grant_types: Vec<String>,
    scopes: Vec<String>,
    id_token_signed_response_alg: String,
    first_party: bool,
    require_pkce: bool,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
}

impl From<&Client> for ClientView {
    fn from(c: &Client) -> Self {
        let time = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
        ClientView {
            client_id: c.id.clone(),
            name: c.name.clone(),
            public: c.is_public(),
            redirect_uris: c.redirect_uris.clone(),
            post_logout_redirect_uris: c.post_logout_redirect_uris.clone(),
            web_origins: c.web_origins.clone(),
            grant_types: c.grants.iter().map(|g| g.name().to_owned()).collect(),
            scopes: c.scopes.iter().cloned().collect(),
            id_token_signed_response_alg: c.id_token_alg.name().to_owned(),
            first_party: c.first_party,
            require_pkce: c.require_pkce,
            created_at: time(c.created_at),
            updated_at: time(c.updated_at),
        }
    }
}

/// A client, with its secret when one was just made (shown this once).
#[derive(Serialize, ToSchema)]
struct IssuedView {
    client: ClientView,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secret: Option<String>,
}

impl From<Issued> for IssuedView {
    fn from(issued: Issued) -> Self {
        IssuedView {
            client: ClientView::from(&issued.client),
            client_secret: issued.secret,
        }
    }
}

#[derive(Serialize, ToSchema)]
struct ClientList {
    clients: Vec<ClientView>,
}

#[utoipa::path(
    post,
    path = "/v1/oidc/clients",
    tag = "oidc",
    security(("bearer" = [])),
    request_body = ClientBody,
    responses(
        (status = 201, description = "Registered; a confidential client's secret is shown this once", body = IssuedView),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The caller lacks clients:write", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is wrong; `field` names it", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_client(
    State(admin): State<Admin>,
    Extension(caller): Extension<Principal>,
    ApiJson(body): ApiJson<ClientBody>,
) -> Result<(StatusCode, Json<IssuedView>), AuthError> {
    admin.require(&caller, "clients:write").await?;
    let issued = admin.provider.clients().create_client(body.into()).await?;
    Ok((StatusCode::CREATED, Json(issued.into())))
}

#[utoipa::path(
    get,
    path = "/v1/oidc/clients",
    tag = "oidc",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every client, by name", body = ClientList),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The caller lacks clients:read", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_clients(
    State(admin): State<Admin>,
    Extension(caller): Extension<Principal>,
) -> Result<Json<ClientList>, AuthError> {
    admin.require(&caller, "clients:read").await?;
    let clients = admin.provider.clients().clients().await?;
    Ok(Json(ClientList {
        clients: clients.iter().map(ClientView::from).collect(),
    }))
}

#[utoipa::path(
    get,
    path = "/v1/oidc/clients/{id}",
    tag = "oidc",
    security(("bearer" = [])),
    params(("id" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,128}$", description = "The client id")),
    responses(
        (status = 200, description = "The client", body = ClientView),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The caller lacks clients:read", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn read_client(
    State(admin): State<Admin>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<ClientView>, AuthError> {
    admin.require(&caller, "clients:read").await?;
    Ok(Json(ClientView::from(
        &admin.provider.clients().client(&id).await?,
    )))
}

#[utoipa::path(
    put,
    path = "/v1/oidc/clients/{id}",
    tag = "oidc",
    security(("bearer" = [])),
    params(("id" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,128}$", description = "The client id")),
    request_body = ClientBody,
    responses(
        (status = 200, description = "The whole registration replaced; a client made confidential gets a secret, shown this once", body = IssuedView),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The caller lacks clients:write", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is wrong; `field` names it", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn update_client(
    State(admin): State<Admin>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ClientBody>,
) -> Result<Json<IssuedView>, AuthError> {
    admin.require(&caller, "clients:write").await?;
    let issued = admin
        .provider
        .clients()
        .update_client(&id, body.into())
        .await?;
    Ok(Json(issued.into()))
}

#[utoipa::path(
    post,
    path = "/v1/oidc/clients/{id}/secret",
    tag = "oidc",
    security(("bearer" = [])),
    params(("id" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,128}$", description = "The client id")),
    responses(
        (status = 200, description = "A new secret, shown this once; the old one no longer works", body = IssuedView),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The caller lacks clients:write", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A public client has no secret", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn rotate_secret(
    State(admin): State<Admin>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<IssuedView>, AuthError> {
    admin.require(&caller, "clients:write").await?;
    Ok(Json(
        admin.provider.clients().rotate_secret(&id).await?.into(),
    ))
}

#[utoipa::path(
    delete,
    path = "/v1/oidc/clients/{id}",
    tag = "oidc",
    security(("bearer" = [])),
    params(("id" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,128}$", description = "The client id")),
    responses(
        (status = 204, description = "Deleted, with its codes and consents; the sessions opened for it are ended"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The caller lacks clients:write", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_client(
    State(admin): State<Admin>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, AuthError> {
    admin.require(&caller, "clients:write").await?;
    let by = admin
        .provider
        .auth
        .tokens_expire_by(admin.provider.auth.clock.now());
    admin.provider.clients().delete_client(&id, by).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What a user has let a client have.
#[derive(Serialize, ToSchema)]
struct ConsentView {
    client_id: String,
    client_name: String,
    scopes: Vec<String>,
    #[schema(format = DateTime)]
    granted_at: String,
}

#[derive(Serialize, ToSchema)]
struct ConsentList {
    consents: Vec<ConsentView>,
}

#[utoipa::path(
    get,
    path = "/v1/oidc/consents",
    tag = "oidc",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The signed-in user's consents, by client name", body = ConsentList),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_consents(
    State(admin): State<Admin>,
    Extension(caller): Extension<Principal>,
) -> Result<Json<ConsentList>, AuthError> {
    let user = caller.user_id.to_string();
    let rows = admin
        .provider
        .auth
        .db
        .run(move |c| store::consents_of(c, &user))
        .await?;
    let consents = rows
        .into_iter()
        .map(|(client_id, client_name, scope, granted_at)| ConsentView {
            client_id,
            client_name,
            scopes: scope
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            granted_at: granted_at
                .and_utc()
                .to_rfc3339_opts(SecondsFormat::Secs, true),
        })
        .collect();
    Ok(Json(ConsentList { consents }))
}

#[utoipa::path(
    delete,
    path = "/v1/oidc/consents/{client_id}",
    tag = "oidc",
    security(("bearer" = [])),
    params(("client_id" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,128}$", description = "The client the consent was given to")),
    responses(
        (status = 204, description = "Revoked: the client must ask again, and the user's sessions opened for it are ended"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No consent was given to this client", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn revoke_consent(
    State(admin): State<Admin>,
    Extension(caller): Extension<Principal>,
    Path(client_id): Path<String>,
) -> Result<StatusCode, AuthError> {
    let auth = &admin.provider.auth;
    let user = caller.user_id.to_string();
    let now = auth.clock.now();
    let by = auth.tokens_expire_by(now);
    let event = oidc_event(&events::OIDC_CONSENT_REVOKED, &client_id, |e| {
        e.user_id = user.clone();
    });
    auth.db
        .run(move |c| {
            c.transaction(|c| {
                if !store::delete_consent(c, &user, &client_id)? {
                    return Err(AuthError::ConsentNotFound);
                }
                for session in store::sessions_of_user_client(c, &user, &client_id)? {
                    end_session(c, &session, "consent_revoked", now, by)?;
                }
                outbox::enqueue(c, &event, now)?;
                Ok(())
            })
        })
        .await?;
    auth.relay.wake();
    Ok(StatusCode::NO_CONTENT)
}
