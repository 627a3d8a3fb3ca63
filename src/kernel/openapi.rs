//! Each service describes its public HTTP API as an OpenAPI 3.1 document
//! (utoipa attributes on its handlers) and serves it at `/openapi.json`.
//! The gateway merges these into the one document clients read.

use axum::Router;
use axum::body::Bytes;
use axum::routing::get;
use http::header;
use utoipa::Modify;
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// Adds the `bearer` scheme that signed-in operations name: a PASETO
/// v4.public access token from `POST /v1/auth/login`.
pub struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, doc: &mut OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("PASETO v4.public")
                    .build(),
            ),
        );
    }
}

/// Where every service, and the gateway for the merged document, serves
/// its API document.
pub const DOCUMENT_PATH: &str = "/openapi.json";

/// `GET` [`DOCUMENT_PATH`] answering `doc`, serialised once.
pub fn serve(doc: &OpenApi) -> Router {
    let json = Bytes::from(serde_json::to_vec(doc).unwrap_or_default());
    Router::new().route(
        DOCUMENT_PATH,
        get(move || {
            let json = json.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], json) }
        }),
    )
}
